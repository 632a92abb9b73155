"""The HTTP contract of the SiteNet service, in process (starlette TestClient over the BentoML ASGI app)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.cif"))
NACL = REPO / "examples" / "NaCl_mp-22862.cif"
PREDICTION_FIELDS = {"formula", "n_sites", "band_gap", "metal_probability", "formation_energy", "embedding", "models",
                     "band_gap_std", "formation_energy_std", "neighbours", "in_domain", "properties"}


def _upload(client, path: Path = NACL, options: dict | None = None):
    data = {"options": json.dumps(options)} if options is not None else None
    return client.post("/predict", files={"cif": (path.name, path.read_bytes())}, data=data)


def test_predict_one_uploaded_cif(client) -> None:
    r = _upload(client)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == PREDICTION_FIELDS
    assert body["formula"] == "NaCl" and body["n_sites"] == 2
    assert body["band_gap"] >= 0 and 0 <= body["metal_probability"] <= 1
    assert isinstance(body["formation_energy"], float) and body["embedding"] is None
    assert set(body["models"]) == {"band_gap", "formation_energy"}


def test_options_choose_targets_and_embedding(client) -> None:
    body = _upload(client, options={"targets": ["formation_energy"], "return_embedding": True}).json()
    assert body["band_gap"] is None and body["metal_probability"] is None
    assert body["formation_energy"] is not None and len(body["embedding"]) == 64
    assert set(body["models"]) == {"encoder", "formation_energy"}


def test_uncertainty_and_neighbours_match_the_predictor(client, tiny_zoo: Path) -> None:
    from sitenet.predict import DEFAULT_MODELS, Predictor

    predictor = Predictor.from_pretrained(band_gap=tiny_zoo / DEFAULT_MODELS["band_gap"],
                                          formation_energy=tiny_zoo / DEFAULT_MODELS["formation_energy"],
                                          providers="cpu")  # the service's defaults
    (want,) = predictor.predict([NACL.read_bytes()], uncertainty=True, neighbours=2)
    body = _upload(client, options={"uncertainty": True, "neighbours": 2}).json()
    assert body["band_gap_std"] == pytest.approx(want.band_gap_std, rel=1e-4)
    assert body["formation_energy_std"] == pytest.approx(want.formation_energy_std, rel=1e-4)
    assert [n["id"] for n in body["neighbours"]] == [n["id"] for n in want.neighbours]
    assert body["in_domain"] == pytest.approx(want.in_domain)
    only_std = _upload(client, options={"uncertainty": True, "targets": ["formation_energy"]}).json()
    assert only_std["band_gap_std"] is None and only_std["formation_energy_std"] > 0 and only_std["neighbours"] is None


@pytest.mark.parametrize("neighbours", [-1, 21, "many"])
def test_a_bad_neighbour_count_is_a_400(client, neighbours) -> None:
    r = client.post("/predict_text", json={"cif": NACL.read_text(), "options": {"neighbours": neighbours}})
    assert r.status_code == 400 and "neighbours" in r.text, r.text


def test_json_text_and_upload_give_the_same_prediction(client) -> None:
    by_file = _upload(client).json()
    by_text = client.post("/predict_text", json={"cif": NACL.read_text()})
    assert by_text.status_code == 200 and by_text.json() == by_file


def test_service_matches_the_predictor(client, tiny_zoo: Path) -> None:
    from sitenet.predict import DEFAULT_MODELS, Predictor

    predictor = Predictor.from_pretrained(*(tiny_zoo / DEFAULT_MODELS[role] for role in
                                            ("encoder", "band_gap", "formation_energy")), providers="cpu")
    expected = predictor.predict([p.read_bytes() for p in EXAMPLES], return_embedding=True)
    r = client.post("/predict_batch", json={"cifs": [p.read_text() for p in EXAMPLES],
                                            "options": {"return_embedding": True}})
    assert r.status_code == 200
    for item, want in zip(r.json()["results"], expected):
        got = item["prediction"]
        assert got["formula"] == want.formula
        assert got["band_gap"] == pytest.approx(want.band_gap, abs=1e-5)
        assert got["formation_energy"] == pytest.approx(want.formation_energy, abs=1e-5)
        assert got["embedding"] == pytest.approx(want.embedding, abs=1e-5)


def test_batch_of_texts_keeps_order_and_isolates_the_bad_item(client) -> None:
    cifs = [EXAMPLES[0].read_text(), "data_x\n_cell_length_a 3\n", NACL.read_text()]
    r = client.post("/predict_batch", json={"cifs": cifs})
    assert r.status_code == 200
    body = r.json()
    assert (body["n_ok"], body["n_failed"]) == (2, 1)
    first, bad, last = body["results"]
    assert [first["index"], bad["index"], last["index"]] == [0, 1, 2]
    assert first["prediction"]["formula"] == "Fe" and first["error"] is None
    assert bad["prediction"] is None and bad["error"]["code"] == "cif_parse_error" and bad["error"]["message"]
    assert last["prediction"] == _upload(client).json()


def test_batch_of_uploaded_files(client) -> None:
    files = [("cifs", (p.name, p.read_bytes())) for p in EXAMPLES] + [("cifs", ("empty.cif", b""))]
    r = client.post("/predict_files", files=files, data={"options": json.dumps({"targets": ["band_gap"]})})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["prediction"]["formula"] for x in results[:-1]] == ["Fe", "GaAs", "NaCl", "Si", "TiO2"]
    assert all(x["prediction"]["formation_energy"] is None for x in results[:-1])
    assert results[-1]["error"]["code"] == "empty_input"


def test_embeddings_for_one_or_many(client) -> None:
    one = client.post("/embed", json={"cifs": [NACL.read_text()]})
    assert one.status_code == 200
    body = one.json()
    assert body["model"].startswith("sitenet-dim-mp2018@") and len(body["results"][0]["embedding"]) == 64
    many = client.post("/embed_files", files=[("cifs", (p.name, p.read_bytes())) for p in (NACL, EXAMPLES[0])])
    assert many.status_code == 200
    results = many.json()["results"]
    assert results[0]["embedding"] == pytest.approx(body["results"][0]["embedding"])
    assert results[1]["formula"] == "Fe"
    bad = client.post("/embed", json={"cifs": ["junk\n", NACL.read_text()]}).json()["results"]
    assert bad[0]["error"]["code"] == "cif_parse_error" and bad[1]["embedding"] is not None


def test_info_reports_models_checksums_and_providers(client, tiny_zoo: Path) -> None:
    r = client.post("/info")
    assert r.status_code == 200
    info = r.json()
    assert set(info["models"]) == {"encoder", "band_gap", "formation_energy"}
    for role, model in info["models"].items():
        manifest = json.loads((tiny_zoo / model["name"] / "manifest.json").read_text())
        assert model["sha256"] == manifest["files"]["model.onnx"]
        assert model["providers"] == ["CPUExecutionProvider"] and model["providers_requested"] == "auto"
    assert info["units"] == {"band_gap": "eV", "formation_energy": "eV/atom"}
    assert info["limits"]["max_cifs"] == 16 and info["limits"]["max_request_bytes"] == 3_000_000
    assert info["placement"]["batching"] in ("adaptive", "inline") and info["placement"]["http_workers"] >= 1


def test_openapi_documents_fields_and_units(client) -> None:
    spec = client.get("/docs.json").json()
    for route in ("/predict", "/predict_text", "/predict_batch", "/predict_files", "/embed", "/embed_files", "/info"):
        assert route in spec["paths"], route
    text = json.dumps(spec)
    assert "formation energy, eV/atom" in text and "band gap, eV" in text
    assert "/infer" not in spec["paths"]  # the tensor endpoint belongs to the internal model service


def test_health_endpoints(client) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200
