"""``serving/patches.py``: BentoML's per-request timeout timer no longer keeps every finished request (its
context, OpenTelemetry spans included) alive for the whole timeout."""

from __future__ import annotations

import gc
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NACL = REPO / "examples" / "NaCl_mp-22862.cif"


def _live(type_name: str) -> list:
    gc.collect()
    return [o for o in gc.get_objects() if type(o).__name__ == type_name]


def test_finished_requests_leave_no_timer_and_no_span_behind(client) -> None:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    assert getattr(TimeoutMiddleware.__call__, "sitenet_patched", False)
    for _ in range(30):
        assert client.post("/predict", files={"cif": (NACL.name, NACL.read_bytes())}).status_code == 200
        assert client.post("/predict", files={"cif": ("bad.cif", b"data_x\n")}).status_code == 422
    pending = [h for h in _live("TimerHandle") if not h.cancelled() and "_set_timer_out" in repr(h._callback)]
    assert pending == []  # unpatched: one per request, for SITENET_TIMEOUT_S + 10 s
    assert len(_live("_Span")) < 10  # unpatched: two per request
