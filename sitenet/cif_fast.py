"""A fast reader for symmetrised CIFs that gives exactly what ``sitenet.structure.read_structure`` gives.

The core already reads P1 CIFs (all of Materials Project's) straight from gemmi's values, but hands a CIF
with symmetry operations to pymatgen's ``CifParser``, which costs 3-20 ms (more with more operations).
This module reads such a CIF with gemmi, expands the symmetry the way
``CifParser(...).parse_structures(primitive=False)`` does (same 1/3-2/3 snapping, same 1e-4 duplicate
tolerance, same electronegativity site order), builds the pymatgen ``Structure`` and runs the *same*
``validate_structure`` as the core.

Everything else goes to ``read_structure`` unchanged, so codes and messages stay the core's: P1 CIFs, and
any CIF this reader is not sure to read exactly like pymatgen or that the core's pre-checks could refuse
(several data blocks, non-UTF-8 or CR line endings, disorder, occupancies other than 1, charges, dummy or
noble-gas symbols, missing or differently cased tags, magnetic or modulated CIFs, symmetry only by
space-group name, rows that coincide with another row's image, impossible cells, more rows than
``max_sites``). ``tests/sitenet/test_predict.py`` checks that both readers agree on the 400-crystal sample
(as given and symmetrised) and on the bad-CIF corpus.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from sitenet.structure import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_SITES,
    StructureSource,
    read_structure,
    validate_structure,
)

__all__ = ["CifArrays", "parse_cif_arrays", "read_structure_fast"]

#: pymatgen CifParser defaults: sites closer than this (fractional, per axis) are one site; coordinates
#: within this relative tolerance of 1/3 or 2/3 are snapped to them.
SITE_TOLERANCE = 1e-4
FRAC_TOLERANCE = 1e-4
#: pymatgen rejects cells thinner than 0.01 Å; leave anything near that to it.
_MIN_THICKNESS = 0.02
#: Above this many (image, image) comparisons the duplicate search is left to pymatgen.
_MAX_PAIRS = 4_000_000
_SYMOP_TAGS = ("_symmetry_equiv_pos_as_xyz", "_symmetry_equiv_pos_as_xyz_",
               "_space_group_symop_operation_xyz", "_space_group_symop_operation_xyz_")
_CELL_TAGS = tuple(f"_cell_length_{k}" for k in "abc") + tuple(f"_cell_angle_{k}" for k in ("alpha", "beta", "gamma"))
_SITE_TAGS = ("_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y",
              "_atom_site_fract_z")
_OCCUPANCY_TAG = "_atom_site_occupancy"
#: Text that sends a CIF to pymatgen: magnetic/modulated CIFs, implicit hydrogens, oxidation states.
_SLOW_MARKERS = ("magn", "_atom_site_moment", "modulation", "attached_hydrogens", "oxidation_number")
_DATA_BLOCK = re.compile(rb"^\s*data_", re.MULTILINE)  # the core's block count, so it agrees on "one block"
_ESD = re.compile(r"\(.+\)*")  # pymatgen.io.cif.str2float strips uncertainties with this pattern
_XYZ = re.compile(r"[\sxyzXYZ0-9+\-*/.,]+")
_SYMBOL = re.compile(r"[A-Z][a-z]?")
_SPECIAL = re.compile("|".join(("Hw", "Ow", "Wat", "wat", "OH", "OH2", "NO3")))  # CifParser._parse_symbol


class CifArrays:
    """A crystal read from a CIF, in pymatgen's site order.

    Attributes:
        lattice: pymatgen ``Lattice`` from the six cell parameters (``Lattice.from_parameters``).
        species: element symbol of each site.
        frac_coords: (n, 3) float64 fractional coordinates in [0, 1).
        n_ops: symmetry operations applied (1 for a P1 CIF).
    """

    __slots__ = ("lattice", "species", "frac_coords", "n_ops")

    def __init__(self, lattice: Any, species: list[str], frac_coords: np.ndarray, n_ops: int) -> None:
        self.lattice = lattice
        self.species = species
        self.frac_coords = frac_coords
        self.n_ops = n_ops

    def to_structure(self) -> Any:
        from pymatgen.core import Structure

        return Structure(self.lattice, self.species, self.frac_coords)


def read_structure_fast(
    source: StructureSource,
    *,
    max_sites: int = DEFAULT_MAX_SITES,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Any:
    """Drop-in for ``sitenet.structure.read_structure``: same inputs, same result, same errors, faster.

    Raises:
        SiteNetError: a subclass whose ``code`` names the problem (exactly as ``read_structure``).
    """
    data = _as_bytes(source, max_bytes)
    if data is None:
        return read_structure(source, max_sites=max_sites, max_bytes=max_bytes)
    # The core's own P1 path is as fast and defines the site order for P1 CIFs: only symmetry is read here.
    arrays = parse_cif_arrays(data, max_sites=max_sites, max_bytes=max_bytes, symmetrised_only=True)
    if arrays is None:
        return read_structure(data, max_sites=max_sites, max_bytes=max_bytes)
    structure = arrays.to_structure()
    validate_structure(structure, max_sites=max_sites)
    return structure


def _as_bytes(source: StructureSource, max_bytes: int) -> bytes | None:
    """The CIF bytes of ``source``, or None when the core reader must handle it (objects, bad paths)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, str):
        if "\n" in source or source.lstrip().startswith("data_") or source.strip() == "":
            try:
                return source.encode("utf-8")
            except UnicodeEncodeError:
                return None
        source = Path(source)
    if isinstance(source, os.PathLike):
        path = Path(source)
        try:
            if path.is_file() and path.stat().st_size <= max_bytes:
                return path.read_bytes()
        except OSError:
            return None
    return None


