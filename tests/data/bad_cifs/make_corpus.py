"""Regenerate the bad-input corpus in this folder: ``python tests/data/bad_cifs/make_corpus.py``.

Every file is named ``<expected_code>__<short_description>.cif`` (``.bin`` for binary input), where
``expected_code`` is the ``.code`` of the :class:`sitenet.errors.SiteNetError` that
``sitenet.structure.read_structure`` must raise for it with the default limits. The output is deterministic
(fixed seeds, no timestamps), so rerunning the script leaves the committed files byte-for-byte unchanged.

Most inputs are a real Materials Project CIF from ``data/mp2018-sample`` (copied below verbatim, so the
script does not depend on the data file) with one thing broken. The large ones (600 and 10,000 sites) are
rock-salt supercells written one short line per atom.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent

# mp-661 (AlN, wurtzite, 4 sites), verbatim from data/mp2018-sample/mp2018_sample.csv.gz.
ALN = """\
# generated using pymatgen
data_AlN
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   3.12858827
_cell_length_b   3.12858827
_cell_length_c   5.01695500
_cell_angle_alpha   90.00000000
_cell_angle_beta   90.00000000
_cell_angle_gamma   120.00000575
_symmetry_Int_Tables_number   1
_chemical_formula_structural   AlN
_chemical_formula_sum   'Al2 N2'
_cell_volume   42.52728308
_cell_formula_units_Z   2
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Al  Al0  1  0.66666700  0.33333300  0.49928700  1
  Al  Al1  1  0.33333300  0.66666700  0.99928700  1
  N  N2  1  0.66666700  0.33333300  0.88071300  1
  N  N3  1  0.33333300  0.66666700  0.38071300  1
"""

# mp-755378 (NaPdO2, 4 sites), verbatim from the sample.
NAPDO2 = """\
# generated using pymatgen
data_NaPdO2
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   3.35885426
_cell_length_b   3.35885426
_cell_length_c   5.75016059
_cell_angle_alpha   69.17869518
_cell_angle_beta   69.17869518
_cell_angle_gamma   54.74136757
_symmetry_Int_Tables_number   1
_chemical_formula_structural   NaPdO2
_chemical_formula_sum   'Na1 Pd1 O2'
_cell_volume   48.54366768
_cell_formula_units_Z   1
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Na  Na0  1  0.50000000  0.50000000  0.50000000  1
  Pd  Pd1  1  0.00000000  0.00000000  0.00000000  1
  O  O2  1  0.71546400  0.71546400  0.78873400  1
  O  O3  1  0.28453600  0.28453600  0.21126600  1
