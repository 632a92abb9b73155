"""Deep InfoMax losses: learning signal, negatives from other crystals only, masks, KL form."""

import numpy as np
import pytest
import torch

from sitenet.model import SiteNetEncoder
from training.dim import DeepInfoMax, kl_standard, partner_crystals, partner_sites


def _pad(batch, extra_p, extra_n):
    """The same crystals with extra padded site slots and key columns."""
    out = {}
    for name, x in batch.items():
        pads = {"site": (0, 0, 0, extra_p), "species": (0, extra_p), "pair": (0, 0, 0, extra_n, 0, extra_p),
                "parent": (0, extra_n), "site_mask": (0, extra_p), "atom_mask": (0, extra_n)}[name]
        out[name] = torch.nn.functional.pad(x, pads)
    return out


@pytest.mark.parametrize("b", range(1, 9))
def test_partner_is_never_the_same_crystal(b):
    partner = partner_crystals(b)
    if b == 1:
        assert partner is None
    else:
        assert (partner != torch.arange(b)).all()
        assert sorted(partner.tolist()) == list(range(b))  # a permutation: every crystal serves once


def test_partner_sites_are_real_sites():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    partner = partner_crystals(3)
    idx = partner_sites(mask, partner)
    assert (idx < mask.sum(1)[partner][:, None]).all()


@pytest.mark.parametrize("negatives", ["standard", "domain-aware"])
def test_one_large_crystal_batch_has_no_cross_crystal_negatives_and_no_nan(sample_store, make_batch, tiny_config, negatives):
    big = int(np.argmax(sample_store.sizes[:, 0]))
    batch = make_batch([big])
    dim = DeepInfoMax(SiteNetEncoder(tiny_config), negatives=negatives)
    out = dim(**batch)
    assert all(torch.isfinite(v).all() for v in out)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in dim.parameters() if p.grad is not None)
    assert out.dim_local > 0 and out.dim_global > 0  # positives alone still give a finite, positive loss


def test_standard_local_negatives_come_from_the_partner_crystal(make_batch, tiny_config, monkeypatch):
    """Make crystal 0 and 1 identical except for crystal 1's distances: the negatives of crystal 0 must see
    crystal 1's distances, i.e. they are never drawn from crystal 0 itself."""
    batch = make_batch([3, 3])
    batch["pair"][1, ..., 0] *= 2.0  # crystal 1 differs
    seen = []
    import training.dim as mod

    real = mod.distance_weights

    def spy(dist, mask):
        seen.append(dist.clone())
        return real(dist, mask)

    monkeypatch.setattr(mod, "distance_weights", spy)
    DeepInfoMax(SiteNetEncoder(tiny_config), negatives="standard")(**batch, noise=False)
    positive, negative = seen[0], seen[1]
    assert torch.equal(negative[0], positive[1]) and torch.equal(negative[1], positive[0])


@pytest.mark.parametrize("negatives,extra_n", [("standard", 5), ("domain-aware", 0)])
def test_padding_changes_nothing(make_batch, tiny_config, negatives, extra_n):
    torch.manual_seed(0)
    dim = DeepInfoMax(SiteNetEncoder(tiny_config), negatives=negatives)
    batch = make_batch([0, 1, 2])
    a = dim(**batch, noise=False, generator=torch.Generator().manual_seed(1))
    b = dim(**_pad(batch, 3, extra_n), noise=False, generator=torch.Generator().manual_seed(1))
    for x, y in zip(a[:5], b[:5]):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.embedding, b.embedding, atol=1e-5, rtol=1e-5)


def test_kl_is_the_standard_gaussian_kl():
    mean, logvar = torch.randn(5, 3), torch.randn(5, 3)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                            torch.distributions.Normal(0.0, 1.0)).mean()
    torch.testing.assert_close(kl_standard(mean, logvar), ref)
    assert kl_standard(torch.zeros(2, 3), torch.zeros(2, 3)) == 0.0
    mask = torch.tensor([True, False])
    torch.testing.assert_close(kl_standard(mean[:2], logvar[:2], mask), kl_standard(mean[:1], logvar[:1]))


def test_jsd_loss_falls_when_positives_are_learnable(make_batch, tiny_config, small_crystals):
    torch.manual_seed(0)
    dim = DeepInfoMax(SiteNetEncoder(tiny_config), kl_weight=0.0)
    batch = make_batch(small_crystals[:6])
    opt = torch.optim.Adam(dim.parameters(), lr=2e-2)
    losses = []
    for _ in range(30):
        out = dim(**batch, noise=False, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append((out.dim_local.item(), out.dim_global.item()))
    first, last = np.array(losses[:3]).mean(0), np.array(losses[-3:]).mean(0)
    assert (last < first - 0.1).all(), (first, last)  # both levels learn
    assert (first > 1.2).all()  # near 2 ln 2 at the start: the critics begin uninformed


@pytest.mark.parametrize("blocks", [1, 2])
def test_corrupted_passes_sharing_the_pair_embedding_equal_recomputing_it(make_batch, tiny_config, blocks):
    """The three corrupted local passes reuse the real pass's pair embedding (rows of the partner crystal for
    the structure-corrupted one); they must equal passes that embed the corrupted pair tensors afresh,
    as the objective is defined (method.md C.4), at every real site."""
    torch.manual_seed(0)
    enc = SiteNetEncoder(tiny_config.model_copy(update={"blocks": blocks}))
    dim = DeepInfoMax(enc, negatives="domain-aware")
    b = make_batch([3, 40, 7, 120, 11])  # different P and N, so partner rows are padded differently
    site, species, pair, parent, sm, am = (b[k] for k in ("site", "species", "pair", "parent", "site_mask", "atom_mask"))
    partner = partner_crystals(len(site))
    with torch.no_grad():
        shared = dim.corrupted_sites(site, species, enc.pair_embed(pair), parent, sm, am, partner,
                                     torch.Generator().manual_seed(1))
        pi, pb = partner_sites(sm, partner), partner[:, None]
        real = sm.unsqueeze(-1).float()
        keys = am & am[partner]
        pair_s = pair[pb, pi] * (sm[:, :, None] & keys[:, None, :]).unsqueeze(-1).float()
        perm = torch.argsort(torch.rand(am.shape, generator=torch.Generator().manual_seed(1)).masked_fill(~am, 2.0), 1)
        fresh = [enc.local(site[pb, pi] * real, species[pb, pi] * sm, pair, parent, sm, am)[0],
                 enc.local(site, species, pair_s, parent, sm, keys)[0],
                 enc.local(site, species, pair, torch.gather(parent, 1, perm), sm, am)[0]]
    for got, want in zip(shared, fresh):
        torch.testing.assert_close(got[sm], want[sm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["mish", "silu"])
def test_activation_setting_reaches_every_mlp_and_critic(tiny_config, activation):
    from sitenet.model import ACTIVATIONS

    dim = DeepInfoMax(SiteNetEncoder(tiny_config.model_copy(update={"activation": activation})))
    kinds = {type(m) for m in dim.modules() if type(m) in ACTIVATIONS.values()}
    assert kinds == {ACTIVATIONS[activation]}
