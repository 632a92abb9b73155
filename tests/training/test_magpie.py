"""The Magpie + random forest baseline: real matminer features of real MP crystals, trained and scored like the zoo."""

import numpy as np
import pytest

from sitenet.dataset import SAMPLE_PATH, read_dataset
from training.configs import DataConfig
from training.data import load_corpus
from training.magpie import evaluate_baseline, magpie_features, write_results


@pytest.fixture(scope="module")
def corpus_and_data(tmp_path_factory, sample_cache, sample_store):
    ids = read_dataset(SAMPLE_PATH).ids
    held_out = tmp_path_factory.mktemp("split") / "test.txt"
    held_out.write_text("\n".join(ids[::5]) + "\n")  # every fifth crystal is held out
    data = DataConfig(path=str(SAMPLE_PATH), cache_root=str(sample_cache), test_ids=str(held_out))
    return load_corpus(data), data


def test_features_are_finite_cached_and_follow_composition(corpus_and_data, tmp_path):
    corpus, _ = corpus_and_data
    rows = np.arange(len(corpus.dataset))
    x = magpie_features(corpus, rows, cache=tmp_path)
    assert x.shape == (len(rows), 132) and np.isfinite(x).all()
    assert len(list(tmp_path.glob("*.npy"))) == 1
    np.testing.assert_array_equal(magpie_features(corpus, rows[::-1], cache=tmp_path), x[::-1])  # from the cache
    formulas = corpus.dataset.extra["formula"]
    same = [(i, j) for i in rows for j in rows if i < j and formulas[i] == formulas[j]]
    assert same, "the sample should hold polymorphs"
    for i, j in same:  # composition-only: polymorphs are indistinguishable
        np.testing.assert_allclose(x[i], x[j])
    assert not np.allclose(x[0], x[1])


def test_baseline_trains_on_training_rows_and_scores_held_out_rows(corpus_and_data, tmp_path):
    corpus, data = corpus_and_data
    results = evaluate_baseline(data, trees=20, jobs=1, corpus=corpus)
    gap, energy = results["band_gap"], results["formation_energy"]
    assert 0 < gap["n_test"] <= 80 and gap["n_train"] > 200
    assert 0 < energy["mae"] < 1.0  # eV/atom: a composition model on 300 crystals, far better than the spread
    assert 0 < gap["mae"] < 2.0 and 0.5 < gap["metal_accuracy"] <= 1.0
    write_results(results, tmp_path / "baseline", "sitenet baseline")
    assert "| band_gap |" in (tmp_path / "baseline.md").read_text()


def test_mae_by_size_bins_every_crystal_once():
    from training.evaluate import mae_by_size

    sites = np.array([1, 2, 3, 8, 9, 200])
    y, pred = np.zeros(6), np.array([1.0, 3.0, 2.0, 4.0, 5.0, 7.0])
    bins = mae_by_size(y, pred, sites)
    assert [b["sites"] for b in bins] == ["1-2", "3-4", "5-8", "9-16", "65+"]  # empty bins left out
    assert sum(b["count"] for b in bins) == 6
    assert bins[0]["mae"] == 2.0 and bins[-1]["mae"] == 7.0
