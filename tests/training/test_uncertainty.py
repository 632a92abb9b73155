"""Uncertainty and nearest crystals end to end on the sample: a tiny multi-task fine-tune, ``sitenet
uncertainty`` on it, the index read back without torch, the calibration report, and the served values through
``sitenet.load_model`` on the exported folder; plus the index's exact search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sitenet.dataset import SAMPLE_PATH
from sitenet.neighbours import NeighbourIndex, composition_features, nearest, uncertainty_features, write_index
from training.configs import DataConfig, FinetuneConfig, load_recipe
from training.finetune import finetune


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_config, sample_store, sample_cache) -> Path:
    out = tmp_path_factory.mktemp("unc") / "mt"
    sets = [f"data.path={SAMPLE_PATH}", f"data.cache_root={sample_cache}", "data.batch_size=16",
            "data.val_fraction=0.25", f"output={out}", "trainer.max_epochs=2", "trainer.progress_bar=false",
            "trainer.threads=1", "trainer.precision=32-true", "trainer.compile=false", "init=random",
            f"encoder={tiny_config.model_dump_json()}", "targets=[band_gap, formation_energy]"]
    return finetune(load_recipe(None, sets, kind=FinetuneConfig), loggers=False, checkpointing=False)


def test_uncertainty_command_writes_a_calibrated_index(run: Path, sample_cache) -> None:
    from training.cli import main

    assert main(["uncertainty", str(run)]) == 0
    index = NeighbourIndex(run)
    record = json.loads((run / "training.json").read_text())
    assert len(index) == record["splits"]["train"] and index.embeddings.shape[1] == 6
    assert len(index.reference) == record["splits"]["val"] and np.all(np.diff(index.reference) >= 0)
    fits = json.loads((run / "uncertainty.json").read_text())["fits"]
    assert set(fits) == {"band_gap", "formation_energy"} and fits["band_gap"]["gated"] is True
    for fit in fits.values():
        assert fit["scale"] > 0 and fit["composition"] and fit["residuals"]
        assert len(fit["weights"]) == 6 + fit["gated"] + 3 + 1  # + composition, + neighbours' residuals
    assert len(index.residuals["formation_energy"]) == len(index)

    from training.data import load_corpus, make_splits
    from training.uncertainty import calibration

    data = DataConfig(path=str(SAMPLE_PATH), cache_root=str(sample_cache), val_fraction=0.25)
    corpus = load_corpus(data)
    val = make_splits(corpus, data, target=("band_gap", "formation_energy")).val
    report = calibration(run, corpus, val, data)
    # the scale is fitted on exactly these crystals: the 95% interval covers 95% of them (ties aside)
    for target in ("band_gap", "formation_energy"):
        assert 0.93 <= report[target]["coverage_95"] <= 1.0
        assert len(report[target]["mae_by_in_domain_decile"]) == 10


def test_exported_model_serves_std_neighbours_and_in_domain(run: Path, tmp_path: Path) -> None:
    import sitenet
    from training.cli import main as training_main
    from training.publish import export_folder

    if not NeighbourIndex.present(run):
        assert training_main(["uncertainty", str(run)]) == 0
    folder = export_folder(run, tmp_path / "served")
    for name in ("neighbours.safetensors", "neighbours.json"):
        (folder / name).write_bytes((run / name).read_bytes())  # what the zoo build ships beside the model
    model = sitenet.load_model(folder, providers="cpu", threads=1)
    cif = (Path(__file__).resolve().parents[2] / "examples" / "Si_mp-149.cif")
    plain = model.predict(cif)
    assert plain.band_gap_std is None and plain.neighbours is None
    full = model.predict(cif, uncertainty=True, neighbours=3)
    assert full.formation_energy == pytest.approx(plain.formation_energy, abs=1e-6)
    assert full.formation_energy_std > 0 and full.band_gap_std >= 0 and 0.0 <= full.in_domain <= 1.0
    assert len(full.neighbours) == 3 and full.neighbours[0]["distance"] <= full.neighbours[2]["distance"]
    assert set(full.neighbours[0]["labels"]) == {"band_gap", "formation_energy"}
    listed = model.predict([cif, "missing.cif"], uncertainty=True, neighbours=1)
    assert listed[0].formation_energy_std == pytest.approx(full.formation_energy_std, rel=1e-5)
    assert listed[1].code == "cif_parse_error"


def test_index_search_is_exact_and_in_domain_is_the_reference_share(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    index_rows, queries = rng.normal(size=(300, 8)), rng.normal(size=(7, 8))
    write_index(tmp_path, index_rows, ids=[f"m{i}" for i in range(300)], formulas=["X"] * 300,
                labels={"formation_energy": rng.normal(size=300)}, reference=rng.normal(size=(50, 8)))
    index = NeighbourIndex(tmp_path)
    distances, positions = index.search(queries, 4)
    stored = index_rows.astype(np.float16).astype(np.float32)
    brute = np.sqrt(((queries[:, None, :] - stored[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(positions, np.argsort(brute, 1)[:, :4])
    np.testing.assert_allclose(distances, np.sort(brute, 1)[:, :4], rtol=1e-4)
    assert index.in_domain(np.array([0.0]))[0] == 1.0 and index.in_domain(np.array([1e9]))[0] == 0.0
    middle = index.reference[25]
    assert index.in_domain(np.array([middle]))[0] == pytest.approx(1 - 25 / 50)
    assert nearest(stored, queries.astype(np.float32), 1)[1][:, 0].tolist() == positions[:, 0].tolist()
    assert index.std("formation_energy", np.zeros(7), distances, positions, np.ones(7)) is None  # no fit


def test_uncertainty_features_handle_unlabelled_neighbours() -> None:
    labels = np.array([[np.nan, 1.0, 2.0, np.nan, 3.0], [0.5, 0.5, 0.5, 0.5, 0.5]])
    f = uncertainty_features(np.array([1.0, 0.5]), np.array([[0.1] * 5, [0.0] * 5]), labels, np.array([2, 1]),
                             np.array([0.5, 0.9]))
    assert f.shape == (2, 7) and np.isfinite(f).all()
    assert f[1, 2] == pytest.approx(np.log(1e-3))  # the prediction equals its nearest neighbour's label


def test_composition_features_flag_gga_u_oxides() -> None:
    fe2o3, fe, one_atom = np.array([26, 26, 8, 8, 8]), np.array([26]), np.array([14])
    np.testing.assert_array_equal(composition_features([fe2o3, fe, one_atom]),
                                  [[2, 1, 1], [1, 0, 1], [1, 0, 0]])
    assert composition_features([]).shape == (0, 3)


def test_an_index_fitted_before_the_optional_features_still_serves(tmp_path: Path) -> None:
    """A fit without the composition / residual flags (an older index) reads only the base features; a fit
    with composition needs the crystals' Z (a typed error otherwise)."""
    rng = np.random.default_rng(0)
    fit = {"weights": [0.1] * 6, "bias": -1.0, "gated": False, "scale": 1.0}
    write_index(tmp_path, rng.normal(size=(20, 4)), ids=[f"m{i}" for i in range(20)], formulas=["X"] * 20,
                labels={"formation_energy": rng.normal(size=20)}, reference=rng.normal(size=(5, 4)),
                uncertainty={"formation_energy": fit})
    index = NeighbourIndex(tmp_path)
    distances, positions = index.search(rng.normal(size=(3, 4)))
    std = index.std("formation_energy", np.zeros(3), distances, positions, np.ones(3))
    assert std.shape == (3,) and (std > 0).all()
    index.uncertainty["formation_energy"] = {**fit, "weights": [0.1] * 9, "composition": True}
    with pytest.raises(ValueError, match="atomic_numbers"):
        index.std("formation_energy", np.zeros(3), distances, positions, np.ones(3))
    zs = [np.array([26, 8]), np.array([14]), np.array([3, 9])]
    assert index.std("formation_energy", np.zeros(3), distances, positions, np.ones(3), atomic_numbers=zs).shape == (3,)
