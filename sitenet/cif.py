"""The one CIF reader: CIF bytes -> a :class:`~sitenet.crystal.Crystal`, or a pymatgen ``Structure`` when only
pymatgen's parser can say what the CIF means.

gemmi reads the block first (fast, and its syntax errors carry line numbers), then the cell, atom table,
species and occupancies are checked so that every refusal names its cause. Two kinds of CIF are then read
straight from gemmi's values, exactly as pymatgen's ``CifParser(...).parse_structures(primitive=False)``
would read them (pymatgen's parser costs 3-20 ms a CIF, more than everything else of inference):

- P1 CIFs of ordered sites with explicit type symbols (all of Materials Project's), in the CIF's site order;
- CIFs with symmetry operations, expanded the way pymatgen does (same 1/3-2/3 snapping, same 1e-4 duplicate
  tolerance, same electronegativity site order).

Everything else goes to pymatgen: any CIF this reader is not sure to read exactly like pymatgen (non-UTF-8
or CR line endings, disorder, occupancies other than 1, charges, dummy or noble-gas symbols, missing or
differently cased tags, magnetic or modulated CIFs, symmetry only by space-group name, rows that coincide
with another row's image, cells pymatgen would refuse). ``tests/sitenet/test_cif.py`` checks both fast
readers against pymatgen on the 400-crystal sample (as given and symmetrised).
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from sitenet.crystal import Crystal
from sitenet.errors import (
    CifParseError,
    DisorderedStructureError,
    EmptyInputError,
    InputTooLargeError,
    InvalidLatticeError,
    MultipleBlocksError,
    OverlappingAtomsError,
    SiteNetError,
    NonFiniteCoordinatesError,
    TooManySitesError,
    UnknownSpeciesError,
)

__all__ = ["parse_cif", "split_blocks"]

_DATA_BLOCK = re.compile(rb"^\s*data_", re.MULTILINE)
_CELL_TAGS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_SYMBOL = re.compile(r"^([A-Z][a-z]?)(\d*[+-]|[+-]\d*)?$")
_MIXED_SYMBOL = re.compile(r"^([A-Z][a-z]?\d*\.\d+){2,}$")
#: A decimal number that gemmi's ``as_number`` and Python's ``float`` read alike (ASCII digits only: ``float``
#: also takes other scripts' digits and underscores, gemmi does not).
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,2})?")
#: Occupancy values that mean "fully occupied" to the P1 reader.
_FULL = ("1", "1.0", "1.00", "?", ".")


def parse_cif(data: bytes, *, max_bytes: int, max_sites: int) -> "Crystal | Structure":  # noqa: F821
    """CIF bytes -> a Crystal (read here) or a pymatgen Structure (read by pymatgen), not yet validated.

    Raises:
        SiteNetError: the input is not one readable CIF of an ordered crystal (see ``sitenet.errors``).
    """
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
        text, utf8 = data.decode("utf-8"), True
    except UnicodeDecodeError:
        text, utf8 = data.decode("latin-1"), False  # decodes any byte string; CIF 1.1 is ASCII anyway
    blocks = len(_DATA_BLOCK.findall(data))
    if blocks == 0:
        raise CifParseError("no 'data_' block found: this is not a CIF")
    if blocks > 1:
        text = _one_structure_block(data, utf8)
    text = text.removeprefix("\ufeff")
    block = _read_block(text)
    sites = _check_block(block, max_sites=max_sites)
    _check_expansion(block, sites, max_sites=max_sites)
    crystal = _p1_crystal(block, sites)
    if crystal is None and utf8 and b"\r" not in data:
        crystal = _symmetrised_crystal(block, text, max_sites=max_sites)
    return crystal if crystal is not None else _parse_with_pymatgen(text)


# --- files with several data blocks -----------------------------------------------------------------------------------
_BLOCK_HEADER = re.compile(rb"^[ \t]*data_(\S*)", re.IGNORECASE)
#: A block holds a structure if it has any of these (Pauling File / SpringerMaterials exports start with a
#: block of publication data only).
_STRUCTURE_TAGS = re.compile(rb"^[ \t]*_(atom_site_|cell_length_)", re.IGNORECASE | re.MULTILINE)
#: Most data blocks one file may hold.
MAX_BLOCKS = 1000


def split_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """The data blocks of a CIF file that hold a structure, in file order, as ``(block name, CIF bytes)``.

    A file of one block (or none, or not a CIF at all) comes back whole, to be refused or read as it is;
    blocks of metadata only (no cell, no atoms) are left out, unless no block holds a structure. A
    ``data_`` inside a ``;`` text field starts no block.
    """
    starts: list[tuple[int, str]] = []
    in_text, offset = False, 0
    for line in data.splitlines(keepends=True):
        if line.startswith(b";"):
            in_text = not in_text
        elif not in_text and (header := _BLOCK_HEADER.match(line)):
            starts.append((offset, header.group(1).decode("utf-8", "replace")))
            if len(starts) > MAX_BLOCKS:
                raise InputTooLargeError(f"the file holds more than {MAX_BLOCKS} data blocks",
                                         detail={"max_blocks": MAX_BLOCKS})
        offset += len(line)
    if len(starts) <= 1:
        return [(starts[0][1] if starts else "", data)]
    ends = [start for start, _ in starts[1:]] + [len(data)]
    blocks = [(name, data[start:end]) for (start, name), end in zip(starts, ends)]
    with_structure = [(name, block) for name, block in blocks if _STRUCTURE_TAGS.search(block)]
    return with_structure or blocks


def _one_structure_block(data: bytes, utf8: bool) -> str:
    """The text of the one block of a multi-block file that holds a structure; several such blocks are
    refused, naming them (the reader reads one crystal; ``split_blocks`` gives each)."""
    blocks = split_blocks(data)
    if len(blocks) > 1:
        names = [name for name, _ in blocks]
        shown = ", ".join(_echo(name, 40) for name in names[:10]) + (", ..." if len(names) > 10 else "")
        raise MultipleBlocksError(
            f"the file holds {len(blocks)} data blocks with a structure ({shown}); one CIF is one crystal here: "
            "read the blocks one by one (sitenet.cif.split_blocks), or send the file to the service's "
            "/predict_files, which predicts every block", detail={"blocks": len(blocks), "names": names[:100]})
    return blocks[0][1].decode("utf-8" if utf8 else "latin-1")


def _echo(value: str, limit: int = 60) -> str:
    """``value`` quoted for a message, cut to ``limit`` characters (saying how long it was): a message must
    never grow with the input (a 1 MB line once came back in a 1 MB error)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


