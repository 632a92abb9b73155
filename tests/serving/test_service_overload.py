"""Overload: beyond one worker's bound the service answers 503 ``overloaded`` with Retry-After at once, still
answers the admitted request, and never runs a queued request whose client has gone or waited too long.

Driven in process over raw ASGI (in the TestClient's own event loop), so the test decides when each client
reads its response or hangs up. The service runs with SITENET_MAX_CONCURRENCY=1, SITENET_MAX_QUEUE=1,
SITENET_QUEUE_TIMEOUT_S=0.5 (conftest).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from serving.admission import OUTCOMES

REPO = Path(__file__).resolve().parents[2]
NACL = REPO / "examples" / "NaCl_mp-22862.cif"


class Client:
    """One request to the ASGI app; it reads its response only once ``read`` is set, hangs up on ``hang_up``."""

    def __init__(self, app: Any, *, read: bool = True) -> None:
        self.app = app
        self.read, self.hang_up, self.started = asyncio.Event(), asyncio.Event(), asyncio.Event()
        if read:
            self.read.set()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.body_sent = False

    async def post(self) -> None:
        body = json.dumps({"cif": NACL.read_text()}).encode()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/predict_text", "raw_path": b"/predict_text", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 1234), "server": ("testserver", 80),
                 "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())]}

        async def receive() -> dict:
            if not self.body_sent:
                self.body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.started.set()
                await self.read.wait()
                self.status = message["status"]
                self.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                self.body += message.get("body", b"")

        await self.app(scope, receive, send)


def _counts() -> dict[str, float]:
    """The admission counter that /metrics exports (read from this process's registry: the app runs here)."""
    from prometheus_client import REGISTRY

    return {k: REGISTRY.get_sample_value("sitenet_admission_total", {"outcome": k}) or 0.0 for k in OUTCOMES}


def _overloaded(c: Client, reason: str) -> None:
    assert c.status == 503, c.body
    body = json.loads(c.body)
    assert set(body) == {"code", "message", "detail"} and body["code"] == "overloaded", body
    assert body["detail"]["reason"] == reason and "retry later" in body["message"]
    assert int(c.headers["retry-after"]) >= 1 and body["detail"]["retry_after_s"] == int(c.headers["retry-after"])
    assert c.headers["connection"] == "close"  # so the client reconnects, maybe to a less busy worker


def test_beyond_the_bound_503_at_once_and_queued_work_of_a_gone_client_is_not_run(client) -> None:
    app = client.app
    before = _counts()

    async def scenario() -> tuple[Client, ...]:
        held = Client(app, read=False)  # admitted; holds the one slot until it reads its response
        held_task = asyncio.ensure_future(held.post())
        await asyncio.wait_for(held.started.wait(), 30)
        gone = Client(app)  # waits in the one queue place, then hangs up
        gone_task = asyncio.ensure_future(gone.post())
        await asyncio.sleep(0.05)
        refused = Client(app)  # no slot, no queue place: refused at once
        await asyncio.wait_for(refused.post(), 0.25)
        gone.hang_up.set()
        await asyncio.wait_for(gone_task, 0.25)  # dropped at once (before the 0.5 s deadline), without running
        late = Client(app)  # waits past SITENET_QUEUE_TIMEOUT_S=0.5 while the slot stays taken
        await asyncio.wait_for(late.post(), 3)
        held.read.set()
        await asyncio.wait_for(held_task, 30)
        after = Client(app)  # the slot was given back: admitted at once
        await asyncio.wait_for(after.post(), 30)
        return held, gone, refused, late, after

    held, gone, refused, late, after = client.portal.call(scenario)
    assert held.status == 200 and json.loads(held.body)["formula"] == "NaCl"
    assert after.status == 200 and json.loads(after.body) == json.loads(held.body)
    _overloaded(gone, "disconnected")  # what the server would have sent, had the client stayed
    _overloaded(refused, "queue_full")
    _overloaded(late, "queue_timeout")
    counts = _counts()
    delta = {k: counts[k] - before[k] for k in OUTCOMES}
    assert delta == {"admitted": 2, "queue_full": 1, "queue_timeout": 1, "disconnected": 1}


def test_info_reports_the_overload_limits(client) -> None:
    limits = client.post("/info").json()["limits"]
    assert (limits["max_concurrency"], limits["max_queue"], limits["queue_timeout_s"]) == (1, 1, 0.5)
    assert limits["model_threads"] >= 1


def test_overload_settings_are_validated_and_resolved(settings_from) -> None:
    import pytest
    from pydantic import ValidationError

    from serving.settings import ServiceSettings

    with pytest.raises(ValidationError, match="max_concurrency"):
        settings_from({"SITENET_MAX_CONCURRENCY": "0"})
    with pytest.raises(ValidationError, match="max_queue"):
        settings_from({"SITENET_MAX_QUEUE": "-1"})
    with pytest.raises(ValidationError, match="queue_timeout_s"):
        settings_from({"SITENET_QUEUE_TIMEOUT_S": "0"})
    with pytest.raises(ValidationError, match="must be less than timeout_s"):
        settings_from({"SITENET_QUEUE_TIMEOUT_S": "30", "SITENET_TIMEOUT_S": "30"})
    inline = settings_from({"SITENET_BATCHING": "inline", "SITENET_WORKERS": "1",
                                       "SITENET_MODEL_THREADS": "2"})
    assert (inline.thread_count(), inline.concurrency_limit(), inline.queue_limit()) == (2, 8, 16)
    cores = len(os.sched_getaffinity(0))
    one = settings_from({"SITENET_BATCHING": "inline", "SITENET_WORKERS": "1"})
    assert one.thread_count() == cores  # the worker's share of the cores
    many = settings_from({"SITENET_BATCHING": "inline", "SITENET_WORKERS": str(2 * cores)})
    assert many.thread_count() == 1  # never fewer than one
    adaptive = settings_from({"SITENET_BATCHING": "adaptive", "SITENET_MAX_BATCH_SIZE": "32"})
    assert adaptive.concurrency_limit() == 32  # a full batch can form in the model worker
    explicit = settings_from({"SITENET_MAX_CONCURRENCY": "3", "SITENET_MAX_QUEUE": "0"})
    assert (explicit.concurrency_limit(), explicit.queue_limit()) == (3, 0)
