"""The Site-Net model: the whole architecture in one file (method.md B.2, C.2, C.4).

Dimension letters, used in every shape comment of the project:
    B batch, P primitive (query) sites, N supercell (key) sites, F site features, G pair features,
    D site width (heads * head width), H heads, V value width per head, R pair width,
    L local vector width, E crystal embedding width.

Data flow: site (B,P,F) and pair (B,P,N,G) -> attention blocks -> local vectors l (B,P,L) -> per-site MLP ->
masked mean over real sites -> MLP -> embedding g (B,E) -> property head.
``forward`` is plain tensor code with no data-dependent Python branches, so it exports to ONNX.
"""

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from sitenet.config import Activation, RegressorConfig, SiteNetConfig

#: Card metadata that huggingface_hub's mixin writes for both model classes.
_HUB = dict(library_name="sitenet", tags=["materials-science", "crystal", "site-net", "deep-infomax", "onnx"],
            license="mit")


ACTIVATIONS: dict[str, type[nn.Module]] = {"mish": nn.Mish, "silu": nn.SiLU}


def mlp(widths: list[int], *, plain_last: bool = False, activation: Activation = "mish") -> nn.Sequential:
    """Linear + activation + LayerNorm per layer (norm after the activation, as in Site-Net).

    ``plain_last`` leaves the last layer a bare Linear (logits, means, decoders)."""
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if not (plain_last and k == len(widths) - 2):
            layers += [ACTIVATIONS[activation](), nn.LayerNorm(b)]
    return nn.Sequential(*layers)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of x (B,P,C) over real rows only; a crystal with no real rows gives zeros."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (B,P,1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B,C)


def nonnegative(x: torch.Tensor) -> torch.Tensor:
    """ReLU in the forward pass, identity gradient in the backward pass (Site-Net's "TReLU"), so a
    prediction stuck below zero still learns."""
    return x + (F.relu(x) - x).detach()


class AttentionBlock(nn.Module):
    """One Site-Net block: every primitive site i attends over all N supercell sites j through the bond
    features b_ij = [x_i | x_parent(j) | e_ij] (never materialised: see ``bond_layer``). Heads share one value vector and differ in their weights.
    No residual connection, as published. The last block skips the pair update nobody reads."""

    def __init__(self, config: SiteNetConfig, *, update_pairs: bool = True):
        super().__init__()
        d, r, h, v, act = config.site_width, config.pair_width, config.heads, config.head_width, config.activation
        bond = 2 * d + r
        self.heads = h
        self.logits = mlp([bond, *config.attention_hidden, h], plain_last=True, activation=act)  # g^W
        self.values = mlp([bond, *config.value_hidden, v], activation=act)  # g^F
        self.site_update = mlp([h * v, d], activation=act)  # g^S
        self.pair_update = mlp([bond, r], activation=act) if update_pairs else None  # g^I

    def bond_layer(self, x, xj, e) -> list[torch.Tensor]:
        """First layer of g^W, g^F and g^I on the bond features b_ij = [x_i | x_j | e_ij], each (B,P,N,K_k).

        A Linear of a concatenation is a sum of Linears, so the site parts (and the bias) are computed once
        per site and per key and broadcast, instead of once per pair: this is most of the model's arithmetic.
        One matmul per layer rather than one fused matmul split afterwards: the split is free in PyTorch but a
        full copy of the (B,P,N,K) tensor in ONNX Runtime (about 10% of CPU inference)."""
        firsts = [self.logits[0], self.values[0]] + ([self.pair_update[0]] if self.pair_update is not None else [])
        d = x.shape[-1]
        out = []
        for layer in firsts:
            weight = layer.weight  # (K, 2D+R)
            h_i = x @ weight[:, :d].T + layer.bias  # (B,P,K)
            h_j = xj @ weight[:, d : 2 * d].T  # (B,N,K)
            h_e = e @ weight[:, 2 * d :].T  # (B,P,N,K)
            out.append(h_e.add_(h_i.unsqueeze(2)).add_(h_j.unsqueeze(1)))  # in place: no (B,P,N,K) temporaries
        return out

    def forward(self, x, e, parent, atom_mask):
        b, p = e.shape[0], e.shape[1]
        xj = torch.gather(x, 1, parent.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B,N,D) keys' parent rows
        first = self.bond_layer(x, xj, e)
        logits = self.logits[1:](first[0])  # (B,P,N,H)
        key_mask = atom_mask[:, None, :, None]  # (B,1,N,1)
        # A finite fill, not -inf: a row whose keys are all padding must give zeros, not NaN.
        logits = logits.masked_fill(~key_mask, torch.finfo(logits.dtype).min)
        alpha = torch.softmax(logits, dim=2) * key_mask.to(logits.dtype)  # (B,P,N,H)
        values = self.values[1:](first[1])  # (B,P,N,V)
        out = torch.einsum("bpnh,bpnv->bpvh", alpha, values).reshape(b, p, -1)  # (B,P,V*H)
        e = self.pair_update[1:](first[2]) if self.pair_update is not None else e  # (B,P,N,R)
        return self.site_update(out), e  # (B,P,D), (B,P,N,R)


