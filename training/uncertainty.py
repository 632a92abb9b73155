"""How far to trust a prediction: a calibrated standard deviation per target and the nearest known crystals,
both from an index of the training crystals' embeddings (``sitenet.neighbours``) added to a model folder.

``add_uncertainty`` embeds the model's training crystals with its own (fine-tuned) encoder, writes them as
``neighbours.safetensors`` + ``neighbours.json`` with their ids, formulas and labels, and fits on the
validation crystals, per target, ``log |error| ~ w . f + b`` on the features of
``sitenet.neighbours.uncertainty_features`` (neighbours' distances, labels and training residuals; composition);
a scale then makes the nominal 95% interval cover 95% of the
validation crystals. Nothing the model predicts changes.

Why not an ensemble of heads on the frozen encoder: in a trial on the validation crystals of the v2
formation-energy model (its code was not kept), 8 bootstrap heads' spread had Spearman 0.17 with |error|,
against 0.37 for the distance between the prediction and the nearest training crystal's label alone.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sitenet.config import RegressorConfig
from sitenet.model import SiteNetRegressor
from sitenet.neighbours import EPS, Z95, uncertainty_features
from training.configs import DataConfig
from training.data import Corpus, load_corpus, make_splits

log = logging.getLogger(__name__)


def coverage_scale(errors: np.ndarray, spread: np.ndarray, level: float = 0.95) -> float:
    """The factor s for which ``|error| <= z * s * spread`` holds on a ``level`` share of the rows (z: the normal
    quantile of ``level``); rows with no spread and no error are covered at any s."""
    z = {0.95: Z95, 0.68: 1.0}[level]
    ratio = np.abs(errors) / np.maximum(spread, 1e-12)
    ratio[(np.abs(errors) < 1e-9)] = 0.0
    return float(max(np.quantile(ratio, level) / z, 1e-6))


def fit_uncertainty(prediction: np.ndarray, labels: np.ndarray, distances: np.ndarray, neighbour_labels: np.ndarray,
                    sites: np.ndarray, metal_probability: np.ndarray | None = None, *,
                    atomic_numbers: Sequence[np.ndarray] | None = None,
                    neighbour_residuals: np.ndarray | None = None) -> dict[str, object]:
    """Least-squares fit of log |error| on the uncertainty features, and the 95% coverage scale (all (B,) /
    (B,k) arrays of validation crystals; ``atomic_numbers``: their site Z)."""
    features = uncertainty_features(prediction, distances, neighbour_labels, sites, metal_probability,
                                    atomic_numbers=atomic_numbers, residuals=neighbour_residuals)
    target = np.log(np.abs(prediction - labels) + EPS)
    design = np.hstack([features, np.ones((len(features), 1))])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    weights, bias = coef[:-1], float(coef[-1])
    spread = np.exp(features @ weights + bias)
    return {"weights": [float(w) for w in weights], "bias": bias, "gated": metal_probability is not None,
            "composition": atomic_numbers is not None, "residuals": neighbour_residuals is not None,
            "scale": coverage_scale(prediction - labels, spread), "validation_crystals": int(len(labels))}


def predict_rows(model: SiteNetRegressor, corpus: Corpus, rows: np.ndarray, data: DataConfig) -> dict[str, np.ndarray]:
    """Every output of ``model`` (float32 eval) on dataset ``rows``, in row order."""
    from training.data import loader
    from training.evaluate import INPUTS

    position = {int(r): k for k, r in enumerate(rows)}
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for batch in loader(corpus, rows, data):
            at = [position[int(r)] for r in batch["row"]]
            for name, value in model(**{k: batch[k] for k in INPUTS}).items():
                array = value.float().numpy()
                out.setdefault(name, np.zeros((len(rows), *array.shape[1:]), dtype=np.float32))[at] = array
    return out


def write_uncertainty(output: Path, config: RegressorConfig, train: dict[str, np.ndarray], val: dict[str, np.ndarray],
                      *, train_labels: dict[str, np.ndarray], val_labels: dict[str, np.ndarray], val_sites: np.ndarray,
                      val_atomic_numbers: Sequence[np.ndarray], ids: list[str],
                      formulas: list[str]) -> dict[str, dict[str, object]]:
    """Fit each of ``config``'s targets' uncertainty on the validation crystals' outputs (``val``: output name ->
    (V,...) arrays) and write the index of the training crystals' (``train``) embeddings, their residuals and the
    fits into ``output``. ``train_labels``: (M,) by target, every label to show beside a neighbour. Returns the
    fits."""
    from sitenet.neighbours import FEATURE_NEIGHBOURS, nearest, write_index

    # the fit reads each validation crystal's neighbours among the training crystals, as a new crystal's are read
    stored = train["embedding"].astype(np.float16).astype(np.float32)  # as the index stores them
    distances, positions = nearest(stored, val["embedding"], FEATURE_NEIGHBOURS)
    residuals = {t: np.abs(train[t] - train_labels[t]) for t in config.targets}  # in-sample: where the model fits badly
    fits = {}
    for target in config.targets:
        metal = val.get("metal_probability") if config.gated(target) else None
        fits[target] = fit_uncertainty(val[target], val_labels[target], distances, train_labels[target][positions],
                                       val_sites, metal, atomic_numbers=val_atomic_numbers,
                                       neighbour_residuals=residuals[target][positions])
    write_index(output, train["embedding"], ids=ids, formulas=formulas, labels=train_labels,
                reference=val["embedding"], uncertainty=fits, residuals=residuals)
    return fits


def add_uncertainty(source: str | Path, output: str | Path | None = None, *, data: DataConfig | None = None,
                    corpus: Corpus | None = None) -> Path:
    """Add the nearest-crystal index and the uncertainty fits to a fine-tuned model folder (``output``: a copy;
    default ``source`` itself). Uses the training run's own data split (``training.json``).

    Returns:
        The folder; ``uncertainty.json`` beside the index records what was fitted and measured on validation.
    """
    source = Path(source)
    output = Path(output) if output is not None else source
    if output != source:
        shutil.copytree(source, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints", "logs", "tb"))
    model = SiteNetRegressor.from_pretrained(str(source)).eval()
    record = json.loads((source / "training.json").read_text(encoding="utf-8"))
    data = data or DataConfig.model_validate(record["config"]["data"])
    corpus = corpus or load_corpus(data)
    targets = model.config.targets
    splits = make_splits(corpus, data, target=targets)
    log.info("embedding %d training and %d validation crystals", len(splits.train), len(splits.val))
    train = predict_rows(model, corpus, splits.train, data)
    val = predict_rows(model, corpus, splits.val, data)
    # every label the data set has, not only the model's targets: a neighbour's other properties inform too
    labels = {t: corpus.labels(t)[splits.train] for t in dict.fromkeys((*targets, *corpus.dataset.targets))}
    fits = write_uncertainty(output, model.config, train, val, train_labels=labels,
                             val_labels={t: corpus.labels(t)[splits.val] for t in targets},
                             val_sites=corpus.sizes(splits.val)[:, 0],
                             val_atomic_numbers=corpus.atomic_numbers(splits.val),
                             ids=[str(i) for i in corpus.dataset.ids[splits.train]],
                             formulas=[_formula(corpus, r) for r in splits.train])
    for target, fit in fits.items():
        log.info("%s uncertainty: %s", target, fit)
    (output / "uncertainty.json").write_text(json.dumps({"source": str(source), "fits": fits}, indent=2) + "\n")
    return output


def _formula(corpus: Corpus, row: int) -> str:
    formulas = corpus.dataset.extra.get("formula")
    if formulas is not None:
        return str(formulas[row])
    from sitenet.structure import read_crystal

    return read_crystal(corpus.dataset.cifs[row]).formula


def calibration(folder: str | Path, corpus: Corpus, rows: np.ndarray,
                data: DataConfig) -> dict[str, dict[str, object]]:
    """How well ``folder``'s uncertainty and in-domain score track its errors on dataset ``rows``, per target:
    MAE, Spearman correlation of |error| with the predicted std and with the in-domain score, coverage of the
    nominal 68% / 95% intervals, and MAE by decile of the in-domain score (decile 1: least in-domain). To score
    other labels (another data set's columns), call :func:`predict_with_uncertainty` and
    :func:`calibration_report`."""
    scored = predict_with_uncertainty(folder, corpus, rows, data)
    return {target: calibration_report(scored[target], scored[f"{target}_std"], scored["in_domain"],
                                       corpus.labels(target)[rows]) for target in scored["targets"]}


def predict_with_uncertainty(folder: str | Path, corpus: Corpus, rows: np.ndarray,
                             data: DataConfig) -> dict[str, object]:
    """``folder``'s predictions (B,) and stds (B,) of each of its ``targets`` (keys ``<target>``,
    ``<target>_std``) on dataset ``rows``, and their in-domain scores (B,): what :func:`calibration_report`
    scores against any labels."""
    from sitenet.neighbours import FEATURE_NEIGHBOURS, NeighbourIndex

    model = SiteNetRegressor.from_pretrained(str(folder)).eval()
    index = NeighbourIndex(folder)
    values = predict_rows(model, corpus, rows, data)
    distances, positions = index.search(values["embedding"], FEATURE_NEIGHBOURS)
    sites, atomic_numbers = corpus.sizes(rows)[:, 0], corpus.atomic_numbers(rows)
    out: dict[str, object] = {"targets": list(model.config.targets), "in_domain": index.in_domain(distances[:, 0])}
    for target in model.config.targets:
        out[target] = values[target]
        out[f"{target}_std"] = index.std(target, values[target], distances, positions, sites,
                                         values.get("metal_probability"), atomic_numbers=atomic_numbers)
    return out


def calibration_report(prediction: np.ndarray, std: np.ndarray, in_domain: np.ndarray,
                       y: np.ndarray) -> dict[str, object]:
    """The :func:`calibration` report of predictions (B,) with stds and in-domain scores against labels ``y``
    (B,; NaN rows are not scored)."""
    from scipy.stats import spearmanr

    ok = np.isfinite(y)
    error, std, score = np.abs(prediction - y)[ok], std[ok], in_domain[ok]
    decile = np.minimum(np.argsort(np.argsort(score, kind="stable"), kind="stable") * 10 // len(score), 9)
    return {
        "count": int(ok.sum()), "mae": float(error.mean()),
        "spearman_abs_error_std": float(spearmanr(error, std).statistic),
        "spearman_abs_error_out_of_domain": float(spearmanr(error, -score).statistic),
        "coverage_68": float(np.mean(error <= std)), "coverage_95": float(np.mean(error <= Z95 * std)),
        "mae_by_in_domain_decile": [float(error[decile == d].mean()) for d in range(10)],
        "median_in_domain": float(np.median(score)),
    }