"""

# mp-1 (Cs, bcc primitive cell, 1 site), verbatim from the sample.
CS = """\
# generated using pymatgen
data_Cs
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   5.29144986
_cell_length_b   5.29144986
_cell_length_c   5.29144986
_cell_angle_alpha   109.47122063
_cell_angle_beta   109.47122063
_cell_angle_gamma   109.47122063
_symmetry_Int_Tables_number   1
_chemical_formula_structural   Cs
_chemical_formula_sum   Cs1
_cell_volume   114.05180544
_cell_formula_units_Z   1
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Cs  Cs0  1  0.00000000  0.00000000  0.00000000  1
"""

ALN_SITES = ALN.splitlines()[-4:]


def replace(text: str, old: str, new: str, count: int = 1) -> str:
    """``str.replace`` that fails loudly if ``old`` is not found, so a base-CIF edit cannot silently no-op."""
    if old not in text:
        raise AssertionError(f"{old!r} not in the base CIF")
    return text.replace(old, new, count)


def cell(text: str, **params: str) -> str:
    """Replace cell parameters, e.g. ``cell(ALN, length_a="0")`` or ``cell(ALN, angle_alpha="0")``."""
    lines = text.splitlines(keepends=True)
    for key, value in params.items():
        tag = f"_cell_{key}"
        idx = [i for i, line in enumerate(lines) if line.split()[:1] == [tag]]
        if len(idx) != 1:
            raise AssertionError(f"{tag} not found exactly once")
        lines[idx[0]] = f"{tag}   {value}\n"
    return "".join(lines)


def drop_line(text: str, startswith: str) -> str:
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(startswith)]
    if len(kept) != len(lines) - 1:
        raise AssertionError(f"{startswith!r} not found exactly once")
    return "".join(kept)


def rocksalt_supercell(na: int, nb: int, nc: int, decimals: int) -> str:
    """A P1 NaCl supercell (conventional a = 5.64 Å, 8 atoms per cell), one short line per atom."""
    a0 = 5.64
    basis = [("Na", (0.0, 0.0, 0.0)), ("Na", (0.0, 0.5, 0.5)), ("Na", (0.5, 0.0, 0.5)), ("Na", (0.5, 0.5, 0.0)),
             ("Cl", (0.5, 0.0, 0.0)), ("Cl", (0.0, 0.5, 0.0)), ("Cl", (0.0, 0.0, 0.5)), ("Cl", (0.5, 0.5, 0.5))]
    n = 8 * na * nb * nc
    head = [
        f"data_NaCl_{na}x{nb}x{nc}",
        "_symmetry_space_group_name_H-M   'P 1'",
        f"_cell_length_a   {a0 * na:.4f}",
        f"_cell_length_b   {a0 * nb:.4f}",
        f"_cell_length_c   {a0 * nc:.4f}",
        "_cell_angle_alpha   90",
        "_cell_angle_beta   90",
        "_cell_angle_gamma   90",
        f"_chemical_formula_sum   'Na{n // 2} Cl{n // 2}'",
        "loop_",
        " _symmetry_equiv_pos_as_xyz",
        "  'x, y, z'",
        "loop_",
        " _atom_site_type_symbol",
        " _atom_site_label",
        " _atom_site_fract_x",
        " _atom_site_fract_y",
        " _atom_site_fract_z",
    ]

    def fmt(x: float) -> str:
        """Shortest fixed-point form: 0 -> "0", 0.25 -> ".25", 0.166667 -> ".166667"."""
        s = f"{x:.{decimals}f}".rstrip("0").rstrip(".")
        return s[1:] if s.startswith("0.") else s

    rows = []
    for i in range(na):
        for j in range(nb):
            for k in range(nc):
                for el, (x, y, z) in basis:
                    rows.append(f"{el} {el} {fmt((i + x) / na)} {fmt((j + y) / nb)} {fmt((k + z) / nc)}")
    assert len(rows) == n
    return "\n".join(head + rows) + "\n"


def aln_poscar() -> str:
    return """\
Al2 N2 (mp-661)
1.0
   3.128588   0.000000   0.000000
  -1.564294   2.709437   0.000000
   0.000000   0.000000   5.016955
Al N
2 2
direct
   0.666667   0.333333   0.499287 Al
   0.333333   0.666667   0.999287 Al
   0.666667   0.333333   0.880713 N
   0.333333   0.666667   0.380713 N
"""


def aln_xyz() -> str:
    return """\
