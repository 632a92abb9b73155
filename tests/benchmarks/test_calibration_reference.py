"""The calibration benchmark's out-of-domain diagnostic (benchmarks/calibration.py): per-element reference
shifts between two data sets, each crystal's fitted without its own label."""

import importlib.util
from pathlib import Path

import numpy as np

SPEC = importlib.util.spec_from_file_location(
    "calibration_bench", Path(__file__).resolve().parents[2] / "benchmarks" / "calibration.py")
calibration = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(calibration)


def _crystals(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    # ABO3-like 5-atom cells over a few cations, oxygen always present
    return [np.array([a, b, 8, 8, 8]) for a, b in rng.choice([3, 11, 19, 22, 26, 38], size=(n, 2))]


def test_element_reference_shift_recovers_per_element_offsets_out_of_sample() -> None:
    rng = np.random.default_rng(0)
    z = _crystals(400, rng)
    offsets = {3: 0.2, 11: -0.4, 19: 0.1, 22: 0.9, 26: -0.3, 38: 0.5, 8: -1.1}  # eV per atom of each element
    truth = np.array([np.mean([offsets[e] for e in c]) for c in z])
    predictions = rng.normal(-2.0, 0.5, len(z))
    labels = predictions - truth + rng.normal(0, 0.01, len(z))
    shift = calibration.element_reference_shift(predictions, labels, z)
    assert np.abs(shift - truth).max() < 0.02
    assert np.abs(predictions - (labels + shift)).mean() < 0.02  # the residual error is the noise alone


def test_element_reference_shift_never_sees_a_crystals_own_label() -> None:
    rng = np.random.default_rng(1)
    z = _crystals(200, rng)
    predictions, labels = rng.normal(size=200), rng.normal(size=200)
    before = calibration.element_reference_shift(predictions, labels, z)
    changed = labels.copy()
    changed[0] += 100.0  # crystal 0's shift comes from the other half, so moving its label leaves it alone
    after = calibration.element_reference_shift(predictions, changed, z)
    assert after[0] == before[0]
    assert not np.allclose(after, before)  # the other half's shifts do read it
