"""sitenet.predict (the one inference path): the predictor must give what a plain ONNX Runtime session gives
on the core's features (its ``prepare`` is checked against the pymatgen path in ``test_cif.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sitenet.batch import collate
from sitenet.errors import FeatureSpecMismatchError, ModelLoadError, SiteNetError
from sitenet.features import featurize
from sitenet.predict import Prediction, Predictor, Rejection, size_batches
from sitenet.structure import read_structure
from tiny_zoo import (BAND_GAP, ENCODER, FORMATION_ENERGY, MULTITASK, tiny_encoder_config, tiny_zoo,  # noqa: F401
                      write_model)

REPO = Path(__file__).resolve().parents[2]
BAD = sorted(p for p in (REPO / "tests" / "data" / "bad_cifs").glob("*__*") if p.suffix in (".cif", ".bin"))
EXAMPLES = sorted((REPO / "examples").glob("*.cif"))


@pytest.fixture(scope="module")
def predictor(tiny_zoo: Path) -> Predictor:
    return Predictor.from_pretrained(tiny_zoo / ENCODER, tiny_zoo / BAND_GAP, tiny_zoo / FORMATION_ENERGY,
                                     providers="cpu", threads=1)


# --- the predictor --------------------------------------------------------------------------------------
def test_predictions_equal_a_plain_onnx_run_on_the_cores_features(predictor: Predictor, sample_frame) -> None:
    import onnxruntime

    cifs = list(sample_frame.cif.iloc[:40])
    results = predictor.predict(cifs, return_embedding=True)
    assert all(isinstance(r, Prediction) for r in results)
    batch = collate([featurize(read_structure(c), spec=predictor.spec) for c in cifs], predictor.spec)
    expected = {}
    for name in (ENCODER, BAND_GAP, FORMATION_ENERGY):
        session = onnxruntime.InferenceSession(str(predictor.models[_role(name)].folder / "model.onnx"),
                                               providers=["CPUExecutionProvider"])
        feed = {i.name: batch.inputs()[i.name] for i in session.get_inputs()}
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        expected[_role(name)] = outputs
    for k, r in enumerate(results):
        assert r.index == k and r.n_sites == len(read_structure(cifs[k]))
        assert r.band_gap == pytest.approx(float(expected["band_gap"]["band_gap"][k]), abs=1e-5)
        assert r.metal_probability == pytest.approx(float(expected["band_gap"]["metal_probability"][k]), abs=1e-5)
        assert r.formation_energy == pytest.approx(float(expected["formation_energy"]["formation_energy"][k]), abs=1e-5)
        np.testing.assert_allclose(r.embedding, expected["encoder"]["embedding"][k], atol=1e-5)
        assert set(r.models) == {"encoder", "band_gap", "formation_energy"}


def test_one_multitask_model_serves_both_targets_in_one_run_per_batch(tiny_zoo: Path, sample_frame) -> None:
    import onnxruntime

    multi = Predictor.from_pretrained(None, tiny_zoo / MULTITASK, tiny_zoo / MULTITASK, providers="cpu", threads=1)
    assert multi.models["band_gap"] is multi.models["formation_energy"] and multi.targets == ("band_gap",
                                                                                              "formation_energy")
    model, runs = multi.models["band_gap"], []
    real_run = model.run
    model.run = lambda batch, outputs=None: runs.append(list(outputs)) or real_run(batch, outputs)  # count runs
    cifs = list(sample_frame.cif.iloc[:12])
    results = multi.predict(cifs)
    assert runs and all(names == ["band_gap", "metal_probability", "formation_energy"] for names in runs)
    assert len(runs) == len(size_batches([(f.n_primitive, f.n_sites) for f in
                                          (featurize(read_structure(c), spec=multi.spec) for c in cifs)]))
    session = onnxruntime.InferenceSession(str(tiny_zoo / MULTITASK / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = collate([featurize(read_structure(c), spec=multi.spec) for c in cifs], multi.spec)
    want = dict(zip([o.name for o in session.get_outputs()],
                    session.run(None, {i.name: batch.inputs()[i.name] for i in session.get_inputs()})))
    for k, r in enumerate(results):
        assert r.band_gap == pytest.approx(float(want["band_gap"][k]), abs=1e-5)
        assert r.formation_energy == pytest.approx(float(want["formation_energy"][k]), abs=1e-5)
        assert r.models == {"band_gap": f"{MULTITASK}@{model.version}", "formation_energy": f"{MULTITASK}@{model.version}"}
    gap_only = multi.predict(cifs[:2], targets=["band_gap"])
    assert gap_only[0].formation_energy is None and gap_only[0].band_gap == pytest.approx(results[0].band_gap, abs=1e-5)
    with pytest.raises(ModelLoadError, match=r"predicts \['band_gap'\], but was given as the formation_energy"):
        Predictor.from_pretrained(None, None, tiny_zoo / BAND_GAP, providers="cpu")


def _role(name: str) -> str:
    return {ENCODER: "encoder", BAND_GAP: "band_gap", FORMATION_ENERGY: "formation_energy"}[name]


def test_bad_items_are_rejected_in_place(predictor: Predictor) -> None:
    bad = [p for p in BAD if p.name.startswith(("cif_parse_error__random", "disordered_structure__partial",
                                                "too_many_sites__p1_10000"))]
    inputs = [EXAMPLES[0].read_bytes(), *[p.read_bytes() for p in bad], EXAMPLES[1].read_bytes()]
    results = predictor.predict(inputs, targets=("formation_energy",))
    assert [r.index for r in results] == list(range(len(inputs)))
    assert isinstance(results[0], Prediction) and isinstance(results[-1], Prediction)
    assert results[0].band_gap is None and results[0].embedding is None and results[0].formation_energy is not None
    codes = [r.code for r in results[1:-1]]
    assert codes == [p.name.split("__")[0] for p in bad]
    assert all(isinstance(r, Rejection) and r.message for r in results[1:-1])
    assert results[-2].http_status == 413


def test_prepare_featurises_once_for_any_models(predictor: Predictor) -> None:
    prepared = predictor.prepare(EXAMPLES[2].read_bytes())
    assert prepared.formula == "NaCl" and prepared.n_sites == 2
    a = predictor.run([prepared], targets=("band_gap",))[0]
    b = predictor.run([prepared], targets=(), return_embedding=True)[0]
    assert set(a) == {"band_gap", "metal_probability"} and set(b) == {"embedding"}
    assert isinstance(predictor.prepare(b"junk\n"), SiteNetError)


def test_options_are_checked(predictor: Predictor, tiny_zoo: Path) -> None:
    with pytest.raises(ValueError, match="no model loaded for"):
        predictor.predict([EXAMPLES[0]], targets=("bandgap",))
    only_gap = Predictor.from_pretrained(None, tiny_zoo / BAND_GAP, None, providers="cpu")
    assert only_gap.targets == ("band_gap",)
    with pytest.raises(ValueError, match="no model loaded"):
        only_gap.predict([EXAMPLES[0]], targets=("formation_energy",))
    with pytest.raises(ValueError, match="encoder"):
        only_gap.predict([EXAMPLES[0]], targets=("band_gap",), return_embedding=True)


def test_models_must_fit_their_role_and_share_features(tiny_zoo: Path, tmp_path: Path) -> None:
    from sitenet.model import SiteNetEncoder

    with pytest.raises(ModelLoadError, match="not an encoder"):
        Predictor.from_pretrained(tiny_zoo / BAND_GAP, None, None, providers="cpu")
    with pytest.raises(ModelLoadError, match="was given as the formation_energy model"):
        Predictor.from_pretrained(None, None, tiny_zoo / BAND_GAP, providers="cpu")
    other = write_model(tmp_path / "other-encoder", SiteNetEncoder(tiny_encoder_config(max_atoms=40)).eval())
    with pytest.raises(FeatureSpecMismatchError, match="max_atoms"):
        Predictor.from_pretrained(other, tiny_zoo / BAND_GAP, None, providers="cpu")


def test_info_names_models_checksums_and_providers(predictor: Predictor) -> None:
    info = predictor.info()
    assert set(info["models"]) == {"encoder", "band_gap", "formation_energy"}
    for model in info["models"].values():
        assert len(model["sha256"]) == 64 and model["providers"] == ["CPUExecutionProvider"]
    assert info["units"] == {"band_gap": "eV", "formation_energy": "eV/atom"}
    assert json.dumps(info)


def test_worker_processes_give_the_same_answers(predictor: Predictor, sample_frame) -> None:
    cifs = list(sample_frame.cif.iloc[40:64]) + [b"junk\n"]
    local = predictor.predict(cifs, return_embedding=True)
    size = predictor.batch_size
    try:
        parallel = predictor.predict(cifs, return_embedding=True, workers=2)
        first_pool = predictor._pool
        predictor.batch_size = 4  # workers copied the old value when they started: they must be replaced
        smaller = predictor.predict(cifs, return_embedding=True, workers=2)
        assert predictor._pool is not first_pool
    finally:
        predictor.batch_size = size
        predictor.close()
    assert [type(r) for r in parallel] == [type(r) for r in local] == [type(r) for r in smaller]
    for a, b in [*zip(local, parallel), *zip(local, smaller)]:
        if isinstance(a, Prediction):
            assert a.formula == b.formula and a.band_gap == pytest.approx(b.band_gap, abs=1e-5)
            np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)
        else:
            assert a == b


def test_size_batches_cover_every_crystal_once_with_little_padding() -> None:
    rng = np.random.default_rng(0)
    sizes = [(int(p), int(p * rng.integers(1, 8))) for p in rng.integers(1, 30, size=300)]
    batches = size_batches(sizes, batch_size=16, max_pairs=20_000)
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    for idx in batches:
        p = max(sizes[i][0] for i in idx)
        n = max(sizes[i][1] for i in idx)
        assert len(idx) <= 16 and (len(idx) == 1 or len(idx) * p * n <= 20_000)


def test_cli_writes_json_and_csv(tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from sitenet.cli import main

    monkeypatch.setenv("SITENET_ZOO_DIR", str(tiny_zoo))
    bad = tmp_path / "bad.cif"
    bad.write_text("not a cif\n")
    files = [str(EXAMPLES[0]), str(bad), str(EXAMPLES[3])]
    assert main(["predict", *files, "-o", str(tmp_path / "out.json"), "--embedding"]) == 0
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [r["source"] for r in rows] == files
    assert rows[0]["formula"] == "Fe" and len(rows[0]["embedding"]) == 64 and rows[1]["code"] == "cif_parse_error"
    assert "rejected" in capsys.readouterr().err
    assert main(["predict", *files, "-o", str(tmp_path / "out.csv")]) == 0
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0].startswith("index,source,formula") and len(lines) == 4
    assert main(["predict", str(bad)]) == 1
