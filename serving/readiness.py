"""Readiness of the whole server, not of the one worker that happens to answer ``/readyz``.

Why: the HTTP workers share one listening socket, so ``/readyz`` is answered by whichever worker accepts the
connection; a worker's own ``__is_ready__`` said 200 while another worker was still loading its models (or
was being restarted), and requests that reached the other worker waited.

How: the process that starts the server (``bentoml serve``, in its deployment hook, before any worker exists)
makes a folder and passes it to the workers in :data:`ENV` (BentoML's workers copy its environment). Each
worker, once its models are loaded, writes ``worker-<index>`` there holding its pid and start time; the server
is ready when the number of those processes that are still alive reaches the number of workers. A dead worker
(crashed, or killed and being restarted) no longer counts from the moment it dies, and its restart counts again
once it has loaded its models. Without the folder (the service used in-process, e.g. a test client) each
worker's own state decides.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import psutil

__all__ = ["ENV", "mark_ready", "prepare", "ready_workers", "server_ready"]

#: Internal: the folder shared by one server's workers (not a user setting, hence no ``SITENET_`` prefix).
ENV = "_SITENET_READY_DIR"


def prepare() -> Path:
    """Make this server's folder and export it to the workers started after this call; removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="sitenet-ready-"))
    os.environ[ENV] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def mark_ready(worker: int | None) -> None:
    """Record that this worker (BentoML's worker index; None: keyed by pid) can serve."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    pid = os.getpid()
    path = Path(folder) / f"worker-{pid if worker is None else worker}"
    staging = path.with_name(f".{path.name}.{pid}")
    # written aside and renamed: a reader never sees a half-written record
    staging.write_text(f"{pid} {psutil.Process(pid).create_time()!r}\n")
    os.replace(staging, path)


def ready_workers() -> int | None:
    """How many workers have loaded their models and are still alive; None if there is no shared folder."""
    folder = os.environ.get(ENV)
    if not folder:
        return None
    return sum(_alive(path) for path in Path(folder).glob("worker-*"))


def server_ready(expected: int) -> bool:
    """Whether all ``expected`` workers can serve (True without a shared folder: nothing to wait for)."""
    count = ready_workers()
    return count is None or count >= expected


def _alive(record: Path) -> bool:
    try:
        pid_text, created_text = record.read_text().split()
        process = psutil.Process(int(pid_text))
        # the start time tells a reused pid from the worker that wrote the record; an unreaped dead worker
        # is a zombie until the arbiter collects it
        return process.create_time() == float(created_text) and process.status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, psutil.Error):
        return False
