"""Shared fixtures: real Materials Project structures from the committed sample, and a fake Hub server.

Every test process is offline for the Hugging Face Hub (a cache miss must fail fast, never reach the
internet); the fake-Hub tests switch that off for themselves.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

sys.path.insert(0, str(Path(__file__).parent))  # so pytest_plugins finds fake_hub under --import-mode=importlib

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest_plugins = ["fake_hub"]

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "mp2018-sample" / "mp2018_sample.csv.gz"


@pytest.fixture(scope="session")
def sample_frame():
    """The 400-row mp2018 sample as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(SAMPLE)


@pytest.fixture(scope="session")
def sample_structures(sample_frame):
    """A seeded, varied set of 40 real MP structures (parsed and validated), including 1- and 200-site cells."""
    from sitenet.structure import read_structure

    rng = np.random.default_rng(0)
    rows = list(rng.choice(len(sample_frame), 36, replace=False))
    rows += list(sample_frame.index[sample_frame.nsites == 1][:2]) + list(sample_frame.index[sample_frame.nsites == 200][:2])
    return [read_structure(sample_frame.cif.iloc[int(i)]) for i in rows]
