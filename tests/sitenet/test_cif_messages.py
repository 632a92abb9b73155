"""Refusal messages say what is wrong and where, and never grow with the input."""

from __future__ import annotations

from pathlib import Path

import pytest

from sitenet.errors import CifParseError, OverlappingAtomsError, UnknownSpeciesError
from sitenet.structure import read_structure

REPO = Path(__file__).resolve().parents[2]
NACL = (REPO / "examples" / "NaCl_mp-22862.cif").read_text()
BOMB = (REPO / "tests" / "data" / "bad_cifs" / "too_many_sites__symmetry_bomb_space_group_name.cif").read_text()


def test_an_echoed_value_is_capped_and_its_length_given() -> None:
    huge = "Q" * 1_000_000
    with pytest.raises(UnknownSpeciesError) as err:
        read_structure(NACL.replace("  Na  Na0", f"  {huge}  Na0"))
    assert len(err.value.message) < 300 and "1,000,000 characters" in err.value.message
    with pytest.raises(CifParseError) as err:
        read_structure(NACL.replace("0.50000000  0.50000000  0.50000000", "0.5  0.5  " + "x" * 1_000_000))
    assert len(err.value.message) < 300 and "characters" in err.value.message


def test_a_truncated_file_says_where_it_ended() -> None:
    with pytest.raises(CifParseError, match=r"ends unexpectedly at line 3 \('_sym'\).*truncated"):
        read_structure("data_NaCl\n_cell_length_a 4\n_sym")


def test_a_non_ascii_block_name_is_named_as_the_problem() -> None:
    with pytest.raises(CifParseError, match=r"block name 'été' on line 1 has non-ASCII"):
        read_structure("data_été\n_cell_length_a 4\n".encode())


def test_an_over_occupied_site_is_named_with_its_occupancy() -> None:
    head = BOMB.split("loop_")[0]
    rows = "\n".join(f"  C  C{k}  0.1234  0.2345  0.0123  1" for k in range(2))
    cif = head + ("loop_\n _atom_site_type_symbol\n _atom_site_label\n _atom_site_fract_x\n _atom_site_fract_y\n"
                  f" _atom_site_fract_z\n _atom_site_occupancy\n{rows}\n")
    with pytest.raises(OverlappingAtomsError) as err:
        read_structure(cif)
    assert "sites 0 ('C0') and 1 ('C1')" in err.value.message and "add up to 2" in err.value.message
    assert err.value.message.count("occupanc") == 1  # said once, not pymatgen's text twice
