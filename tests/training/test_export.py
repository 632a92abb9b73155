"""The ONNX export's rewrites: its Mish is torch's Mish in float32, and the graph keeps the cheap CPU kernels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sitenet.config import RegressorConfig, dim_config
from sitenet.model import SiteNetEncoder, SiteNetRegressor
from training.export import _OnnxMish, export_onnx

#: Every region of Mish: deep negative (underflow), the bend, large positive (identity), float32 extremes.
POINTS = [-3e38, -1e4, -1000.0, -100.0, -88.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 88.0, 100.0, 1e4, 3e38]


def _wide_range() -> torch.Tensor:
    return torch.cat([torch.linspace(-120.0, 120.0, 240_001), torch.tensor(POINTS)]).float()


def _assert_close_to_mish(got: np.ndarray, x: torch.Tensor) -> None:
    want = torch.nn.functional.mish(x.double()).numpy()  # float64 reference
    assert np.all(np.isfinite(got[np.isfinite(want)])), "NaN/inf where Mish is finite"
    # float32 torch Mish itself is 1e-6 off the float64 reference; allow a few float32 ulps relative.
    err = np.abs(got.astype(np.float64) - want) / np.maximum(1.0, np.abs(want))
    assert err.max() <= 3e-6, f"max relative error {err.max():.3g} at x = {x[int(err.argmax())].item():.6g}"
    torch32 = torch.nn.functional.mish(x).numpy()
    for point in (-100.0, -20.0, 0.0, 20.0, 100.0):
        k = POINTS.index(point) + x.numel() - len(POINTS)
        np.testing.assert_allclose(got[k], torch32[k], atol=1e-6 * max(1.0, abs(point)), rtol=0, err_msg=f"x = {point}")


def test_export_mish_equals_torch_mish_in_pytorch() -> None:
    x = _wide_range()
    with torch.no_grad():
        _assert_close_to_mish(_OnnxMish()(x).numpy(), x)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
def test_export_mish_equals_torch_mish_in_onnx_runtime(tmp_path: Path) -> None:
    x = _wide_range()
    path = tmp_path / "mish.onnx"
    torch.onnx.export(_OnnxMish(), (x,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}}, opset_version=18, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _assert_close_to_mish(session.run(None, {"x": x.numpy()})[0], x)


def test_exported_graph_has_no_slow_kernels(tmp_path: Path) -> None:
    """Softplus and Log (slow scalar kernels on CPU) and Split (a full copy of the pair tensor) once cost
    most of the inference time; each must stay out of the zoo architecture's graph."""
    torch.manual_seed(0)
    encoder = SiteNetEncoder(dim_config())
    # A second block exercises the pair update, the third first layer of the bond features.
    two_blocks = SiteNetEncoder(dim_config().model_copy(update={"blocks": 2}))
    regressor = SiteNetRegressor.from_encoder(encoder, RegressorConfig(encoder=encoder.config, target="band_gap"))
    for name, model in {"encoder": encoder, "two_blocks": two_blocks, "regressor": regressor}.items():
        ops = Counter(n.op_type for n in onnx.load(str(export_onnx(model, tmp_path / f"{name}.onnx"))).graph.node)
        assert not {"Softplus", "Log", "Tanh", "Split", "Mish"} & set(ops), (name, ops)
        assert ops["Sigmoid"] >= 4, (name, ops)  # the Mish rewrite is really in the graph


@pytest.mark.parametrize("activation", ["mish", "silu"])
def test_export_matches_pytorch_for_either_activation(tmp_path: Path, sample_store, activation) -> None:
    """Inference keeps matching the exported ONNX to 1e-4 whatever activation a model was trained with,
    on real crystals (N = 1 and heavy padding included)."""
    from sitenet.batch import collate
    from training.export import parity

    torch.manual_seed(0)
    encoder = SiteNetEncoder(dim_config(activation=activation))
    regressor = SiteNetRegressor.from_encoder(encoder, RegressorConfig(encoder=encoder.config, target="band_gap"))
    sizes = sample_store.sizes[:, 0] * sample_store.sizes[:, 1]
    order = np.argsort(sizes, kind="stable")
    batches = [collate([sample_store[int(k)] for k in group], sample_store.spec)
               for group in ([order[0]], order[:8], [order[0], order[-1]])]  # smallest alone, a few, 1 + the largest
    for name, model in {"encoder": encoder, "regressor": regressor}.items():
        path = export_onnx(model, tmp_path / f"{name}.onnx")
        assert parity(model, path, batches) <= 1e-4
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert not {"Softplus", "Log", "Tanh", "Split", "Mish"} & ops, ops