class EncoderOutput(NamedTuple):
    sites: torch.Tensor  # (B,P,L) local vectors (means), zero at padded sites
    embedding: torch.Tensor  # (B,E) crystal embedding (mean)


class _ZooNames:
    """``from_pretrained`` that also takes a bundled zoo name (offline, before the Hub is asked), as
    ``sitenet.load_model`` and the cards do; folders and Hub ids go to the Hugging Face mixin as they are."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any):
        from sitenet.hub import bundled_models, zoo_dir

        name = os.fspath(pretrained_model_name_or_path)
        if not Path(name).is_dir() and name in bundled_models():
            name = str(zoo_dir() / name)
        return super().from_pretrained(name, **kwargs)  # type: ignore[misc]


class SiteNetEncoder(
    nn.Module,
    _ZooNames,
    PyTorchModelHubMixin,
    **_HUB,
    coders={SiteNetConfig: (lambda c: c.model_dump(mode="json"), lambda d: SiteNetConfig.model_validate(d))},
):
    """Site-Net encoder: crystal inputs -> per-site local vectors (B,P,L) and a crystal embedding (B,E).

    ``local`` and ``pool`` are public because Deep InfoMax trains each level against its own objective and
    feeds the local encoder corrupted inputs; ``forward`` is ``pool(local(...))`` without the noise branches.
    """

    def __init__(self, config: SiteNetConfig):
        super().__init__()
        self.config = config
        spec, d, act = config.features, config.site_width, config.activation
        self.species_embedding = nn.Embedding(100, config.element_embedding) if config.element_embedding else None
        self.site_embed = mlp([spec.site_dim + config.element_embedding, d], activation=act)
        self.pair_embed = mlp([spec.pair_dim, config.pair_width], activation=act)
        self.blocks = nn.ModuleList(
            AttentionBlock(config, update_pairs=k < config.blocks - 1) for k in range(config.blocks)
        )
        self.local_mean = nn.Linear(config.blocks * d, config.local_dim)
        self.local_logvar = nn.Linear(config.blocks * d, config.local_dim)  # DIM's KL branch only
        self.pre_pool = mlp([config.local_dim, *config.pre_pool], activation=act)
        self.post_pool = mlp([config.pre_pool[-1], *config.post_pool], activation=act)
        last = config.post_pool[-1] if config.post_pool else config.pre_pool[-1]
        self.embedding_mean = nn.Linear(last, config.embedding_dim)
        self.embedding_logvar = nn.Linear(last, config.embedding_dim)  # DIM's KL branch only

    def local(self, site, species, pair, parent, site_mask, atom_mask, pair_embedding=None):
        """Local encoder: returns (mean, log-variance) of the local vectors, each (B,P,L).

        ``pair_embedding``: ``self.pair_embed(pair)`` (B,P,N,R) if already computed; Deep InfoMax shares one
        among the passes over corrupted copies of a batch (``pair`` is then unused)."""
        x = site  # (B,P,F)
        if self.species_embedding is not None:
            x = torch.cat([x, self.species_embedding(species)], -1)  # (B,P,F+Z)
        x = self.site_embed(x)  # (B,P,D)
        e = self.pair_embed(pair) if pair_embedding is None else pair_embedding  # (B,P,N,R)
        summary = []
        for block in self.blocks:
            x, e = block(x, e, parent, atom_mask)
            summary.append(x)
        m = torch.cat(summary, -1)  # (B,P,blocks*D)
        real = site_mask.unsqueeze(-1).to(m.dtype)  # (B,P,1)
        return self.local_mean(m) * real, self.local_logvar(m) * real  # (B,P,L), (B,P,L)

    def pool(self, sites, site_mask):
        """Global encoder: local vectors (B,P,L) -> (mean, log-variance) of the embedding, each (B,E)."""
        h = masked_mean(self.pre_pool(sites), site_mask)  # (B,C) mean over real sites only
        h = self.post_pool(h)  # (B,C')
        return self.embedding_mean(h), self.embedding_logvar(h)  # (B,E), (B,E)

    def forward(self, site, species, pair, parent, site_mask, atom_mask) -> EncoderOutput:
        sites, _ = self.local(site, species, pair, parent, site_mask, atom_mask)  # (B,P,L)
        embedding, _ = self.pool(sites, site_mask)  # (B,E)
        return EncoderOutput(sites, embedding)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, strict: bool = True, **kwargs):
        """Load from a zoo name, a local folder or a Hub repo id (strict: every weight must match)."""
        return super().from_pretrained(pretrained_model_name_or_path, strict=strict, **kwargs)


class PropertyHead(nn.Module):
    """MLP from the embedding (B,E) to raw outputs (B,K): per target its value, then its metal logit if gated
    (``RegressorConfig.columns``)."""

    def __init__(self, config: RegressorConfig):
        super().__init__()
        self.net = mlp([config.encoder.embedding_dim, *config.head_hidden, config.head_width], plain_last=True,
                       activation=config.encoder.activation)

    def forward(self, embedding):
        return self.net(embedding)  # (B,K)


class SiteNetRegressor(
    nn.Module,
    _ZooNames,
    PyTorchModelHubMixin,
    **_HUB,
    coders={RegressorConfig: (lambda c: c.model_dump(mode="json"), lambda d: RegressorConfig.model_validate(d))},
):
    """Encoder plus a property head for one or more targets. Outputs (by name, see ``RegressorConfig.outputs``):
    band gap in eV (never negative; exactly 0 where the metal probability is >= 0.5) with its metal
    probability, formation energy in eV/atom; and the embedding (B,E)."""

    def __init__(self, config: RegressorConfig):
        super().__init__()
        self.config = config
        self.encoder = SiteNetEncoder(config.encoder)
        self.head = PropertyHead(config)

    @classmethod
    def from_encoder(cls, encoder: SiteNetEncoder, config: RegressorConfig) -> "SiteNetRegressor":
        """A regressor whose encoder starts from ``encoder``'s weights (copied strictly) and a fresh head."""
        if encoder.config != config.encoder:
            raise ValueError("the encoder's config differs from config.encoder")
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict(), strict=True)
        return model

    def raw(self, site, species, pair, parent, site_mask, atom_mask):
        """(raw head outputs (B,K), embedding (B,E)), for training losses."""
        embedding = self.encoder(site, species, pair, parent, site_mask, atom_mask).embedding  # (B,E)
        return self.head(embedding), embedding

    def forward(self, site, species, pair, parent, site_mask, atom_mask) -> dict[str, torch.Tensor]:
        raw, embedding = self.raw(site, species, pair, parent, site_mask, atom_mask)  # (B,K), (B,E)
        return {**self.served(raw), "embedding": embedding}

    def served(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head outputs (B,K) as served values: each target (B,), the band gap gated by the metal probability."""
        out: dict[str, torch.Tensor] = {}
        for target, (value_col, logit_col) in self.config.columns.items():
            value = raw[:, value_col]  # (B,)
            if target == "band_gap":
                value = nonnegative(value)
            if logit_col is not None:
                metal = torch.sigmoid(raw[:, logit_col])  # (B,)
                out[target], out["metal_probability"] = value * (metal < 0.5).to(raw.dtype), metal
            else:
                out[target] = value
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, strict: bool = True, **kwargs):
        """Load from a zoo name, a local folder or a Hub repo id (strict: every weight must match)."""
        return super().from_pretrained(pretrained_model_name_or_path, strict=strict, **kwargs)


def to_tensors(batch) -> dict[str, torch.Tensor]:
    """A ``sitenet.batch.Batch`` as torch tensors keyed by input name."""
    return {name: torch.from_numpy(array) for name, array in batch.inputs().items()}
