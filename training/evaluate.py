"""Held-out evaluation of a fine-tuned model: MAE / RMSE / R^2 (band gap also: non-metal MAE and metal
accuracy), a parity plot and a JSON file. Scored rows are the held-out rows whose labels agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sitenet.config import TARGETS
from sitenet.model import SiteNetRegressor
from training.configs import DataConfig
from training.data import Corpus, load_corpus, loader, make_splits
from training.pretrain import INPUTS


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R^2 of (M,) labels and predictions."""
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "r2": float(1.0 - (err ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan"), "count": int(len(y))}


def band_gap_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Regression metrics on all rows, MAE on the true non-metals, and metal / non-metal accuracy."""
    out = regression_metrics(y, pred)
    nonmetal = y > 0
    out["mae_nonmetal"] = float(np.abs(pred[nonmetal] - y[nonmetal]).mean()) if nonmetal.any() else float("nan")
    out["metal_accuracy"] = float(np.mean((pred <= 0) == (y <= 0)))
    out["metal_fraction"] = float(np.mean(y <= 0))
    return out


def metrics(target: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The metric set of ``target``."""
    return band_gap_metrics(y, pred) if target == "band_gap" else regression_metrics(y, pred)


#: Upper edges of the primitive-cell size bins of ``mae_by_size`` (sites).
SIZE_BINS = (2, 4, 8, 16, 32, 64, 10**9)


def mae_by_size(y: np.ndarray, pred: np.ndarray, sites: np.ndarray) -> list[dict]:
    """MAE per bin of primitive-cell site count: [{"sites": "3-4", "count", "mae"}, ...] (empty bins left out)."""
    out, low = [], 1
    for high in SIZE_BINS:
        inside = (sites >= low) & (sites <= high)
        if inside.any():
            label = f"{low}-{high}" if high < 10**9 else f"{low}+"
            out.append({"sites": label, "count": int(inside.sum()), "mae": float(np.abs(pred - y)[inside].mean())})
        low = high + 1
    return out


@torch.no_grad()
def predict(model: SiteNetRegressor, corpus: Corpus, rows: np.ndarray, cfg: DataConfig, target: str) -> np.ndarray:
    """Predictions (len(rows),) of ``model``'s ``target``, in the order of ``rows``."""
    model.eval()
    out = np.zeros(len(rows))
    position = {int(r): k for k, r in enumerate(rows)}
    for batch in loader(corpus, rows, cfg):
        value = model(**{k: batch[k] for k in INPUTS})[target]  # (B,)
        out[[position[int(r)] for r in batch["row"]]] = value.numpy()
    return out


def predict_onnx(folder: Path, corpus: Corpus, rows: np.ndarray, target: str) -> np.ndarray:
    """Predictions (len(rows),) of ``target`` by the folder's shipped ``model.onnx``, from each row's CIF text
    through :class:`sitenet.predict.Predictor` (the service's path: parse, validate, featurise, ONNX Runtime);
    NaN where it rejects a crystal."""
    from sitenet.predict import Prediction, Predictor

    with Predictor.from_pretrained(None, None, None, models=[folder], providers="cpu") as predictor:
        results = predictor.predict([corpus.dataset.cifs[int(r)] for r in rows], targets=[target])

    def value(result: Any) -> float:
        if not isinstance(result, Prediction):
            return np.nan
        v = getattr(result, target) if target in TARGETS else result.properties.get(target)
        return np.nan if v is None else float(v)

    return np.array([value(r) for r in results], dtype=np.float64)


def parity_plot(y: np.ndarray, pred: np.ndarray, path: Path, *, title: str, unit: str) -> None:
    """Predicted vs true scatter with the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, pred, s=4, alpha=0.4)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"true ({unit})")
    ax.set_ylabel(f"predicted ({unit})")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(model_dir: str | Path, output: str | Path, *, data: DataConfig = DataConfig(),
             corpus: Corpus | None = None, target: str | None = None) -> dict:
    """Score one target of a SiteNetRegressor folder on the held-out split; writes ``<output>.json`` and
    ``<output>.png``. A folder with ``model.onnx`` (an exported or zoo model) is scored through the ONNX graph
    and the service's CIF path, what users run; a training run folder through the PyTorch model.

    Args:
        target: which of the model's targets (None: its only one).

    Returns:
        The JSON content: model, target, unit, number of rows, metrics.

    Raises:
        ValueError: ``target`` is not one of the model's, or None for a multi-task model.
    """
    model = SiteNetRegressor.from_pretrained(str(model_dir))
    targets = model.config.targets
    if target is None and len(targets) == 1:
        target = targets[0]
    if target not in targets:
        raise ValueError(f"{model_dir} predicts {list(targets)}; choose one of them as target, got {target!r}")
    corpus = corpus or load_corpus(data)
    rows = make_splits(corpus, data, target=target).test
    y = corpus.labels(target)[rows]
    # what ships, where it ships: a folder with model.onnx is scored through the service's own path
    engine = "onnx" if (Path(model_dir) / "model.onnx").is_file() else "torch"
    if engine == "onnx":
        pred = predict_onnx(Path(model_dir), corpus, rows, target)
        rejected = ~np.isfinite(pred)
        rows, y, pred = rows[~rejected], y[~rejected], pred[~rejected]
    else:
        pred, rejected = predict(model, corpus, rows, data, target), np.zeros(0, dtype=bool)
    unit = model.config.units[target]
    result = {"model": str(model_dir), "target": target, "unit": unit, "engine": engine,
              "rejected": int(rejected.sum()), "split": "held-out (labels_agree)",
              "metrics": metrics(target, y, pred), "mae_by_size": mae_by_size(y, pred, corpus.sizes(rows)[:, 0])}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    m = result["metrics"]
    parity_plot(y, pred, output.with_suffix(".png"), unit=unit,
                title=f"{target}: MAE {m['mae']:.3f} {unit}, R² {m['r2']:.3f} (n={m['count']})")
    return result