4
Lattice="3.128588 0.0 0.0 -1.564294 2.709437 0.0 0.0 0.0 5.016955" Properties=species:S:1:pos:R:3 pbc="T T T"
Al   0.000000   1.806292   2.504917
Al   1.564294   0.903146   5.013394
N    0.000000   1.806292   4.418460
N    1.564294   0.903146   1.909983
"""


def aln_json() -> str:
    doc = {
        "@module": "pymatgen.core.structure",
        "@class": "Structure",
        "lattice": {"matrix": [[3.128588, 0.0, 0.0], [-1.564294, 2.709437, 0.0], [0.0, 0.0, 5.016955]]},
        "sites": [
            {"species": [{"element": "Al", "occu": 1}], "abc": [0.666667, 0.333333, 0.499287]},
            {"species": [{"element": "Al", "occu": 1}], "abc": [0.333333, 0.666667, 0.999287]},
            {"species": [{"element": "N", "occu": 1}], "abc": [0.666667, 0.333333, 0.880713]},
            {"species": [{"element": "N", "occu": 1}], "abc": [0.333333, 0.666667, 0.380713]},
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


HTML_ERROR = """\
<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>502 Bad Gateway</title></head>
<body>
<h1>502 Bad Gateway</h1>
<p>The server returned an invalid response while fetching <code>mp-661.cif</code>.</p>
<hr><address>nginx/1.24.0</address>
</body>
</html>
"""

RANDOM_TEXT = """\
Thanks for your order! Your crystal structure will be delivered in 3-5 business days.
Please find attached the requested file. If you have any questions, reply to this e-mail.
Kind regards,
The Support Team
"""

# A symmetrized CIF: Fm-3m with one atom on the general position 192l is expanded to 192 sites per atom,
# 3 atoms -> 576 sites: a 1 kB file that becomes more than the default 500-site cap.
FM3M_GENERAL_POSITIONS = """\
data_expands
_symmetry_space_group_name_H-M   'F m -3 m'
_symmetry_Int_Tables_number   225
_cell_length_a   24.0
_cell_length_b   24.0
_cell_length_c   24.0
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Na  Na1  0.0312  0.0937  0.1875  1
  Cl  Cl1  0.0625  0.2187  0.3125  1
  K   K1   0.1250  0.2812  0.4062  1
"""

# P -1 with an atom 0.05 Å off the inversion centre: the generated image is 0.1 Å away and is not merged.
P1BAR_NEAR_SPECIAL = """\
data_near_special
_symmetry_space_group_name_H-M   'P -1'
_symmetry_Int_Tables_number   2
_cell_length_a   5.0
_cell_length_b   5.0
_cell_length_c   5.0
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
  2  '-x, -y, -z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Na  Na1  0.01000  0.00000  0.00000  1
  Cl  Cl1  0.50000  0.50000  0.50000  1
"""

MAGCIF_INCOMMENSURATE = """\
data_incommensurate
_space_group_magn.name_BNS   'P 1'
_cell_length_a   3.12858827
_cell_length_b   3.12858827
_cell_length_c   5.01695500
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   120
_cell_modulation_dimension   1
_cell_wave_vector_seq_id   1
_cell_wave_vector_x   0.1
_cell_wave_vector_y   0
_cell_wave_vector_z   0
loop_
 _space_group_symop_magn_operation.id
 _space_group_symop_magn_operation.xyz
  1  x,y,z,+1
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
  Al  Al0  0.666667  0.333333  0.499287
  Al  Al1  0.333333  0.666667  0.999287
  N   N2   0.666667  0.333333  0.880713
  N   N3   0.333333  0.666667  0.380713
"""


def fm3m_operations() -> list[str]:
    """The 192 operations of F m -3 m: the 48 signed permutations of x, y, z, times the four F centrings."""
    import itertools

    ops = []
    centrings = [("", "", ""), ("", "+1/2", "+1/2"), ("+1/2", "", "+1/2"), ("+1/2", "+1/2", "")]
    for centring in centrings:
        for perm in itertools.permutations("xyz"):
            for signs in itertools.product(("", "-"), repeat=3):
                ops.append(",".join(f"{sign}{axis}{t}" for sign, axis, t in zip(signs, perm, centring)))
    return ops


def symmetry_bomb(rows: int, *, operations: bool) -> str:
    """A 2-6 KB CIF whose F m -3 m symmetry expands ``rows`` general positions in a 60 Å cell to 192 x rows
    sites: once 20 s of pymatgen's time before the site count was seen."""
    lines = ["data_symmetry_bomb", "_symmetry_space_group_name_H-M   'F m -3 m'", "_symmetry_Int_Tables_number   225"]
    lines += [f"_cell_length_{axis}   60.0" for axis in "abc"]
    lines += [f"_cell_angle_{angle}   90" for angle in ("alpha", "beta", "gamma")]
    if operations:
        lines += ["loop_", " _symmetry_equiv_pos_site_id", " _symmetry_equiv_pos_as_xyz"]
        lines += [f"  {k + 1}  '{op}'" for k, op in enumerate(fm3m_operations())]
    lines += ["loop_", " _atom_site_type_symbol", " _atom_site_label", " _atom_site_fract_x", " _atom_site_fract_y",
              " _atom_site_fract_z", " _atom_site_occupancy"]
    for k in range(rows):  # distinct general positions inside the asymmetric unit's neighbourhood
        x, y, z = 0.011 + 0.0037 * k, 0.017 + 0.0029 * ((7 * k) % rows), 0.023 + 0.0031 * ((13 * k) % rows)
        lines.append(f"  C  C{k}  {x:.4f}  {y:.4f}  {z:.4f}  1")
    return "\n".join(lines) + "\n"


