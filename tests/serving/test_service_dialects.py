"""Real-world CIF dialects through the service (in process): each is predicted, a file of several crystals
gets one entry per data block (in block order, named by block), and the single-CIF endpoints refuse such a
file with 422 ``multiple_data_blocks`` naming its blocks and the endpoint that predicts them."""

from __future__ import annotations

import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DIALECTS = REPO / "tests" / "data" / "dialects"
SINGLE = ["icsd_dot_coordinates.cif", "upper_case_symbols.cif", "quoted_value_over_two_lines.cif",
          "publication_block_and_one_crystal.cif", "magnetic_nio.mcif"]
MULTI = DIALECTS / "pauling_file_three_blocks.cif"


def test_every_dialect_is_predicted(client) -> None:
    r = client.post("/predict_batch", json={"cifs": [(DIALECTS / n).read_text() for n in SINGLE]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_ok"] == len(SINGLE), body
    assert [e["prediction"]["formula"] for e in body["results"]] == ["CaF2", "NaCl", "NaCl", "NaCl", "NiO"]
    assert all(e["block"] is None for e in body["results"])


def test_each_dialect_and_symmetrised_cif_is_answered_promptly(client) -> None:
    # a guard against expansions that hang (tens of seconds), not a benchmark: ~0.2-1.3 s here on a busy 2-core
    # machine, so the bound leaves room for a slow CI runner (benchmarks/cif_read.py measures the speed)
    symmetrised = sorted((REPO / "tests" / "data" / "symbol_only").glob("*.cif"))[::10]
    for path in [*(DIALECTS / n for n in SINGLE), MULTI, *symmetrised]:
        start = time.perf_counter()
        r = client.post("/predict_files", files=[("cifs", (path.name, path.read_bytes()))])
        assert r.status_code == 200 and r.json()["n_failed"] == 0, (path.name, r.text)
        assert time.perf_counter() - start < 5.0, f"{path.name} took more than 5 s"


def test_a_file_of_several_crystals_gets_an_entry_per_block(client) -> None:
    bad = b"data_junk\n_cell_length_a 4\n"
    files = [("cifs", ("multi.cif", MULTI.read_bytes())), ("cifs", ("x.cif", (DIALECTS / SINGLE[1]).read_bytes())),
             ("cifs", ("two.cif", MULTI.read_bytes() + bad))]
    r = client.post("/predict_files", files=files)
    assert r.status_code == 200, r.text
    entries = [(e["index"], e["block"], (e["prediction"] or {}).get("formula"), (e["error"] or {}).get("code"))
               for e in r.json()["results"]]
    assert entries == [(0, "NaCl", "NaCl", None), (0, "Si", "Si", None), (1, None, "NaCl", None),
                       (2, "NaCl", "NaCl", None), (2, "Si", "Si", None), (2, "junk", None, "cif_parse_error")]
    embedded = client.post("/embed", json={"cifs": [MULTI.read_text()]}).json()["results"]
    assert [(e["block"], e["formula"]) for e in embedded] == [("NaCl", "NaCl"), ("Si", "Si")]


def test_the_single_cif_endpoints_say_how_they_treat_several_blocks(client) -> None:
    r = client.post("/predict", files={"cif": ("multi.cif", MULTI.read_bytes())})
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "multiple_data_blocks" and "/predict_files" in body["message"]
    assert body["detail"]["names"] == ["NaCl", "Si"]
    doc = client.get("/docs.json").json()["paths"]["/predict"]["post"]["description"]
    assert "multiple_data_blocks" in doc and "/predict_files" in doc
