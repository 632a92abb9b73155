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
    module = FinetuneModule(model, lr=1e-2, weight_decay=0.0, scaling={"band_gap": (2.0, 1.3)})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, served = module._losses(batch)
        assert (served["band_gap"] >= 0).all()
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
    scaling = {"band_gap": (1.1, 0.9), "formation_energy": (-1.2, 0.8)}
    for targets in (("band_gap",), ("formation_energy",), ("band_gap", "formation_energy"),
                    ("formation_energy", "band_gap")):
        model = SiteNetRegressor(RegressorConfig(encoder=tiny_config, targets=targets))
        batch = make_batch(range(3))
        batch["target"] = torch.tensor([[0.0, -1.0], [1.0, 0.5], [2.0, -2.0]])[:, : len(targets)]
        module = FinetuneModule(model, lr=1e-3, weight_decay=0.0, scaling={t: scaling[t] for t in targets})
        with torch.no_grad():
            _, served = module._losses(batch)
            fold_standardisation(model, {t: scaling[t] for t in targets})
            after = model(**{k: batch[k] for k in INPUTS})
        for target in targets:
            torch.testing.assert_close(served[target], after[target])


def test_multitask_model_has_one_head_column_per_value_and_the_single_target_layout(tiny_config):
    multi = RegressorConfig(encoder=tiny_config, targets=("band_gap", "formation_energy"))
    assert multi.columns == {"band_gap": (0, 1), "formation_energy": (2, None)}
    assert multi.outputs == ("band_gap", "metal_probability", "formation_energy", "embedding")
    single = RegressorConfig.model_validate({"encoder": tiny_config.model_dump(), "target": "band_gap"})
    assert single.targets == ("band_gap",) and single.columns == {"band_gap": (0, 1)}  # configs before multi-task
    assert SiteNetRegressor(multi).head.net[-1].out_features == 3


def test_multitask_loss_is_the_sum_of_the_single_target_losses(make_batch, tiny_config):
    torch.manual_seed(2)
    scaling = {"band_gap": (1.5, 1.2), "formation_energy": (-1.0, 0.9)}
    multi = SiteNetRegressor(RegressorConfig(encoder=tiny_config, targets=("band_gap", "formation_energy")))
    batch = make_batch(range(4))
    batch["target"] = torch.tensor([[0.0, -1.0], [1.2, 0.3], [0.0, -2.5], [3.0, -0.4]])
    both, _ = FinetuneModule(multi, lr=1e-3, weight_decay=0.0, scaling=scaling)._losses(batch)
    total = 0.0
    for j, target in enumerate(("band_gap", "formation_energy")):
        single = SiteNetRegressor(RegressorConfig(encoder=tiny_config, target=target))
        single.encoder.load_state_dict(multi.encoder.state_dict())
        cols = [c for c in multi.config.columns[target] if c is not None]
        with torch.no_grad():
            for layer, same in zip(single.head.net[:-1], multi.head.net[:-1]):
                layer.load_state_dict(same.state_dict())
            single.head.net[-1].weight.copy_(multi.head.net[-1].weight[cols])
            single.head.net[-1].bias.copy_(multi.head.net[-1].bias[cols])
        one = {**batch, "target": batch["target"][:, j]}
        total = total + FinetuneModule(single, lr=1e-3, weight_decay=0.0, scaling={target: scaling[target]})._losses(one)[0]
    torch.testing.assert_close(both, total)


def test_adding_an_element_embedding_keeps_the_pretrained_function_and_then_learns(make_batch, tiny_config):
    from sitenet.model import SiteNetEncoder
    from training.finetune import with_element_embedding

    torch.manual_seed(2)
    encoder = SiteNetEncoder(tiny_config)
    wider = with_element_embedding(encoder, 5)
    assert wider.config.element_embedding == 5 and wider.species_embedding.weight.shape == (100, 5)
    batch = make_batch(range(4))
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        torch.testing.assert_close(wider(**inputs).embedding, encoder(**inputs).embedding)
    wider(**inputs).embedding.pow(2).sum().backward()
    first = wider.site_embed[0].weight.grad  # (D,F+Z): the new columns get gradient, so Z is learned
    assert first[:, -5:].abs().sum() > 0
    try:
        with_element_embedding(wider, 3)
    except ValueError as err:
        assert "already has a 5-wide element embedding" in str(err)
    else:
        raise AssertionError("an encoder with an embedding was widened again")