#: gemmi's complaint about a quoted value that a line break ends; the line number is the quote's.
_UNTERMINATED_QUOTE = re.compile(r"^string:(\d+):\d+\(\d+\): unterminated ['\"]string['\"]")
#: Quoted values spanning lines mended per file, at most (each costs a re-read).
_MAX_MENDED_QUOTES = 32


def _read_block(text: str) -> Any:
    import gemmi

    mended = 0
    while True:
        try:
            document = gemmi.cif.read_string(text)
            break
        except (RuntimeError, ValueError) as err:
            quote = _UNTERMINATED_QUOTE.match(str(err))
            if quote is None or mended >= _MAX_MENDED_QUOTES:
                raise _syntax_error(str(err), text) from None
            text = _join_line(text, int(quote.group(1)))
            mended += 1
    if len(document) > 1:
        raise MultipleBlocksError(
            f"the file holds {len(document)} data blocks; send one crystal per CIF", detail={"blocks": len(document)}
        )
    if len(document) == 0:
        raise CifParseError("no 'data_' block found: this is not a CIF")
    return document[0]


_GEMMI_ERROR = re.compile(r"^string:(\d+):(\d+)\((\d+)\): (.*)$", re.S)


def _syntax_error(error: str, text: str) -> CifParseError:
    """gemmi's syntax error in words: where it is, and what is wrong when gemmi's own words say little (a
    file cut short, a block name that is not ASCII)."""
    where = _GEMMI_ERROR.match(error)
    if where is None:
        return CifParseError(f"CIF syntax error: {_cap(error, 300)}")
    line, column, offset, what = int(where.group(1)), int(where.group(2)), int(where.group(3)), where.group(4)
    detail = {"line": line, "column": column, "error": _cap(what, 300)}
    text_line = text.split("\n")[line - 1] if line - 1 < text.count("\n") + 1 else ""
    header = re.match(r"\s*data_(\S*)", text_line)
    if header and not header.group(1).isascii():
        return CifParseError(f"the data block name {_echo(header.group(1), 40)} on line {line} has non-ASCII "
                             "characters, which CIF 1.1 does not allow: rename the block with ASCII letters, "
                             "digits or _", detail=detail)
    if what.startswith("Wrong number of values in loop"):
        return _loop_error(what, text, line, detail)
    if not text[offset:].strip() or offset >= len(text.rstrip()):
        last = text.rstrip().split("\n")
        return CifParseError(f"the file ends unexpectedly at line {len(last)} ({_echo(last[-1].strip(), 40)}), "
                             f"in the middle of {_unfinished(what)}: it looks truncated", detail=detail)
    return CifParseError(f"CIF syntax error on line {line}, column {column}: {_cap(what, 300)} "
                         f"(the line reads {_echo(text_line.strip(), 60)})", detail=detail)


