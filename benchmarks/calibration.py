"""How far to trust a prediction: calibration of the served uncertainty and in-domain score, and their cost.

For each property model of the zoo (or ``--model`` folders) that ships a nearest-crystal index
(``sitenet uncertainty RUN``, then the zoo build), on the held-out mp2018 crystals and, out of domain, on the
perov5 perovskites (formation energy only: ``heat_ref`` / 5 atoms, eV/atom; a different DFT code and reference
state, so its errors are large by construction): Spearman correlation of |error| with the predicted standard
deviation, coverage of the nominal 68% and 95% intervals, and MAE by decile of the in-domain score. perov5 is
scored three ways: raw, with the median offset removed, and with per-element reference energies removed
(:func:`element_reference_shift`, fitted out of sample), since its reference states differ per element.
Then the cost: CIF text to prediction through ``sitenet.predict.Predictor`` on ONNX Runtime without and with
uncertainty and neighbours, median of ``--repeats`` interleaved passes over the same crystals, same run.

    .venv/bin/python benchmarks/calibration.py                 # writes benchmarks/results/calibration.{json,md,png}
    .venv/bin/python benchmarks/calibration.py --speed-n 200 --repeats 1 --output runs/calibration-smoke
    .venv/bin/python benchmarks/calibration.py --replot     # redraw the PNG from the JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PEROV5 = REPO.parent / "shared" / "data" / "perov5" / "perov_5_val.csv.gz"
UNITS = {"band_gap": "eV", "formation_energy": "eV/atom"}


def zoo_regressors() -> list[Path]:
    from sitenet.hub import ZOO_DIR

    registry = json.loads((ZOO_DIR / "registry.json").read_text())
    return [ZOO_DIR / m["name"] for m in registry["models"] if m["kind"] == "regressor"]


def measure(folders: list[Path], perov5: Path | None) -> list[dict]:
    from training.configs import DataConfig
    from training.data import load_corpus, make_splits
    from training.uncertainty import calibration, calibration_report, predict_with_uncertainty

    data = DataConfig(max_primitive=None)
    corpus = load_corpus(data)
    rows = []
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        targets = config.get("targets") or [config["target"]]
        test = make_splits(corpus, data, target=tuple(targets)).test
        for target, report in calibration(folder, corpus, test, data).items():
            rows.append(_row(folder, "mp2018 held-out", target, report))
        if perov5 is not None and "formation_energy" in targets:
            pdata = DataConfig(path=str(perov5), max_primitive=None, test_ids=str(_no_ids()))
            pcorpus = load_corpus(pdata)
            heat = np.asarray(pcorpus.dataset.extra["heat_ref"], dtype=np.float64) / 5.0  # eV per 5-atom cell
            prow = np.flatnonzero((pcorpus.store_row >= 0) & np.isfinite(heat))
            scored = predict_with_uncertainty(folder, pcorpus, prow, pdata)  # once; scored against three labels
            fe, std, score = scored["formation_energy"], scored["formation_energy_std"], scored["in_domain"]
            rows.append(_row(folder, "perov5 (out of domain)", "formation_energy",
                             calibration_report(fe, std, score, heat[prow])))
            # a diagnostic, not a fit of the model: perov5's energies have another reference state, so most of
            # the error is one constant; with the median offset removed the rest shows how errors rank
            shift = float(np.median(fe - heat[prow]))
            rows.append(_row(folder, f"perov5, median offset {shift:+.2f} removed", "formation_energy",
                             calibration_report(fe, std, score, heat[prow] + shift)))
            # the reference states differ per element, not by one constant: put perov5 on MP's scale with
            # per-element shifts, each crystal's fitted on the other half only, so no crystal sees its own label
            moved = heat[prow] + element_reference_shift(fe, heat[prow], pcorpus.atomic_numbers(prow))
            rows.append(_row(folder, "perov5, element references removed (2-fold cross-fit)", "formation_energy",
                             calibration_report(fe, std, score, moved)))
    return rows


def element_reference_shift(predictions: np.ndarray, labels: np.ndarray, atomic_numbers: list[np.ndarray],
                            seed: int = 0) -> np.ndarray:
    """(B,) per-crystal shift ``x . w`` that puts ``labels`` on the predictions' reference states: ``x`` the
    crystal's element fractions, ``w`` one energy per element, a least-squares fit of prediction - label on
    the other half of a seeded 2-fold split (so each shift is out of sample). Labels must all be finite."""
    elements = np.unique(np.concatenate(atomic_numbers))
    x = np.array([[np.mean(z == e) for e in elements] for z in atomic_numbers])  # (B, elements)
    gap = predictions - labels
    first = np.random.default_rng(seed).permutation(len(gap)) % 2 == 0
    shift = np.empty_like(gap)
    for held in (first, ~first):
        w = np.linalg.lstsq(x[~held], gap[~held], rcond=None)[0]
        shift[held] = x[held] @ w
    return shift


def _row(folder: Path, data: str, target: str, report: dict) -> dict:
    return {"model": folder.name, "data": data, "target": target, **report}


def _no_ids() -> Path:
    path = REPO / "runs" / "calibration-no-test-ids.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def speed(n: int, repeats: int) -> list[dict]:
    import time

    from sitenet.predict import Predictor
    from training.configs import DataConfig
    from training.data import load_corpus, make_splits

    data = DataConfig(max_primitive=None)
    corpus = load_corpus(data)
    test = make_splits(corpus, data).test[:n]
    cifs = [corpus.dataset.cifs[r] for r in test]
    predictor = Predictor.from_pretrained(encoder=None, providers="cpu")
    variants = {"plain": {}, "uncertainty": {"uncertainty": True},
                "uncertainty + 5 neighbours": {"uncertainty": True, "neighbours": 5}}
    times: dict[str, list[float]] = {k: [] for k in variants}
    predictor.predict(cifs[:32], **variants["uncertainty + 5 neighbours"])  # warm sessions and the index
    for _ in range(repeats):  # interleaved, so drift hits every variant alike
        for name, options in variants.items():
            t0 = time.perf_counter()
            predictor.predict(cifs, **options)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    return [{"variant": k, "crystals": len(cifs), "median_s": statistics.median(v),
             "crystals_per_s": len(cifs) / statistics.median(v), "ratio_to_plain": statistics.median(v) / base}
            for k, v in times.items()]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        ax.bar(range(1, 11), row["mae_by_in_domain_decile"], color="tab:blue")
        ax.set_xlabel("in-domain decile (1: least)")
        ax.set_ylabel(f"MAE ({UNITS[row['target']]})")
        ax.set_title(f"{row['model'].removeprefix('sitenet-dim-mp2018-')}: {row['target']}\n{row['data']}\n"
                     f"Spearman(|err|, std) {row['spearman_abs_error_std']:.2f}, "
                     f"95% cover {100 * row['coverage_95']:.0f}%", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], cost: list[dict], command: str) -> str:
    lines = ["# Uncertainty and in-domain score: calibration and cost", "", f"Command: `{command}`", "",
             "| model | data | target | crystals | MAE | Spearman(|error|, std) | 68% interval covers | "
             "95% interval covers | MAE, least / most in-domain decile | median in-domain score |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        unit = UNITS[r["target"]]
        d = r["mae_by_in_domain_decile"]
        lines.append(f"| {r['model']} | {r['data']} | {r['target']} | {r['count']} | {r['mae']:.4f} {unit} | "
                     f"{r['spearman_abs_error_std']:.3f} | {100 * r['coverage_68']:.1f}% | "
                     f"{100 * r['coverage_95']:.1f}% | {d[0]:.4f} / {d[-1]:.4f} {unit} | {r['median_in_domain']:.2f} |")
    if cost:
        lines += ["", "Cost, CIF text to prediction (ONNX Runtime, CPU, property models only), same run:", "",
                  "| variant | crystals/s | time / plain |", "|---|---|---|"]
        lines += [f"| {c['variant']} | {c['crystals_per_s']:.1f} | {c['ratio_to_plain']:.2f} |" for c in cost]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None, help="regressor folder(s) (default: the zoo's)")
    parser.add_argument("--perov5", default=str(PEROV5), help="perov5 CSV ('' to skip)")
    parser.add_argument("--speed-n", type=int, default=1000, help="held-out crystals timed (0: no timing)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(RESULTS / "calibration"))
    parser.add_argument("--replot", action="store_true", help="only redraw <output>.png from <output>.json")
    args = parser.parse_args(argv)
    out = Path(args.output)
    if args.replot:
        plot(json.loads(out.with_suffix(".json").read_text())["calibration"], out.with_suffix(".png"))
        return 0
    folders = [Path(m) for m in args.model] if args.model else zoo_regressors()
    rows = measure(folders, Path(args.perov5) if args.perov5 and Path(args.perov5).is_file() else None)
    cost = speed(args.speed_n, args.repeats) if args.speed_n else []
    command = "python benchmarks/calibration.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command.strip(), "machine": platform.platform(),
                                                    "calibration": rows, "cost": cost}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, cost, command.strip()))
    plot(rows, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
