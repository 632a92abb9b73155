"""Timing shared by ``compare.py`` (project venv) and ``peers_worker.py`` (the peers' venv): stdlib only, so
that it imports in both environments."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Wall seconds of each of ``repeats`` calls of ``fn``, and the first call's result."""
    times, first = [], None
    for r in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        first = out if r == 0 else first
    return times, first
