"""Zoo candidates side by side: validation MAE per target at each run's kept epoch (what the choice is made
on), the held-out MAE of their ``sitenet evaluate`` files (reported, never used to choose) and the compute spent.

    .venv/bin/python benchmarks/zoo_candidates.py      # writes benchmarks/results/zoo_candidates.{json,md}

A run is ``NAME=RUN_FOLDER:EVAL_STEM`` (``--run``, repeatable; default: the committed candidates). The
validation numbers come from the run's CSV log (``logs/version_*/metrics.csv``) at ``best_epoch`` of its
``training.json``; for a one-target run that is its ``val/mae``. The held-out numbers come from
``EVAL_STEM.json`` (one target) or ``EVAL_STEM-<target>.json`` (multi-task).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
UNITS = {"band_gap": "eV", "formation_energy": "eV/atom"}
DEFAULT_RUNS = (
    "multi-task from the v3 formation-energy model, formation energy weighted 3x, 80 epochs="
    "runs/finetune-multitask-v3:benchmarks/results/zoo_v3_multitask",
    "single band gap, DIM (epoch 98) init + element embedding, 100 epochs=runs/finetune-band-gap-v3:"
    "benchmarks/results/zoo_v3_candidate_band-gap",
    "single formation energy, DIM (epoch 98) init + element embedding, 100 epochs=runs/finetune-formation-energy-v3:"
    "benchmarks/results/zoo_v3_candidate_formation-energy",
    "single band gap, DIM (epoch 12) init, 60 epochs=runs/finetune-band-gap-v2:"
    "benchmarks/results/zoo_v2_candidate_band-gap",
    "single formation energy, DIM (epoch 12) init, 60 epochs=runs/finetune-formation-energy-v2:"
    "benchmarks/results/zoo_v2_candidate_formation-energy",
    "multi-task, DIM (epoch 98) init, 60 epochs=runs/finetune-multitask:benchmarks/results/zoo_v2_multitask",
    "multi-task, formation energy weighted 3x, DIM (epoch 98) init, 60 epochs=runs/finetune-multitask-fe3:"
    "benchmarks/results/zoo_v2_multitask_fe3",
    # its run folder (and so its validation log) was lost with a cut-off session; the held-out files remain
    "multi-task, paper preset, random init, 15 epochs=:benchmarks/results/zoo_v2_multitask_paper",
)


def validation_at_best(run: Path) -> tuple[dict, dict[str, float]]:
    """(training.json, validation MAE per target at the kept epoch)."""
    import pandas as pd

    record = json.loads((run / "training.json").read_text())
    config = record["config"]
    targets = config.get("targets") or [config["target"]]
    frames = [pd.read_csv(p) for p in sorted((run / "logs").glob("version_*/metrics.csv"))]
    log = pd.concat(frames) if frames else pd.DataFrame()
    rows = log.dropna(subset=["val/mae"]) if "val/mae" in log else log
    at = rows[rows["epoch"] == record["best_epoch"]].iloc[-1]
    values = {t: float(at.get(f"val/mae_{t}", at["val/mae"])) for t in targets}
    return record, values


def held_out(stem: str, targets: list[str]) -> dict[str, dict]:
    out = {}
    for target in targets:
        for path in (Path(f"{stem}-{target.replace('_', '-')}.json"), Path(f"{stem}.json")):
            if path.is_file():
                report = json.loads(path.read_text())
                if report.get("target") == target:
                    out[target] = report["metrics"]
                    break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=None, help="NAME=RUN_FOLDER:EVAL_STEM")
    parser.add_argument("--output", default=str(RESULTS / "zoo_candidates"))
    args = parser.parse_args(argv)
    table = []
    for spec in args.run or DEFAULT_RUNS:
        name, rest = spec.split("=", 1)
        folder, stem = rest.split(":", 1)
        if folder and (REPO / folder / "training.json").is_file():
            record, val = validation_at_best(REPO / folder)
        else:  # no run folder: held-out numbers only, never a choice
            record, val = {"best_epoch": None, "epochs_run": None}, {}
        targets = list(val) or [t for t in UNITS if held_out(str(REPO / stem), [t])]
        table.append({"name": name, "run": folder or None, "targets": targets, "best_epoch": record["best_epoch"],
                      "epochs_run": record["epochs_run"], "validation_mae": val,
                      "held_out": held_out(str(REPO / stem), targets)})
    best = {t: min((r for r in table if t in r["validation_mae"]), key=lambda r: r["validation_mae"][t])["name"]
            for t in UNITS}
    lines = ["# Zoo candidates: chosen on validation, reported on the held-out split", "",
             "Command: `python benchmarks/zoo_candidates.py`", "",
             "| candidate | target | kept epoch / run | validation MAE | held-out MAE | held-out non-metal MAE | "
             "held-out metal accuracy |", "|---|---|---|---|---|---|---|"]
    for r in table:
        for t in r["targets"]:
            h = r["held_out"].get(t, {})
            mark = " **(best on validation)**" if best[t] == r["name"] else ""
            kept = f"{r['best_epoch'] + 1} / {r['epochs_run']}" if r["best_epoch"] is not None else "–"
            val = f"{r['validation_mae'][t]:.4f} {UNITS[t]}" if t in r["validation_mae"] else "(run folder lost)"
            lines.append(f"| {r['name']}{mark} | {t} | {kept} | {val} | "
                         + (f"{h['mae']:.4f} {UNITS[t]}" if h else "–") + " | "
                         + (f"{h['mae_nonmetal']:.4f} eV" if "mae_nonmetal" in h else "–") + " | "
                         + (f"{100 * h['metal_accuracy']:.1f}%" if "metal_accuracy" in h else "–") + " |")
    lines += ["", "Validation rows: each run's own seeded carve of the training crystals with agreed labels of all its "
              "targets; every mp2018 training crystal with one agreed label has both, so the single-target and multi-task "
              "runs share one carve of 1,207 crystals. Held-out: the scored crystals of `data/splits/mp2018-test.txt`."]
    out = Path(args.output)
    out.with_suffix(".json").write_text(json.dumps({"candidates": table, "best_on_validation": best}, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