def parse_cif_arrays(data: bytes, *, max_sites: int = DEFAULT_MAX_SITES, max_bytes: int = DEFAULT_MAX_BYTES,
                     symmetrised_only: bool = False) -> CifArrays | None:
    """Read an ordinary CIF the way pymatgen would, or return None if it is not ordinary (see module doc).

    With ``symmetrised_only`` a CIF with a single symmetry operation (P1) also gives None, early.
    """
    if len(data) > max_bytes or not data.strip() or b"\x00" in data or b"\r" in data:
        return None
    if len(_DATA_BLOCK.findall(data)) != 1:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lowered = text.lower()
    if any(marker in lowered for marker in _SLOW_MARKERS):
        return None
    import gemmi

    try:
        document = gemmi.cif.read_string(text)
        if len(document) != 1:
            return None
        return _read_block(document.sole_block(), max_sites=max_sites, min_ops=2 if symmetrised_only else 1)
    except (RuntimeError, ValueError, IndexError, KeyError, OverflowError, ZeroDivisionError):
        return None  # gemmi's syntax errors are RuntimeError/ValueError; pymatgen will explain


def _number(raw: str | None) -> float | None:
    """pymatgen's ``str2float`` on an unquoted CIF value; None for anything it would treat specially."""
    if raw is None or not raw or raw[0] in "'\";" or raw in ("?", "."):
        return None
    try:
        value = float(_ESD.sub("", raw))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_block(block: Any, *, max_sites: int, min_ops: int) -> CifArrays | None:
    import gemmi

    ops = _symops(block)
    if ops is None or len(ops) < min_ops:
        return None
    cell = []
    for tag in _CELL_TAGS:
        pair = block.find_pair(tag)
        if pair is None or pair[0] != tag:  # missing, or cased differently (pymatgen's keys are case-sensitive)
            return None
        value = _number(pair[1])
        if value is None:
            return None
        cell.append(value)
    lattice = _lattice(cell)
    if lattice is None:
        return None
    table = block.find("_atom_site_", [t[len("_atom_site_"):] for t in _SITE_TAGS] + ["?occupancy"])
    if (not 0 < len(table) <= max_sites or tuple(table.tags)[:5] != _SITE_TAGS
            or block.find_loop(_SITE_TAGS[0]).get_loop() is None):
        return None
    has_occupancy = table.has_column(5)
    if has_occupancy and tuple(table.tags)[5] != _OCCUPANCY_TAG:
        return None
    symbols: list[str] = []
    coords = np.empty((len(table), 3), dtype=np.float64)
    for k, row in enumerate(table):
        symbol = gemmi.cif.as_string(row[1])
        if not _plain_element(symbol):
            return None
        if has_occupancy and _number(row[5]) != 1.0:
            return None
        for axis in range(3):
            value = _number(row[2 + axis])
            if value is None:
                return None
            coords[k, axis] = value
        symbols.append(symbol)
    coords = _snap_thirds(coords)
    return _expand(lattice, symbols, coords, ops)


def _lattice(cell: list[float]) -> Any:
    from pymatgen.core import Lattice

    lengths, angles = np.array(cell[:3]), np.array(cell[3:])
    cos = np.cos(np.radians(angles))
    if np.any(lengths <= 0) or np.any((angles <= 0) | (angles >= 180)) or 1 - (cos**2).sum() + 2 * cos.prod() <= 1e-6:
        return None  # the core refuses these cells before parsing; let it say so
    lattice = Lattice.from_parameters(*cell)
    matrix = lattice.matrix
    if not np.all(np.isfinite(matrix)):
        return None
    volume = abs(float(np.linalg.det(matrix)))
    if not math.isfinite(volume) or volume < 1e-6:
        return None
    thickness = 1.0 / np.linalg.norm(np.linalg.inv(matrix), axis=0)  # d(100), d(010), d(001)
    return lattice if float(thickness.min()) >= _MIN_THICKNESS else None


