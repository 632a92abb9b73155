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
    from sitenet.hub import write_manifest
    from sitenet.model import SiteNetEncoder, SiteNetRegressor

    torch.manual_seed(seed)
    encoder = SiteNetEncoder(tiny_encoder_config()).eval()
    write_model(root / ENCODER, encoder)
    for name, targets in ((BAND_GAP, ("band_gap",)), (FORMATION_ENERGY, ("formation_energy",)),
                          (MULTITASK, ("band_gap", "formation_energy"))):
        config = RegressorConfig(encoder=encoder.config, targets=targets, head_hidden=(16,))
        model = SiteNetRegressor.from_encoder(encoder, config).eval()
        write_model(root / name, model)
        write_tiny_index(root / name, model)
        write_manifest(root / name)  # the index files are part of the model folder
    return root


def write_tiny_index(folder: Path, model, *, n_index: int = 48, n_reference: int = 24) -> None:
    """The nearest-crystal index and uncertainty fits of ``model`` (as ``sitenet uncertainty`` writes them), on
    real MP crystals of the committed sample: the first ``n_index`` indexed, the next ``n_reference`` fitted on."""
    import numpy as np
    import torch

    from sitenet.batch import collate
    from sitenet.dataset import SAMPLE_PATH, read_dataset
    from sitenet.features import featurize
    from sitenet.structure import read_crystal
    from training.uncertainty import write_uncertainty

    data = read_dataset(SAMPLE_PATH).subset(np.arange(n_index + n_reference))
    crystals = [read_crystal(c) for c in data.cifs]
    spec = model.config.encoder.features
    features = [featurize(c, spec=spec) for c in crystals]
    batch = collate(features, spec)
    with torch.no_grad():
        out = {k: v.numpy() for k, v in model(**{k: torch.as_tensor(v) for k, v in batch.inputs().items()}).items()}
    index, reference = slice(0, n_index), slice(n_index, None)
    labels = {t: np.asarray(v, dtype=np.float64) for t, v in data.targets.items()}
    write_uncertainty(folder, model.config, {k: v[index] for k, v in out.items()},
                      {k: v[reference] for k, v in out.items()}, train_labels={t: v[index] for t, v in labels.items()},
                      val_labels={t: v[reference] for t, v in labels.items()},
                      val_sites=np.array([f.n_primitive for f in features])[reference],
                      val_atomic_numbers=[f.atomic_numbers for f in features[reference]],
                      ids=[str(i) for i in data.ids[index]], formulas=[c.formula for c in crystals[index]])


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zoo directory holding the tiny models under the zoo's names."""
    return build_tiny_zoo(tmp_path_factory.mktemp("tiny_zoo"))