def _loop_error(what: str, text: str, line: int, detail: dict[str, Any]) -> CifParseError:
    """A loop whose values do not fill its rows: cut short if nothing but its values follows it."""
    lines = text.rstrip().split("\n")
    body = [t.strip() for t in lines[line:]]
    values = [t for t in body if t and not t.startswith("_")]
    n_tags = len([t for t in body[:body.index(values[0])] if t.startswith("_")]) if values else 0
    ends_here = not any(t.lower().startswith(("loop_", "data_")) or t.startswith("_")
                        for t in body[body.index(values[0]) if values else 0:])
    ends_here = ends_here and len(lines[-1].split()) < n_tags  # the last row is short: cut, not mistyped
    tags = what.split("loop ")[-1]
    if ends_here:
        return CifParseError(f"the file ends unexpectedly at line {len(lines)} ({_echo(lines[-1].strip(), 40)}), in "
                             f"the middle of a row of the {tags} loop that starts on line {line}: it looks truncated",
                             detail=detail)
    return CifParseError(f"the {tags} loop that starts on line {line} has a row with the wrong number of values "
                         "(every row needs one value per tag; quote values that contain spaces)", detail=detail)


def _unfinished(what: str) -> str:
    if what.startswith("Wrong number of values in loop"):
        return f"a loop row ({what.split('loop ')[-1]} has fewer values than tags)"
    if what.startswith("unterminated text field"):
        return "a text field (a ';' line opens it and none closes it)"
    return "a tag and its value"


def _join_line(text: str, line: int) -> str:
    """``text`` with line ``line`` (1-based) joined to the next by a space: CIF 1.1 forbids a quoted value
    that spans lines, but programs write them (titles, journal names) and pymatgen reads them."""
    lines = text.split("\n")
    if line >= len(lines):
        raise CifParseError(f"CIF syntax error: the quoted value on line {line} is never closed")
    lines[line - 1:line + 1] = [lines[line - 1] + " " + lines[line]]
    return "\n".join(lines)


# --- checks before any structure is built ----------------------------------------------------------------------
class _Sites:
    """The atom table as the checks found it: raw values per column, the symbols, and the coordinates when
    every one of them is a plain decimal number (None otherwise)."""

    __slots__ = ("table", "symbols", "raw", "coords")

    def __init__(self, table: Any) -> None:
        import gemmi

        self.table = table
        self.symbols = [gemmi.cif.as_string(v) for v in table.column(0)]
        self.raw = [list(table.column(c)) for c in (1, 2, 3)]
        self.coords = _plain_numbers(self.raw)


def _plain_numbers(columns: Sequence[list[str]]) -> np.ndarray | None:
    """(n, len(columns)) values when every value is a finite plain decimal number, else None."""
    if not all(all(map(_PLAIN_NUMBER.fullmatch, column)) for column in columns):
        return None
    values = np.ascontiguousarray(np.array([list(map(float, column)) for column in columns], dtype=np.float64).T)
    return values if np.isfinite(values).all() else None


def _number(value: str, what: str) -> float:
    import gemmi

    if value in ("?", "."):
        raise CifParseError(f"{what} has the unknown value {_echo(value)}")
    number = gemmi.cif.as_number(value)
    if np.isnan(number) and value.strip().lower().lstrip("+-") not in ("nan", "inf", "infinity"):
        raise CifParseError(f"{what} is not a number: {_echo(value)}")
    if value.strip().lower().lstrip("+-") in ("inf", "infinity"):
        return float("inf") if not value.strip().startswith("-") else float("-inf")
    return float(number)


def _check_block(block: Any, *, max_sites: int) -> _Sites:
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
    sites = _Sites(table)
    # The row-by-row checks find the first bad value; all-plain tables (nearly every CIF) are cleared at once.
    if sites.coords is None or not _plain_occupancies(table) or any(map(_is_mixed, set(sites.symbols))):
        _check_rows(table)
    if len(block.find_loop("_atom_site_type_symbol")):  # labels alone are left to pymatgen to interpret
        if not all(map(_element_of, set(sites.symbols))):
            for k, symbol in enumerate(sites.symbols):
                _check_symbol(symbol, k)
    return sites


def _plain_occupancies(table: Any) -> bool:
    """True if the occupancy column is absent, or each value is unknown or a plain number above zero."""
    if not table.has_column(4):
        return True
    given = [v for v in table.column(4) if v not in ("?", ".")]
    return all(map(_PLAIN_NUMBER.fullmatch, given)) and all(float(v) > 0 for v in given)


