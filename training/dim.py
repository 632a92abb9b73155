"""Deep InfoMax for Site-Net (method.md C), with the pitfalls of F fixed.

Two levels, each its own mutual-information objective (JSD softplus estimator, separable dot-product critics):
  local DIM:  noisy local vector l~_i vs the raw constituents (neighbour site features, distance) of its
              environment, weighted by w = (d + 1)^-2 normalised over valid keys;
  global DIM: noisy crystal vector g~ vs its own crystal's local vectors l_i (detached).
The global encoder reads a *detached* l, so one optimiser on the summed loss is exactly the two-optimiser
scheme of C.7 (AdamW is per-parameter and the parameter sets are disjoint).

Negatives come from OTHER crystals of the batch only: crystal b is paired with b' = (b - B//2) mod B, never
b itself (F.10); a batch of one crystal has no such negatives. ``domain-aware`` adds the engineered ones of
C.3/C.4; every term uses the mask and weights of the tensors it is built from (F.11). The KL term is the
standard 0.5 (mu^2 + sigma^2 - ln sigma^2 - 1) (F.12).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sitenet.config import Activation
from sitenet.model import ACTIVATIONS, SiteNetEncoder, masked_mean


class DIMOutput(NamedTuple):
    loss: torch.Tensor  # () weighted total
    dim_local: torch.Tensor  # () local JSD loss
    dim_global: torch.Tensor  # () global JSD loss
    kl_local: torch.Tensor  # ()
    kl_global: torch.Tensor  # ()
    embedding: torch.Tensor  # (B,E) mean crystal vector g (no noise), detached


def critic(width_in: int, hidden: int, out: int, activation: Activation = "mish") -> nn.Sequential:
    """One side of a separable critic: Lin + activation (Mish in method.md C.3) + Lin, no norm."""
    return nn.Sequential(nn.Linear(width_in, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, out))


def kl_standard(mean: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid elements of KL(N(mean, exp(logvar)) || N(0, 1)) = 0.5 (mu^2 + sigma^2 - ln sigma^2 - 1).

    Args:
        mean, logvar: (..., C).
        mask: (...) bool of valid rows, or None for all.
    """
    kl = 0.5 * (mean.pow(2) + logvar.exp() - logvar - 1.0)  # (...,C)
    if mask is None:
        return kl.mean()
    m = mask.unsqueeze(-1).to(kl.dtype)
    return (kl * m).sum() / (m.sum() * kl.shape[-1]).clamp(min=1.0)


