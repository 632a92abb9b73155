"""sitenet.load_model: one call per task on the bundled zoo, any input kind, one result for one input (a typed
error when rejected), a list for a list; and the README's Python example, run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import sitenet
from sitenet.errors import CifParseError, SiteNetError
from sitenet.predict import Prediction, Rejection
from tiny_zoo import MULTITASK, tiny_zoo  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
NACL = REPO / "examples" / "NaCl_mp-22862.cif"
SI = REPO / "examples" / "Si_mp-149.cif"


@pytest.fixture(scope="module")
def model() -> sitenet.SiteNetModel:
    return sitenet.load_model(providers="cpu", threads=1)


def test_default_model_predicts_both_targets_and_embeds(model: sitenet.SiteNetModel) -> None:
    assert model.targets == ("band_gap", "formation_energy") and model.can_embed
    assert model.units == {"band_gap": "eV", "formation_energy": "eV/atom"}
    one = model.predict(NACL)
    assert isinstance(one, Prediction) and one.formula == "NaCl" and one.n_sites == 2
    assert one.band_gap is not None and one.band_gap >= 0 and one.formation_energy is not None
    listed = model.predict([NACL, SI])
    assert [r.formula for r in listed] == ["NaCl", "Si"]
    assert listed[0].formation_energy == pytest.approx(one.formation_energy, abs=1e-5)
    vector = model.embed(NACL)
    assert vector.shape == (64,) and vector.dtype == np.float32
    np.testing.assert_allclose(model.embed([NACL])[0], vector, atol=1e-5)


def test_every_input_kind_gives_the_same_prediction(model: sitenet.SiteNetModel) -> None:
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = Structure.from_file(NACL)
    text = NACL.read_text()
    inputs = [NACL, str(NACL), text, text.encode(), structure, AseAtomsAdaptor.get_atoms(structure)]
    values = [model.predict(x).formation_energy for x in inputs]
    assert values == pytest.approx([values[0]] * len(inputs), abs=1e-5)
    assert model.predict((x for x in [NACL, SI]))[1].formula == "Si"  # any iterable is a list of inputs


def test_one_bad_input_raises_its_typed_error_and_a_list_reports_it_in_place(model: sitenet.SiteNetModel) -> None:
    with pytest.raises(CifParseError, match="no such file"):
        model.predict("no-such-file.cif")
    with pytest.raises(SiteNetError) as err:
        model.embed("data_x\n_cell_length_a 1\n")
    assert err.value.code == "cif_parse_error"
    results = model.predict([NACL, "no-such-file.cif", SI])
    assert isinstance(results[1], Rejection) and results[1].code == "cif_parse_error" and results[1].index == 1
    assert isinstance(results[0], Prediction) and isinstance(results[2], Prediction)
    with pytest.raises(ValueError, match="no model loaded for"):
        model.predict(NACL, targets=["bulk_modulus"])


def test_one_zoo_model_by_name_serves_its_own_targets() -> None:
    gap = sitenet.load_model("sitenet-dim-mp2018-band-gap", providers="cpu", threads=1)
    assert gap.targets == ("band_gap",) and not gap.can_embed
    result = gap.predict(NACL)
    assert result.formation_energy is None and result.metal_probability is not None
    with pytest.raises(ValueError, match="no encoder is loaded"):
        gap.embed(NACL)
    encoder = sitenet.load_model("sitenet-dim-mp2018", providers="cpu", threads=1)
    assert encoder.targets == () and encoder.embed(NACL).shape == (64,)


def test_a_multitask_folder_gives_every_target_from_one_session(tiny_zoo: Path) -> None:
    multi = sitenet.load_model(tiny_zoo / MULTITASK, providers="cpu", threads=1)
    assert multi.targets == ("band_gap", "formation_energy")
    assert multi.predictor.models["band_gap"] is multi.predictor.models["formation_energy"]
    result = multi.predict(SI)
    assert result.band_gap is not None and result.formation_energy is not None


def test_readme_python_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- python-api-example -->\s*```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) == 1, "the README marks its Python example with <!-- python-api-example -->"
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert isinstance(namespace["result"], Prediction)
