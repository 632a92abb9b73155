"""A real ``bentoml serve`` from the repository root (offline): ready, predicts a real CIF over HTTP, shuts down.

``/readyz`` hangs while the models load (stack notes §1, pitfall 4), so every poll has its own short timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
NACL = REPO / "examples" / "NaCl_mp-22862.cif"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check_predictions(url: str, batching: str) -> None:
    with httpx.Client(base_url=url, timeout=30.0) as http:
        r = http.post("/predict", files={"cif": (NACL.name, NACL.read_bytes())})
        assert r.status_code == 200, r.text
        assert r.json()["formula"] == "NaCl" and r.json()["formation_energy"] is not None
        r = http.post("/predict_batch", json={"cifs": [NACL.read_text(), "junk\n"],
                                              "options": {"return_embedding": True}})
        assert r.status_code == 200
        ok, bad = r.json()["results"]
        assert len(ok["prediction"]["embedding"]) == 64 and bad["error"]["code"] == "cif_parse_error"
        assert ok["prediction"]["band_gap_std"] is None and ok["prediction"]["neighbours"] is None
        # how far to trust it: calibrated standard deviations and the nearest training crystals
        r = http.post("/predict_text", json={"cif": NACL.read_text(), "options": {"uncertainty": True, "neighbours": 3}})
        assert r.status_code == 200, r.text
        p = r.json()
        assert p["band_gap_std"] > 0 and p["formation_energy_std"] > 0
        distances = [n["distance"] for n in p["neighbours"]]
        assert len(distances) == 3 and distances == sorted(distances)
        assert set(p["neighbours"][0]["labels"]) == {"band_gap", "formation_energy"} and 0 <= p["in_domain"] <= 1
        bad_cif = http.post("/predict", files={"cif": ("x.cif", b"data_x\n")})
        assert bad_cif.status_code == 422 and bad_cif.json()["code"] == "cif_parse_error"
        info = http.post("/info").json()
        assert all(m["providers"] == ["CPUExecutionProvider"] for m in info["models"].values())
        assert info["placement"]["batching"] == batching and info["uncertainty"] is True


@pytest.mark.slow
def test_bentoml_serve_predicts_a_real_cif_inline(live_server) -> None:
    """Models in the HTTP worker (the default): the shared live server."""
    _check_predictions(live_server.url, "inline")


@pytest.mark.slow
def test_bentoml_serve_predicts_a_real_cif_adaptive(service_env: dict[str, str], tmp_path: Path,
                                                   live_server_class: type) -> None:
    """A separate adaptively batched model worker."""
    server = live_server_class({**service_env, "SITENET_BATCHING": "adaptive"}, tmp_path)
    try:
        server.wait_ready()
        _check_predictions(server.url, "adaptive")
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()[-3000:]


@pytest.mark.slow
def test_bentoml_serve_refuses_cuda_where_it_cannot_run(service_env: dict[str, str], tmp_path: Path) -> None:
    """SITENET_PROVIDERS=cuda without a usable GPU: serve exits at once with the reason (no worker restart loop)."""
    from sitenet.runtime import ProviderUnavailableError, pick_providers

    try:
        pick_providers("cuda")
        pytest.skip("CUDA is usable here")
    except ProviderUnavailableError:
        pass
    env = {**os.environ, **service_env, "BENTOML_HOME": str(tmp_path / "bentoml"), "SITENET_PROVIDERS": "cuda"}
    done = subprocess.run([sys.executable, "-m", "bentoml", "serve", "--port", str(_free_port())], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(
        "sitenet: the service cannot start: CUDA was requested but cannot be used"), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