def distance_weights(distance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(d + 1)^-2 normalised over the valid keys of each row: (B,P,N) -> (B,P,N); zero where masked."""
    w = (distance + 1.0).pow(-2) * mask.to(distance.dtype)  # (B,P,N)
    return w / w.sum(-1, keepdim=True).clamp(min=1e-12)


def partner_crystals(batch_size: int, device: torch.device | None = None) -> torch.Tensor | None:
    """The crystal each crystal takes its negatives from: (b - B//2) mod B, which is never b; None if B < 2."""
    if batch_size < 2:
        return None
    shift = batch_size // 2  # 1 <= shift <= B - 1, so partner[b] != b for every b
    return torch.roll(torch.arange(batch_size, device=device), shift)  # (B,)


def partner_sites(site_mask: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Slot i of crystal b maps to a real site of crystal partner[b]: i mod P_partner. (B,P) long."""
    counts = site_mask.sum(1).clamp(min=1)  # (B,)
    slots = torch.arange(site_mask.shape[1], device=site_mask.device)  # (P,)
    return slots[None, :] % counts[partner][:, None]  # (B,P)


def _site_mean_then_crystal_mean(per_site: torch.Tensor, site_mask: torch.Tensor) -> torch.Tensor:
    """(B,P) -> (): mean over each crystal's real sites, then over crystals (every crystal counts once)."""
    return masked_mean(per_site.unsqueeze(-1), site_mask).mean()


class DeepInfoMax(nn.Module):
    """DIM objective around a :class:`SiteNetEncoder`; uses only its public ``local`` and ``pool``."""

    def __init__(self, encoder: SiteNetEncoder, *, negatives: Literal["standard", "domain-aware"] = "domain-aware",
                 critic_dim: int = 128, critic_hidden: int = 64, local_weight: float = 1.0,
                 global_weight: float = 1.0, kl_weight: float = 0.1):
        super().__init__()
        if negatives not in ("standard", "domain-aware"):
            raise ValueError(f"negatives must be 'standard' or 'domain-aware', got {negatives!r}")
        c = encoder.config
        self.encoder = encoder
        self.negatives = negatives
        self.local_weight, self.global_weight, self.kl_weight = local_weight, global_weight, kl_weight
        act = c.activation
        self.query = critic(c.local_dim, critic_hidden, critic_dim, act)  # phi(l~_i)
        self.constituent = critic(c.features.site_dim + 1, critic_hidden, critic_dim, act)  # psi(s_j, d_ij)
        self.summary = critic(c.embedding_dim, critic_hidden, critic_dim, act)  # rho(g~)
        self.site_key = critic(c.local_dim, critic_hidden, critic_dim, act)  # lambda(l_i)

    # ----------------------------------------------------------------------------------------- local DIM
    def local_loss(self, l_noisy, site, pair, parent, site_mask, atom_mask, partner):
        """Local JSD loss: l_noisy (B,P,L) vs (neighbour features, distance) constituents. Returns ()."""
        distance = pair[..., 0]  # (B,P,N) raw distance, Å
        neighbour = torch.gather(site, 1, parent.unsqueeze(-1).expand(-1, -1, site.shape[-1]))  # (B,N,F)
        key_mask = site_mask[:, :, None] & atom_mask[:, None, :]  # (B,P,N)
        q = self.query(l_noisy)  # (B,P,C)
        # The critic is separable and psi ends in a Linear, so <q, W2 h + b2> = <W2^T q, h> + <q, b2>: the
        # per-pair work stays in psi's hidden width. psi's first Linear splits into a per-key species part
        # and a per-pair distance part for the same reason.
        first, act, last = self.constituent
        q_hidden = q @ last.weight  # (B,P,H)
        q_bias = q @ last.bias  # (B,P)
        f = site.shape[-1]

        def score(neigh, dist):  # neigh (B,N,F), dist (B,P,N) -> psi's hidden activations (B,P,N,H)
            per_key = neigh @ first.weight[:, :f].T + first.bias  # (B,N,H)
            return act(per_key.unsqueeze(1) + dist.unsqueeze(-1) * first.weight[:, f])

        def term(sign, hidden, dist, mask):  # weighted softplus over the valid keys of each site -> (B,P)
            t = torch.einsum("bph,bpnh->bpn", q_hidden, hidden) + q_bias.unsqueeze(-1)  # (B,P,N)
            return (distance_weights(dist, mask) * F.softplus(sign * t)).sum(-1)

        psi_pos = score(neighbour, distance)  # (B,P,N,H)
        per_site = term(-1.0, psi_pos, distance, key_mask)  # (B,P)
        if partner is not None:
            pi = partner_sites(site_mask, partner)  # (B,P)
            pb = partner[:, None]  # (B,1)
            dist_r = distance[pb, pi]  # (B,P,N) distances of site i' of crystal b'
            keys_r = atom_mask[partner]  # (B,N) keys valid in b'
            mask_r = site_mask[:, :, None] & keys_r[:, None, :]  # (B,P,N)
            # fully fake: b's site against b''s whole environment; psi of a rolled input is rolled psi
            negs = [term(1.0, psi_pos[pb, pi], dist_r, mask_r)]
            if self.negatives == "domain-aware":
                joint = key_mask & keys_r[:, None, :]  # both sources valid (F.11)
                negs.append(term(1.0, score(neighbour, dist_r), dist_r, joint))  # true species, fake distances
                negs.append(term(1.0, score(neighbour[partner], distance), distance, joint))  # fake species
            per_site = per_site + torch.stack(negs).mean(0)
        return _site_mean_then_crystal_mean(per_site, site_mask)

    # ---------------------------------------------------------------------------------------- global DIM
    @torch.no_grad()
    def corrupted_sites(self, site, species, pair_embedding, parent, site_mask, atom_mask, partner, generator=None):
        """Fake local vectors (each (B,P,L), mask = site_mask) from the current local encoder, no gradient:
        composition-corrupted and structure-corrupted (need another crystal) and neighbour-permuted.

        ``pair_embedding`` is the real pass's ``encoder.pair_embed(pair)`` (B,P,N,R): the pair embedding is
        per pair, so the corruptions reuse it (rows of another crystal for the structure-corrupted one)
        instead of recomputing it three times. Pairs that the masks exclude differ from a recomputation,
        but attention never reads them."""
        enc = self.encoder
        e = pair_embedding
        fakes = []
        if partner is not None:
            pi, pb = partner_sites(site_mask, partner), partner[:, None]
            real = site_mask.unsqueeze(-1).to(site.dtype)  # (B,P,1)
            # b's geometry, b''s elements at the same slots
            fakes.append(enc.local(site[pb, pi] * real, species[pb, pi] * site_mask, None, parent, site_mask,
                                   atom_mask, pair_embedding=e)[0])
            # b's elements, distances of b''s sites over the keys valid in both
            keys = atom_mask & atom_mask[partner]  # (B,N)
            fakes.append(enc.local(site, species, None, parent, site_mask, keys, pair_embedding=e[pb, pi])[0])
        # same distances and element multiset, neighbour identities shuffled among the real keys only
        noise = _uniform(atom_mask, generator)  # (B,N)
        perm = torch.argsort(noise.masked_fill(~atom_mask, 2.0), dim=1)  # real keys first (they are columns 0..N_b-1)
        fakes.append(enc.local(site, species, None, torch.gather(parent, 1, perm), site_mask, atom_mask,
                               pair_embedding=e)[0])
        return fakes

    def global_loss(self, g_noisy, l_mean, site, species, pair_embedding, parent, site_mask, atom_mask, partner,
                    generator=None):
        """Global JSD loss: g_noisy (B,E) vs each (detached) l_i (B,P,L) of its crystal. Returns ().

        ``pair_embedding``: the batch's ``encoder.pair_embed(pair)`` (B,P,N,R), for the corrupted passes."""
        r = self.summary(g_noisy)  # (B,C)
        k = self.site_key(l_mean)  # (B,P,C)
        per_site = F.softplus(-torch.einsum("bc,bpc->bp", r, k))  # (B,P)
        negs = []
        if partner is not None:  # l_i of b against another crystal's g
            negs.append(F.softplus(torch.einsum("bc,bpc->bp", r[partner], k)))
        if self.negatives == "domain-aware":
            for fake in self.corrupted_sites(site, species, pair_embedding, parent, site_mask, atom_mask, partner,
                                             generator):
                negs.append(F.softplus(torch.einsum("bc,bpc->bp", r, self.site_key(fake))))
        if negs:
            per_site = per_site + torch.stack(negs).mean(0)
        return _site_mean_then_crystal_mean(per_site, site_mask)

    # ------------------------------------------------------------------------------------------- forward
    def forward(self, site, species, pair, parent, site_mask, atom_mask, *, noise: bool = True,
                generator: torch.Generator | None = None) -> DIMOutput:
        """All DIM losses of one batch (inputs as ``SiteNetEncoder.forward``).

        Args:
            noise: sample l~ and g~ (training); False uses the means (deterministic validation).
            generator: random source of the noise and the neighbour permutation (validation passes a
                seeded one).
        """
        partner = partner_crystals(site.shape[0], site.device)
        e = self.encoder.pair_embed(pair)  # (B,P,N,R), computed once for the real and the corrupted passes
        l_mean, l_logvar = self.encoder.local(site, species, pair, parent, site_mask, atom_mask,
                                              pair_embedding=e)  # (B,P,L) x2
        l_noisy = l_mean + self._eps(l_mean, generator) * (0.5 * l_logvar).exp() if noise else l_mean
        dim_local = self.local_loss(l_noisy, site, pair, parent, site_mask, atom_mask, partner)
        kl_local = kl_standard(l_mean, l_logvar, site_mask)

        l_det = l_mean.detach()  # the stop-gradient between the levels
        g_mean, g_logvar = self.encoder.pool(l_det, site_mask)  # (B,E) x2
        g_noisy = g_mean + self._eps(g_mean, generator) * (0.5 * g_logvar).exp() if noise else g_mean
        dim_global = self.global_loss(g_noisy, l_det, site, species, e.detach(), parent, site_mask, atom_mask,
                                      partner, generator)
        kl_global = kl_standard(g_mean, g_logvar)

        loss = (self.local_weight * (dim_local + self.kl_weight * kl_local)
                + self.global_weight * (dim_global + self.kl_weight * kl_global))
        return DIMOutput(loss, dim_local, dim_global, kl_local, kl_global, g_mean.detach())

    @staticmethod
    @torch.compiler.disable  # random draws run eagerly: a seeded generator cannot enter a compiled graph
    def _eps(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


@torch.compiler.disable
def _uniform(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0,1) noise of ``like``'s shape, eagerly (see ``DeepInfoMax._eps``)."""
    return torch.rand(like.shape, generator=generator, device=like.device)
