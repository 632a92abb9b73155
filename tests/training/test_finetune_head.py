"""Fine-tuning: the loss falls, the served band gap is never negative, and folding the standardisation
into the head changes no prediction."""

import numpy as np
import torch

from sitenet.config import RegressorConfig
from sitenet.model import SiteNetRegressor
from training.finetune import FinetuneModule, fold_standardisation
from training.pretrain import INPUTS


def _batch(make_batch, gaps, rows=None):
    batch = make_batch(range(len(gaps)) if rows is None else rows[: len(gaps)])
    batch["target"] = torch.tensor(gaps, dtype=torch.float32)
    return batch


def test_band_gap_finetuning_reduces_loss_and_never_predicts_negative(make_batch, tiny_config, small_crystals):
    torch.manual_seed(0)
    model = SiteNetRegressor(RegressorConfig(encoder=tiny_config, target="band_gap"))
    gaps = [0.0, 1.5, 0.0, 3.2, 0.7, 0.0, 2.1, 4.0]
    batch = _batch(make_batch, gaps, small_crystals)
    module = FinetuneModule(model, lr=1e-2, weight_decay=0.0, mean=2.0, std=1.3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, served = module._losses(batch)
        assert (served >= 0).all()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    with torch.no_grad():
        model.head.net[-1].bias[0] = -50.0  # push the raw gap far below zero
        out = model(**{k: batch[k] for k in INPUTS})
    assert (out["band_gap"] >= 0).all()


def test_folding_the_standardisation_keeps_predictions(make_batch, tiny_config):
    torch.manual_seed(1)
    for target in ("band_gap", "formation_energy"):
        model = SiteNetRegressor(RegressorConfig(encoder=tiny_config, target=target))
        batch = _batch(make_batch, [0.0, 1.0, 2.0])
        module = FinetuneModule(model, lr=1e-3, weight_decay=0.0, mean=-1.2, std=0.8)
        with torch.no_grad():
            _, served = module._losses(batch)
            fold_standardisation(model, -1.2, 0.8)
            after = model(**{k: batch[k] for k in INPUTS})[target]
        torch.testing.assert_close(served, after)
