"""Fixtures of the service tests: the tiny zoo as the bundled models, and one in-process client of the
service (``TestClient(SiteNetService.to_asgi())``, no server) shared by the contract and corpus tests.

The service reads its settings when ``serving.service`` is imported, so the environment is set first.
"""

from __future__ import annotations

import importlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tiny_zoo import tiny_zoo  # noqa: F401 (fixture)

#: Limits the tests rely on (small enough to hit cheaply): one request worked on and one waiting per worker.
TEST_ENV = {"SITENET_MAX_REQUEST_BYTES": "3000000", "SITENET_MAX_CIFS": "16", "SITENET_PROVIDERS": "auto",
            "SITENET_MAX_CONCURRENCY": "1", "SITENET_MAX_QUEUE": "1", "SITENET_QUEUE_TIMEOUT_S": "0.5",
            "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="session")
def service_env(tiny_zoo: Path) -> dict[str, str]:
    """Environment for a service on the tiny zoo (used in-process and for the `bentoml serve` subprocess)."""
    return {**TEST_ENV, "SITENET_ZOO_DIR": str(tiny_zoo)}


@pytest.fixture(scope="session")
def client(service_env: dict[str, str]) -> Iterator[object]:
    import warnings

    from starlette.testclient import TestClient

    saved = {k: os.environ.get(k) for k in service_env}
    os.environ.update(service_env)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module("serving.service")
            if module.SETTINGS.max_cifs != 16:  # imported earlier with other settings: re-read them
                for name in ("serving.settings", "serving.inference", "serving.service"):
                    module = importlib.reload(importlib.import_module(name))
            with TestClient(module.SiteNetService.to_asgi()) as test_client:
                # The service has read its settings and loaded its models; put the environment back now, so
                # that tests outside this folder (this fixture lives for the whole session) see the real zoo.
                _restore(saved)
                yield test_client
    finally:
        _restore(saved)


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# --- a real `bentoml serve` ---------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]
#: The live server's limits: the default overload bounds (so concurrent clients are not shed), and short time
#: limits so that the tests of them take seconds.
LIVE_ENV = {"SITENET_BATCHING": "inline", "SITENET_WORKERS": "2", "SITENET_MAX_CONCURRENCY": "",
            "SITENET_MAX_QUEUE": "", "SITENET_QUEUE_TIMEOUT_S": "0.5", "SITENET_TIMEOUT_S": "2"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """``bentoml serve`` from the repository root in its own process group, its output in ``log``."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "serve.log"
        env = {**os.environ, **env, "BENTOML_HOME": str(home / "bentoml")}
        for name in [k for k, v in env.items() if k.startswith("SITENET_") and v == ""]:
            del env[name]  # "" in LIVE_ENV: the setting's default
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until /readyz says 200; each poll has its own short timeout (it hangs while models load)."""
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.url} not ready after {timeout} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        import signal
        import subprocess

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@dataclass(frozen=True)
class Exited:
    """How a ``bentoml serve`` that was expected to stop on its own ended."""

    returncode: int | None  # None: still running at the time limit (then killed)
    seconds: float
    stdout: str
    stderr: str


def serve_until_exit(env: dict[str, str], home: Path, limit_s: float = 60.0) -> Exited:
    """``bentoml serve`` from the repository root, waited for until it exits by itself (or ``limit_s``)."""
    import subprocess
    import sys
    import time

    env = {**os.environ, **env, "BENTOML_HOME": str(home / "bentoml")}
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=limit_s)
        return Exited(process.returncode, time.monotonic() - start, stdout, stderr)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=10)
        return Exited(None, time.monotonic() - start, stdout, stderr)


@pytest.fixture(scope="session")
def serve_until_exit_fn() -> Callable[..., Exited]:
    """:func:`serve_until_exit`, for the start-up failure tests."""
    return serve_until_exit


@pytest.fixture(scope="session")
def live_server_class() -> type[LiveServer]:
    """For tests that start a server of their own (test modules cannot import this conftest by name)."""
    return LiveServer


@pytest.fixture(scope="session")
def live_server(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real inline server (2 HTTP workers) shared by every test that needs HTTP for real."""
    server = LiveServer({**service_env, **LIVE_ENV}, tmp_path_factory.mktemp("live"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()[-3000:]


@pytest.fixture
def settings_from(monkeypatch: pytest.MonkeyPatch):
    """``ServiceSettings()`` read from exactly these ``SITENET_*`` variables (any others the shell has unset)."""
    import os

    from serving.settings import ServiceSettings

    def make(environ: dict[str, str]) -> ServiceSettings:
        for name in [n for n in os.environ if n.startswith("SITENET_")]:
            monkeypatch.delenv(name)
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        return ServiceSettings()

    return make
