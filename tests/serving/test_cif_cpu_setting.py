"""``SITENET_MAX_CIF_CPU_S``: the per-CIF CPU budget of the service, read from the environment, validated, and
applied by the service's predictor to every CIF it reads (real reads, no mocks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[2]


def _slow_cif() -> str:
    """F m -3 m by name only, sites by label alone: 384 sites that only pymatgen reads (~0.7 s of CPU to parse)."""
    head = (REPO / "tests" / "data" / "bad_cifs" / "too_many_sites__symmetry_bomb_space_group_name.cif").read_text()
    rows = ["  C0  0.0500  0.1100  0.1700", "  Si1  0.1300  0.2100  0.3100"]
    return head.split("loop_")[0] + "loop_\n _atom_site_label\n _atom_site_fract_x\n _atom_site_fract_y\n" \
        " _atom_site_fract_z\n" + "\n".join(rows) + "\n"


def test_the_setting_is_read_and_validated(settings_from) -> None:
    from serving.settings import ServiceSettings
    from sitenet.limits import DEFAULT_MAX_CPU_S

    assert settings_from({}).max_cif_cpu_s == DEFAULT_MAX_CPU_S
    assert settings_from({"SITENET_MAX_CIF_CPU_S": "0.25"}).max_cif_cpu_s == 0.25
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ValidationError, match="max_cif_cpu_s"):
            settings_from({"SITENET_MAX_CIF_CPU_S": bad})


def test_the_service_predictor_applies_it(tiny_zoo: Path, monkeypatch: pytest.MonkeyPatch, settings_from) -> None:
    import serving.inference as inference
    from serving.settings import ServiceSettings
    from sitenet.predict import Prepared

    monkeypatch.setenv("SITENET_ZOO_DIR", str(tiny_zoo))
    text = _slow_cif()
    monkeypatch.setattr(inference, "SETTINGS", settings_from({"SITENET_MAX_CIF_CPU_S": "0.05"}))
    strict = inference.load_predictor(load=False)
    assert strict.max_cpu_s == 0.05 and strict.info()["limits"]["max_sites"] == 500
    refused = strict.prepare(text)
    assert not isinstance(refused, Prepared)
    assert refused.code == "input_too_costly" and refused.http_status == 413, refused
    # a generous budget, not the 2 s default: this read takes ~1-2 s of CPU on a loaded 2-core machine, so the
    # default would make the test a timing race (it failed so once in CI)
    monkeypatch.setattr(inference, "SETTINGS", settings_from({"SITENET_MAX_CIF_CPU_S": "30"}))
    generous = inference.load_predictor(load=False)
    assert generous.max_cpu_s == 30
    prepared = generous.prepare(text)
    assert isinstance(prepared, Prepared) and prepared.n_sites == 384, prepared


def test_info_reports_it(client) -> None:
    from sitenet.limits import DEFAULT_MAX_CPU_S

    assert client.post("/info").json()["limits"]["max_cif_cpu_s"] == DEFAULT_MAX_CPU_S
