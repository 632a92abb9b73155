"""Bad input never gets a 500: each bad CIF of the corpus, and each malformed request, gets the right 4xx and
one error shape ``{"code", "message", "detail"}``; in a batch only the bad item fails."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sitenet.errors import ERROR_CODES

REPO = Path(__file__).resolve().parents[2]
BAD = sorted(p for p in (REPO / "tests" / "data" / "bad_cifs").glob("*__*") if p.suffix in (".cif", ".bin"))
NACL = REPO / "examples" / "NaCl_mp-22862.cif"
SI = REPO / "examples" / "Si_mp-149.cif"


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "detail"}, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and len(body["message"]) > 10, body
    return body


def test_the_corpus_is_big_enough() -> None:
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_each_bad_cif_gets_its_code_and_status(client, path: Path) -> None:
    code = path.name.split("__")[0]
    status = ERROR_CODES[code].http_status
    assert status in (400, 413, 415, 422)
    start = time.perf_counter()
    _error(client.post("/predict", files={"cif": (path.name, path.read_bytes())}), status, code)
    assert time.perf_counter() - start < 1.0, f"{path.name} took more than 1 s to refuse"


def test_mixed_batch_fails_only_the_bad_items(client) -> None:
    bad = BAD[::3][:14]  # spread over the codes; 14 + 2 good ones stays within SITENET_MAX_CIFS=16
    files = [("cifs", (NACL.name, NACL.read_bytes()))] + [("cifs", (p.name, p.read_bytes())) for p in bad] + \
            [("cifs", (SI.name, SI.read_bytes()))]
    r = client.post("/predict_files", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0]["prediction"]["formula"] == "NaCl" and results[-1]["prediction"]["formula"] == "Si"
    for item, path in zip(results[1:-1], bad):
        assert item["prediction"] is None
        assert item["error"]["code"] == path.name.split("__")[0] and item["error"]["message"]


def test_ten_thousand_atom_cell_is_refused_quickly(client) -> None:
    import time

    path = next(p for p in BAD if "10000" in p.name)
    t0 = time.perf_counter()
    body = _error(client.post("/predict", files={"cif": (path.name, path.read_bytes())}), 413, "too_many_sites")
    assert time.perf_counter() - t0 < 5
    assert "500" in body["message"]


def test_wrong_content_types(client) -> None:
    _error(client.post("/predict", json={"cif": NACL.read_text()}), 415, "unsupported_media_type")
    _error(client.post("/predict", content=NACL.read_bytes(), headers={"content-type": "chemical/x-cif"}),
           415, "unsupported_media_type")
    _error(client.post("/predict_text", content=NACL.read_bytes(), headers={"content-type": "text/plain"}),
           415, "unsupported_media_type")
    _error(client.post("/predict_batch", data={"cifs": "x"}), 415, "unsupported_media_type")


def test_oversize_request_is_refused_before_parsing(client) -> None:
    big = b"#" * 3_100_000 + b"\n" + NACL.read_bytes()
    _error(client.post("/predict", files={"cif": ("big.cif", big)}), 413, "request_too_large")

    def chunks():  # no Content-Length: the limit is counted while reading
        for _ in range(40):
            yield b"x" * 100_000

    _error(client.post("/predict_text", content=chunks(), headers={"content-type": "application/json"}),
           413, "request_too_large")


def test_oversize_cif_inside_the_request_limit(client) -> None:
    big = b"#" * 2_100_000 + b"\n" + NACL.read_bytes()
    body = _error(client.post("/predict", files={"cif": ("big.cif", big)}), 413, "input_too_large")
    assert "2000000" in body["message"]


def test_too_many_cifs(client) -> None:
    body = _error(client.post("/predict_batch", json={"cifs": [NACL.read_text()] * 17}), 413, "too_many_cifs")
    assert body["detail"] == {"n": 17, "max": 16}
    files = [("cifs", (f"{k}.cif", b"x")) for k in range(17)]
    _error(client.post("/predict_files", files=files), 413, "too_many_cifs")


def test_malformed_and_invalid_json(client) -> None:
    _error(client.post("/predict_text", content=b'{"cif": "data_', headers={"content-type": "application/json"}),
           400, "malformed_json")
    _error(client.post("/predict_text", json={"cif": 5}), 400, "invalid_request")
    _error(client.post("/predict_text", json={}), 400, "invalid_request")
    _error(client.post("/predict_batch", json={"cifs": "data_x"}), 400, "invalid_request")
    body = _error(client.post("/predict_text", json={"cif": NACL.read_text(), "options": {"targets": ["Gap!"]}}),
                  400, "invalid_request")
    assert "options.targets" in body["message"]
    body = _error(client.post("/predict_text", json={"cif": NACL.read_text(), "options": {"targets": ["gap"]}}),
                  400, "target_unavailable")  # a well-formed name that no model served here predicts
    assert "['gap']" in body["message"] and body["detail"]["available"] == ["band_gap", "formation_energy"]
    _error(client.post("/predict_batch", json={"cifs": []}), 400, "empty_request")


def test_cif_text_is_never_read_as_a_server_path(client) -> None:
    _error(client.post("/predict_text", json={"cif": "/etc/hostname"}), 422, "cif_parse_error")
    _error(client.post("/predict_text", json={"cif": str(NACL)}), 422, "cif_parse_error")


def test_empty_upload_and_missing_file_part(client) -> None:
    _error(client.post("/predict", files={"cif": ("empty.cif", b"")}), 400, "empty_input")
    _error(client.post("/predict", files={"other": ("x.cif", NACL.read_bytes())}), 400, "invalid_request")
    _error(client.post("/predict", files={"cif": ("x.cif", NACL.read_bytes())}, data={"options": "{oops"}),
           400, "invalid_request")


def test_unknown_routes_and_methods_use_the_same_shape(client) -> None:
    _error(client.get("/nope"), 404, "not_found")
    _error(client.get("/predict"), 405, "method_not_allowed")


def test_error_bodies_are_json_documents(client) -> None:
    r = client.post("/predict_text", json={"cif": "junk\n"})
    assert r.headers["content-type"].startswith("application/json")
    assert json.loads(r.content)["code"] == "cif_parse_error"


def test_model_side_answers_malformed_tensors_per_item(client) -> None:
    """The batched ONNX method re-checks each item: a malformed one gets an error, the others their outputs."""
    import numpy as np

    from serving.inference import SiteNetModels
    from serving.schemas import InferItem
    from sitenet.features import featurize
    from sitenet.structure import read_structure

    good = featurize(read_structure(NACL))
    item = dict(atomic_numbers=good.atomic_numbers, distance=good.distance, images=good.images,
                targets=["band_gap"], embedding=True)
    broken = [dict(item, images=good.images + 1), dict(item, atomic_numbers=np.zeros_like(good.atomic_numbers)),
              dict(item, distance=np.full_like(good.distance, np.nan))]
    outs = SiteNetModels()._infer([InferItem(**item), *[InferItem(**b) for b in broken]])
    assert outs[0].error is None and set(outs[0].values) == {"band_gap", "metal_probability"}
    assert len(outs[0].embedding) == 64
    assert [o.error for o in outs[1:]] == ["malformed features"] * 3
