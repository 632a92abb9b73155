"""A crystal as plain arrays: what the CIF reader gives, validation checks and featurisation consumes.

Inference never needs a pymatgen ``Structure`` (building one costs more than reading the CIF); training and
other callers that have one convert with :meth:`Crystal.from_structure`, and :meth:`Crystal.to_structure` goes
back, so both meet in the same featuriser.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import numpy as np

from sitenet.supercell import niggli_cell

__all__ = ["Crystal", "atomic_number"]


class Crystal:
    """An ordered crystal of real elements.

    Attributes:
        lattice: (3, 3) float64, lattice vectors as rows, Å.
        frac_coords: (n, 3) float64 fractional coordinates.
        species: element symbol of each site.
        atomic_numbers: (n,) int64, Z of each site.
    """

    __slots__ = ("lattice", "frac_coords", "species", "atomic_numbers", "_niggli")

    def __init__(self, lattice: np.ndarray, frac_coords: np.ndarray, species: list[str]) -> None:
        self.lattice = lattice
        self.frac_coords = frac_coords
        self.species = species
        self.atomic_numbers = np.array([atomic_number(s) for s in species], dtype=np.int64)
        self._niggli: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.species)

    @classmethod
    def from_structure(cls, structure: Any) -> "Crystal":
        """The arrays of an ordered pymatgen ``Structure`` (one that ``validate_structure`` accepts)."""
        return cls(np.asarray(structure.lattice.matrix, dtype=np.float64),
                   np.asarray(structure.frac_coords, dtype=np.float64),
                   [site.specie.symbol for site in structure])

    def to_structure(self) -> Any:
        """The pymatgen ``Structure`` of these sites, in this order."""
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), self.species, self.frac_coords)

    @property
    def niggli(self) -> tuple[np.ndarray, np.ndarray]:
        """(lattice, frac_coords) in the Niggli-reduced basis; computed once, since both the overlap check and
        the primitive reduction start from it."""
        if self._niggli is None:
            self._niggli = niggli_cell(self.lattice, self.frac_coords)
        return self._niggli

    @property
    def formula(self) -> str:
        """Reduced formula, exactly as pymatgen's ``Composition.reduced_formula`` writes it."""
        return _reduced_formula(tuple(sorted(Counter(self.species).items())))


@functools.lru_cache(maxsize=4096)
def atomic_number(symbol: str) -> int:
    """Z of an element symbol that pymatgen knows (``Element.is_valid_symbol``)."""
    from pymatgen.core import Element

    return int(Element(symbol).Z)


@functools.lru_cache(maxsize=4096)
def _reduced_formula(counts: tuple[tuple[str, int], ...]) -> str:
    from pymatgen.core import Composition

    return Composition({symbol: float(n) for symbol, n in counts}).reduced_formula
