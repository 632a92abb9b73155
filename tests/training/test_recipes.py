"""Every recipe validates; unknown keys and wrong types are errors; data splits are seeded and disjoint."""

import numpy as np
import pydantic
import pytest

from training.cli import RECIPES
from training.configs import FinetuneConfig, PretrainConfig, StudyConfig, load_recipe

KINDS = {"dim": PretrainConfig, "finetune": FinetuneConfig, "study": StudyConfig}


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_validates(path):
    kind = next(v for k, v in KINDS.items() if path.name.startswith(k))
    assert load_recipe(path, kind=kind)


def test_overrides_are_validated():
    cfg = load_recipe(None, ["trainer.max_epochs=7", "negatives=standard"], kind=PretrainConfig)
    assert cfg.trainer.max_epochs == 7 and cfg.negatives == "standard"
    with pytest.raises(pydantic.ValidationError):
        load_recipe(None, ["trainer.max_epoch=7"], kind=PretrainConfig)
    with pytest.raises(pydantic.ValidationError):
        load_recipe(None, ["negatives=weird"], kind=PretrainConfig)
    with pytest.raises(ValueError):
        load_recipe(None, ["no_equals_sign"], kind=PretrainConfig)


def test_splits_are_seeded_disjoint_and_respect_the_budget(sample_store, sample_cache):
    from sitenet.dataset import SAMPLE_PATH
    from training.configs import DataConfig
    from training.data import load_corpus, make_splits


    cfg = DataConfig(path=str(SAMPLE_PATH), cache_root=str(sample_cache), max_primitive=20)
    corpus = load_corpus(cfg)
    a = make_splits(corpus, cfg, target="band_gap", n_labels=50, seed=3)
    b = make_splits(corpus, cfg, target="band_gap", n_labels=50, seed=3)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert len(a.train) + len(a.val) == 50  # the P filter is applied before the draw (pitfall F.5)
    assert not set(a.train) & set(a.val) and not (set(a.train) | set(a.val)) & set(a.test)
    assert corpus.test[a.test].all() and not corpus.test[a.train].any()
    assert (corpus.sizes(a.train)[:, 0] <= 20).all()
    assert len(set(corpus.groups[a.train]) & set(corpus.groups[a.val])) == 0  # clusters never straddle
