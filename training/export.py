"""ONNX export of Site-Net encoders and regressors, checked against PyTorch before it is accepted.

Inputs are ``sitenet.batch.INPUT_NAMES`` with dynamic batch (B), query-site (P) and supercell-site (N) axes;
outputs are ``("embedding", "sites")`` for an encoder and ``RegressorConfig.outputs`` for a regressor. The
graph is saved as one self-contained file (no external data) at a pinned opset.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch

from sitenet.batch import INPUT_NAMES, Batch, collate
from sitenet.features import CrystalFeatures
from sitenet.model import SiteNetEncoder, SiteNetRegressor, to_tensors

OPSET = 18
PARITY_ATOL = 1e-4


class _OnnxMish(torch.nn.Module):
    """Mish as x * w / (2 - w) with s = sigmoid(x), w = s * (2 - s): the same function, written with the
    fewest cheap ONNX Runtime CPU kernels.

    tanh(softplus(x)) = ((1 + e^x)^2 - 1) / ((1 + e^x)^2 + 1) and 1 + e^x = 1 / (1 - s), which gives w / (2 - w).
    Nothing overflows (s is in [0, 1], 2 - w in [1, 2]), and it stays within ~2e-6 of float64 Mish over any
    float32 x. A plain ``nn.Mish`` exports to ONNX Softplus, and x * tanh(relu(x) + log(1 + exp(-|x|))) needs
    nine kernels including Log: this form (six kernels, all vectorised) runs the zoo graphs about 30% faster
    on CPU than the latter.
    """

    def forward(self, x):
        s = torch.sigmoid(x)
        w = s * (2.0 - s)
        return x * (w / (2.0 - w))


def _for_export(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with every ``nn.Mish`` replaced by :class:`_OnnxMish` (no parameters change)."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Mish):
                setattr(parent, name, _OnnxMish())
    return module


class _EncoderGraph(torch.nn.Module):
    """The encoder with named outputs for export: embedding (B,E) and local vectors (B,P,L)."""

    def __init__(self, encoder: SiteNetEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, site, species, pair, parent, site_mask, atom_mask):
        out = self.encoder(site, species, pair, parent, site_mask, atom_mask)
        return {"embedding": out.embedding, "sites": out.sites}


def output_names(model: SiteNetEncoder | SiteNetRegressor) -> tuple[str, ...]:
    """ONNX output names of ``model``."""
    return ("embedding", "sites") if isinstance(model, SiteNetEncoder) else model.config.outputs


def example_batch(model: SiteNetEncoder | SiteNetRegressor, *, seed: int = 0) -> Batch:
    """Two random crystals of different sizes (B >= 2, P >= 2, N >= 2 so no axis is specialised to 1)."""
    config = model.config if isinstance(model, SiteNetEncoder) else model.config.encoder
    rng = np.random.default_rng(seed)
    items = []
    for p, images in ((3, 4), (2, 2)):
        n = p * images
        d = rng.uniform(1.5, 6.0, size=(p, n)).astype(np.float32)
        d[np.arange(p), np.arange(p) * images] = 0.0
        items.append(CrystalFeatures(atomic_numbers=rng.integers(1, 95, size=p), distance=d, images=images))
    return collate(items, config.features)


def export_onnx(model: SiteNetEncoder | SiteNetRegressor, path: str | Path, *, opset: int = OPSET) -> Path:
    """Export ``model`` (eval mode) to one ONNX file with dynamic B, P and N axes.

    Uses the TorchScript-based exporter, which torch 2.13 deprecates: it exports in well under a second. The
    dynamo exporter (``dynamo=True`` with ``dynamic_shapes``) was tried on this model: parity 5e-7, but about
    10 s per export on 2 cores, which the tests (dozens of exports) and the CLI would pay every time; we move
    when the legacy exporter goes. Only that deprecation and the tracer's notes are silenced here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    graph = _for_export(_EncoderGraph(model) if isinstance(model, SiteNetEncoder) else model)
    names = output_names(model)
    inputs = tuple(to_tensors(example_batch(model)).values())
    axes = {"site": {0: "B", 1: "P"}, "species": {0: "B", 1: "P"}, "pair": {0: "B", 1: "P", 2: "N"},
            "parent": {0: "B", 1: "N"}, "site_mask": {0: "B", 1: "P"}, "atom_mask": {0: "B", 1: "N"}}
    for name in names:
        axes[name] = {0: "B", 1: "P"} if name == "sites" else {0: "B"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape-specialisation notes of tracing
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning,
                                module="torch.onnx")  # the same deprecation, from inside the legacy exporter
        torch.onnx.export(graph, inputs, str(path), input_names=list(INPUT_NAMES), output_names=list(names),
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path


def parity(model: SiteNetEncoder | SiteNetRegressor, path: str | Path, batches: list[Batch]) -> float:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch over ``batches``; raises on NaN or on a
    difference above ``PARITY_ATOL``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = output_names(model)
    worst = 0.0
    model = model.eval()
    for batch in batches:
        with torch.no_grad():
            out = model(**to_tensors(batch))
        expected = {"embedding": out.embedding, "sites": out.sites} if isinstance(model, SiteNetEncoder) else out
        feed = {i.name: batch.inputs()[i.name] for i in session.get_inputs()}  # unused inputs are pruned
        got = dict(zip(names, session.run(list(names), feed)))
        for name in names:
            a, b = expected[name].numpy(), got[name]
            if not np.all(np.isfinite(b)):
                raise ValueError(f"ONNX output {name!r} has NaN/inf for a batch of shape {batch.pair.shape}")
            worst = max(worst, float(np.abs(a - b).max()) if a.size else 0.0)
    if worst > PARITY_ATOL:
        raise ValueError(f"ONNX and PyTorch differ by {worst:.3g} (> {PARITY_ATOL})")
    return worst
