"""Offline batch inference speed: CIF text in, predictions (band gap, formation energy) and embeddings out.

Times ``sitenet.predict.Predictor.predict`` end to end on the 400-crystal sample (or ``$SITENET_DATA`` /
``--data``), median of ``--runs`` runs, with worker processes started and warmed before timing (their start
is reported apart). Also times the stages alone, so the wall is visible: reading + validating +
featurising (``prepare``) with the fast reader and with the core reader, and the ONNX models on
pre-featurised crystals.

    python benchmarks/predict_batch.py                       # sample, 2 workers, 3 runs
    python benchmarks/predict_batch.py --workers 1 --runs 1 --limit 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _timed(fn, runs: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="CSV(.gz) with a cif column (default: $SITENET_DATA or the sample)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N CIFs")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-embedding", action="store_true", help="targets only (2 models instead of 3)")
    parser.add_argument("--output", default=str(RESULTS / "predict_batch"), help="results path without suffix")
    parser.add_argument("--providers", choices=["auto", "cpu", "cuda"], default="auto",
                        help="ONNX Runtime providers (cuda: fail unless CUDA really runs)")
    parser.add_argument("--batch-size", type=int, default=None, help="crystals per ONNX batch (default: Predictor's)")
    parser.add_argument("--max-pairs", type=int, default=None, help="padded pairs per ONNX batch (default: Predictor's)")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)

    import pandas as pd

    from sitenet.dataset import SAMPLE_PATH
    from sitenet.predict import Prediction, Predictor
    from sitenet.structure import read_structure

    data = Path(args.data or os.environ.get("SITENET_DATA") or SAMPLE_PATH)
    cifs = pd.read_csv(data)["cif"].fillna("").astype(str).tolist()[: args.limit]
    n = len(cifs)
    embedding = not args.no_embedding
    threads = 1 if args.workers > 1 else None
    predictor = Predictor.from_pretrained(threads=threads, providers=args.providers)
    predictor.batch_size = args.batch_size or predictor.batch_size
    predictor.max_pairs = args.max_pairs or predictor.max_pairs
    result: dict = {"command": " ".join(["predict_batch.py", *(argv if argv is not None else sys.argv[1:])]),
                    "data": str(data), "n_cifs": n, "workers": args.workers, "runs": args.runs,
                    "embedding": embedding, "models": {r: f"{m.name}@{m.version}" for r, m in predictor.models.items()},
                    "providers": {r: m.providers for r, m in predictor.models.items()},
                    "batch_size": predictor.batch_size, "max_pairs": predictor.max_pairs,
                    "cpu_count": os.cpu_count(), "machine": platform.platform(), "note": args.note}

    # stages alone, in this process (after a warm-up: lazy imports and caches)
    for c in cifs[:20]:
        predictor.prepare(c)
    t_prep, prepared = _timed(lambda: [predictor.prepare(c) for c in cifs], 1)
    ok = [p for p in prepared if not isinstance(p, Exception)]
    t_core, _ = _timed(lambda: [_core_prepare(read_structure, predictor, c) for c in cifs], 1)
    t_run, _ = _timed(lambda: predictor.run(ok, return_embedding=embedding), 1)
    result["stages_one_process"] = {
        "prepare_fast_cifs_per_s": round(n / t_prep, 1), "prepare_core_reader_cifs_per_s": round(n / t_core, 1),
        "onnx_cifs_per_s": round(len(ok) / t_run, 1), "rejected": n - len(ok)}
    print(json.dumps(result["stages_one_process"]), flush=True)

    # end to end
    t0 = time.perf_counter()
    if args.workers > 1:
        predictor.predict(cifs[: 4 * args.workers], return_embedding=embedding, workers=args.workers)  # start + warm
    result["worker_start_s"] = round(time.perf_counter() - t0, 2)
    t_e2e, out = _timed(lambda: predictor.predict(cifs, return_embedding=embedding, workers=args.workers), args.runs)
    predictor.close()
    result["end_to_end"] = {"seconds_median": round(t_e2e, 3), "cifs_per_s": round(n / t_e2e, 1),
                            "predicted": sum(isinstance(r, Prediction) for r in out)}
    print(json.dumps(result["end_to_end"]), flush=True)

    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    s, e = result["stages_one_process"], result["end_to_end"]
    out_path.with_suffix(".md").write_text(
        f"# Offline batch prediction\n\n`{result['command']}` on {n} CIFs from `{data.name}`, {os.cpu_count()} CPUs "
        f"({result['machine']}); models {', '.join(result['models'].values())}; ONNX Runtime providers "
        f"{sorted({p[0] for p in result['providers'].values()})}, batches of at most {predictor.batch_size} crystals / "
        f"{predictor.max_pairs} padded pairs.\n\n"
        f"| stage | CIFs/s |\n|---|---|\n"
        f"| end to end, {args.workers} worker(s), predictions{' + embeddings' if embedding else ''} "
        f"(median of {args.runs}) | **{e['cifs_per_s']}** |\n"
        f"| prepare (fast reader + validate + featurise + formula), 1 process | {s['prepare_fast_cifs_per_s']} |\n"
        f"| core read_structure + featurise (no formula), 1 process | {s['prepare_core_reader_cifs_per_s']} |\n"
        f"| ONNX models only, 1 process | {s['onnx_cifs_per_s']} |\n\n"
        f"Worker start and warm-up (not timed above): {result['worker_start_s']} s. {args.note}\n")
    print(f"wrote {out_path.with_suffix('.json')} and {out_path.with_suffix('.md')}")
    return 0


def _core_prepare(read_structure, predictor, cif: str):
    from sitenet.errors import SiteNetError
    from sitenet.features import featurize

    try:
        return featurize(read_structure(cif, max_sites=predictor.max_sites), spec=predictor.spec)
    except SiteNetError as err:
        return err


if __name__ == "__main__":
    sys.exit(main())