def _text(s: str) -> bytes:
    return s.encode("utf-8")


def _binary_garbage() -> bytes:
    rng = random.Random(20240601)
    return bytes(rng.randrange(256) for _ in range(4096))


def _high_bytes_no_nul() -> bytes:
    """Binary noise without NUL bytes (so it is not caught by the NUL check and decodes as latin-1)."""
    rng = random.Random(7)
    return bytes(rng.randrange(128, 256) for _ in range(2048))


def corpus() -> dict[str, Callable[[], bytes]]:
    """File name -> function returning the file's bytes."""
    site_al0 = ALN_SITES[0]
    files: dict[str, Callable[[], bytes]] = {
        # --- not a CIF at all --------------------------------------------------------------------------------
        "empty_input__empty_file.cif": lambda: b"",
        "empty_input__whitespace_only.cif": lambda: b"   \n\t\n  \r\n\n",
        "cif_parse_error__binary_garbage.bin": _binary_garbage,
        "cif_parse_error__binary_high_bytes_no_nul.bin": _high_bytes_no_nul,
        "cif_parse_error__nul_bytes_in_cif.cif": lambda: _text(replace(ALN, "_cell_length_b", "\x00\x00_cell_length_b")),
        "cif_parse_error__gzip_compressed_cif.bin": lambda: gzip.compress(_text(ALN), mtime=0),
        "cif_parse_error__utf16_le_bom.cif": lambda: b"\xff\xfe" + ALN.encode("utf-16-le"),
        "cif_parse_error__utf16_be_no_bom.cif": lambda: ALN.encode("utf-16-be"),
        "cif_parse_error__random_text.cif": lambda: _text(RANDOM_TEXT),
        "cif_parse_error__poscar.cif": lambda: _text(aln_poscar()),
        "cif_parse_error__xyz_file.cif": lambda: _text(aln_xyz()),
        "cif_parse_error__json_structure.cif": lambda: _text(aln_json()),
        "cif_parse_error__html_error_page.cif": lambda: _text(HTML_ERROR),
        # --- a CIF that cannot be read -------------------------------------------------------------------------
        "cif_parse_error__header_only.cif": lambda: _text("# generated using pymatgen\ndata_AlN\n"),
        "cif_parse_error__header_and_cell_only.cif": lambda: _text(ALN.split("loop_")[0]),
        "cif_parse_error__truncated_mid_loop.cif": lambda: _text(ALN[: ALN.index(" _atom_site_fract_y")]),
        "cif_parse_error__truncated_mid_row.cif": lambda: _text(ALN[: ALN.index("0.88071300")]),
        "cif_parse_error__no_atom_site_loop.cif": lambda: _text(ALN[: ALN.rindex("loop_")]),
        "cif_parse_error__atom_site_loop_without_rows.cif": lambda: _text(ALN[: ALN.index(ALN_SITES[0])]),
        "cif_parse_error__missing_cell_length_a.cif": lambda: _text(drop_line(ALN, "_cell_length_a")),
        "cif_parse_error__missing_fract_z_column.cif": lambda: _text(
            "\n".join(
                " ".join(line.split()[:5] + line.split()[6:]) if line in ALN_SITES else line
                for line in ALN.splitlines()
                if line != " _atom_site_fract_z"
            ) + "\n"),
        "cif_parse_error__non_numeric_coordinate.cif": lambda: _text(replace(ALN, "0.49928700", "abc")),
        "cif_parse_error__unknown_cell_length_question_mark.cif": lambda: _text(cell(ALN, length_c="?")),
        "cif_parse_error__latin1_decimal_comma.cif": lambda: replace(
            replace(ALN, "# generated using pymatgen", "# nitrure d'aluminium, pr\u00e9par\u00e9 \u00e0 Orl\u00e9ans"),
            "0.49928700", "0,49928700").encode("latin-1"),
        "cif_parse_error__cr_only_line_endings.cif": lambda: _text(ALN.replace("\n", "\r")),
        "cif_parse_error__unterminated_text_field.cif": lambda: _text(
            replace(ALN, "_cell_formula_units_Z   2\n", "_cell_formula_units_Z   2\n_publ_section_title\n;\nAlN, never closed\n")),
        "cif_parse_error__loop_value_count_mismatch.cif": lambda: _text(
            replace(ALN, site_al0, site_al0 + "  extra")),
        "cif_parse_error__occupancy_above_one.cif": lambda: _text(replace(ALN, "0.49928700  1", "0.49928700  1.2")),
        "cif_parse_error__negative_occupancy.cif": lambda: _text(replace(ALN, "0.38071300  1", "0.38071300  -1")),
        "cif_parse_error__magcif_incommensurate.cif": lambda: _text(MAGCIF_INCOMMENSURATE),
        # --- one crystal per CIF ------------------------------------------------------------------------------
        "multiple_data_blocks__two_blocks.cif": lambda: _text(ALN + "\n" + NAPDO2),
        "multiple_data_blocks__three_blocks.cif": lambda: _text(ALN + "\n" + NAPDO2 + "\n" + CS),
        "multiple_data_blocks__same_block_twice.cif": lambda: _text(ALN + ALN),
        # --- disorder -----------------------------------------------------------------------------------------
        "disordered_structure__partial_occupancy_na_k.cif": lambda: _text(
            replace(NAPDO2, "  Na  Na0  1  0.50000000  0.50000000  0.50000000  1\n",
                    "  Na  Na0  1  0.50000000  0.50000000  0.50000000  0.5\n"
                    "  K  K0  1  0.50000000  0.50000000  0.50000000  0.5\n")),
        "disordered_structure__vacancy_occupancy_0_9.cif": lambda: _text(
            replace(NAPDO2, "0.50000000  0.50000000  0.50000000  1", "0.50000000  0.50000000  0.50000000  0.9")),
        "disordered_structure__mixed_site_as_one_row.cif": lambda: _text(
            replace(NAPDO2, "  Na  Na0  1  0.50000000  0.50000000  0.50000000  1",
                    "  Na0.5K0.5  NaK0  1  0.50000000  0.50000000  0.50000000  1")),
        "disordered_structure__zero_occupancy_site.cif": lambda: _text(replace(ALN, "0.38071300  1", "0.38071300  0")),
        # --- species ------------------------------------------------------------------------------------------
        "unknown_species__element_xx.cif": lambda: _text(replace(ALN, "  N  N2  1", "  Xx  Xx2  1")),
        "unknown_species__dummy_x.cif": lambda: _text(replace(ALN, "  N  N2  1", "  X  X2  1")),
        "unknown_species__dummy_qq_with_charge.cif": lambda: _text(replace(ALN, "  N  N2  1", "  Qq3-  Qq2  1")),
        "unknown_species__type_symbol_nak_read_as_na.cif": lambda: _text(replace(NAPDO2, "  Na  Na0", "  NaK  NaK0")),
        "unsupported_element__americium.cif": lambda: _text(replace(ALN, "  Al  Al0  1", "  Am  Am0  1")),
        "unsupported_element__californium.cif": lambda: _text(replace(ALN, "  Al  Al0  1", "  Cf  Cf0  1")),
        "unsupported_element__oganesson.cif": lambda: _text(replace(ALN, "  Al  Al0  1", "  Og  Og0  1")),
        # --- geometry -----------------------------------------------------------------------------------------
        "overlapping_atoms__two_atoms_0_1_angstrom.cif": lambda: _text(
            ALN + "  N  N4  1  0.66666700  0.33333300  0.51921900  1\n"),  # 0.1 Å above Al0 along c
        "overlapping_atoms__duplicate_site_different_element.cif": lambda: _text(
            ALN + "  N  N4  1  0.66666700  0.33333300  0.49940700  1\n"),  # 0.0006 Å: not merged by pymatgen
        "overlapping_atoms__atom_on_own_periodic_image.cif": lambda: _text(
            cell(CS, length_a="0.3", length_b="4.0", length_c="4.0",
                 angle_alpha="90", angle_beta="90", angle_gamma="90")),
        "overlapping_atoms__symmetry_image_0_1_angstrom.cif": lambda: _text(P1BAR_NEAR_SPECIAL),
        "invalid_lattice__zero_length.cif": lambda: _text(cell(ALN, length_a="0")),
        "invalid_lattice__negative_length.cif": lambda: _text(cell(ALN, length_a="-3.12858827")),
        "invalid_lattice__angle_zero.cif": lambda: _text(cell(ALN, angle_alpha="0")),
        "invalid_lattice__angle_180.cif": lambda: _text(cell(ALN, angle_beta="180")),
        "invalid_lattice__coplanar_angles_60_60_120.cif": lambda: _text(
            cell(ALN, angle_alpha="60", angle_beta="60", angle_gamma="120")),
        "invalid_lattice__impossible_angles_150_150_150.cif": lambda: _text(
            cell(ALN, angle_alpha="150", angle_beta="150", angle_gamma="150")),
        "invalid_lattice__nan_cell_length.cif": lambda: _text(cell(ALN, length_b="nan")),
        "invalid_lattice__inf_cell_length.cif": lambda: _text(cell(ALN, length_c="inf")),
        "invalid_lattice__tiny_cell_volume.cif": lambda: _text(
            cell(CS, length_a="0.3", length_b="0.3", length_c="0.3",
                 angle_alpha="90", angle_beta="90", angle_gamma="90")),
        "non_finite_coordinates__nan_coordinate.cif": lambda: _text(replace(ALN, "0.88071300", "nan")),
        "non_finite_coordinates__inf_coordinate.cif": lambda: _text(replace(ALN, "0.33333300  0.66666700  0.38071300",
                                                                           "0.33333300  inf  0.38071300")),
        # --- size ---------------------------------------------------------------------------------------------
        "too_many_sites__p1_600_atoms.cif": lambda: _text(rocksalt_supercell(5, 5, 3, decimals=6)),
        "too_many_sites__p1_10000_atoms.cif": lambda: _text(rocksalt_supercell(10, 5, 25, decimals=2)),
        "too_many_sites__symmetry_expands_to_576_sites.cif": lambda: _text(FM3M_GENERAL_POSITIONS),
        "too_many_sites__symmetry_bomb_operation_loop.cif": lambda: _text(symmetry_bomb(60, operations=True)),
        "too_many_sites__symmetry_bomb_space_group_name.cif": lambda: _text(symmetry_bomb(60, operations=False)),
    }
    return files


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE
    out.mkdir(parents=True, exist_ok=True)
    for name, make in corpus().items():
        (out / name).write_bytes(make())
    print(f"wrote {len(corpus())} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
