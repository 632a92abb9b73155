"""Primitive reduction and Site-Net's near-orthorhombic supercell (method.md A.2, B.4).

The supercell keeps the "identical-site trick": its N = P * images sites are ordered so that site
``s = p * images + t`` is image ``t`` of primitive site ``p`` and image 0 is the primitive site itself.
Queries then run over the P primitive sites only, keys over all N supercell sites.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import spglib

#: Lengths are compared after rounding to this many Å digits, so near-ties break the same way for
#: rotated or permuted copies of one crystal.
_LENGTH_DECIMALS = 4
#: The 27 cells around the origin, where a reduced cell finds every minimum image.
NEIGHBOUR_SHIFTS = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=np.float64)


@dataclass(frozen=True)
class Supercell:
    """A supercell laid out for Site-Net.

    Attributes:
        atomic_numbers: (P,) int64, Z of the primitive sites.
        lattice: (3, 3) float64, supercell lattice vectors as rows, Å.
        frac_coords: (N, 3) float64, supercell fractional coordinates in [0, 1); row ``p * images + t``
            is image ``t`` of primitive site ``p``.
        images: number of primitive cells in the supercell (N = P * images).
        multipliers: (3,) int, the growth factors m1, m2, m3 of the orthogonalised primitive axes.
    """

    atomic_numbers: np.ndarray
    lattice: np.ndarray
    frac_coords: np.ndarray
    images: int
    multipliers: tuple[int, int, int]

    @property
    def n_primitive(self) -> int:
        """P, the number of primitive (query) sites."""
        return len(self.atomic_numbers)

    @property
    def n_sites(self) -> int:
        """N, the number of supercell (key) sites."""
        return len(self.frac_coords)

    @property
    def parent(self) -> np.ndarray:
        """(N,) int64: the primitive site each supercell site is an image of."""
        return np.repeat(np.arange(self.n_primitive, dtype=np.int64), self.images)


def min_image_distances(frac_a: np.ndarray, frac_b: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """(Pa, Pb) minimum-image distances in Å, by wrapping and then checking the 27 neighbouring cells.

    The 27-cell search is exact for the reduced, near-orthorhombic cells built in this module.
    ``|c + s|^2 = |c|^2 + 2 c.s + |s|^2`` avoids a (Pa, Pb, 27, 3) temporary.
    """
    diff = frac_b[None, :, :] - frac_a[:, None, :]  # (Pa, Pb, 3)
    diff -= np.round(diff)
    cart = diff @ lattice  # (Pa, Pb, 3)
    shifts = NEIGHBOUR_SHIFTS @ lattice  # (27, 3)
    # (|c|^2 + 2 c.s) + |s|^2, summed in place: the (Pa, Pb, 27) array is the cost for large cells
    d2 = cart @ shifts.T  # (Pa, Pb, 27)
    d2 *= 2.0
    d2 += (cart**2).sum(-1)[..., None]
    d2 += (shifts**2).sum(-1)
    d2 = d2.min(-1)
    np.maximum(d2, 0.0, out=d2)
    return np.sqrt(d2, out=d2)


def niggli_cell(lattice: np.ndarray, frac_coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-express a cell in its Niggli-reduced basis, which is unique for a lattice: the same crystal
    given in any basis of the same lattice ends up with the same cell (up to a rotation)."""
    reduced = spglib.niggli_reduce(np.asarray(lattice, dtype=float))
    if reduced is None:  # pragma: no cover - spglib fails only on degenerate lattices, rejected earlier
        return np.asarray(lattice, float), np.asarray(frac_coords, float)
    frac = np.asarray(frac_coords, float) @ lattice @ np.linalg.inv(reduced)
    return np.asarray(reduced, float), np.mod(frac, 1.0)