def _is_mixed(symbol: str) -> bool:
    return bool(_MIXED_SYMBOL.match(symbol)) and not _SYMBOL.match(symbol)


def _check_rows(table: Any) -> None:
    """Mixed sites, coordinates and occupancies row by row, raising for the first bad one."""
    for k, row in enumerate(table):
        symbol = row.str(0)
        if _is_mixed(symbol):
            raise DisorderedStructureError(f"site {k} is a mixed site {_echo(symbol)}; only ordered crystals are supported")
        for axis, col in zip("xyz", (1, 2, 3)):
            if row[col] == ".":  # ICSD's "inapplicable": pymatgen reads it as 0
                continue
            v = _number(row[col], f"_atom_site_fract_{axis} of site {k}")
            if not np.isfinite(v):
                raise NonFiniteCoordinatesError(f"_atom_site_fract_{axis} of site {k} is {_echo(row[col])} (non-finite)")
        if row.has(4) and row[4] not in ("?", "."):
            occupancy = _number(row[4], f"_atom_site_occupancy of site {k}")
            if occupancy < 0:
                raise CifParseError(f"site {k} has a negative occupancy {occupancy}")
            if occupancy == 0:
                raise DisorderedStructureError(f"site {k} has occupancy 0 (a vacancy); only ordered crystals are supported")


@functools.lru_cache(maxsize=1024)
def _element_of(symbol: str) -> str | None:
    """The element of a type symbol (``Fe``, ``Fe2+``, ``O2-``, and upper-case ``FE``, ``CA2+`` as older
    programs write them and pymatgen reads them), or None if it is not a known element."""
    from pymatgen.core import Element

    if symbol[1:2].isupper() and not _SYMBOL.match(symbol):
        symbol = symbol[:1] + symbol[1:2].lower() + symbol[2:]
    match = _SYMBOL.match(symbol)
    if match is None or not Element.is_valid_symbol(match.group(1)):
        return None
    return match.group(1)


def _check_symbol(symbol: str, k: int) -> str:
    element = _element_of(symbol)
    if element is None:
        raise UnknownSpeciesError(f"site {k} has the unknown species {_echo(symbol)}", detail={"species": [symbol[:100]]})
    return element


# --- the size of the symmetry expansion, before any expansion ------------------------------------------------------
#: Tags whose values are symmetry operations (magnetic ones carry a fourth, time-reversal, component).
_OP_LOOPS = ("_symmetry_equiv_pos_as_xyz", "_symmetry_equiv_pos_as_xyz_", "_space_group_symop_operation_xyz",
             "_space_group_symop_operation_xyz_", "_space_group_symop.operation_xyz",
             "_space_group_symop_magn_operation.xyz")
_CENTRING_LOOPS = ("_space_group_symop_magn_centering.xyz",)
_GROUP_NAMES = ("_symmetry_space_group_name_H-M", "_symmetry_space_group_name_H_M", "_space_group_name_H-M_alt",
                "_space_group_name_Hall", "_symmetry_space_group_name_Hall")
_GROUP_NUMBERS = ("_space_group_IT_number", "_symmetry_Int_Tables_number")
#: More distinct operations than any (magnetic) space group has: not a symmetry group, refused unparsed.
_MAX_OPERATIONS = 1536


def _check_expansion(block: Any, sites: _Sites, *, max_sites: int) -> None:
    """Refuse a CIF whose symmetry operations would make more than ``max_sites`` sites, by counting the
    distinct images of its rows (the multiplicities of their positions) instead of building them: a 2 KB
    file can ask pymatgen for a 10,000-site expansion that costs it 20 s before any site count is seen.

    Symmetry that cannot be known here (a space-group name gemmi does not know) is left to pymatgen, under
    the CPU-time limit of ``sitenet.limits``.
    """
    ops = _implied_ops(block)
    n = len(sites.symbols)
    if ops is None or n * len(ops) <= max_sites:
        return
    count = _distinct_images(_rough_coords(sites), ops)
    if count > max_sites:
        raise TooManySitesError(
            f"the CIF's {n} atom sites and {len(ops)} symmetry operations make {count} sites, more than the limit "
            f"of {max_sites}", detail={"n_sites": count, "max": max_sites, "rows": n, "operations": len(ops)})