def _symops(block: Any) -> np.ndarray | None:
    """(K, 4, 4) affine matrices parsed by pymatgen's own ``SymmOp.from_xyz_str`` (cached per op list)."""
    import gemmi

    for tag in _SYMOP_TAGS:
        column = block.find_values(tag)
        if len(column) == 0:
            continue
        if column.get_loop() is not None:
            if column.tag != tag:
                return None
        else:
            pair = block.find_pair(tag)
            if pair is None or pair[0] != tag:
                return None
        xyz = tuple(gemmi.cif.as_string(v) for v in column)
        if not all(_XYZ.fullmatch(op) and op.count(",") == 2 for op in xyz):
            return None
        return _parse_ops(xyz)
    return None  # symmetry only from a space-group name or number: pymatgen's tables decide


@functools.lru_cache(maxsize=512)
def _parse_ops(xyz: tuple[str, ...]) -> np.ndarray:
    from pymatgen.core.operations import SymmOp

    return np.stack([SymmOp.from_xyz_str(s).affine_matrix for s in xyz])


def _plain_element(symbol: str) -> bool:
    """A bare element symbol that CifParser reads as itself, with a defined electronegativity (site order)."""
    if not _SYMBOL.fullmatch(symbol) or _SPECIAL.match(symbol):
        return False
    return _electronegativity(symbol) is not None


@functools.lru_cache(maxsize=256)
def _electronegativity(symbol: str) -> float | None:
    import warnings

    from pymatgen.core import Element

    if not Element.is_valid_symbol(symbol):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = Element(symbol).X
    return float(x) if math.isfinite(x) else None


def _snap_thirds(coords: np.ndarray) -> np.ndarray:
    """CifParser._sanitize_data: values within FRAC_TOLERANCE (relative) of 1/3 or 2/3 become exactly that."""
    out = coords.copy()
    for ideal in (1 / 3, 2 / 3):
        out[np.abs(coords / ideal - 1.0) <= FRAC_TOLERANCE] = ideal
    return out


def _close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bool: periodic per-axis distance below SITE_TOLERANCE (pymatgen's in_coord_list_pbc)."""
    diff = a[:, None, :] - b[None, :, :]
    return np.all(np.abs(diff - np.round(diff)) < SITE_TOLERANCE, axis=-1)


def _expand(lattice: Any, symbols: list[str], coords: np.ndarray, ops: np.ndarray) -> CifArrays | None:
    n, k = len(coords), len(ops)
    if n * n * k > _MAX_PAIRS:
        return None
    homogeneous = np.concatenate([coords, np.ones((n, 1))], axis=1)  # (n, 4)
    images = np.einsum("kij,nj->nki", ops, homogeneous)[:, :, :3]  # (n, K, 3): SymmOp.operate per row and op
    # CifParser merges a row into an earlier row when one of its images lands on that row: disorder or a
    # duplicate, both for pymatgen to judge.
    if n > 1:
        hits = _close(images.reshape(n * k, 3), coords).reshape(n, k, n).any(axis=1)  # (n, n)
        if np.any(np.tril(hits, -1)):
            return None
    images -= np.floor(images)
    by_element: dict[str, list[np.ndarray]] = {}
    for symbol in dict.fromkeys(symbols):
        rows = [r for r, s in enumerate(symbols) if s == symbol]
        unique = _unique_images(images[rows].reshape(len(rows) * k, 3), np.repeat(np.arange(len(rows)), k))
        if unique is None:
            return None
        by_element[symbol] = unique
    order = sorted(by_element, key=lambda s: (_electronegativity(s), s))  # Structure.get_sorted_structure
    species = [s for s in order for _ in range(len(by_element[s]))]
    frac = np.concatenate([by_element[s] for s in order])
    return CifArrays(lattice, species, frac, k)


def _unique_images(images: np.ndarray, row: np.ndarray) -> np.ndarray | None:
    """CifParser._unique_coords for one element: keep an image unless it is within tolerance of a kept one.

    Images of one row that coincide (special positions) collapse exactly as in pymatgen. If images of two
    different rows coincide, or closeness is not transitive, the answer depends on pymatgen's order of
    operations, so None hands the CIF to pymatgen.
    """
    m = len(images)
    close = np.tril(_close(images, images), -1)  # close[i, j], j < i
    earlier = close.any(axis=1)
    keep = ~earlier
    if np.any(close & (row[:, None] != row[None, :])):
        return None
    if not np.all((close[earlier] & keep[None, :]).any(axis=1)):
        return None
    return images[keep] if m else images
