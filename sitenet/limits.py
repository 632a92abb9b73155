"""Time limits on reading one input: a CPU-time budget per input, and the deadline of the request it serves.

Why: a few kilobytes of CIF can ask pymatgen for seconds of work (a symmetry expansion to thousands of sites,
an atom row repeated hundreds of times). ``sitenet.cif`` refuses the known cases by arithmetic before any
expansion; this is the backstop for whatever else a crafted file finds, so that no input can hold a thread
for longer than its budget, and a service can stop the work of a request whose time is up.

How: :func:`call_limited` registers the calling thread with one watchdog thread per process, which polls
the thread's own CPU clock (``pthread_getcpuclockid``) and the wall clock. When the budget or the deadline
is passed it raises an exception inside the guarded thread (``PyThreadState_SetAsyncExc``): Python code stops
at its next bytecode, a long C call when it returns. Only the guarded call is ever interrupted: the watchdog
disarms under a lock, and a pending interruption that arrived too late is withdrawn.
"""

from __future__ import annotations

import contextvars
import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sitenet.errors import DeadlineExceededError, TimeLimitError

__all__ = ["DEFAULT_MAX_CPU_S", "call_limited", "check_deadline", "current_deadline", "deadline"]

T = TypeVar("T")

#: CPU seconds one input may take to be read and validated. An ordinary CIF takes milliseconds, the slowest
#: legitimate one (a 500-site symmetrised CIF read by pymatgen) well under a second on one core.
DEFAULT_MAX_CPU_S = 2.0
#: How often the watchdog looks at the guarded threads while any exists.
_POLL_S = 0.01

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("sitenet_deadline", default=None)


@contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Within the block (and threads started from it with a copied context, e.g. ``anyio.to_thread``), every
    limited read stops with :class:`DeadlineExceededError` once ``time.monotonic()`` passes ``at``."""
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> float | None:
    """The deadline set by the innermost :func:`deadline`, or None."""
    return _DEADLINE.get()


def check_deadline(what: str) -> None:
    """Raise :class:`DeadlineExceededError` if the current deadline has passed (between items of a request)."""
    at = _DEADLINE.get()
    if at is not None and time.monotonic() >= at:
        raise DeadlineExceededError(f"the request ran out of time before {what}", detail={"reason": "deadline"})


class _Expired(BaseException):
    """Raised asynchronously in a guarded thread. A BaseException, so no ``except Exception`` in a parser
    swallows it; :func:`call_limited` turns it into a typed error."""


class _Guard:
    __slots__ = ("thread_id", "clock", "cpu_end", "wall_end", "lock", "armed", "fired")

    def __init__(self, cpu_s: float | None, wall_end: float | None) -> None:
        self.thread_id = threading.get_ident()
        self.clock = time.pthread_getcpuclockid(self.thread_id) if cpu_s is not None else None
        self.cpu_end = time.clock_gettime(self.clock) + cpu_s if self.clock is not None else None
        self.wall_end = wall_end
        self.lock = threading.Lock()
        self.armed = True
        self.fired: str | None = None  # "cpu" or "deadline" once the watchdog interrupted the thread

    def check(self, now: float) -> None:
        """Called by the watchdog: interrupt the thread if it is over its budget or past its deadline."""
        with self.lock:
            if not self.armed:
                return
            if self.wall_end is not None and now >= self.wall_end:
                reason = "deadline"
            elif self.cpu_end is not None and time.clock_gettime(self.clock) >= self.cpu_end:
                reason = "cpu"
            else:
                return
            self.fired, self.armed = reason, False
            _set_async_exc(self.thread_id, _Expired)

    def disarm(self) -> None:
        """Called by the guarded thread when its call ends: no interruption from now on, and one that was
        raised but not yet delivered is withdrawn."""
        with self.lock:
            if self.armed:
                self.armed = False
            elif self.fired is not None:
                _set_async_exc(self.thread_id, None)


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc is not None else None)


class _Watchdog:
    """One daemon thread per process that checks every active guard every ``_POLL_S`` seconds, and sleeps
    while there is none."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.guards: set[_Guard] = set()
        self.thread: threading.Thread | None = None

    def add(self, guard: _Guard) -> None:
        with self.cond:
            self.guards.add(guard)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="sitenet-limits", daemon=True)
                self.thread.start()
            self.cond.notify()

    def remove(self, guard: _Guard) -> None:
        with self.cond:
            self.guards.discard(guard)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.guards:
                    self.cond.wait()
                guards = list(self.guards)
            now = time.monotonic()
            for guard in guards:
                guard.check(now)
            time.sleep(_POLL_S)

    def after_fork(self) -> None:
        """A forked child has no watchdog thread and none of the parent's guarded calls."""
        self.cond = threading.Condition()
        self.guards = set()
        self.thread = None


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.after_fork)


def call_limited(fn: Callable[[], T], *, cpu_s: float | None, what: str) -> T:
    """``fn()``, stopped with :class:`TimeLimitError` once it has used ``cpu_s`` seconds of this thread's CPU
    time, or with :class:`DeadlineExceededError` once the current :func:`deadline` passes.

    ``what`` names the work in the error message ("reading the CIF").
    """
    at = _DEADLINE.get()
    if cpu_s is None and at is None:
        return fn()
    check_deadline(what)
    guard = _Guard(cpu_s, at)
    # The interruption can arrive at any bytecode after the guard is registered: everything from there to
    # the disarm is inside this try, so it is always caught here and never escapes as a bare _Expired.
    try:
        _WATCHDOG.add(guard)
        try:
            return fn()
        finally:
            guard.disarm()
    except _Expired:
        if guard.fired is None:  # an outer guard's interruption: let it through to its own handler
            raise
    finally:
        _WATCHDOG.remove(guard)
    if guard.fired == "deadline":
        raise DeadlineExceededError(f"the request ran out of time while {what}", detail={"reason": "deadline"})
    raise TimeLimitError(f"{what} took more than {cpu_s:g} s of CPU time, the limit per input; the file asks for "
                         "far more work than its size suggests (e.g. a very large symmetry expansion)",
                         detail={"max_cpu_s": cpu_s})
