"""ONNX Runtime speed of the zoo graphs alone (CPU), optionally against the graphs of an earlier commit.

Real features: the sample CIFs through ``Predictor.prepare``, cut into the inference batches of
``sitenet.predict.size_batches`` and padded by ``sitenet.batch.collate``, exactly as ``Predictor.run`` does.
Each zoo model is exported afresh from its ``model.safetensors`` with the current ``training.export``
("current"); with ``--baseline-rev`` the ``model.onnx`` committed at that revision is timed in the same run
("baseline"), so the ratio is not skewed by whatever else the machine does meanwhile.

Every batch runs ``--runs`` times per graph, graphs interleaved (the order rotates each round); a pass over
the data is reported as the sum of the per-batch medians, which a burst of load on this shared 2-core machine
barely moves. The max abs difference between the two graphs' outputs is reported too (same weights, same
function: it must stay far below ``training.export.PARITY_ATOL``).

    python benchmarks/onnx_graph.py --baseline-rev 121be8c          # 3 models, 1 and 2 threads, 5 runs
    python benchmarks/onnx_graph.py --models sitenet-dim-mp2018-band-gap --threads 1 --limit 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    names = [i.name for i in session.get_inputs()]  # unused inputs are pruned by the export
    return [{k: b[k] for k in names} for b in batches]


def time_graphs(graphs: dict[str, Path], batches: list[dict[str, np.ndarray]], *, threads: int,
                runs: int) -> dict[str, float]:
    """Seconds per pass over ``batches`` for each graph: the sum over batches of the median of ``runs``."""
    sessions = {name: _session(path, threads) for name, path in graphs.items()}
    feeds = {name: _feeds(s, batches) for name, s in sessions.items()}
    for name, s in sessions.items():  # warm-up: first-run allocations and kernel selection
        for feed in feeds[name]:
            s.run(None, feed)
    names = list(graphs)
    times: dict[str, list[list[float]]] = {name: [[] for _ in batches] for name in names}
    for r in range(runs):
        order = names[r % len(names):] + names[: r % len(names)]
        for j in range(len(batches)):
            for name in order:
                t0 = time.perf_counter()
                sessions[name].run(None, feeds[name][j])
                times[name][j].append(time.perf_counter() - t0)
    return {name: sum(statistics.median(t) for t in times[name]) for name in names}


def max_difference(a: Path, b: Path, batches: list[dict[str, np.ndarray]]) -> float:
    """Max abs difference between the outputs of two graphs with the same outputs over ``batches``."""
    sa, sb = _session(a, 1), _session(b, 1)
    names = [o.name for o in sa.get_outputs()]
    worst = 0.0
    for fa, fb in zip(_feeds(sa, batches), _feeds(sb, batches)):
        for x, y in zip(sa.run(names, fa), sb.run(names, fb)):
            worst = max(worst, float(np.abs(x - y).max()) if x.size else 0.0)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="zoo names (default: the three bundled models)")
    parser.add_argument("--baseline-rev", default=None, help="git revision whose zoo model.onnx to time as well")
    parser.add_argument("--data", default=None, help="CSV(.gz) with a cif column (default: the sample)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N CIFs")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="ONNX Runtime intra-op threads")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of every batch per graph")
    parser.add_argument("--output", default=str(RESULTS / "onnx_graph"), help="results path without suffix")
    args = parser.parse_args(argv)

    import pandas as pd

    from sitenet.batch import collate
    from sitenet.dataset import SAMPLE_PATH
    from sitenet.hub import resolve
    from sitenet.predict import DEFAULT_MODELS, Predictor, size_batches
    from training.export import export_onnx
    from training.publish import load_model

    models = args.models or list(DEFAULT_MODELS.values())
    data = Path(args.data or SAMPLE_PATH)
    cifs = pd.read_csv(data)["cif"].fillna("").astype(str).tolist()[: args.limit]
    predictor = Predictor.from_pretrained(load=False)
    features = [p.features for p in map(predictor.prepare, cifs) if not isinstance(p, Exception)]
    index = size_batches([(f.n_primitive, f.n_sites) for f in features], batch_size=predictor.batch_size,
                         max_pairs=predictor.max_pairs)
    batches = [collate([features[i] for i in idx], predictor.spec).inputs() for idx in index]
    pairs = float(np.mean([f.n_primitive * f.n_sites for f in features]))
    result: dict = {"command": " ".join(["onnx_graph.py", *(argv if argv is not None else sys.argv[1:])]),
                    "data": str(data), "crystals": len(features), "batches": len(batches),
                    "mean_pairs_per_crystal": round(pairs, 1), "runs": args.runs, "baseline_rev": args.baseline_rev,
                    "cpu_count": os.cpu_count(), "machine": platform.platform(), "models": {}}
    print(f"{len(features)} crystals in {len(batches)} batches, mean {pairs:.0f} pairs per crystal", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name in models:
            folder = resolve(name)
            graphs = {"current": export_onnx(load_model(folder), Path(scratch) / f"{name}.onnx")}
            if args.baseline_rev:
                old = Path(scratch) / f"{name}.baseline.onnx"
                rel = folder.resolve().relative_to(REPO).as_posix()
                old.write_bytes(subprocess.run(["git", "show", f"{args.baseline_rev}:{rel}/model.onnx"], cwd=REPO,
                                               check=True, capture_output=True).stdout)
                graphs = {"baseline": old, **graphs}
            entry: dict = {}
            if args.baseline_rev:
                entry["max_abs_output_difference"] = max_difference(graphs["baseline"], graphs["current"], batches)
            for threads in args.threads:
                seconds = time_graphs(graphs, batches, threads=threads, runs=args.runs)
                row = {g: {"seconds_per_pass": round(s, 4), "ms_per_crystal": round(1e3 * s / len(features), 3)}
                       for g, s in seconds.items()}
                if args.baseline_rev:
                    row["ratio_current_to_baseline"] = round(seconds["current"] / seconds["baseline"], 3)
                entry[f"threads_{threads}"] = row
                print(name, threads, json.dumps(row), flush=True)
            result["models"][name] = entry

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# ONNX graphs alone (CPU)\n", f"`{result['command']}`: {len(features)} crystals of `{data.name}` in "
             f"{len(batches)} inference batches (mean {pairs:.0f} pairs per crystal), {os.cpu_count()} CPUs "
             f"({result['machine']}); sum of per-batch medians of {args.runs} interleaved runs.\n",
             "| model | threads | " + ("baseline ms/crystal | " if args.baseline_rev else "")
             + "current ms/crystal |" + (" current / baseline |" if args.baseline_rev else ""),
             "|---|---|" + ("---|" if args.baseline_rev else "") + "---|" + ("---|" if args.baseline_rev else "")]
    for name, entry in result["models"].items():
        for threads in args.threads:
            row = entry[f"threads_{threads}"]
            cells = [name, str(threads)]
            if args.baseline_rev:
                cells.append(str(row["baseline"]["ms_per_crystal"]))
            cells.append(str(row["current"]["ms_per_crystal"]))
            if args.baseline_rev:
                cells.append(f"**{row['ratio_current_to_baseline']}**")
            lines.append("| " + " | ".join(cells) + " |")
    if args.baseline_rev:
        diffs = ", ".join(f"{n} {e['max_abs_output_difference']:.2g}" for n, e in result["models"].items())
        lines.append(f"\nBaseline: the zoo `model.onnx` at `{args.baseline_rev}`. Max abs output difference "
                     f"between the two graphs: {diffs}.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
