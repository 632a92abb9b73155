"""Shared fixtures of the training tests: a few real crystals from the bundled sample and a tiny encoder."""

import pytest

from sitenet.config import SiteNetConfig
from sitenet.dataset import REPO_ROOT, SAMPLE_PATH, read_dataset

SAMPLE_CACHE = REPO_ROOT / "cache" / "features-sample"


@pytest.fixture(scope="session")
def sample_cache():
    return SAMPLE_CACHE


@pytest.fixture(scope="session")
def sample_store():
    from sitenet.cache import build_features

    data = read_dataset(SAMPLE_PATH)
    return build_features(data.ids, data.cifs, SAMPLE_CACHE, workers=2, progress=False)


@pytest.fixture(scope="session")
def tiny_config():
    return SiteNetConfig(head_width=8, pair_width=8, attention_hidden=(8,), value_hidden=(8,), local_dim=4,
                         pre_pool=(8,), post_pool=(8,), embedding_dim=6)


@pytest.fixture()
def make_batch(sample_store):
    """make_batch(indices) -> dict of model input tensors for those sample crystals."""
    from sitenet.batch import collate
    from sitenet.model import to_tensors

    def build(indices):
        return to_tensors(collate([sample_store[int(k)] for k in indices], sample_store.spec))

    return build


@pytest.fixture(scope="session")
def small_crystals(sample_store):
    """Indices of sample crystals sorted from the fewest pairs (cheap batches for optimisation tests)."""
    import numpy as np

    return np.argsort(sample_store.sizes[:, 0] * sample_store.sizes[:, 1], kind="stable")