def _implied_ops(block: Any) -> np.ndarray | None:
    """(K, 3, 4) operations [R | t] the CIF's symmetry implies, as any reader would find them: an operation
    loop (with magnetic centrings), else the space-group name or number. None if unknown."""
    import gemmi

    for tag in _OP_LOOPS:
        column = block.find_values(tag)
        if len(column):
            ops = _ops_of([gemmi.cif.as_string(v) for v in column])
            if ops is None:
                continue
            for centring_tag in _CENTRING_LOOPS:
                centrings = block.find_values(centring_tag)
                if len(centrings):
                    shifts = _ops_of([gemmi.cif.as_string(v) for v in centrings])
                    if shifts is not None:
                        ops = np.concatenate([np.concatenate([ops[:, :, :3], ops[:, :, 3:] + s[:, 3:]], axis=2)
                                              for s in shifts])
            return ops
    for tag in _GROUP_NAMES:
        name = block.find_value(tag)
        if name is not None and (ops := _group_ops(gemmi.cif.as_string(name), hall="hall" in tag.lower())) is not None:
            return ops
    for tag in _GROUP_NUMBERS:
        number = _esd_number(block.find_value(tag))
        if number is not None and number.is_integer() and 1 <= number <= 230:
            return _group_ops(str(int(number)), hall=False)
    return None


def _ops_of(xyz: list[str]) -> np.ndarray | None:
    """Distinct operations from xyz strings (a magnetic time-reversal component dropped), or None if any
    is not one."""
    distinct = tuple(dict.fromkeys(",".join(op.split(",")[:3]) for op in xyz))
    if len(distinct) > _MAX_OPERATIONS:
        raise CifParseError(f"the CIF lists {len(distinct)} distinct symmetry operations; no space group has more "
                            "than 192 (384 with magnetic centrings)", detail={"operations": len(distinct)})
    if not all(_XYZ.fullmatch(op) and op.count(",") == 2 for op in distinct):
        return None
    try:
        return _parse_ops(distinct)[:, :3, :]
    except Exception:  # noqa: BLE001 - pymatgen's xyz parser raises several types on nonsense
        return None


@functools.lru_cache(maxsize=256)
def _group_ops(name: str, *, hall: bool) -> np.ndarray | None:
    import gemmi

    try:
        if hall:
            ops = gemmi.symops_from_hall(name)
        else:
            group = (gemmi.find_spacegroup_by_number(int(name)) if name.isdigit() else
                     gemmi.find_spacegroup_by_name(name))
            if group is None:
                return None
            ops = group.operations()
    except (RuntimeError, ValueError):
        return None
    return np.array([op.float_seitz()[:3] for op in ops], dtype=np.float64)


def _rough_coords(sites: _Sites) -> np.ndarray:
    """Coordinates good enough to count images: unreadable or unknown values read as 0."""
    if sites.coords is not None:
        return _snap_thirds(sites.coords)
    values = [[v if (v := _esd_number(x)) is not None else 0.0 for x in column] for column in sites.raw]
    return _snap_thirds(np.array(values, dtype=np.float64).T.copy())


def _distinct_images(coords: np.ndarray, ops: np.ndarray) -> int:
    """How many distinct positions the operations make of the rows, counted on a 1e-4 grid (pymatgen's
    tolerance for merging images), without building or comparing sites."""
    images = np.einsum("kij,nj->nki", ops[:, :, :3], coords) + ops[None, :, :, 3]  # (n, K, 3)
    images = np.nan_to_num(images % 1.0)
    grid = np.round(images * 10_000).astype(np.int64) % 10_000
    keys = (grid[..., 0] * 10_000 + grid[..., 1]) * 10_000 + grid[..., 2]
    return int(len(np.unique(keys)))


