"""Which features should the uncertainty fit read? Cross-validated on the validation crystals of a model's own
training run (never the held-out split): for each candidate feature set and fit, 5-fold CV Spearman correlation of
|error| with the fitted spread, and the 95% coverage of the CV intervals (scale fitted in the training folds).

    .venv/bin/python benchmarks/uncertainty_features.py runs/finetune-formation-energy-v3 [more run folders]

Prints a Markdown table per model; nothing is written. What it found chose ``sitenet.neighbours.uncertainty_features`` (composition and the neighbours' training
residuals added).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sitenet.neighbours import EPS, FEATURE_NEIGHBOURS, composition_features, nearest, uncertainty_features  # noqa: E402
from training.uncertainty import coverage_scale  # noqa: E402

def fit_lstsq(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, np.log(np.abs(e) + EPS), rcond=None)
    return coef


def fit_laplace(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Maximum likelihood of |e| ~ Laplace(0, exp(w . x + b)) (convex in w, b)."""
    design = np.hstack([x, np.ones((len(x), 1))])
    a = np.abs(e)

    def nll(w):
        s = design @ w
        return np.mean(s + a * np.exp(-s)), design.T @ (1 - a * np.exp(-s)) / len(a)

    return minimize(nll, fit_lstsq(x, e), jac=True, method="L-BFGS-B").x


def local_errors(embedding: np.ndarray, e: np.ndarray, queries: np.ndarray, k: int = 10,
                 exclude_self: bool = False) -> np.ndarray:
    """(Q,1) log mean |error| of each query's k nearest crystals among (``embedding``, ``e``)."""
    d, p = nearest(embedding.astype(np.float32), queries.astype(np.float32), k + int(exclude_self))
    p = p[:, 1:] if exclude_self else p
    return np.log(np.abs(e)[p].mean(1, keepdims=True) + EPS)


def cross_validate(x: np.ndarray, e: np.ndarray, fit, folds: int = 5, seed: int = 0,
                   embedding: np.ndarray | None = None) -> tuple[float, float]:
    """``embedding`` given: one more feature, the mean |error| of the nearest validation crystals of the training
    folds (leave-one-out within them), as an index of validation residuals would give a new crystal."""
    order = np.random.default_rng(seed).permutation(len(e))
    log_spread = np.zeros(len(e))
    covered = np.zeros(len(e), dtype=bool)
    base = x
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        if embedding is not None:
            x = np.zeros((len(e), base.shape[1] + 1))
            x[:, :-1] = base
            x[train, -1:] = local_errors(embedding[train], e[train], embedding[train], exclude_self=True)
            x[test, -1:] = local_errors(embedding[train], e[train], embedding[test])
        mean, std = x[train].mean(0), x[train].std(0) + 1e-9
        coef = fit((x[train] - mean) / std, e[train])
        design = lambda rows: np.hstack([(x[rows] - mean) / std, np.ones((len(rows), 1))])  # noqa: E731
        scale = coverage_scale(e[train], np.exp(design(train) @ coef))
        log_spread[test] = design(test) @ coef
        covered[test] = np.abs(e[test]) <= 1.959964 * scale * np.exp(log_spread[test])
    return float(spearmanr(np.abs(e), log_spread).statistic), float(covered.mean())


def candidate_sets(base: np.ndarray, prediction: np.ndarray, other: dict[str, np.ndarray],
                   composition: np.ndarray) -> dict[str, np.ndarray]:
    extra_pred = np.stack([prediction, np.abs(prediction)], 1)
    sets = {"served (distances, neighbour labels, sites)": base,
            "+ prediction": np.hstack([base, extra_pred]),
            "+ composition (elements, GGA+U)": np.hstack([base, composition]),
            "+ prediction + composition": np.hstack([base, extra_pred, composition])}
    for name, labels in other.items():
        stats = np.stack([np.nanmean(labels, 1), np.nanstd(labels, 1)], 1)
        sets[f"+ prediction + composition + neighbours' {name}"] = np.nan_to_num(
            np.hstack([base, extra_pred, composition, stats]))
    return sets


def run(folder: Path) -> str:
    import torch

    from sitenet.model import SiteNetRegressor
    from training.configs import DataConfig
    from training.data import load_corpus, make_splits
    from training.uncertainty import predict_rows

    torch.set_num_threads(1)
    model = SiteNetRegressor.from_pretrained(str(folder)).eval()
    record = json.loads((folder / "training.json").read_text())
    data = DataConfig.model_validate(record["config"]["data"])
    corpus = load_corpus(data)
    splits = make_splits(corpus, data, target=model.config.targets)
    train = predict_rows(model, corpus, splits.train, data)
    val = predict_rows(model, corpus, splits.val, data)
    stored = train["embedding"].astype(np.float16).astype(np.float32)
    distances, positions = nearest(stored, val["embedding"], FEATURE_NEIGHBOURS)
    sites = corpus.sizes(splits.val)[:, 0]
    composition = composition_features(corpus.atomic_numbers(splits.val))
    lines = []
    for target in model.config.targets:
        metal = val.get("metal_probability") if model.config.gated(target) else None
        labels = corpus.labels(target)
        e = val[target] - labels[splits.val]
        # the features served before this comparison: distances, neighbour labels, sites (and the metal probability)
        base = uncertainty_features(val[target], distances, labels[splits.train][positions], sites, metal)
        other = {t: corpus.labels(t)[splits.train][positions] for t in corpus.dataset.targets if t != target}
        lines += [f"## {folder.name}: {target} ({len(e)} validation crystals, 5-fold CV)", "",
                  "| features | fit | CV Spearman(|error|, spread) | CV 95% coverage |", "|---|---|---|---|"]
        train_e = train[target] - labels[splits.train]
        residuals = np.log(np.abs(train_e)[positions].mean(1, keepdims=True) + EPS)
        sets = candidate_sets(base, val[target], other, composition)
        sets["+ composition + neighbours' training residuals"] = np.hstack([base, composition, residuals])
        _, wide = nearest(stored, val["embedding"], 20)
        wide_residuals = np.log(np.abs(train_e)[wide].mean(1, keepdims=True) + EPS)
        sets["+ composition + 20 neighbours' training residuals"] = np.hstack([base, composition, wide_residuals])
        sets["+ composition + 5 and 20 neighbours' training residuals"] = np.hstack(
            [base, composition, residuals, wide_residuals])
        for name, x in sets.items():
            for fit_name, fit in (("least squares on log|e|", fit_lstsq), ("Laplace likelihood", fit_laplace)):
                rho, cover = cross_validate(x, e, fit)
                lines.append(f"| {name} | {fit_name} | {rho:.3f} | {100 * cover:.1f}% |")
        for name, x in (("served + nearest validation residuals", base),
                        ("+ composition + nearest validation residuals", np.hstack([base, composition]))):
            rho, cover = cross_validate(x, e, fit_laplace, embedding=val["embedding"])
            lines.append(f"| {name} | Laplace likelihood | {rho:.3f} | {100 * cover:.1f}% |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for folder in args.folders:
        print(run(folder), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
