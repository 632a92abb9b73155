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
        if any(c in source for c in "\n\r") or source.lstrip().startswith("data_") or not source.strip() \
                or len(source) > 1024:
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


def _parse_cif(data: bytes, *, max_bytes: int, max_sites: int) -> "Structure":  # noqa: F821
    """CIF bytes -> Structure. gemmi reads the block first (fast, with line-numbered syntax errors) so that
    every refusal names its cause; a P1 CIF of ordered sites is then built straight from gemmi's values
    (pymatgen's parser is the slowest step of inference), anything else goes through pymatgen's parser."""
    if len(data) > max_bytes:
        raise InputTooLargeError(
            f"the CIF is {len(data)} bytes, more than the limit of {max_bytes}", detail={"bytes": len(data)}
        )
    if not data.strip():
        raise EmptyInputError("the CIF is empty")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or (
        len(data) > 8 and max(data[0::2].count(0), data[1::2].count(0)) > len(data) // 4
    ):
        raise CifParseError("the file is UTF-16 encoded; save the CIF as UTF-8 or ASCII text")
    if b"\x00" in data:
        raise CifParseError("the input is binary (it contains NUL bytes), not CIF text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # decodes any byte string; CIF 1.1 is ASCII anyway
    blocks = len(_DATA_BLOCK.findall(data))
    if blocks == 0:
        raise CifParseError("no 'data_' block found: this is not a CIF")
    if blocks > 1:
        raise MultipleBlocksError(
            f"the file holds {blocks} data blocks; send one crystal per CIF", detail={"blocks": blocks}
        )
    text = text.removeprefix("\ufeff")
    block = _read_block(text)
    table = _check_block(block, max_sites=max_sites)
    fast = _p1_structure(block, table)
    if fast is not None:
        return fast
    return _parse_with_pymatgen(text)


def _read_block(text: str) -> Any:
    import gemmi

    try:
        document = gemmi.cif.read_string(text)
    except (RuntimeError, ValueError) as err:
        raise CifParseError(f"CIF syntax error: {err}") from None
    if len(document) > 1:
        raise MultipleBlocksError(
            f"the file holds {len(document)} data blocks; send one crystal per CIF", detail={"blocks": len(document)}
        )
    if len(document) == 0:
        raise CifParseError("no 'data_' block found: this is not a CIF")
    return document[0]


_CELL_TAGS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_SYMBOL = re.compile(r"^([A-Z][a-z]?)(\d*[+-]|[+-]\d*)?$")
_MIXED_SYMBOL = re.compile(r"^([A-Z][a-z]?\d*\.\d+){2,}$")


def _number(value: str, what: str) -> float:
    import gemmi

    if value in ("?", "."):
        raise CifParseError(f"{what} has the unknown value {value!r}")
    number = gemmi.cif.as_number(value)
    if np.isnan(number) and value.strip().lower().lstrip("+-") not in ("nan", "inf", "infinity"):
        raise CifParseError(f"{what} is not a number: {value!r}")
    if value.strip().lower().lstrip("+-") in ("inf", "infinity"):
        return float("inf") if not value.strip().startswith("-") else float("-inf")
    return float(number)


def _check_block(block: Any, *, max_sites: int) -> Any:
    """Cell, atom table, species and occupancies, checked before any parser builds a structure."""
    cell = []
    for tag in _CELL_TAGS:
        value = block.find_value(tag)
        if value is None:
            raise CifParseError(f"the CIF has no {tag}: the cell is not defined")
        cell.append(_number(value, tag))
    lengths, angles = np.array(cell[:3]), np.array(cell[3:])
    if not np.all(np.isfinite(cell)):
        raise InvalidLatticeError(f"the cell parameters are not finite: {cell}")
    if np.any(lengths <= 0):
        raise InvalidLatticeError(f"cell lengths must be positive, got {lengths.tolist()} Å")
    if np.any((angles <= 0) | (angles >= 180)):
        raise InvalidLatticeError(f"cell angles must lie strictly between 0 and 180 degrees, got {angles.tolist()}")
    cos = np.cos(np.radians(angles))
    factor = 1 - (cos**2).sum() + 2 * cos.prod()
    if factor <= 1e-8:
        raise InvalidLatticeError(f"the cell angles {angles.tolist()} give a zero or impossible volume")
    table = block.find("_atom_site_", ["type_symbol", "fract_x", "fract_y", "fract_z", "?occupancy"])
    if not table.has_column(0):
        table = block.find("_atom_site_", ["label", "fract_x", "fract_y", "fract_z", "?occupancy"])
    if table.width() == 0:
        missing = [t for t in ("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")
                   if block.find_value(t) is None and not block.find_loop(t)]
        raise CifParseError("the CIF has no atoms: no _atom_site loop with "
                            + (", ".join(missing) if missing else "_atom_site_type_symbol/label and fractional coordinates"))
    if len(table) == 0:
        raise CifParseError("the _atom_site loop has no rows: the CIF has no atoms")
    if len(table) > max_sites:
        raise TooManySitesError(f"the CIF lists {len(table)} atom sites, more than the limit of {max_sites}",
                                detail={"n_sites": len(table), "max": max_sites})
    for k, row in enumerate(table):
        symbol = row.str(0)
        if _MIXED_SYMBOL.match(symbol) and not _SYMBOL.match(symbol):
            raise DisorderedStructureError(f"site {k} is a mixed site {symbol!r}; only ordered crystals are supported")
        for axis, col in zip("xyz", (1, 2, 3)):
            v = _number(row[col], f"_atom_site_fract_{axis} of site {k}")
            if not np.isfinite(v):
                raise NonFiniteCoordinatesError(f"_atom_site_fract_{axis} of site {k} is {row[col]} (non-finite)")
        if row.has(4) and row[4] not in ("?", "."):
            occupancy = _number(row[4], f"_atom_site_occupancy of site {k}")
            if occupancy < 0:
                raise CifParseError(f"site {k} has a negative occupancy {occupancy}")
            if occupancy == 0:
                raise DisorderedStructureError(f"site {k} has occupancy 0 (a vacancy); only ordered crystals are supported")
    if len(block.find_loop("_atom_site_type_symbol")):  # labels alone are left to pymatgen to interpret
        for k, row in enumerate(table):
            _check_symbol(row.str(0), k)
    return table


def _check_symbol(symbol: str, k: int) -> str:
    from pymatgen.core import Element

    match = _SYMBOL.match(symbol)
    if match is None or not Element.is_valid_symbol(match.group(1)):
        raise UnknownSpeciesError(f"site {k} has the unknown species {symbol!r}", detail={"species": [symbol]})
    return match.group(1)


def _p1_structure(block: Any, table: Any) -> "Structure | None":  # noqa: F821
    """A Structure built directly from gemmi's values when that is exactly what pymatgen would build: P1
    (identity symmetry only), explicit type symbols of known elements, full occupancy. None otherwise."""
    from pymatgen.core import Lattice, Structure

    ops = [op.strip().strip("'\"").replace(" ", "").lower() for tag in
           ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz") for op in block.find_values(tag)]
    if ops != ["x,y,z"] or not len(block.find_loop("_atom_site_type_symbol")):
        return None
    species, frac = [], np.empty((len(table), 3))
    for k, row in enumerate(table):
        match = _SYMBOL.match(row.str(0))
        if match is None or match.group(2) or (row.has(4) and row[4] not in ("1", "1.0", "1.00", "?", ".")):
            return None
        species.append(_check_symbol(row.str(0), k))
        frac[k] = [float(row[c].split("(")[0]) for c in (1, 2, 3)]
    # pymatgen rounds coordinates within 1e-4 of 1/3 and 2/3 to the exact value; do the same.
    for ideal in (1 / 3, 2 / 3):
        frac[np.abs(frac / ideal - 1) <= 1e-4] = ideal
    a, b, c, alpha, beta, gamma = (float(block.find_value(t).split("(")[0]) for t in _CELL_TAGS)
    return Structure(Lattice.from_parameters(a, b, c, alpha, beta, gamma), species, frac)


def _parse_with_pymatgen(text: str) -> "Structure":  # noqa: F821
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structures = CifParser.from_str(text).parse_structures(primitive=False)
        except Exception as err:  # noqa: BLE001 - pymatgen raises many types on malformed input
            reasons = _warning_reasons(caught)
            message = f"{err}" + (f": {'; '.join(reasons)}" if reasons else "")
            raise CifParseError(message, detail={"reasons": reasons}) from None
    if not structures:  # pragma: no cover - pymatgen raises instead
        raise CifParseError("no structure in the CIF", detail={"reasons": _warning_reasons(caught)})
    reasons = _warning_reasons(caught)
    dummy = [r for r in reasons if "is not a valid Element" in r]
    if dummy:
        raise UnknownSpeciesError(f"unknown species in the CIF: {'; '.join(dummy)}", detail={"reasons": dummy})
    return structures[0]


def _warning_reasons(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """pymatgen reports the real cause of a failed parse only as warnings: keep their first lines."""
    seen: list[str] = []
    for w in caught:
        line = " ".join(str(w.message).split())  # the cause follows pymatgen's first line
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
