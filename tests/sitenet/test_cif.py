"""sitenet.cif (the one CIF reader) and the array path of inference (``read_crystal`` -> ``featurize``).

The reader must give what pymatgen's CifParser gives: same lattice, sites and order on all 400 sample CIFs (as
stored and symmetrised). ``Predictor.prepare``, which never builds a pymatgen object, must give what the
pymatgen-based reference path gives (CifParser or ``read_structure`` -> ``validate_structure`` -> ``featurize``
-> ``Composition.reduced_formula``): the same features, formula and site count on every sample CIF, and the same
error (class, code, message, detail, HTTP status) on every file of the bad-CIF corpus.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from sitenet.cif import parse_cif
from sitenet.crystal import Crystal
from sitenet.errors import SiteNetError
from sitenet.features import FeatureSpec, featurize, featurize_arrays
from sitenet.predict import Predictor, Prepared
from sitenet.structure import DEFAULT_MAX_BYTES, DEFAULT_MAX_SITES, read_crystal, read_structure, validate_structure

REPO = Path(__file__).resolve().parents[2]
BAD = sorted(p for p in (REPO / "tests" / "data" / "bad_cifs").glob("*__*") if p.suffix in (".cif", ".bin"))
EXAMPLES = sorted((REPO / "examples").glob("*.cif"))
SPEC = FeatureSpec()
LIMITS = {"max_bytes": DEFAULT_MAX_BYTES, "max_sites": DEFAULT_MAX_SITES}


def _pymatgen(text: str):
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CifParser.from_str(text).parse_structures(primitive=False)[0]


def _symmetrised(cif: str) -> str:
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(_pymatgen(cif), symprec=0.01))


def _assert_same_sites(a, b) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-6)
    diff = a.frac_coords - b.frac_coords
    assert np.abs(diff - np.round(diff)).max(initial=0.0) < 1e-6
    assert [s.species_string for s in a] == [s.species_string for s in b]


def _error(err: SiteNetError) -> tuple:
    return type(err), err.code, err.message, err.detail, err.http_status


def _outcome(reader, data: bytes):
    try:
        return reader(data)
    except SiteNetError as err:
        return _error(err)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_pretrained(load=False)  # prepare needs only the bundled models' FeatureSpec


# --- the reader against pymatgen's CifParser ----------------------------------------------------------------------
def test_every_sample_cif_is_read_here_exactly_as_pymatgen_reads_it(sample_frame) -> None:
    for cif in sample_frame.cif:
        crystal = parse_cif(cif.encode(), **LIMITS)
        assert isinstance(crystal, Crystal), "an ordinary Materials Project CIF left the fast path"
        reference = _pymatgen(cif)
        _assert_same_sites(reference, crystal.to_structure())
        assert np.array_equal(crystal.lattice, reference.lattice.matrix)  # to the bit: features start from it
        _assert_same_sites(read_structure(cif), crystal.to_structure())


def test_symmetrised_cifs_are_expanded_as_pymatgen_expands_them(sample_frame) -> None:
    import gemmi

    expanded = 0
    for cif in sample_frame.cif.iloc[::10]:  # 40 crystals, symmetrised with their space group's operations
        text = _symmetrised(cif)
        parsed = parse_cif(text.encode(), **LIMITS)
        if isinstance(parsed, Crystal):
            _assert_same_sites(_pymatgen(text), parsed.to_structure())
            expanded += len(gemmi.cif.read_string(text).sole_block().find_values("_symmetry_equiv_pos_as_xyz")) > 1
    assert expanded >= 30


# --- the array path of inference against the pymatgen-based reference path ------------------------------------------
def _prepared(prepared: Prepared) -> tuple:
    f = prepared.features
    return prepared.formula, prepared.n_sites, f.atomic_numbers.tolist(), f.images


def _reference_from_structure(structure) -> tuple:
    """validate_structure -> featurize on pymatgen's own arrays -> pymatgen's formula (no Crystal involved)."""
    validate_structure(structure)
    f = featurize_arrays(np.asarray(structure.lattice.matrix, dtype=np.float64), np.asarray(structure.frac_coords),
                         np.asarray(structure.atomic_numbers, dtype=np.int64), spec=SPEC)
    return (structure.composition.reduced_formula, len(structure), f.atomic_numbers.tolist(), f.images), f.distance


def test_prepare_equals_the_pymatgen_path_on_every_sample_cif(predictor: Predictor, sample_frame) -> None:
    symmetrised = {k: _symmetrised(cif) for k, cif in enumerate(sample_frame.cif) if k % 4 == 0}
    for k, cif in enumerate(sample_frame.cif):
        for text in (cif, symmetrised.get(k)):
            if text is None:
                continue
            prepared = predictor.prepare(text.encode())
            assert isinstance(prepared, Prepared), prepared
            # pymatgen parses, validates and gives the formula; the featuriser runs on its arrays
            expected, distance = _reference_from_structure(_pymatgen(text))
            assert _prepared(prepared) == expected
            np.testing.assert_allclose(prepared.features.distance, distance, rtol=0, atol=1e-6)
            # the public read_structure + featurize (training's path) gives the same features to the bit
            structure = read_structure(text)
            validate_structure(structure)
            core = featurize(structure, spec=SPEC)
            assert np.array_equal(prepared.features.distance, core.distance)
            assert structure.composition.reduced_formula == prepared.formula and len(structure) == prepared.n_sites


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_prepare_refuses_every_bad_cif_as_read_structure_does(predictor: Predictor, path: Path) -> None:
    data = path.read_bytes()
    core = _outcome(read_structure, data)
    assert isinstance(core, tuple) and core[1] == path.name.split("__")[0]
    for source in (data, path):
        ours = predictor.prepare(source)
        assert isinstance(ours, SiteNetError) and _error(ours) == core
    if core[1] in ("overlapping_atoms", "unsupported_element"):  # refused by validation: pymatgen's checks agree
        assert _outcome(lambda d: validate_structure(_pymatgen(d.decode())), data) == core


def test_read_crystal_takes_the_same_sources_as_read_structure(tmp_path: Path) -> None:
    from pymatgen.core import Lattice, Structure

    cif = EXAMPLES[2]
    for source in (cif, str(cif), cif.read_bytes(), bytearray(cif.read_bytes()), cif.read_text()):
        _assert_same_sites(read_structure(source), read_crystal(source).to_structure())
    structure = read_structure(cif)
    _assert_same_sites(structure, read_crystal(structure).to_structure())
    with pytest.raises(SiteNetError) as err:
        read_crystal(tmp_path / "missing.cif")
    assert err.value.code == "cif_parse_error"
    oxidised = Structure(Lattice.cubic(4.2), ["Fe2+", "O2-"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    crystal = read_crystal(oxidised)
    assert crystal.species == ["Fe", "O"] and crystal.formula == oxidised.composition.reduced_formula == "FeO"
