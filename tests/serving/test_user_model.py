"""A user's own property, end to end: one ``sitenet finetune`` on their CSV of CIFs (a target column they name,
with its unit), ``sitenet export``, then a real ``bentoml serve`` that serves it beside the zoo's models and
predicts it over HTTP. The CSV is the bundled perovskite sample (heat of formation, a property the zoo lacks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "perov5-sample" / "perov5_sample.csv.gz"
RECIPE = REPO / "training" / "recipes" / "finetune_own_csv.yaml"
NACL = REPO / "examples" / "NaCl_mp-22862.cif"


def _sitenet(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sitenet.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def user_model(tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recipe as a user runs it, made small: the tiny zoo's encoder, 2 epochs."""
    root = tmp_path_factory.mktemp("user_model")
    run = root / "run"
    _sitenet("finetune", str(RECIPE), "--set", f"init={tiny_zoo / 'sitenet-dim-mp2018'}", "--set", f"output={run}",
             "--set", "trainer.max_epochs=2", "--set", "trainer.threads=1", "--set", "trainer.compile=false",
             "--set", f"data.cache_root={root / 'cache'}", "--set", "data.workers=1", "--set", "data.batch_size=16")
    exported = root / "sitenet-dim-perov5-heat-of-formation"
    _sitenet("export", str(run), "--output", str(exported))
    return exported


def test_the_fine_tuned_folder_declares_its_own_target_and_unit(user_model: Path) -> None:
    config = json.loads((user_model / "config.json").read_text())
    assert config["targets"] == ["heat_of_formation"] and config["units"] == {"heat_of_formation": "eV/atom"}
    training = json.loads((user_model.parent / "run" / "training.json").read_text())
    assert training["splits"]["test"] > 0  # the recipe's seeded held-out share of the CSV


def test_the_python_api_serves_it_with_the_zoo(user_model: Path, tiny_zoo: Path) -> None:
    from sitenet.predict import Predictor

    with Predictor.from_pretrained(tiny_zoo / "sitenet-dim-mp2018", tiny_zoo / "sitenet-dim-mp2018-band-gap", None,
                                   models=[user_model], providers="cpu") as predictor:
        assert predictor.targets == ("band_gap", "heat_of_formation")
        assert predictor.units() == {"band_gap": "eV", "heat_of_formation": "eV/atom"}
        (p,) = predictor.predict([NACL.read_bytes()])
        assert p.band_gap is not None and isinstance(p.properties["heat_of_formation"], float)
        assert p.formation_energy is None and set(p.models) == {"band_gap", "heat_of_formation"}
    with pytest.raises(Exception, match="served by both"):  # one model per target
        Predictor.from_pretrained(None, tiny_zoo / "sitenet-dim-mp2018-band-gap", None,
                                  models=[tiny_zoo / "sitenet-dim-mp2018-band-gap"], load=False)


@pytest.mark.slow
def test_bentoml_serve_predicts_a_user_property_beside_the_zoo(user_model: Path, service_env: dict[str, str],
                                                               tmp_path: Path, live_server_class: type) -> None:
    server = live_server_class({**service_env, "SITENET_MODELS": str(user_model), "SITENET_WORKERS": "1"}, tmp_path)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30.0) as http:
            info = http.post("/info").json()
            assert info["targets"] == ["band_gap", "formation_energy", "heat_of_formation"]
            assert info["units"]["heat_of_formation"] == "eV/atom"
            assert info["models"]["heat_of_formation"]["name"] == user_model.name
            every = http.post("/predict", files={"cif": (NACL.name, NACL.read_bytes())}).json()
            assert every["band_gap"] is not None and every["formation_energy"] is not None
            assert isinstance(every["properties"]["heat_of_formation"], float)
            only = http.post("/predict_text", json={"cif": NACL.read_text(),
                                                    "options": {"targets": ["heat_of_formation"]}}).json()
            assert only["band_gap"] is None and only["properties"] == every["properties"]
            assert set(only["models"]) == {"heat_of_formation"}
            missing = http.post("/predict_text", json={"cif": NACL.read_text(), "options": {"targets": ["bulk_modulus"]}})
            assert missing.status_code == 400 and missing.json()["code"] == "target_unavailable"
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()[-3000:]