def has_pure_translation(
    lattice: np.ndarray, frac_coords: np.ndarray, atomic_numbers: np.ndarray, *, symprec: float
) -> bool:
    """True if some non-lattice translation maps the crystal onto itself, i.e. the cell is not primitive.

    Candidates are the vectors from one atom of the rarest species to the others of that species; each is
    checked against all atoms at once. This is far cheaper than a full symmetry search, and most stored
    cells (Materials Project's included) are already primitive.
    """
    numbers = np.asarray(atomic_numbers)
    species, counts = np.unique(numbers, return_counts=True)
    rare = np.flatnonzero(numbers == species[np.argmin(counts)])
    if len(rare) < 2:
        return False
    rare_frac = frac_coords[rare]
    shifts = rare_frac[1:] - rare_frac[0]  # (K, 3) candidate translations

    def close(diff: np.ndarray) -> np.ndarray:
        # In a reduced cell a match within symprec is found by rounding the fractional difference.
        diff -= np.round(diff)
        cart = np.einsum("...j,jl->...l", diff, lattice)
        return (cart**2).sum(-1) < symprec**2

    # The rare species alone rejects almost every candidate: all candidates at once (in chunks that bound the
    # (K, r, r, 3) temporary), then only the survivors against all atoms.
    chunk = max(1, 250_000 // len(rare) ** 2)
    for start in range(0, len(shifts), chunk):
        block = shifts[start:start + chunk]
        diff = rare_frac[None, :, None, :] + block[:, None, None, :] - rare_frac[None, None, :, :]  # (c, r, r, 3)
        for shift in block[close(diff).any(-1).all(-1)]:
            matched = close(frac_coords[:, None, :] + shift - frac_coords[None, :, :])  # (n, n)
            if np.all((matched & (numbers[:, None] == numbers[None, :])).any(1)):
                return True
    return False


def primitive_cell(
    lattice: np.ndarray, frac_coords: np.ndarray, atomic_numbers: np.ndarray, *, symprec: float = 1e-2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The primitive cell in its Niggli-reduced basis, without idealising atomic positions.

    A conventional cell, a primitive cell, a supercell, a rotated or a permuted copy of one crystal all
    reduce to the same primitive lattice, and Niggli reduction then fixes the basis, which is what makes
    the supercell below, and so the embedding, independent of how the crystal was given.

    Returns:
        (lattice (3, 3), frac_coords (P, 3), atomic_numbers (P,)).
    """
    return _primitive_of_niggli(niggli_cell(np.asarray(lattice, dtype=float), frac_coords),
                                np.asarray(atomic_numbers, dtype=np.int64), symprec=symprec)


def _primitive_of_niggli(
    niggli: tuple[np.ndarray, np.ndarray], numbers: np.ndarray, *, symprec: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``primitive_cell`` from the crystal's Niggli-reduced (lattice, frac_coords)."""
    lattice, frac = niggli
    if has_pure_translation(lattice, frac, numbers, symprec=symprec):
        reduced = spglib.standardize_cell((lattice, frac, numbers), to_primitive=True, no_idealize=True,
                                          symprec=symprec)
        if reduced is not None:
            lattice, frac, numbers = (np.asarray(reduced[0], float), np.asarray(reduced[1], float),
                                      np.asarray(reduced[2], np.int64))
            lattice, frac = niggli_cell(lattice, frac)
    return lattice, frac, numbers


def supercell_matrix(lattice: np.ndarray, n_primitive: int, max_atoms: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Integer matrix M (rows) such that ``M @ lattice`` is a near-orthorhombic supercell of at most max_atoms.

    RQ-decompose ``lattice = R Q``; ``S = diag(R^-1)^-1 R^-1`` is unit upper-triangular and ``S @ lattice``
    has orthogonal rows of lengths ``|R_kk|``. Grow the shortest axis while ``P * m1 * m2 * m3 <= max_atoms``,
    then ``M = round(diag(m) S)``, whose determinant is exactly ``m1 * m2 * m3``.
    """
    r = scipy.linalg.rq(np.asarray(lattice, dtype=float), mode="r")
    r_inv = np.linalg.inv(r)
    s = r_inv / np.diag(r_inv)[:, None]
    lengths = np.abs(np.diag(r))
    m = np.ones(3, dtype=np.int64)
    while True:
        k = int(np.argmin(np.round(m * lengths, _LENGTH_DECIMALS)))
        trial = m.copy()
        trial[k] += 1
        if n_primitive * int(trial.prod()) > max_atoms:
            break
        m = trial
    matrix = np.round(m[:, None] * s).astype(np.int64)
    return matrix, (int(m[0]), int(m[1]), int(m[2]))


def lattice_points(matrix: np.ndarray) -> np.ndarray:
    """Integer translations of the primitive lattice inside the supercell ``matrix``, (det, 3), zero first.

    Read-only: it is cached per matrix, since few distinct supercell matrices occur.
    """
    return _lattice_points(tuple(int(v) for v in np.asarray(matrix).ravel()))


@functools.lru_cache(maxsize=4096)
def _lattice_points(entries: tuple[int, ...]) -> np.ndarray:
    matrix = np.array(entries, dtype=np.int64).reshape(3, 3)
    det = int(round(abs(np.linalg.det(matrix))))
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]) @ matrix
    lo, hi = corners.min(0), corners.max(0)
    grid = np.stack(np.meshgrid(*[np.arange(lo[k], hi[k] + 1) for k in range(3)], indexing="ij"), -1).reshape(-1, 3)
    frac = grid @ np.linalg.inv(matrix)
    inside = np.all((frac > -1e-8) & (frac < 1 - 1e-8), axis=1)
    points = grid[inside]
    if len(points) != det:  # pragma: no cover - would mean a bug in the enumeration above
        raise RuntimeError(f"found {len(points)} lattice points for a supercell of determinant {det}")
    order = np.lexsort((np.abs(points).sum(1),))  # (0, 0, 0) first: image 0 is the primitive site itself
    points = points[order]
    points.setflags(write=False)
    return points


def build_supercell(
    lattice: np.ndarray,
    frac_coords: np.ndarray,
    atomic_numbers: np.ndarray,
    *,
    max_atoms: int = 50,
    symprec: float = 1e-2,
    niggli: tuple[np.ndarray, np.ndarray] | None = None,
) -> Supercell:
    """Primitive reduction, then the near-orthorhombic supercell of at most ``max_atoms`` sites.

    If the primitive cell alone has more than ``max_atoms`` sites it is kept whole (images = 1) and only
    re-expressed by a unimodular shear, as in Site-Net.

    Args:
        lattice: (3, 3) lattice vectors as rows, Å.
        frac_coords: (n, 3) fractional coordinates.
        atomic_numbers: (n,) atomic numbers.
        max_atoms: supercell atom cap.
        symprec: spglib symmetry tolerance in Å for the primitive reduction.
        niggli: ``niggli_cell(lattice, frac_coords)`` if already known (validation computes it).
    """
    if niggli is None:
        niggli = niggli_cell(np.asarray(lattice, dtype=float), frac_coords)
    prim_lattice, prim_frac, numbers = _primitive_of_niggli(niggli, np.asarray(atomic_numbers, dtype=np.int64),
                                                            symprec=symprec)
    matrix, multipliers = supercell_matrix(prim_lattice, len(numbers), max_atoms)
    points = lattice_points(matrix)  # (images, 3)
    inv = np.linalg.inv(matrix)
    frac = (prim_frac[:, None, :] + points[None, :, :]).reshape(-1, 3) @ inv  # (N, 3), p-major order
    return Supercell(
        atomic_numbers=numbers,
        lattice=matrix @ prim_lattice,
        frac_coords=np.mod(frac, 1.0),
        images=len(points),
        multipliers=multipliers,
    )
