"""Site-Net input features: per-site element properties and minimum-image pair distances (method.md A.4-A.5).

One featuriser, used by training and serving alike: ``featurize(crystal, spec=...)`` turns a validated
``Crystal`` or pymatgen ``Structure`` into :class:`CrystalFeatures`; ``pair_features`` expands distances into the pair
channels at batch time, so the on-disk cache holds only raw distances.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sitenet.crystal import Crystal
from sitenet.elements import PROPERTIES, site_features
from sitenet.supercell import build_supercell, min_image_distances

#: Bumped whenever featurisation changes in a way that changes numbers; part of the cache key.
FEATURIZER_VERSION = 1


class FeatureSpec(BaseModel):
    """How a crystal becomes model inputs. Stored in every model's ``config.json`` so inference
    featurises exactly as training did."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(FEATURIZER_VERSION, description="featuriser format version")
    max_atoms: int = Field(50, ge=1, le=1000, description="supercell atom cap N_max")
    symprec: float = Field(1e-2, gt=0, le=0.1, description="spglib tolerance (Å) of the primitive reduction")
    rbf_count: int = Field(16, ge=0, le=128, description="Gaussians in the distance expansion (0: raw distance only)")
    rbf_max: float = Field(8.0, gt=0, description="centre of the last Gaussian, Å")

    @model_validator(mode="after")
    def _check_version(self) -> "FeatureSpec":
        if self.version != FEATURIZER_VERSION:
            raise ValueError(
                f"feature spec version {self.version} is not supported by this featuriser (version {FEATURIZER_VERSION})"
            )
        return self

    @property
    def site_dim(self) -> int:
        """F, the width of the site features."""
        return len(PROPERTIES)

    @property
    def pair_dim(self) -> int:
        """G, the width of the pair features: raw distance plus the Gaussians."""
        return 1 + self.rbf_count

    def key(self) -> str:
        """A short stable hash of the settings that change feature values (the cache key)."""
        payload = json.dumps(self.model_dump(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


@dataclass(frozen=True)
class CrystalFeatures:
    """Model inputs of one crystal, before padding.

    Attributes:
        atomic_numbers: (P,) int64, Z of the primitive (query) sites.
        distance: (P, N) float32, minimum-image distance in the periodic supercell from primitive site p to
            supercell site j, Å. Column ``p * images`` is site p itself (distance 0).
        images: supercell images per primitive site (N = P * images).
    """

    atomic_numbers: np.ndarray
    distance: np.ndarray
    images: int

    def __post_init__(self) -> None:
        p, n = self.distance.shape
        if len(self.atomic_numbers) != p or n != p * self.images:
            raise ValueError(f"inconsistent shapes: Z {self.atomic_numbers.shape}, distance {self.distance.shape}, "
                             f"images {self.images}")

    @property
    def n_primitive(self) -> int:
        return self.distance.shape[0]

    @property
    def n_sites(self) -> int:
        return self.distance.shape[1]

    @property
    def site(self) -> np.ndarray:
        """(P, F) float32 scaled element properties."""
        return site_features(self.atomic_numbers)

    @property
    def parent(self) -> np.ndarray:
        """(N,) int64 primitive site of each supercell site."""
        return np.repeat(np.arange(self.n_primitive, dtype=np.int64), self.images)


def featurize(crystal: Any, *, spec: FeatureSpec = FeatureSpec()) -> CrystalFeatures:
    """Features of one validated crystal: a :class:`~sitenet.crystal.Crystal` (``read_crystal``) or a pymatgen
    ``Structure`` (``read_structure``)."""
    if not isinstance(crystal, Crystal):
        crystal = Crystal.from_structure(crystal)
    return featurize_arrays(crystal.lattice, crystal.frac_coords, crystal.atomic_numbers, spec=spec,
                            niggli=crystal.niggli)


def featurize_arrays(
    lattice: np.ndarray,
    frac_coords: np.ndarray,
    atomic_numbers: np.ndarray,
    *,
    spec: FeatureSpec = FeatureSpec(),
    niggli: tuple[np.ndarray, np.ndarray] | None = None,
) -> CrystalFeatures:
    """Features from raw arrays: lattice (3, 3) rows in Å, frac_coords (n, 3), atomic_numbers (n,); ``niggli``
    as in ``sitenet.supercell.build_supercell``."""
    cell = build_supercell(lattice, frac_coords, atomic_numbers, max_atoms=spec.max_atoms, symprec=spec.symprec,
                           niggli=niggli)
    first = cell.frac_coords[:: cell.images]  # (P, 3): image 0 of each primitive site
    return CrystalFeatures(
        atomic_numbers=cell.atomic_numbers,
        distance=min_image_distances(first, cell.frac_coords, cell.lattice).astype(np.float32),
        images=cell.images,
    )


def pair_features(distance: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Expand distances (..., ) in Å into (..., G) pair channels: raw distance, then Gaussians.

    The Gaussian expansion lets the first linear layer respond to distance non-linearly (a bond at 2 Å and
    one at 4 Å become near-orthogonal vectors), which a single raw-distance channel cannot give it.
    """
    d = np.asarray(distance, dtype=np.float32)[..., None]
    if spec.rbf_count == 0:
        return d
    centres = np.linspace(0.0, spec.rbf_max, spec.rbf_count, dtype=np.float32)
    width = centres[1] - centres[0] if spec.rbf_count > 1 else np.float32(spec.rbf_max)
    gauss = np.exp(-(((d - centres) / width) ** 2))
    return np.concatenate([d, gauss], axis=-1).astype(np.float32)
