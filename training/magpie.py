"""The composition-only baseline every structure model here must beat: Magpie features + a random forest.

Magpie element-property statistics (Ward et al., npj Comput. Mater. 2016) are computed by matminer's
``ElementProperty.from_preset("magpie")`` from each crystal's composition (the primitive cell's atoms in the
feature cache, so a user's CSV of CIFs needs no formula column). ``sitenet baseline`` trains scikit-learn
forests on exactly the training labels the zoo's fine-tuning recipes use and scores them on the held-out
split, with the zoo's metrics (band gap: MAE over all crystals and over non-metals, metal / non-metal
accuracy from a forest classifier whose "metal" zeroes the gap, as the zoo's models do).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from training.configs import DataConfig
from training.data import Corpus, load_corpus, make_splits
from training.evaluate import mae_by_size, metrics

log = logging.getLogger(__name__)
CACHE = Path("cache/magpie")


def _compositions(corpus: Corpus, rows: np.ndarray) -> list:
    from pymatgen.core import Composition, Element

    out = []
    for r in rows:
        z, counts = np.unique(corpus.store[int(corpus.store_row[r])].atomic_numbers, return_counts=True)
        out.append(Composition({Element.from_Z(int(a)): int(c) for a, c in zip(z, counts)}))
    return out


def magpie_features(corpus: Corpus, rows: np.ndarray, *, cache: Path | None = CACHE) -> np.ndarray:
    """Magpie features (len(rows), 132) of dataset ``rows``, cached per data set under ``cache``."""
    from matminer import __version__ as matminer_version
    from matminer.featurizers.composition import ElementProperty

    rows = np.asarray(rows)
    key = hashlib.sha256(("|".join(corpus.dataset.ids.astype(str)) + matminer_version).encode()).hexdigest()[:16]
    path = cache / f"{key}.npy" if cache is not None else None
    table = np.load(path) if path is not None and path.exists() else None
    if table is None:
        every = np.flatnonzero(corpus.store_row >= 0)
        featurizer = ElementProperty.from_preset("magpie", impute_nan=True)
        t = time.perf_counter()
        values = np.array([featurizer.featurize(c) for c in _compositions(corpus, every)], dtype=np.float64)
        log.info("Magpie features of %d crystals in %.0f s", len(every), time.perf_counter() - t)
        table = np.full((len(corpus.store_row), values.shape[1]), np.nan)
        table[every] = values
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, table)
    return table[rows]


def evaluate_baseline(data: DataConfig, *, targets: tuple[str, ...] = ("band_gap", "formation_energy"),
                      trees: int = 300, seed: int = 0, jobs: int = 2, corpus: Corpus | None = None) -> dict:
    """Train Magpie + random forest per target on the zoo recipes' training rows and score the held-out rows.

    Returns:
        {target: {"n_train", "n_test", training.evaluate.metrics..., "mae_by_size"}}.
    """
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    corpus = corpus or load_corpus(data)
    out: dict = {}
    for target in targets:
        splits = make_splits(corpus, data, target=target)
        y = corpus.labels(target)
        x_train, x_test = magpie_features(corpus, splits.train), magpie_features(corpus, splits.test)
        y_train, y_test = y[splits.train], y[splits.test]
        t = time.perf_counter()
        forest = RandomForestRegressor(n_estimators=trees, n_jobs=jobs, random_state=seed).fit(x_train, y_train)
        pred = forest.predict(x_test)
        result = {"n_train": int(len(y_train)), "n_test": int(len(y_test)), "trees": trees,
                  "mae_regressor_only": float(np.abs(pred - y_test).mean())}
        if target == "band_gap":
            metal = RandomForestClassifier(n_estimators=trees, n_jobs=jobs, random_state=seed).fit(x_train, y_train <= 0)
            pred = np.where(metal.predict(x_test), 0.0, pred)  # as the zoo's band-gap models: "metal" is exactly 0 eV
        result.update(metrics(target, y_test, pred))
        result["mae_by_size"] = mae_by_size(y_test, pred, corpus.sizes(splits.test)[:, 0])
        result["seconds"] = time.perf_counter() - t
        log.info("%s: Magpie + RF MAE %.4f on %d held-out crystals", target, result["mae"], len(y_test))
        out[target] = result
    return out


def write_results(results: dict, output: str | Path, command: str) -> None:
    """``<output>.json`` and a Markdown table ``<output>.md``."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps({"command": command, "results": results}, indent=2))
    units = {"band_gap": "eV", "formation_energy": "eV/atom"}
    lines = ["# Magpie + random forest: the composition-only baseline", "", f"Command: `{command}`", "",
             "| target | training labels | held-out crystals | MAE | non-metal MAE | metal/non-metal accuracy |",
             "|---|---|---|---|---|---|"]
    for target, r in results.items():
        extra = (f"{r['mae_nonmetal']:.4f} | {100 * r['metal_accuracy']:.1f}%" if "metal_accuracy" in r else "– | –")
        lines.append(f"| {target} | {r['n_train']:,} | {r['n_test']:,} | {r['mae']:.4f} {units.get(target, '')} | "
                     f"{extra} |")
    lines += ["", "MAE by primitive-cell size (sites), held-out crystals:", "",
              "| sites | " + " | ".join(f"{t} (count, MAE)" for t in results) + " |",
              "|---|" + "---|" * len(results)]
    bins = [b["sites"] for b in next(iter(results.values()))["mae_by_size"]]
    for label in bins:
        cells = [next((f"{b['count']:,}, {b['mae']:.4f}" for b in r["mae_by_size"] if b["sites"] == label), "–")
                 for r in results.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
