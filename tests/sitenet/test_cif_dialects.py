"""CIF dialects that real tools write and pymatgen reads: each is read here exactly as pymatgen's own parser
reads it (same lattice, sites, species and order), or refused where pymatgen finds no structure either.

Files in ``tests/data/dialects``: ICSD's ``.`` for a zero coordinate (and ``?``, which pymatgen refuses too),
upper-case element symbols, a quoted value over two lines, a Pauling File-style export (a publication block,
then one block per crystal), a publication block with one crystal, and a commensurate magnetic CIF (.mcif,
with magnetic centrings and time reversal).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from sitenet.cif import split_blocks
from sitenet.errors import CifParseError, MultipleBlocksError
from sitenet.structure import read_crystal, read_structure

DIALECTS = Path(__file__).resolve().parents[2] / "tests" / "data" / "dialects"
ONE_CRYSTAL = ["icsd_dot_coordinates.cif", "upper_case_symbols.cif", "quoted_value_over_two_lines.cif",
               "publication_block_and_one_crystal.cif", "magnetic_nio.mcif"]


def _pymatgen(data: bytes) -> list:
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CifParser.from_str(data.decode()).parse_structures(primitive=False)


def _assert_same(ours, reference) -> None:
    assert len(ours) == len(reference)
    np.testing.assert_allclose(ours.lattice.matrix, reference.lattice.matrix, atol=1e-6)
    diff = ours.frac_coords - reference.frac_coords
    assert np.abs(diff - np.round(diff)).max(initial=0.0) < 1e-6
    assert [s.specie.symbol for s in ours] == [getattr(s.specie, "element", s.specie).symbol for s in reference]


@pytest.mark.parametrize("name", ONE_CRYSTAL)
def test_a_dialect_is_read_as_pymatgen_reads_it(name: str) -> None:
    data = (DIALECTS / name).read_bytes()
    (reference,) = _pymatgen(data)
    _assert_same(read_structure(data), reference)
    _assert_same(read_crystal(data).to_structure(), reference)


def test_unknown_coordinates_are_refused_as_pymatgen_refuses_them() -> None:
    data = (DIALECTS / "icsd_question_mark_coordinates.cif").read_bytes()
    with pytest.raises(ValueError):
        _pymatgen(data)
    with pytest.raises(CifParseError, match=r"_atom_site_fract_x of site 0 has the unknown value '\?'"):
        read_structure(data)


def test_every_block_of_a_multi_block_file_is_read_in_order_and_named() -> None:
    data = (DIALECTS / "pauling_file_three_blocks.cif").read_bytes()
    blocks = split_blocks(data)
    assert [name for name, _ in blocks] == ["NaCl", "Si"]  # the publication block holds no structure
    for (_, block), reference in zip(blocks, _pymatgen(data), strict=True):
        _assert_same(read_structure(block), reference)
    with pytest.raises(MultipleBlocksError, match=r"2 data blocks with a structure \('NaCl', 'Si'\).*/predict_files"):
        read_structure(data)


def test_split_blocks_ignores_data_inside_text_fields_and_keeps_single_files_whole() -> None:
    single = (DIALECTS / "upper_case_symbols.cif").read_bytes()
    assert split_blocks(single) == [("NaCl", single)]
    tricky = b"data_a\n_publ_section_title\n;\ndata_not_a_block\n;\n" + single
    assert [name for name, _ in split_blocks(tricky)] == ["NaCl"]  # block a holds no structure
    assert split_blocks(b"not a cif") == [("", b"not a cif")]
