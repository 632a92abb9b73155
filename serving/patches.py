"""Fixes to third-party code the service runs on, each applied once at import, each with its reason and test.

BentoML 1.4's ``TimeoutMiddleware`` (``bentoml/_internal/server/http/traffic.py``) schedules a timer per request
with ``loop.call_later(timeout, ...)`` and never cancels it, so every request's waiter future and its whole
``contextvars`` context (OpenTelemetry spans, BentoML's request context) stay alive until the timer fires,
``SITENET_TIMEOUT_S`` + 10 s later. Under load that is tens of thousands of requests held at once: measured with
the hostile mix at 16 clients, server RSS grew 462 -> 736 MB over 90 s and throughput fell from 365 to 294
requests/s (``benchmarks/results/service_load_hostile.md`` before this fix). Here the timer is cancelled as soon
as the request is done; a cancelled timer releases its callback at once, and asyncio drops cancelled timers
from its heap when they are the majority. Behaviour is otherwise BentoML's own (504 after ``timeout``).
"""

from __future__ import annotations

import asyncio
from typing import Any


def _timeout_middleware_call() -> Any:
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            try:
                await waiter
            except asyncio.TimeoutError:
                if fut.cancel():
                    response = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                            status_code=504)
                    await response(scope, receive, send)
            else:
                await fut
        finally:
            timer.cancel()

    __call__.sitenet_patched = True  # type: ignore[attr-defined]
    return __call__


def apply() -> None:
    """Apply every fix (idempotent)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    if not getattr(TimeoutMiddleware.__call__, "sitenet_patched", False):
        TimeoutMiddleware.__call__ = _timeout_middleware_call()
