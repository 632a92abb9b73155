"""CIFs that give their symmetry only by space-group name or number (no operation loop) are expanded by
``sitenet.cif`` itself, with the operations pymatgen's ``CifParser`` derives from the name and in its order,
to exactly the structure pymatgen's own parser builds (lattice, sites, species and order), in milliseconds
instead of pymatgen's 0.3-0.5 s per cubic CIF (it regenerates the group for every file).

``tests/data/symbol_only/`` holds one real crystal per space group of the mp2018 sample (93 groups, from
CifWriter with the operation loop removed; ``make_symbol_only.py``); the hand-made cases below reach each branch
of pymatgen's lookup: names with blanks or ``_``, names only in its table of settings (non-standard
settings), the number alone, the ``_alt`` tag, and names pymatgen cannot resolve.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from sitenet.cif import parse_cif
from sitenet.crystal import Crystal
from sitenet.structure import DEFAULT_MAX_BYTES, DEFAULT_MAX_SITES, read_crystal, read_structure

REPO = Path(__file__).resolve().parents[2]
SYMBOL_ONLY = sorted((REPO / "tests" / "data" / "symbol_only").glob("*.cif"))
LIMITS = {"max_bytes": DEFAULT_MAX_BYTES, "max_sites": DEFAULT_MAX_SITES}


def _pymatgen(text: str):
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CifParser.from_str(text).parse_structures(primitive=False)[0]


def _assert_same(ours, reference) -> None:
    assert len(ours) == len(reference)
    np.testing.assert_allclose(ours.lattice.matrix, reference.lattice.matrix, atol=1e-9)
    diff = ours.frac_coords - reference.frac_coords
    assert np.abs(diff - np.round(diff)).max(initial=0.0) < 1e-9
    assert [s.specie.symbol for s in ours] == [s.specie.symbol for s in reference]


def test_the_corpus_covers_many_space_groups() -> None:
    assert len(SYMBOL_ONLY) == 93
    assert {p.name[:5] for p in SYMBOL_ONLY} >= {"sg001", "sg002", "sg062", "sg166", "sg194", "sg221", "sg225",
                                                 "sg227"}
    assert not any("_symmetry_equiv_pos_as_xyz" in p.read_text() for p in SYMBOL_ONLY)


@pytest.mark.parametrize("path", SYMBOL_ONLY, ids=lambda p: p.name.split("_mp")[0])
def test_a_symbol_only_cif_is_expanded_here_as_pymatgen_expands_it(path: Path) -> None:
    text = path.read_text()
    parsed = parse_cif(text.encode(), **LIMITS)
    assert isinstance(parsed, Crystal), "left the fast path"
    reference = _pymatgen(text)
    _assert_same(parsed.to_structure(), reference)
    _assert_same(read_crystal(text).to_structure(), reference)
    _assert_same(read_structure(text), reference)


# --- each branch of pymatgen's lookup of a name or number --------------------------------------------------------
def _cif(symmetry: str) -> str:
    """A triclinic-looking cell (pymatgen applies whatever operations the name gives) with two general
    positions and one special one, so that duplicate images and site order both matter."""
    return (f"data_test\n{symmetry}\n_cell_length_a 5.1\n_cell_length_b 6.2\n_cell_length_c 7.3\n"
            "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\nloop_\n_atom_site_label\n"
            "_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
            "_atom_site_occupancy\nO1 O 0.1234 0.2345 0.3456 1\nMg1 Mg 0.0 0.0 0.0 1\nSi1 Si 0.4111 0.0731 0.2500 1\n")


CASES = {  # symmetry lines -> whether the fast path reads it (else pymatgen does)
    "name with blanks": ("_symmetry_space_group_name_H-M 'P 21 21 21'", True),
    "name with an underscore": ("_symmetry_space_group_name_H-M 'P 6_3/m m c'", True),
    "full name": ("_symmetry_space_group_name_H-M 'P 1 21/c 1'", True),
    "cubic F": ("_symmetry_space_group_name_H-M 'F m -3 m'", True),
    "non-standard setting": ("_symmetry_space_group_name_H-M 'P n a m'", True),
    "non-standard monoclinic": ("_symmetry_space_group_name_H-M 'P 1 1 21/b'", True),
    "the _alt tag": ("_space_group_name_H-M_alt 'I 41/a m d'", True),
    "number only": ("_space_group_IT_number 166", True),
    "old number tag": ("_symmetry_Int_Tables_number 227", True),
    "unresolved name, then the number": ("_symmetry_space_group_name_H-M 'R -3 m :H'\n_symmetry_Int_Tables_number 166",
                                         True),
    "Hall symbol only": ("_space_group_name_Hall '-P 2ac 2n'", False),
    "unknown name": ("_symmetry_space_group_name_H-M 'Q 9'", False),
    "tag in another case": ("_Symmetry_Space_Group_Name_H-M 'F m -3 m'", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_way_of_naming_the_group_gives_pymatgen_s_structure(case: str) -> None:
    symmetry, fast = CASES[case]
    text = _cif(symmetry)
    parsed = parse_cif(text.encode(), **LIMITS)  # not validated: these made-up cells are too crowded to be real
    assert isinstance(parsed, Crystal) is fast
    _assert_same(parsed.to_structure() if fast else parsed, _pymatgen(text))


def test_a_symbol_only_cubic_cif_costs_milliseconds() -> None:
    """384 sites in F m -3 m: pymatgen regenerates the 192 operations for every CIF; here they are made once."""
    text = _cif("_symmetry_space_group_name_H-M 'F m -3 m'")
    parse_cif(text.encode(), **LIMITS)  # the group, once per process
    start = time.process_time()
    for _ in range(5):
        crystal = parse_cif(text.encode(), **LIMITS)
    per_cif = (time.process_time() - start) / 5
    assert isinstance(crystal, Crystal) and len(crystal) == 192 + 4 + 192
    assert per_cif < 0.05, per_cif  # pymatgen: ~0.3 s
