"""Compare DIM pretraining runs epoch by epoch: validation DIM loss, the frozen-embedding probes and collapsed
embedding dimensions, read from each run's ``history.json`` (written by ``sitenet pretrain``).

Made for issue 13 item 4, domain-aware against standard negatives at the long budget:

    python benchmarks/pretrain_compare.py domain-aware=runs/dim-mp2018 standard=runs/dim-mp2018-standard \
        --output benchmarks/results/negatives_long

prints a Markdown table and writes ``<output>.md`` and ``<output>.png`` (probe MAE against epoch, one panel per
probe). The DIM losses of runs with different negatives are not comparable with each other (another negative
distribution is another classification task); the probes are, being the same random forest on the same labels.
The probes are insight only, scored on the pretraining's validation carve; the held-out comparison is the study.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SHOWN = ("val/dim", "val/probe_formation_energy_mae", "val/probe_band_gap_mae", "val/collapsed_dims")


def load(folder: str | Path) -> list[dict]:
    """The per-epoch records of one pretraining run."""
    path = Path(folder) / "history.json"
    if not path.exists():
        raise SystemExit(f"{path}: no such file (is {folder} a `sitenet pretrain` output folder?)")
    return json.loads(path.read_text())["epochs"]


def best_epoch(epochs: list[dict]) -> int:
    """The epoch ``sitenet pretrain`` keeps: lowest validation DIM loss."""
    return min(epochs, key=lambda e: e.get("val/dim", float("inf")))["epoch"]


def table(runs: dict[str, list[dict]], at: tuple[int, ...]) -> str:
    """One row per run and epoch: the SHOWN metrics ('–' where not logged), the kept epoch marked."""
    lines = ["| run | epoch | " + " | ".join(k.removeprefix("val/") for k in SHOWN) + " |",
             "|---|---|" + "---|" * len(SHOWN)]
    for name, epochs in runs.items():
        by_epoch = {e["epoch"]: e for e in epochs}
        best = best_epoch(epochs)
        for k in sorted({*at, best} & set(by_epoch)):
            cells = [_cell(by_epoch[k].get(m), m) for m in SHOWN]
            lines.append(f"| {name} | {k}{' (kept)' if k == best else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if metric.endswith("_dims") else f"{value:.3f}"


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = sorted({k for epochs in runs.values() for e in epochs for k in e if k.startswith("val/probe_")})
    panels = (*probes, "val/collapsed_dims")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for k, (name, epochs) in enumerate(runs.items()):
        x = [e["epoch"] for e in epochs]
        for ax, key in zip(axes[0], panels):
            ax.plot(x, [e.get(key, float("nan")) for e in epochs], marker="o", ms=2, lw=1.2, color=f"C{k}",
                    label=name)
            ax.axvline(best_epoch(epochs), color=f"C{k}", ls=":", lw=1)
    for ax, key in zip(axes[0], panels):
        title = key.removeprefix("val/").removeprefix("probe_").removesuffix("_mae").replace("_", " ")
        ax.set(title=f"frozen probe (RF): {title}" if key in probes else "collapsed embedding dimensions",
               xlabel="pretraining epoch (dotted: kept epoch)", ylabel="validation MAE" if key in probes else "")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="name=folder of a `sitenet pretrain` output")
    parser.add_argument("--epochs", default="0,15,30,60,99", help="epochs to tabulate (the kept one is added)")
    parser.add_argument("--output", default="benchmarks/results/negatives_long", help="writes <output>.md/.png")
    args = parser.parse_args(argv)
    pairs = [spec.split("=", 1) for spec in args.runs]
    if any(len(p) != 2 for p in pairs):
        parser.error("each run is name=folder")
    runs = {name: load(folder) for name, folder in pairs}
    text = table(runs, tuple(int(e) for e in args.epochs.split(",")))
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/pretrain_compare.py " + " ".join(args.runs) + f" --output {args.output}"
    output.with_suffix(".md").write_text(f"# DIM pretraining runs compared\n\nProduced by `{command}`.\n\n{text}\n")
    plot(runs, output.with_suffix(".png"))


if __name__ == "__main__":
    main()
