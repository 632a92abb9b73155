"""The service and the inference core import without torch (the serving install has none), and the settings
come from SITENET_* variables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_serving_imports_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "import serving.service, serving.inference, serving.schemas, serving.settings, serving.errors\n"
            "import sitenet.predict, sitenet.runtime, sitenet.cif\n"
            "assert sys.modules['torch'] is None\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"})
    assert result.returncode == 0, result.stderr[-3000:]


def test_settings_from_environment(settings_from) -> None:
    from pydantic import ValidationError

    from serving.settings import ServiceSettings

    s = settings_from({"SITENET_ENCODER": "acme/enc", "SITENET_BAND_GAP_MODEL": "/models/gap",
                                  "SITENET_FORMATION_ENERGY_MODEL": "none", "SITENET_REVISION": "v1",
                                  "SITENET_PROVIDERS": "cpu", "SITENET_MAX_CIFS": "5", "SITENET_MAX_SITES": "100"})
    assert s.model_names() == {"encoder": "acme/enc", "band_gap": "/models/gap", "formation_energy": None,
                               "models": ()}
    assert (s.revision, s.providers, s.max_cifs, s.max_sites) == ("v1", "cpu", 5, 100)
    assert settings_from({}).model_names()["encoder"] == "sitenet-dim-mp2018"
    with pytest.raises(ValidationError, match="providers"):
        settings_from({"SITENET_PROVIDERS": "gpu"})
    with pytest.raises(ValidationError, match="max_cifs"):
        settings_from({"SITENET_MAX_CIFS": "0"})


def test_model_placement_and_workers_follow_the_hardware(monkeypatch: pytest.MonkeyPatch, settings_from) -> None:
    """auto: inline models everywhere; one HTTP worker per core on CPU, half as many with CUDA (each worker's
    CUDA context takes turns on the GPU); adaptive: one; explicit values win."""
    import os

    from serving.settings import ServiceSettings

    cores = len(os.sched_getaffinity(0))
    auto = settings_from({})
    assert auto.batching_mode() == "inline"
    cpu = settings_from({"SITENET_PROVIDERS": "cpu"})
    assert (cpu.batching_mode(), cpu.worker_count()) == ("inline", min(cores, 16))
    # the CUDA branch, on any machine: only whether a GPU is usable is stood in for
    monkeypatch.setattr(ServiceSettings, "uses_gpu", lambda self: True)
    assert (auto.batching_mode(), auto.worker_count()) == ("inline", max(1, min(cores // 2, 16)))
    adaptive = settings_from({"SITENET_BATCHING": "adaptive"})
    assert (adaptive.batching_mode(), adaptive.worker_count()) == ("adaptive", 1)
    assert settings_from({"SITENET_BATCHING": "inline", "SITENET_WORKERS": "3"}).worker_count() == 3


def test_every_setting_is_used() -> None:
    """Each field of ServiceSettings is read by the service (no silently ignored variable)."""
    from pathlib import Path

    import serving.settings

    folder = Path(serving.settings.__file__).parent
    source = (folder / "service.py").read_text() + (folder / "inference.py").read_text()
    resolved = {"workers": "worker_count()", "max_concurrency": "concurrency_limit()", "max_queue": "queue_limit()",
                "model_threads": "thread_count()"}  # read through the method that resolves None
    for name in serving.settings.ServiceSettings.model_fields:
        used = f"SETTINGS.{name}" in source or name in resolved and f"SETTINGS.{resolved[name]}" in source or (name.endswith("model") or name in ("encoder", "models")) and "model_names()" in source
        assert used, name


def test_bentofile_pins_what_pyproject_pins() -> None:
    """The Bento's packages carry the same version ranges as the project's own requirements (they drifted once:
    pymatgen was pinned in one and not the other)."""
    import re
    import tomllib

    import yaml

    repo = Path(__file__).resolve().parents[2]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    packages = yaml.safe_load((repo / "bentofile.yaml").read_text())["python"]["packages"]

    def split(requirement: str) -> tuple[str, str]:
        name = re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0]
        return name.lower(), requirement[len(name):].split(";")[0].strip()

    ours: dict[str, set[str]] = {}
    for requirement in requirements:
        name, spec = split(requirement)
        ours.setdefault(name, set()).add(spec)
    for package in packages:
        name, spec = split(package)
        assert name in ours and spec in ours[name], f"bentofile {package!r} vs pyproject {ours.get(name)}"
