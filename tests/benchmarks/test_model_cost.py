"""benchmarks/model_cost.py counts the per-pair arithmetic of the real model (checked with torch's FLOP counter)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


def _model_cost():
    spec = importlib.util.spec_from_file_location("model_cost", REPO / "benchmarks" / "model_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _encoder_flops(encoder, p: int, n: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from sitenet.batch import collate
    from sitenet.features import CrystalFeatures

    images = n // p
    distance = np.full((p, n), 3.0, np.float32)
    distance[np.arange(p), np.arange(p) * images] = 0.0
    batch = collate([CrystalFeatures(atomic_numbers=np.full(p, 14), distance=distance, images=images)],
                    encoder.config.features)
    inputs = {k: torch.from_numpy(v) for k, v in batch.inputs().items()}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(**inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("name,blocks", [("sitenet-dim-mp2018", None), ("sitenet-dim-mp2018", 2)])
def test_pair_cost_matches_the_models_p_times_n_arithmetic(name: str, blocks: int | None) -> None:
    """The cost is a*P*N + b*P + c*N + d; a mixed difference over P and N isolates the per-pair term a."""
    from sitenet.config import SiteNetConfig
    from sitenet.model import SiteNetEncoder

    config = json.loads((REPO / "zoo" / name / "config.json").read_text())
    if blocks is not None:  # the pair update of all but the last block counts too
        config["blocks"] = blocks
    encoder = SiteNetEncoder(SiteNetConfig.model_validate(config)).eval()
    f = {(p, n): _encoder_flops(encoder, p, n) for p in (2, 4) for n in (24, 48)}
    per_pair = (f[4, 48] - f[4, 24] - f[2, 48] + f[2, 24]) / ((4 - 2) * (48 - 24))
    macs, _ = _model_cost().pair_cost(config)
    assert per_pair == 2 * macs
