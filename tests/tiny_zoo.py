"""A tiny but real model zoo for the inference and service tests (built once per test session).

Folders named like the zoo's models (encoder, band-gap and formation-energy regressors, and a multi-task
regressor of both, sharing one FeatureSpec), each with config.json, model.safetensors, model.onnx (exported by ``training.export``),
README.md and manifest.json. Small widths keep ONNX runs fast; the embedding keeps its 64 dimensions.
Use ``from tiny_zoo import tiny_zoo`` in a test module to get the fixture (a zoo directory for
``SITENET_ZOO_DIR``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ENCODER, BAND_GAP, FORMATION_ENERGY = ("sitenet-dim-mp2018", "sitenet-dim-mp2018-band-gap",
                                       "sitenet-dim-mp2018-formation-energy")
MULTITASK = "sitenet-dim-mp2018-band-gap-formation-energy"


def tiny_encoder_config(**features: object):
    from sitenet.config import SiteNetConfig
    from sitenet.features import FeatureSpec

    return SiteNetConfig(features=FeatureSpec(**features), head_width=16, pair_width=16, attention_hidden=(16,),
                         value_hidden=(16,), local_dim=8, pre_pool=(16,), post_pool=(16,), embedding_dim=64)


def write_model(folder: Path, model) -> Path:
    """save_pretrained + ONNX export + README + manifest, as a zoo folder."""
    from sitenet.hub import write_manifest
    from training.export import export_onnx

    model.save_pretrained(folder)
    export_onnx(model, folder / "model.onnx")
    (folder / "README.md").write_text(f"# {folder.name}\n\nTest model (random weights).\n")
    write_manifest(folder)
    return folder


def build_tiny_zoo(root: Path, *, seed: int = 0) -> Path:
    import torch

    from sitenet.config import RegressorConfig
    from sitenet.model import SiteNetEncoder, SiteNetRegressor

    torch.manual_seed(seed)
    encoder = SiteNetEncoder(tiny_encoder_config()).eval()
    write_model(root / ENCODER, encoder)
    for name, targets in ((BAND_GAP, ("band_gap",)), (FORMATION_ENERGY, ("formation_energy",)),
                          (MULTITASK, ("band_gap", "formation_energy"))):
        config = RegressorConfig(encoder=encoder.config, targets=targets, head_hidden=(16,))
        write_model(root / name, SiteNetRegressor.from_encoder(encoder, config).eval())
    return root


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zoo directory holding the tiny models under the zoo's names."""
    return build_tiny_zoo(tmp_path_factory.mktemp("tiny_zoo"))
