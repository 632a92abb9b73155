"""sitenet.runtime: provider choice, the providers really in use, and running a zoo folder's ONNX graph."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sitenet import runtime
from sitenet.batch import collate
from sitenet.errors import ModelLoadError
from sitenet.features import featurize
from sitenet.runtime import CPU, CUDA, OnnxModel, ProviderUnavailableError, pick_providers
from tiny_zoo import BAND_GAP, ENCODER, tiny_zoo  # noqa: F401 (fixture)


@pytest.fixture()
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the GPU build of onnxruntime is installed and NVML sees one GPU."""
    import onnxruntime

    monkeypatch.setattr(runtime, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])


def test_cpu_is_always_cpu_and_auto_is_cpu_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_providers("cpu") == [CPU]
    monkeypatch.setattr(runtime, "cuda_device_count", lambda: 0)
    assert pick_providers("auto") == [CPU]


def test_auto_asks_for_cuda_first_when_a_gpu_is_usable(fake_gpu: None) -> None:
    providers = pick_providers("auto")
    assert providers[0][0] == CUDA and providers[-1] == CPU
    assert pick_providers("cpu") == [CPU]


def test_cuda_requested_on_the_cpu_build_names_the_gpu_extra() -> None:
    import onnxruntime

    if CUDA in onnxruntime.get_available_providers():
        pytest.skip("the GPU build of onnxruntime is installed here")
    with pytest.raises(ProviderUnavailableError, match=r"sitenet-dim\[gpu\]"):
        pick_providers("cuda")


def test_cuda_requested_without_a_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(runtime, "cuda_device_count", lambda: 0)
    with pytest.raises(ProviderUnavailableError, match="NVML sees no NVIDIA GPU"):
        pick_providers("cuda")


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="auto"):
        pick_providers("gpu")  # type: ignore[arg-type]


def test_nvml_count_is_zero_without_a_driver() -> None:
    assert runtime.cuda_device_count() >= 0


def test_session_reports_cpu_and_feeds_only_graph_inputs(tiny_zoo: Path, sample_structures) -> None:
    model = OnnxModel(tiny_zoo / BAND_GAP, providers="cpu")
    assert model.providers == [CPU]
    assert "species" not in model.input_names  # pruned by the export
    assert model.output_names == ("band_gap", "metal_probability", "embedding")
    assert model.config["model_type"] == "sitenet-regressor" and len(model.sha256) == 64
    batch = collate([featurize(s) for s in sample_structures[:4]], model_spec(model))
    out = model.run(batch)
    assert out["embedding"].shape == (4, 64) and out["band_gap"].shape == (4,)
    assert model.run(batch, outputs=["band_gap"]).keys() == {"band_gap"}
    info = model.info()
    assert info["providers"] == [CPU] and info["version"] == model.sha256[:12]


def model_spec(model: OnnxModel):
    from sitenet.config import RegressorConfig

    return RegressorConfig.model_validate(model.config).encoder.features


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available:UserWarning")
def test_silent_cuda_fallback_is_reported(tiny_zoo: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """ORT falls back to CPU without an exception when CUDA cannot start: read back, warn (auto) or fail (cuda)."""
    monkeypatch.setattr(runtime, "pick_providers", lambda want: [(CUDA, {"device_id": 0}), CPU])
    with caplog.at_level(logging.WARNING, logger="sitenet.runtime"):
        model = OnnxModel(tiny_zoo / ENCODER, providers="auto")
    assert model.providers == [CPU]
    assert "fell back" in caplog.text
    with pytest.raises(ProviderUnavailableError, match="fell back"):
        OnnxModel(tiny_zoo / ENCODER, providers="cuda")


def test_metadata_only_model_has_no_session(tiny_zoo: Path) -> None:
    model = OnnxModel(tiny_zoo / ENCODER, load=False)
    assert model.session is None and model.providers == []
    assert model.output_names == ("embedding", "sites")
    with pytest.raises(RuntimeError, match="load=False"):
        model.run({})


def test_broken_folders_raise_model_load_error(tmp_path: Path, tiny_zoo: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json"):
        OnnxModel(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_zoo / ENCODER / "config.json").read_text())
    (bad / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxModel(bad, providers="cpu")


def test_missing_runtime_names_both_extras(tiny_zoo: Path) -> None:
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from sitenet.runtime import OnnxModel\n"
            f"OnnxModel({str(tiny_zoo / ENCODER)!r})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "sitenet-dim[cpu]" in result.stderr and "sitenet-dim[gpu]" in result.stderr


def test_run_matches_a_plain_session(tiny_zoo: Path, sample_structures) -> None:
    import onnxruntime

    model = OnnxModel(tiny_zoo / BAND_GAP, providers="cpu")
    batch = collate([featurize(s) for s in sample_structures[:6]], model_spec(model))
    plain = onnxruntime.InferenceSession(str(tiny_zoo / BAND_GAP / "model.onnx"), providers=[CPU])
    feed = {i.name: batch.inputs()[i.name] for i in plain.get_inputs()}
    expected = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, feed)))
    got = model.run(batch)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)