# --- P1 CIFs -----------------------------------------------------------------------------------------------------
def _p1_crystal(block: Any, sites: _Sites) -> Crystal | None:
    """The crystal straight from gemmi's values when that is exactly what pymatgen would build: P1 (identity
    symmetry only), explicit type symbols of known elements, full occupancy. None otherwise."""
    from pymatgen.core import Lattice

    ops = [op.strip().strip("'\"").replace(" ", "").lower() for tag in
           ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz") for op in block.find_values(tag)]
    if ops != ["x,y,z"] or not len(block.find_loop("_atom_site_type_symbol")):
        return None
    table = sites.table
    # charges (pymatgen makes Species of them) and upper-case symbols: pymatgen's reading decides
    if any(not (m := _SYMBOL.match(s)) or m.group(2) for s in set(sites.symbols)):
        return None
    if table.has_column(4) and not all(v in _FULL for v in table.column(4)):
        return None
    species = [_check_symbol(s, k) for k, s in enumerate(sites.symbols)]
    frac = sites.coords
    if frac is None:  # uncertainties, e.g. 0.25(1)
        frac = np.array([[_coordinate(v) for v in column] for column in sites.raw], dtype=np.float64).T.copy()
    frac = _snap_thirds(frac)
    a, b, c, alpha, beta, gamma = (float(block.find_value(t).split("(")[0]) for t in _CELL_TAGS)
    return Crystal(Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix, frac, species)


def _coordinate(value: str) -> float:
    """A checked coordinate: uncertainty dropped (``0.25(1)``), ICSD's ``.`` read as 0 as pymatgen does."""
    return 0.0 if value == "." else float(value.split("(")[0])


# --- CIFs with symmetry operations ---------------------------------------------------------------------------------
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
_SITE_TAGS = ("_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y",
              "_atom_site_fract_z")
_OCCUPANCY_TAG = "_atom_site_occupancy"
#: Text that sends a CIF to pymatgen: magnetic/modulated CIFs, implicit hydrogens, oxidation states.
_SLOW_MARKERS = ("magn", "_atom_site_moment", "modulation", "attached_hydrogens", "oxidation_number")
_ESD = re.compile(r"\(.+\)*")  # pymatgen.io.cif.str2float strips uncertainties with this pattern
_XYZ = re.compile(r"[\sxyzXYZ0-9+\-*/.,]+")
_ELEMENT = re.compile(r"[A-Z][a-z]?")
_SPECIAL = re.compile("|".join(("Hw", "Ow", "Wat", "wat", "OH", "OH2", "NO3")))  # CifParser._parse_symbol


def _symmetrised_crystal(block: Any, text: str, *, max_sites: int) -> Crystal | None:
    """The crystal of a CIF with symmetry operations (listed, or implied by its space-group name or number),
    expanded as pymatgen would, or None."""
    lowered = text.lower()
    if any(marker in lowered for marker in _SLOW_MARKERS):
        return None
    try:
        return _expand_block(block, max_sites=max_sites)
    except (RuntimeError, ValueError, IndexError, KeyError, OverflowError, ZeroDivisionError):
        return None  # pymatgen will explain


def _esd_number(raw: str | None) -> float | None:
    """pymatgen's ``str2float`` on an unquoted CIF value; None for anything it would treat specially."""
    if raw is None or not raw or raw[0] in "'\";" or raw in ("?", "."):
        return None
    try:
        value = float(_ESD.sub("", raw))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _expand_block(block: Any, *, max_sites: int) -> Crystal | None:
    import gemmi

    ops = _symops(block)
    if ops is None:
        return None
    cell = []
    for tag in _CELL_TAGS:
        pair = block.find_pair(tag)
        if pair is None or pair[0] != tag:  # missing, or cased differently (pymatgen's keys are case-sensitive)
            return None
        value = _esd_number(pair[1])
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
        if has_occupancy and _esd_number(row[5]) != 1.0:
            return None
        for axis in range(3):
            value = _esd_number(row[2 + axis])
            if value is None:
                return None
            coords[k, axis] = value
        symbols.append(symbol)
    return _expand(lattice, symbols, _snap_thirds(coords), ops)


def _lattice(cell: list[float]) -> np.ndarray | None:
    from pymatgen.core import Lattice

    lengths, angles = np.array(cell[:3]), np.array(cell[3:])
    cos = np.cos(np.radians(angles))
    if np.any(lengths <= 0) or np.any((angles <= 0) | (angles >= 180)) or 1 - (cos**2).sum() + 2 * cos.prod() <= 1e-6:
        return None  # the checks above refuse these cells; pymatgen may say more
    matrix = Lattice.from_parameters(*cell).matrix
    if not np.all(np.isfinite(matrix)):
        return None
    volume = abs(float(np.linalg.det(matrix)))
    if not math.isfinite(volume) or volume < 1e-6:
        return None
    thickness = 1.0 / np.linalg.norm(np.linalg.inv(matrix), axis=0)  # d(100), d(010), d(001)
    return matrix if float(thickness.min()) >= _MIN_THICKNESS else None


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
    return _symbol_ops(block)


# pymatgen's CifParser.get_symops, for a CIF without an operation loop: the labels it tries, in its order
# (its keys are case-sensitive: both spellings are its own).
_PMG_NAME_TAGS = ("_symmetry_space_group_name_H-M", "_symmetry_space_group_name_H_M",
                  "_symmetry_space_group_name_H-M_", "_symmetry_space_group_name_H_M_", "_space_group_name_Hall",
                  "_space_group_name_Hall_", "_space_group_name_H-M_alt", "_space_group_name_H-M_alt_",
                  "_symmetry_space_group_name_hall", "_symmetry_space_group_name_hall_",
                  "_symmetry_space_group_name_h-m", "_symmetry_space_group_name_h-m_")
_PMG_NUMBER_TAGS = ("_space_group_IT_number", "_space_group_IT_number_", "_symmetry_Int_Tables_number",
                    "_symmetry_Int_Tables_number_")


def _symbol_ops(block: Any) -> np.ndarray | None:
    """(K, 4, 4) operations of a CIF that gives its symmetry only by space-group name or number, exactly the
    ones pymatgen's ``CifParser.get_symops`` makes of it and in its order (the order decides the order of the
    sites and which of two coinciding images is kept), or None to leave the CIF to pymatgen.

    Why not pymatgen itself: it regenerates the group for every CIF (``SpaceGroup`` compares every new
    operation with every kept one, 0.3 s for F m -3 m) and reloads its table of settings from disk for a
    symbol outside its main table; here each group is built by pymatgen's own code once per process.
    """
    import gemmi

    pairs: dict[str, str] = {}
    looped: set[str] = set()
    for item in block:
        if item.pair is not None:
            pairs[item.pair[0]] = item.pair[1]
        elif item.loop is not None:
            looped.update(item.loop.tags)
    known = {t.lower() for t in _PMG_NAME_TAGS + _PMG_NUMBER_TAGS + _SYMOP_TAGS}
    if any(t.lower() in known for t in looped) or any(t.lower() in known and t not in _PMG_NAME_TAGS + _PMG_NUMBER_TAGS
                                                      for t in pairs):
        return None  # looped, or spelled so that pymatgen's lookup and gemmi's could disagree
    for tag in _PMG_NAME_TAGS:
        raw = pairs.get(tag)
        if raw is None or raw in ("?", ".") or raw.startswith(";"):
            if raw is not None:
                return None  # pymatgen reads "?" as a symbol that it then fails to find: its own path decides
            continue
        symbol = re.sub(r"[\s_]", "", gemmi.cif.as_string(raw))
        if not symbol:
            continue
        ops = _pmg_symbol_ops(symbol)
        if ops is False:
            return None
        if ops is not None:
            return ops
    for tag in _PMG_NUMBER_TAGS:
        raw = pairs.get(tag)
        if raw is None:
            continue
        number = _esd_number(raw)
        if number is None or not number.is_integer() or not 1 <= number <= 230:
            return None  # pymatgen's str2float / SpaceGroup.from_int_number would decide, maybe differently
        return _pmg_number_ops(int(number))
    return None  # P1 by default: one operation, nothing to expand


@functools.lru_cache(maxsize=512)
def _pmg_symbol_ops(symbol: str) -> np.ndarray | None | bool:
    """The operations pymatgen's ``get_symops`` finds for a name with blanks and ``_`` removed: from its space
    group table, else from its table of settings; None if neither has it (pymatgen then tries the next tag),
    False if pymatgen would fail on it."""
    from pymatgen.symmetry.groups import SpaceGroup

    table = _pmg_space_groups()
    if symbol in table:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return _affine(SpaceGroup(table[symbol]).symmetry_ops)
            except ValueError:
                return False
    for entry in _pmg_settings():
        if symbol == re.sub(r"\s+", "", entry["hermann_mauguin"]):
            return _parse_ops(tuple(entry["symops"]))
    return None


@functools.lru_cache(maxsize=256)
def _pmg_number_ops(number: int) -> np.ndarray | None:
    from pymatgen.symmetry.groups import SpaceGroup

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _affine(SpaceGroup.from_int_number(number).symmetry_ops)
        except ValueError:
            return None


@functools.cache
def _pmg_space_groups() -> dict[str, str]:
    from pymatgen.symmetry.groups import SYMM_DATA

    return {re.sub(r"[\s_]", "", key): key for key in SYMM_DATA["space_group_encoding"]}


@functools.cache
def _pmg_settings() -> list[dict[str, Any]]:
    """pymatgen's table of space-group settings (``symm_ops.json``), which its CifParser reads from disk for
    every CIF whose symbol is not in its main table."""
    from pathlib import Path

    import pymatgen.io.cif
    from monty.serialization import loadfn

    return loadfn(Path(pymatgen.io.cif.__file__).parents[1] / "symmetry" / "symm_ops.json")


def _affine(ops: Any) -> np.ndarray:
    """Affine matrices of pymatgen SymmOps in pymatgen's iteration order (its set of them, listed)."""
    return np.stack([op.affine_matrix for op in list(ops)])


@functools.lru_cache(maxsize=512)
def _parse_ops(xyz: tuple[str, ...]) -> np.ndarray:
    from pymatgen.core.operations import SymmOp

    return np.stack([SymmOp.from_xyz_str(s).affine_matrix for s in xyz])


def _plain_element(symbol: str) -> bool:
    """A bare element symbol that CifParser reads as itself, with a defined electronegativity (site order)."""
    if not _ELEMENT.fullmatch(symbol) or _SPECIAL.match(symbol):
        return False
    return _electronegativity(symbol) is not None


@functools.lru_cache(maxsize=256)
def _electronegativity(symbol: str) -> float | None:
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


def _expand(lattice: np.ndarray, symbols: list[str], coords: np.ndarray, ops: np.ndarray) -> Crystal | None:
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
    by_element: dict[str, np.ndarray] = {}
    for symbol in dict.fromkeys(symbols):
        rows = [r for r, s in enumerate(symbols) if s == symbol]
        unique = _unique_images(images[rows].reshape(len(rows) * k, 3), np.repeat(np.arange(len(rows)), k))
        if unique is None:
            return None
        by_element[symbol] = unique
    order = sorted(by_element, key=lambda s: (_electronegativity(s), s))  # Structure.get_sorted_structure
    species = [s for s in order for _ in range(len(by_element[s]))]
    return Crystal(lattice, np.concatenate([by_element[s] for s in order]), species)


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


# --- everything else ------------------------------------------------------------------------------------------------
def _parse_with_pymatgen(text: str) -> "Structure":  # noqa: F821
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structures = CifParser.from_str(text).parse_structures(primitive=False)
        except Exception as err:  # noqa: BLE001 - pymatgen raises many types on malformed input
            reasons = _warning_reasons(caught)
            crowded = _over_occupied(text) if any("sum to > 1" in r for r in reasons) else None
            if crowded is not None:
                raise crowded from None
            message = f"{err}" + (f": {'; '.join(reasons)}" if reasons else "")
            raise CifParseError(_cap(message), detail={"reasons": [_cap(r, 500) for r in reasons[:10]]}) from None
    if not structures:  # pragma: no cover - pymatgen raises instead
        raise CifParseError("no structure in the CIF", detail={"reasons": _warning_reasons(caught)})
    reasons = _warning_reasons(caught)
    dummy = [r for r in reasons if "is not a valid Element" in r]
    if dummy:
        raise UnknownSpeciesError(f"unknown species in the CIF: {'; '.join(dummy)}", detail={"reasons": dummy})
    return structures[0]


def _cap(message: str, limit: int = 1000) -> str:
    """A message cut to ``limit`` characters, saying how long it was."""
    return message if len(message) <= limit else f"{message[:limit]}... (cut; {len(message):,} characters)"


def _over_occupied(text: str) -> SiteNetError | None:
    """Name the rows that pymatgen merged into one over-occupied site: two rows at one position, or a row
    at a position that a symmetry operation maps onto another row. None if none is found here."""
    import gemmi

    try:
        block = gemmi.cif.read_string(text).sole_block()
        table = block.find("_atom_site_", ["label", "fract_x", "fract_y", "fract_z", "?occupancy"])
        labels = [gemmi.cif.as_string(v) for v in table.column(0)]
        coords = np.array([[_esd_number(row[c]) or 0.0 for c in (1, 2, 3)] for row in table], dtype=np.float64)
        occupancy = [(_esd_number(row[4]) if row.has(4) else None) or 1.0 for row in table]
    except (RuntimeError, ValueError, IndexError):
        return None
    for k, value in enumerate(occupancy):
        if value > 1:
            return CifParseError(f"site {k} ({_echo(labels[k], 30)}) has occupancy {value:g}, more than 1",
                                 detail={"sites": [k], "labels": [labels[k][:100]], "occupancy": value})
    ops = _implied_ops(block)
    ops = ops if ops is not None else np.eye(3, 4)[None]
    images = np.einsum("kij,nj->nki", ops[:, :, :3], coords) + ops[None, :, :, 3]  # (n, K, 3)
    for j in range(1, len(coords)):
        for i in range(j):
            diff = images[i] - coords[j]
            if np.any(np.all(np.abs(diff - np.round(diff)) < SITE_TOLERANCE, axis=-1)):
                total = occupancy[i] + occupancy[j]
                where = " ".join(f"{x:.4f}" for x in coords[j])
                return OverlappingAtomsError(
                    f"sites {i} ({_echo(labels[i], 30)}) and {j} ({_echo(labels[j], 30)}) are 0.000 Å apart, at the "
                    f"same position ({where}) once the symmetry is applied: their occupancies add up to {total:g}, "
                    "more than 1", detail={"sites": [i, j], "labels": [labels[i][:100], labels[j][:100]],
                                           "occupancy": total})
    return None


def _warning_reasons(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """pymatgen reports the real cause of a failed parse only as warnings: keep their first lines."""
    seen: list[str] = []
    for w in caught:
        line = " ".join(str(w.message).split())  # the cause follows pymatgen's first line
        if line and line not in seen:
            seen.append(line)
    return seen
