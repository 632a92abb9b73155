"""Fixtures of the service tests: the tiny zoo as the bundled models, and one in-process client of the
service (``TestClient(SiteNetService.to_asgi())``, no server) shared by the contract and corpus tests.

The service reads its settings when ``serving.service`` is imported, so the environment is set first.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
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
