"""Per-worker admission control: a bound on the requests being worked on, a small wait queue in front of it,
and nothing run for a client that has gone or waited too long.

Without it every request is taken on at once, so under overload each worker works on dozens of requests
together, each answered late, and keeps working on requests whose clients have already given up.
:class:`Admission` admits up to ``limit`` prediction requests at a time; up to ``queue`` more wait, in
arrival order, for a slot; beyond that a request is answered at once with 503 ``overloaded`` and a
``Retry-After``. A waiting request whose client disconnects is dropped unrun, and one that waited
``queue_timeout_s`` is answered 503 instead of being run late.

Why not BentoML's own ``traffic={"max_concurrency": N}`` (bentoml 1.4.40,
``bentoml/_internal/server/http/traffic.py``, ``MaxConcurrencyMiddleware``): it has no queue, so a burst is
refused although a slot frees within milliseconds; it answers 429 (a client's rate limit, not a server's
overload) with ``{"error": "Too many requests"}`` and no ``Retry-After``; it never notices a client that
disconnected; and it splits the service-wide N over the workers with ``ceil`` (``_bentoml_impl/server/app.py``).

The middleware sits inside :class:`serving.errors.RequestGuard`, so a body reaches it already read and within
the size limit; a waiting request holds nothing but that body.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import math
import time
from collections.abc import Collection
from typing import Any

from serving.errors import Message, Receive, Scope, Send, overloaded_response

#: What happened to each request the middleware saw, as counted on /metrics (``sitenet_admission_total``).
OUTCOMES = ("admitted", "queue_full", "queue_timeout", "disconnected")

#: ``time.monotonic()`` when the middleware first saw the request: the service measures the request's queue
#: wait and its run-time limit from it (set here, read in the endpoint's task, which inherits the context).
_ARRIVAL: contextvars.ContextVar[float | None] = contextvars.ContextVar("sitenet_arrival", default=None)


def arrival_time() -> float:
    """When the current request arrived (now, if it did not pass through :class:`Admission`)."""
    arrived = _ARRIVAL.get()
    return time.monotonic() if arrived is None else arrived


@functools.cache
def _outcome_counter() -> Any:
    """Created on first use: BentoML sets ``PROMETHEUS_MULTIPROC_DIR`` in each worker after importing the
    service, and a counter created before that would never reach /metrics. Cached: one per process."""
    import prometheus_client

    return prometheus_client.Counter("sitenet_admission", "prediction requests by admission outcome",
                                     labelnames=["outcome"])


class Admission:
    """ASGI middleware: at most ``limit`` POSTs to ``routes`` in the app at once, ``queue`` more waiting.

    Args:
        app: the ASGI app behind it.
        limit: requests worked on at once.
        queue: requests that may wait for a slot; more are refused at once.
        queue_timeout_s: longest wait for a slot; then 503 rather than a late answer.
        routes: the paths it bounds (the prediction endpoints; /info, health and /metrics always pass).
    """

    def __init__(self, app: Any, *, limit: int, queue: int, queue_timeout_s: float, routes: Collection[str]) -> None:
        self.app = app
        self.limit, self.queue, self.queue_timeout_s = limit, queue, queue_timeout_s
        self.routes = frozenset(routes)
        self.active = 0
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        # running mean of how long an admitted request holds its slot: the basis of Retry-After
        self.hold_s = 0.05
        self.counts = dict.fromkeys(OUTCOMES, 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        _ARRIVAL.set(time.monotonic())
        if self.active < self.limit and not self.waiting:
            self.active += 1
        elif len(self.waiting) >= self.queue:
            await self._refuse("queue_full", scope, receive, send)
            return
        else:
            outcome, receive = await self._wait(receive)
            if outcome != "admitted":
                # answered even when the client has gone: the server drops it, and BentoML's timeout middleware
                # would otherwise hold the request until timeout_s, waiting for a response to start
                await self._refuse(outcome, scope, receive, send)
                return
        self._count("admitted")
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self._release()
            self.hold_s += 0.1 * (time.perf_counter() - start - self.hold_s)

    def retry_after_s(self) -> int:
        """Seconds until the work now admitted and waiting is likely done (at least 1: Retry-After is whole
        seconds, and 0 would invite an immediate retry into the same overload)."""
        return max(1, math.ceil((self.active + len(self.waiting)) * self.hold_s / self.limit))

    async def _wait(self, receive: Receive) -> tuple[str, Receive]:
        """Wait for a slot, a disconnect or the deadline, whichever comes first."""
        slot = asyncio.get_running_loop().create_future()
        self.waiting.append(slot)
        watch = _DisconnectWatch(receive)
        watcher = asyncio.ensure_future(watch.run())
        try:
            await asyncio.wait((slot, watcher), timeout=self.queue_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (BentoML's request timeout, shutdown): give up the place in line
            self._leave(slot)
            raise
        finally:
            watcher.cancel()
        if watch.gone or not slot.done():
            self._leave(slot)
            return ("disconnected" if watch.gone else "queue_timeout"), receive
        return "admitted", watch.receive

    def _leave(self, slot: asyncio.Future[None]) -> None:
        if slot.done() and not slot.cancelled():  # a slot was handed over just now: pass it on
            self._release()
        else:
            slot.cancel()
            self.waiting.remove(slot)

    def _release(self) -> None:
        """Hand the slot to the longest waiter, else free it."""
        while self.waiting:
            slot = self.waiting.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self.active -= 1

    async def _refuse(self, outcome: str, scope: Scope, receive: Receive, send: Send) -> None:
        self._count(outcome)
        why = {"queue_full": f"all {self.limit} slots are busy and {self.queue} requests are already waiting",
               "queue_timeout": f"no slot became free within {self.queue_timeout_s:g} s",
               "disconnected": "the client disconnected while it waited"}[outcome]
        response = overloaded_response(f"the service is overloaded ({why}); retry later", self.retry_after_s(),
                                       {"reason": outcome, "max_concurrency": self.limit, "max_queue": self.queue})
        # The workers share one listening socket and each accepts every connection pending when it wakes, so
        # a burst of keep-alive connections can all land on one worker while another idles. Closing this one
        # makes the client reconnect, most likely to a worker that is less busy and accepts sooner.
        response.headers["connection"] = "close"
        await response(scope, receive, send)

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        _outcome_counter().labels(outcome=outcome).inc()


class _DisconnectWatch:
    """Reads a waiting request's messages: keeps those the app will want (its body), notes a disconnect.

    Cancelled once the wait ends; a message it was receiving just then can only be a disconnect (the body
    came first, whole, from RequestGuard), and the server reports a disconnect again on the next receive."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._kept: collections.deque[Message] = collections.deque()
        self.gone = False

    async def run(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                return
            self._kept.append(message)

    async def receive(self) -> Message:
        return self._kept.popleft() if self._kept else await self._receive()
