"""``sitenet evaluate`` scores what ships: an exported folder through its ONNX graph and the service's CIF path,
a training run folder through PyTorch, and both give the same numbers for the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "mp2018-sample" / "mp2018_sample.csv.gz"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a run folder: config + safetensors, the same model exported with model.onnx)."""
    import torch

    from sitenet.config import RegressorConfig
    from sitenet.model import SiteNetEncoder, SiteNetRegressor
    from tiny_zoo import tiny_encoder_config, write_model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("evaluate")
    config = RegressorConfig(encoder=tiny_encoder_config(), targets=("band_gap", "formation_energy"), head_hidden=(16,))
    model = SiteNetRegressor.from_encoder(SiteNetEncoder(config.encoder), config).eval()
    model.save_pretrained(root / "run")
    write_model(root / "exported", model)
    return root / "run", root / "exported"


@pytest.mark.parametrize("target", ["band_gap", "formation_energy"])
def test_onnx_and_torch_paths_score_alike(folders: tuple[Path, Path], target: str, tmp_path: Path) -> None:
    from training.configs import DataConfig
    from training.data import load_corpus
    from training.evaluate import evaluate

    data = DataConfig(path=str(SAMPLE), cache_root=str(tmp_path / "cache"), workers=1)
    corpus = load_corpus(data)
    run, exported = folders
    torch_result = evaluate(run, tmp_path / "torch", data=data, corpus=corpus, target=target)
    onnx_result = evaluate(exported, tmp_path / "onnx", data=data, corpus=corpus, target=target)
    assert torch_result["engine"] == "torch" and onnx_result["engine"] == "onnx"
    assert onnx_result["rejected"] == 0 and onnx_result["metrics"]["count"] == torch_result["metrics"]["count"] > 10
    assert onnx_result["metrics"]["mae"] == pytest.approx(torch_result["metrics"]["mae"], rel=1e-4)
    assert json.loads((tmp_path / "onnx.json").read_text())["unit"] == {"band_gap": "eV",
                                                                         "formation_energy": "eV/atom"}[target]
    assert (tmp_path / "onnx.png").is_file()
