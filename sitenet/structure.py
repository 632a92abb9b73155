"""Structure input and validation: the only place that parses CIFs.

``read_structure`` accepts CIF text, CIF bytes, a path to a CIF, a pymatgen ``Structure`` or an ASE ``Atoms`` and
returns a validated, ordered pymatgen ``Structure`` or raises a typed :class:`~sitenet.errors.SiteNetError`.
``read_structures`` does the same per item and never raises for a bad item, so nothing is dropped silently.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from sitenet.elements import MAX_Z
from sitenet.supercell import min_image_distances, niggli_cell
from sitenet.errors import (
    CifParseError,
    EmptyInputError,
    EmptyStructureError,
    DisorderedStructureError,
    InputTooLargeError,
    InputTypeError,
    InvalidLatticeError,
    MultipleBlocksError,
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

_DATA_BLOCK = re.compile(rb"^\s*data_", re.MULTILINE)
_SITE_COUNT_HINT = re.compile(rb"^\s*[A-Za-z]", re.MULTILINE)


def read_structure(
    source: StructureSource,
    *,
    max_sites: int = DEFAULT_MAX_SITES,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> "Structure":  # noqa: F821 (pymatgen type, imported lazily)
    """Read and validate one crystal.

    Args:
        source: CIF text (``str`` containing a newline or starting with ``data_``), CIF ``bytes``, a path
            (``str`` or ``os.PathLike``) to a CIF file, a pymatgen ``Structure`` or an ASE ``Atoms``.
        max_sites: most sites accepted in the given cell.
        max_bytes: most bytes accepted in CIF text.

    Returns:
        A validated, ordered pymatgen ``Structure`` (a copy; the input is not modified).

    Raises:
        SiteNetError: a subclass whose ``code`` names the problem (see ``sitenet.errors``).
    """
    from pymatgen.core import Structure

    if isinstance(source, Structure):
        structure = source.copy()
    elif type(source).__name__ == "Atoms" and hasattr(source, "get_cell"):
        structure = _from_ase(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        structure = _parse_cif(bytes(source), max_bytes=max_bytes, max_sites=max_sites)
    elif isinstance(source, str):
        if "\n" in source or source.lstrip().startswith("data_") or source.strip() == "":
            structure = _parse_cif(source.encode("utf-8", errors="surrogateescape"), max_bytes=max_bytes,
                                   max_sites=max_sites)
        else:
            structure = _parse_cif(_read_path(Path(source), max_bytes), max_bytes=max_bytes, max_sites=max_sites)
    elif isinstance(source, os.PathLike):
        structure = _parse_cif(_read_path(Path(source), max_bytes), max_bytes=max_bytes, max_sites=max_sites)
    else:
        raise InputTypeError(
            f"cannot read a crystal from {type(source).__name__}; give CIF text, bytes, a path, "
            "a pymatgen Structure or an ASE Atoms"
        )
    validate_structure(structure, max_sites=max_sites)
    return structure


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


def validate_structure(structure: "Structure", *, max_sites: int = DEFAULT_MAX_SITES) -> None:  # noqa: F821
    """Raise a typed error if ``structure`` is not an ordered crystal this model can featurise.

    The checks run cheapest first, so a 10,000-atom cell is refused before any O(n^2) work.
    """
    from pymatgen.core import Element

    n = len(structure)
    if n == 0:
        raise EmptyStructureError("the structure has no sites")
    if n > max_sites:
        raise TooManySitesError(
            f"the cell has {n} sites, more than the limit of {max_sites}", detail={"n_sites": n, "max": max_sites}
        )
    matrix = np.asarray(structure.lattice.matrix, dtype=float)
    if not np.all(np.isfinite(matrix)):
        raise InvalidLatticeError("the lattice has non-finite parameters")
    volume = float(abs(np.linalg.det(matrix)))
    if not np.isfinite(volume) or volume < MIN_VOLUME_PER_SITE * n:
        raise InvalidLatticeError(
            f"the cell volume {volume:.4g} Å^3 is zero or degenerate for {n} sites", detail={"volume": volume}
        )
    frac = np.asarray(structure.frac_coords, dtype=float)
    if not np.all(np.isfinite(frac)):
        raise NonFiniteCoordinatesError("some atomic coordinates are NaN or infinite")
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
    if too_heavy:
        raise UnsupportedElementError(
            f"elements beyond Z={MAX_Z} are not supported: {', '.join(sorted(too_heavy))}",
            detail={"elements": too_heavy},
        )
    _check_overlaps(structure)


def _check_overlaps(structure: "Structure") -> None:  # noqa: F821
    """Periodic minimum distance between distinct sites, and between a site and its own images.

    Done in the Niggli-reduced cell, where checking the 27 neighbouring cells finds every close pair.
    """
    lattice, frac = niggli_cell(np.asarray(structure.lattice.matrix, float), np.asarray(structure.frac_coords, float))
    dist = min_image_distances(frac, frac, lattice)  # (n, n)
    np.fill_diagonal(dist, np.inf)
    shortest_vector = float(np.linalg.norm(lattice, axis=1).min())  # a site against its own image
    if shortest_vector < MIN_DISTANCE:
        raise OverlappingAtomsError(
            f"the shortest lattice vector is {shortest_vector:.3f} Å, so every atom overlaps its own periodic "
            f"image (closer than {MIN_DISTANCE} Å)",
            detail={"distance": shortest_vector},
        )
    d_min = float(dist.min()) if len(frac) > 1 else np.inf
    if d_min < MIN_DISTANCE:
        i, j = np.unravel_index(int(dist.argmin()), dist.shape)
        raise OverlappingAtomsError(
            f"sites {i} ({structure[int(i)].species_string}) and {j} ({structure[int(j)].species_string}) "
            f"are {d_min:.3f} Å apart, closer than {MIN_DISTANCE} Å",
            detail={"sites": [int(i), int(j)], "distance": d_min},
        )


def _read_path(path: Path, max_bytes: int) -> bytes:
    if not path.exists():
        raise CifParseError(f"no such file: {path}")
    if not path.is_file():
        raise CifParseError(f"not a file: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputTooLargeError(f"{path.name} is {size} bytes, more than the limit of {max_bytes}")
    return path.read_bytes()


def _parse_cif(data: bytes, *, max_bytes: int, max_sites: int) -> "Structure":  # noqa: F821
    from pymatgen.io.cif import CifParser

    if len(data) > max_bytes:
        raise InputTooLargeError(
            f"the CIF is {len(data)} bytes, more than the limit of {max_bytes}", detail={"bytes": len(data)}
        )
    if not data.strip():
        raise EmptyInputError("the CIF is empty")
    if b"\x00" in data:
        raise CifParseError("the input is binary, not CIF text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = data.decode("latin-1")
        except UnicodeDecodeError as err:  # pragma: no cover - latin-1 decodes any byte string
            raise CifParseError(f"the CIF is not text: {err}") from None
    blocks = len(_DATA_BLOCK.findall(data))
    if blocks == 0:
        raise CifParseError("no 'data_' block found: this is not a CIF")
    if blocks > 1:
        raise MultipleBlocksError(
            f"the file holds {blocks} data blocks; send one crystal per CIF", detail={"blocks": blocks}
        )
    # A cheap upper bound on the site count before pymatgen expands symmetry: one line per atom in P1.
    if len(_SITE_COUNT_HINT.findall(data)) > 20 * max_sites + 200:
        raise TooManySitesError(f"the CIF has too many lines for at most {max_sites} sites")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser.from_str(text)
            structures = parser.parse_structures(primitive=False)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, ZeroDivisionError,
                AssertionError, np.linalg.LinAlgError) as err:
            reasons = _warning_reasons(caught)
            message = f"{err}" + (f": {'; '.join(reasons)}" if reasons else "")
            raise CifParseError(message, detail={"reasons": reasons}) from None
    if not structures:  # pragma: no cover - pymatgen raises instead
        raise CifParseError("no structure in the CIF", detail={"reasons": _warning_reasons(caught)})
    structure = structures[0]
    reasons = _warning_reasons(caught)
    dummy = [r for r in reasons if "is not a valid Element" in r]
    if dummy:
        raise UnknownSpeciesError(f"unknown species in the CIF: {'; '.join(dummy)}", detail={"reasons": dummy})
    return structure


def _warning_reasons(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """pymatgen reports the real cause of a failed parse only as warnings: keep their first lines."""
    seen: list[str] = []
    for w in caught:
        line = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
        if line and line not in seen:
            seen.append(line)
    return seen


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
