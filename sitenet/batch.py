"""Padded dense batches with masks, and size buckets that keep the padding small.

Layout (dimension letters as in ``sitenet/model.py``): B crystals, P primitive (query) sites, N supercell
(key) sites, F site features, G pair features. Padding rules live here and nowhere else: padded sites
have zero features, ``parent`` 0 and ``False`` masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sitenet.elements import site_features
from sitenet.features import CrystalFeatures, FeatureSpec, pair_features

#: The ONNX / model input names, in order.
INPUT_NAMES: tuple[str, ...] = ("site", "species", "pair", "parent", "site_mask", "atom_mask")


@dataclass(frozen=True)
class Batch:
    """A padded batch of crystals (numpy; ``sitenet.model`` converts to torch).

    Attributes:
        site: (B, P, F) float32 scaled element properties of the primitive sites.
        species: (B, P) int64 atomic numbers, 0 at padding.
        pair: (B, P, N, G) float32 pair features (distance, Å, then its Gaussian expansion).
        parent: (B, N) int64 primitive-site row of each supercell site.
        site_mask: (B, P) bool, True at real primitive sites.
        atom_mask: (B, N) bool, True at real supercell sites.
    """

    site: np.ndarray
    species: np.ndarray
    pair: np.ndarray
    parent: np.ndarray
    site_mask: np.ndarray
    atom_mask: np.ndarray

    def __len__(self) -> int:
        return self.site.shape[0]

    def inputs(self) -> dict[str, np.ndarray]:
        """The arrays by ONNX input name."""
        return {name: getattr(self, name) for name in INPUT_NAMES}

    @property
    def padding_fraction(self) -> float:
        """Share of the (B, P, N) pair tensor that is padding."""
        real = (self.site_mask[:, :, None] & self.atom_mask[:, None, :]).sum()
        return 1.0 - float(real) / float(self.site_mask.size * self.atom_mask.shape[1])


def collate(items: Sequence[CrystalFeatures], spec: FeatureSpec) -> Batch:
    """Pad a list of crystals into one :class:`Batch`."""
    if not items:
        raise ValueError("cannot collate an empty list of crystals")
    b = len(items)
    p_max = max(x.n_primitive for x in items)
    n_max = max(x.n_sites for x in items)
    distance = np.zeros((b, p_max, n_max), dtype=np.float32)  # (B, P, N)
    species = np.zeros((b, p_max), dtype=np.int64)  # (B, P)
    parent = np.zeros((b, n_max), dtype=np.int64)  # (B, N)
    site_mask = np.zeros((b, p_max), dtype=bool)  # (B, P)
    atom_mask = np.zeros((b, n_max), dtype=bool)  # (B, N)
    for k, x in enumerate(items):
        p, n = x.distance.shape
        distance[k, :p, :n] = x.distance
        species[k, :p] = x.atomic_numbers
        parent[k, :n] = x.parent
        site_mask[k, :p] = True
        atom_mask[k, :n] = True
    pair = pair_features(distance, spec)  # (B, P, N, G)
    pair *= (site_mask[:, :, None] & atom_mask[:, None, :])[..., None]  # padding is exactly zero
    site = site_features(species) * site_mask[..., None]  # (B, P, F)
    return Batch(site=site.astype(np.float32), species=species, pair=pair, parent=parent,
                 site_mask=site_mask, atom_mask=atom_mask)


def bucket_batches(
    sizes: Sequence[tuple[int, int]],
    *,
    batch_size: int = 64,
    max_pairs: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
) -> list[np.ndarray]:
    """Group crystal indices into batches of similar size so padding waste stays small.

    Args:
        sizes: (P, N) of each crystal.
        batch_size: most crystals per batch.
        max_pairs: optional budget on the padded pair count ``B * P_max * N_max`` of a batch (memory bound).
        shuffle: shuffle within equal sizes and shuffle the order of batches (training); else deterministic.
        seed: seed of the shuffles.

    Returns:
        A list of index arrays covering every crystal exactly once.
    """
    sizes_arr = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(len(sizes_arr)) if shuffle else np.arange(len(sizes_arr))
    order = np.lexsort((tiebreak, sizes_arr[:, 1], sizes_arr[:, 0]))  # by P, then N
    batches: list[np.ndarray] = []
    current: list[int] = []
    p_max = n_max = 0
    for idx in order:
        p, n = sizes_arr[idx]
        new_p, new_n = max(p_max, p), max(n_max, n)
        over_budget = max_pairs is not None and current and (len(current) + 1) * new_p * new_n > max_pairs
        if current and (len(current) >= batch_size or over_budget):
            batches.append(np.array(current, dtype=np.int64))
            current, new_p, new_n = [], p, n
        current.append(int(idx))
        p_max, n_max = new_p, new_n
    if current:
        batches.append(np.array(current, dtype=np.int64))
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
