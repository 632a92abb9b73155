"""Is the label-masking study's fine-tuning protocol trained to convergence, for every init alike?

    .venv/bin/python benchmarks/study_protocol.py            # writes benchmarks/results/study_protocol.{json,md}

The study fine-tunes every init on all N labels for a fixed cosine schedule (``epochs(cfg, N)``: 150 epochs, at
least 600 steps) and scores the last epoch. Here the same draws (seed 0) train at 0.5x, 1x and 2x that schedule,
from the DIM encoder and from random init, and are scored on 1,000 labelled crystals of the training pool that the
draw did not take (never the held-out split): if 2x buys little over 1x for both inits, the protocol compares
converged models, and neither init is favoured by the budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "training" / "recipes" / "study.yaml"))
    parser.add_argument("--targets", nargs="+", default=["formation_energy"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[100, 1000])
    parser.add_argument("--factors", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    parser.add_argument("--probe", type=int, default=1000, help="pool crystals outside the draw to score on")
    parser.add_argument("--output", default=str(RESULTS / "study_protocol"))
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from sitenet.model import SiteNetRegressor
    from training.configs import StudyConfig, load_recipe
    from training.data import load_corpus, make_splits
    from training.evaluate import metrics, predict
    from training.finetune import finetune, load_encoder
    from training.study import epochs, transfer_config

    cfg = load_recipe(args.recipe, [], kind=StudyConfig)
    corpus = load_corpus(cfg.data)
    dim_config = load_encoder(cfg.encoder_dim).config
    plan = [(t, n, f, init) for t in args.targets for n in args.budgets for f in args.factors
            for init in ("dim", "random")]
    out, start = {"recipe": args.recipe, "runs": []}, time.monotonic()
    for target, n, factor, init in tqdm(plan, desc="protocol check", unit="run"):
        draw = make_splits(corpus, cfg.data, target=target, n_labels=n, seed=0)
        pool = make_splits(corpus, cfg.data, target=target)
        rest = np.setdiff1d(np.concatenate([pool.train, pool.val]), np.concatenate([draw.train, draw.val]))
        probe = np.sort(np.random.default_rng(1).choice(rest, min(args.probe, len(rest)), replace=False))
        n_epochs = max(1, round(factor * epochs(cfg, n)))
        fcfg = transfer_config(cfg, target, cfg.encoder_dim if init == "dim" else "random", dim_config, n, 0,
                               str(REPO / "runs" / "study-protocol" / f"{target}-{init}-{n}-{n_epochs}"), n_epochs)
        model = SiteNetRegressor.from_pretrained(str(finetune(fcfg, corpus=corpus, loggers=False)))
        y = corpus.labels(target)[probe]
        m = metrics(target, y, predict(model, corpus, probe, cfg.data, target))
        out["runs"].append({"target": target, "n_labels": n, "factor": factor, "epochs": n_epochs, "init": init,
                            "probe_crystals": int(len(probe)), **m})
        out["elapsed_seconds"] = time.monotonic() - start
        Path(args.output).with_suffix(".json").write_text(json.dumps(out, indent=2))
    lines = ["# Study protocol: MAE on pool crystals outside the draw (seed 0) at 0.5x / 1x / 2x the schedule", "",
             f"`python benchmarks/study_protocol.py` ({out['elapsed_seconds'] / 60:.0f} min); 1x is the study's "
             "schedule. Never the held-out split.", "",
             "| target | N | init | " + " | ".join(f"{f:g}x" for f in args.factors) + " | 2x vs 1x |",
             "|---|---|---|" + "---|" * len(args.factors) + "---|"]
    for target in args.targets:
        for n in args.budgets:
            for init in ("dim", "random"):
                row = {r["factor"]: r for r in out["runs"] if (r["target"], r["n_labels"], r["init"]) == (target, n, init)}
                cells = [f"{row[f]['mae']:.4f} ({row[f]['epochs']} ep)" if f in row else "–" for f in args.factors]
                gain = (f"{100 * (row[2.0]['mae'] / row[1.0]['mae'] - 1):+.1f}%" if 1.0 in row and 2.0 in row else "–")
                lines.append(f"| {target} | {n} | {init} | " + " | ".join(cells) + f" | {gain} |")
    Path(args.output).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
