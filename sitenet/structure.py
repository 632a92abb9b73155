"""Structure input and validation.

``read_structure`` accepts CIF text, CIF bytes, a path to a CIF, a pymatgen ``Structure`` or an ASE ``Atoms`` and
returns a validated, ordered pymatgen ``Structure`` or raises a typed :class:`~sitenet.errors.SiteNetError`.
``read_crystal`` does the same but returns plain arrays (:class:`~sitenet.crystal.Crystal`), which is all that
featurisation needs and much cheaper for a CIF. ``read_structures`` reads many, per item, and never raises for
a bad item, so nothing is dropped silently. CIFs are parsed by ``sitenet.cif``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Union

import numpy as np

from sitenet.cif import parse_cif
from sitenet.crystal import Crystal
from sitenet.limits import DEFAULT_MAX_CPU_S, call_limited
from sitenet.elements import MAX_Z
from sitenet.supercell import NEIGHBOUR_SHIFTS, min_image_distances, niggli_cell
from sitenet.errors import (
    CifParseError,
    EmptyStructureError,
    DisorderedStructureError,
    InputTooLargeError,
    InputTypeError,
    InvalidLatticeError,
    NonFiniteCoordinatesError,
    OverlappingAtomsError,
    SiteNetError,
    TooManySitesError,
    UnknownSpeciesError,
    UnsupportedElementError,
)

#: Sites allowed in an input cell (before primitive reduction); a 10,000-atom cell is refused, not parsed slowly.
DEFAULT_MAX_SITES = 500
#: Bytes allowed in one CIF; a 500-site P1 CIF is about 40 kB.
DEFAULT_MAX_BYTES = 2_000_000
#: Closest allowed distance between two atoms, in Å (the shortest real bond, H2, is 0.74 Å).
MIN_DISTANCE = 0.5
#: Smallest allowed volume per atom, in Å^3 (real solids are above ~5; this only catches degenerate cells).
MIN_VOLUME_PER_SITE = 0.1

StructureSource = Union[str, bytes, os.PathLike, Any]


def read_structure(
    source: StructureSource,
    *,
    max_sites: int = DEFAULT_MAX_SITES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_cpu_s: float | None = DEFAULT_MAX_CPU_S,
) -> "Structure":  # noqa: F821 (pymatgen type, imported lazily)
    """Read and validate one crystal.

    Args:
        source: CIF text (``str`` containing a newline or starting with ``data_``), CIF ``bytes``, a path
            (``str`` or ``os.PathLike``) to a CIF file, a pymatgen ``Structure`` or an ASE ``Atoms``.
        max_sites: most sites accepted in the given cell.
        max_bytes: most bytes accepted in CIF text.
        max_cpu_s: most CPU seconds reading and validating may take (None: no limit); a request deadline set
            with ``sitenet.limits.deadline`` also stops it.

    Returns:
        A validated, ordered pymatgen ``Structure`` (a copy; the input is not modified).

    Raises:
        SiteNetError: a subclass whose ``code`` names the problem (see ``sitenet.errors``).
    """
    crystal = _read_valid(source, max_sites=max_sites, max_bytes=max_bytes, max_cpu_s=max_cpu_s)
    return crystal.to_structure() if isinstance(crystal, Crystal) else crystal


def read_crystal(
    source: StructureSource,
    *,
    max_sites: int = DEFAULT_MAX_SITES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_cpu_s: float | None = DEFAULT_MAX_CPU_S,
) -> Crystal:
    """``read_structure`` without the pymatgen ``Structure``: the same inputs, checks and errors, and the same
    sites in the same order, as arrays.

    Raises:
        SiteNetError: exactly as ``read_structure``.
    """
    crystal = _read_valid(source, max_sites=max_sites, max_bytes=max_bytes, max_cpu_s=max_cpu_s)
    return crystal if isinstance(crystal, Crystal) else Crystal.from_structure(crystal)


def read_structures(
    sources: Iterable[StructureSource],
    *,
    max_sites: int = DEFAULT_MAX_SITES,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list["Structure | SiteNetError"]:  # noqa: F821
    """Read many crystals; item ``k`` of the result is the structure or the error for ``sources[k]``."""
    out: list[Any] = []
    for source in sources:
        try:
            out.append(read_structure(source, max_sites=max_sites, max_bytes=max_bytes))
        except SiteNetError as err:
            out.append(err)
    return out


def _read_valid(source: StructureSource, *, max_sites: int, max_bytes: int,
                max_cpu_s: float | None = DEFAULT_MAX_CPU_S) -> "Crystal | Structure":  # noqa: F821
    """The validated crystal of any accepted source, in whichever form it was read, within ``max_cpu_s`` of
    CPU time (and the deadline of ``sitenet.limits.deadline``, if one is set)."""

    def read() -> "Crystal | Structure":  # noqa: F821
        parsed = _read(source, max_sites=max_sites, max_bytes=max_bytes)
        if isinstance(parsed, Crystal):
            validate_crystal(parsed, max_sites=max_sites)
        else:
            validate_structure(parsed, max_sites=max_sites)
        return parsed

    return call_limited(read, cpu_s=max_cpu_s, what="reading the input")


def _read(source: StructureSource, *, max_sites: int, max_bytes: int) -> "Crystal | Structure":  # noqa: F821
    """The unvalidated crystal of any accepted source: a Crystal, or a Structure (a copy, for objects)."""
    from pymatgen.core import Structure

    if isinstance(source, Structure):
        return source.copy()
    if any(f"{c.__module__}.{c.__name__}" == "ase.atoms.Atoms" for c in type(source).__mro__):  # subclasses too
        return _from_ase(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, str):
        if any(c in source for c in "\n\r") or source.lstrip().startswith("data_") or not source.strip() \
                or len(source) > 1024:
            data = source.encode("utf-8", errors="surrogateescape")
        else:
            data = _read_path(Path(source), max_bytes)
    elif isinstance(source, os.PathLike):
        data = _read_path(Path(source), max_bytes)
    else:
        raise InputTypeError(
            f"cannot read a crystal from {type(source).__name__}; give CIF text, bytes, a path, "
            "a pymatgen Structure or an ASE Atoms"
        )
    return parse_cif(data, max_bytes=max_bytes, max_sites=max_sites)


def validate_structure(structure: "Structure", *, max_sites: int = DEFAULT_MAX_SITES) -> None:  # noqa: F821
    """Raise a typed error if ``structure`` is not an ordered crystal this model can featurise.

    The checks run cheapest first, so a 10,000-atom cell is refused before any O(n^2) work.
    """
    from pymatgen.core import Element

    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    frac = np.asarray(structure.frac_coords, dtype=float)
    _check_cell(len(structure), matrix, frac, max_sites=max_sites)
    if not structure.is_ordered:
        raise DisorderedStructureError(
            "partial occupancy or mixed sites found; only ordered crystals are supported",
            detail={"formula": structure.composition.formula},
        )
    bad: list[str] = []
    too_heavy: list[str] = []
    for species in structure.composition.elements:
        element = getattr(species, "element", species)  # Species (with oxidation state) -> Element
        if not isinstance(element, Element):
            bad.append(str(species))
        elif element.Z > MAX_Z:
            too_heavy.append(element.symbol)
    if bad:
        raise UnknownSpeciesError(f"unknown or dummy species: {', '.join(sorted(bad))}", detail={"species": bad})
    _check_heavy(too_heavy)
    _check_overlaps(niggli_cell(matrix, frac), lambda i: structure[i].species_string)


def validate_crystal(crystal: Crystal, *, max_sites: int = DEFAULT_MAX_SITES) -> None:
    """``validate_structure`` for a Crystal (whose sites are ordered and real elements by construction)."""
    _check_cell(len(crystal), crystal.lattice, crystal.frac_coords, max_sites=max_sites)
    heavy = crystal.atomic_numbers > MAX_Z
    if heavy.any():
        _check_heavy(list(dict.fromkeys(s for s, h in zip(crystal.species, heavy) if h)))
    _check_overlaps(crystal.niggli, crystal.species.__getitem__)


def _check_cell(n: int, matrix: np.ndarray, frac: np.ndarray, *, max_sites: int) -> None:
    if n == 0:
        raise EmptyStructureError("the structure has no sites")
    if n > max_sites:
        raise TooManySitesError(
            f"the cell has {n} sites, more than the limit of {max_sites}", detail={"n_sites": n, "max": max_sites}
        )
    if not np.isfinite(matrix).all():
        raise InvalidLatticeError("the lattice has non-finite parameters")
    volume = float(abs(np.linalg.det(matrix)))
    if not np.isfinite(volume) or volume < MIN_VOLUME_PER_SITE * n:
        raise InvalidLatticeError(
            f"the cell volume {volume:.4g} Å^3 is zero or degenerate for {n} sites", detail={"volume": volume}
        )
    if not np.isfinite(frac).all():
        raise NonFiniteCoordinatesError("some atomic coordinates are NaN or infinite")


def _check_heavy(too_heavy: list[str]) -> None:
    """``too_heavy``: element symbols beyond the property table, in order of first appearance."""
    if too_heavy:
        raise UnsupportedElementError(
            f"elements beyond Z={MAX_Z} are not supported: {', '.join(sorted(too_heavy))}",
            detail={"elements": too_heavy},
        )


def _check_overlaps(niggli: tuple[np.ndarray, np.ndarray], label: Callable[[int], str]) -> None:
    """Periodic minimum distance between distinct sites, and between a site and its own images.

    Done in the Niggli-reduced cell (``niggli``: lattice, frac_coords), where checking the 27 neighbouring cells
    finds every close pair. ``label(i)`` names site i in the message.
    """
    lattice, frac = niggli
    shortest_vector = float(np.linalg.norm(lattice, axis=1).min())  # a site against its own image
    if shortest_vector < MIN_DISTANCE:
        raise OverlappingAtomsError(
            f"the shortest lattice vector is {shortest_vector:.3f} Å, so every atom overlaps its own periodic "
            f"image (closer than {MIN_DISTANCE} Å)",
            detail={"distance": shortest_vector},
        )
    if len(frac) < 2 or not _may_overlap(lattice, frac):
        return
    dist = min_image_distances(frac, frac, lattice)  # (n, n)
    np.fill_diagonal(dist, np.inf)
    d_min = float(dist.min())
    if d_min < MIN_DISTANCE:
        i, j = np.unravel_index(int(dist.argmin()), dist.shape)
        raise OverlappingAtomsError(
            f"sites {i} ({label(int(i))}) and {j} ({label(int(j))}) "
            f"are {d_min:.3f} Å apart, closer than {MIN_DISTANCE} Å",
            detail={"sites": [int(i), int(j)], "distance": d_min},
        )


def _may_overlap(lattice: np.ndarray, frac: np.ndarray) -> bool:
    """False only if no two distinct sites are within MIN_DISTANCE, without the (n, n, 27) image search.

    Any image of the wrapped fractional difference f is at least |f_k| * d_k away, d_k being the spacing of
    the lattice planes normal to reciprocal axis k, so only pairs close in all three |f_k| * d_k are searched.
    Margins make the answer safe against rounding; a True answer runs the full search as before.
    """
    diff = frac[None, :, :] - frac[:, None, :]  # (n, n, 3)
    diff -= np.round(diff)
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(lattice), axis=0)
    near = (np.abs(diff) * spacing < MIN_DISTANCE + 1e-6).all(-1)
    np.fill_diagonal(near, False)
    if not near.any():
        return False
    cart = diff[near] @ lattice  # (pairs, 3)
    shifts = NEIGHBOUR_SHIFTS @ lattice
    d2 = ((cart[:, None, :] + shifts[None, :, :]) ** 2).sum(-1).min(-1)
    return bool(d2.min() < (MIN_DISTANCE + 1e-6) ** 2)


def _read_path(path: Path, max_bytes: int) -> bytes:
    try:
        return _read_file(path, max_bytes)
    except OSError as err:
        raise CifParseError(f"cannot read {path}: {err.strerror or err}") from None


def _read_file(path: Path, max_bytes: int) -> bytes:
    if not path.exists():
        raise CifParseError(f"no such file: {path}")
    if not path.is_file():
        raise CifParseError(f"not a file: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputTooLargeError(f"{path.name} is {size} bytes, more than the limit of {max_bytes}")
    return path.read_bytes()


def _from_ase(atoms: Any) -> "Structure":  # noqa: F821
    from pymatgen.core import Lattice, Structure

    cell = np.asarray(atoms.get_cell(), dtype=float)
    if len(atoms) and not all(atoms.get_pbc()):
        raise InvalidLatticeError("the ASE Atoms is not periodic in all three directions")
    symbols = list(atoms.get_chemical_symbols())
    try:
        return Structure(Lattice(cell), symbols, np.asarray(atoms.get_positions(), dtype=float),
                         coords_are_cartesian=True)
    except (ValueError, np.linalg.LinAlgError) as err:
        raise InvalidLatticeError(f"cannot build a crystal from the ASE Atoms: {err}") from None
