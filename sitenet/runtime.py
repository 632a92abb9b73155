"""ONNX Runtime sessions for zoo model folders: the execution provider that is really used, and ``run``.

No torch here. ``onnxruntime`` is imported only when a session is made, so ``import sitenet.runtime`` works
in an install without a runtime; a missing runtime is reported with the extra that provides it.

Provider choice (``pick_providers``): ``cpu`` is always CPU; ``cuda`` asks for CUDA and fails loudly if it
cannot be had; ``auto`` asks for CUDA only when the installed runtime is the GPU build *and* NVML sees a GPU,
else CPU. ONNX Runtime falls back to CPU silently when CUDA libraries are missing, so
:attr:`OnnxModel.providers` is read back from the session, never assumed.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args

import numpy as np

from sitenet.errors import ModelLoadError

__all__ = ["OnnxModel", "ProviderUnavailableError", "ProviderChoice", "cuda_device_count", "pick_providers"]

logger = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cpu", "cuda"]
Provider = Union[str, tuple[str, dict[str, Any]]]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_INSTALL_HINT = ("install one ONNX runtime: pip install 'sitenet-dim[cpu]' (onnxruntime) or "
                 "'sitenet-dim[gpu]' (onnxruntime-gpu), never both")


class ProviderUnavailableError(RuntimeError):
    """``providers="cuda"`` was asked for but CUDA cannot be used here (the message says why)."""


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"onnxruntime is not installed: {_INSTALL_HINT}") from err
    if not hasattr(onnxruntime, "InferenceSession"):  # a half-uninstalled second runtime (stack notes §2)
        raise ImportError(f"onnxruntime is broken (both runtimes were installed, then one removed): {_INSTALL_HINT}")
    return onnxruntime


def cuda_device_count() -> int:
    """NVIDIA GPUs visible to NVML (0 without a driver). ``pynvml`` ships with bentoml as nvidia-ml-py."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded on CPU-only machines  # noqa: BLE001
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def pick_providers(want: ProviderChoice = "auto") -> list[Provider]:
    """The provider list to hand to ``InferenceSession`` for ``want``.

    Raises:
        ValueError: ``want`` is not auto, cpu or cuda.
        ProviderUnavailableError: ``want == "cuda"`` and the runtime is the CPU build or no GPU is visible.
    """
    if want not in get_args(ProviderChoice):
        raise ValueError(f"providers must be one of {get_args(ProviderChoice)}, got {want!r}")
    if want == "cpu":
        return [CPU]
    gpu_build = CUDA in _ort().get_available_providers()
    gpus = cuda_device_count() if gpu_build else 0
    if gpu_build and gpus > 0:
        device = int(os.environ.get("SITENET_CUDA_DEVICE", "0"))
        return [(CUDA, {"device_id": device}), CPU]
    if want == "cuda":
        why = ("the installed onnxruntime is the CPU build; install 'sitenet-dim[gpu]' (onnxruntime-gpu) instead"
               if not gpu_build else "NVML sees no NVIDIA GPU (no driver, or CUDA_VISIBLE_DEVICES hides it)")
        raise ProviderUnavailableError(f"CUDA was requested but cannot be used: {why}")
    return [CPU]


class OnnxModel:
    """One zoo model folder (``config.json`` + ``model.onnx`` + ``manifest.json``) with its ONNX session.

    Attributes:
        folder: the model folder.
        name: the folder name (the zoo / Hub name).
        config: ``config.json`` as a dict.
        model_type: ``"sitenet"`` (encoder) or ``"sitenet-regressor"``.
        sha256: sha256 of ``model.onnx`` (from the manifest when there is one, else computed).
        library_version: sitenet version that wrote the manifest, or None.
        input_names: inputs the graph really has (unused ones such as ``species`` are pruned by the export).
        output_names: graph outputs, e.g. ("band_gap", "metal_probability", "embedding").
        providers: execution providers the session really uses (after any silent fallback).
    """

    def __init__(self, folder: str | os.PathLike[str], *, providers: ProviderChoice = "auto",
                 threads: int | None = None, load: bool = True) -> None:
        """Read the folder's config and manifest and, with ``load`` (the default), create the session.

        ``load=False`` gives the metadata only (config, checksum, names) for a process that featurises but
        does not run the model; :meth:`run` then raises and ``providers`` is empty.
        """
        self.folder = Path(folder)
        self.name = self.folder.name
        self.requested = providers
        onnx_path = self.folder / "model.onnx"
        try:
            self.config: dict[str, Any] = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{self.folder}: cannot read config.json: {err}") from None
        if not onnx_path.is_file():
            raise ModelLoadError(f"{self.folder} has no model.onnx (export it with training.export.export_onnx)")
        self.model_type = str(self.config.get("model_type", ""))
        manifest = self._manifest()
        self.library_version = manifest.get("library_version")
        self.sha256 = manifest.get("files", {}).get("model.onnx") or _sha256(onnx_path)
        self.session: Any = None
        self.providers: list[str] = []
        self.input_names: tuple[str, ...] = ()
        self.output_names: tuple[str, ...] = tuple(_declared_outputs(self.config))
        if load:
            self._load(onnx_path, providers, threads)

    def _load(self, onnx_path: Path, providers: ProviderChoice, threads: int | None) -> None:
        ort = _ort()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        wanted = pick_providers(providers)
        if any(p[0] == CUDA for p in wanted if isinstance(p, tuple)):
            _preload_cuda_libraries(ort)
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=wanted)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types  # noqa: BLE001
            raise ModelLoadError(f"{onnx_path}: ONNX Runtime cannot load the graph: {err}") from None
        self.providers = list(self.session.get_providers())
        asked = [p if isinstance(p, str) else p[0] for p in wanted]
        if asked[0] == CUDA and self.providers[0] != CUDA:
            if providers == "cuda":  # asked for CUDA explicitly: never serve on CPU by accident
                raise ProviderUnavailableError(
                    f"CUDA was requested for {self.name} but ONNX Runtime fell back to {self.providers} (CUDA/cuDNN "
                    "libraries missing or mismatched; see the onnxruntime error above)")
            logger.warning("%s: CUDA is visible but ONNX Runtime fell back to %s", self.name, self.providers)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        logger.info("loaded %s (sha256 %s…) on %s", self.name, self.sha256[:12], ", ".join(self.providers))

    def _manifest(self) -> dict[str, Any]:
        path = self.folder / "manifest.json"
        if not path.is_file():
            return {}
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ModelLoadError(f"{path} is not JSON: {err}") from None
        return manifest if isinstance(manifest, dict) else {}

    @property
    def version(self) -> str:
        """A short version tag: the first 12 hex digits of the ONNX file's sha256."""
        return self.sha256[:12]

    def run(self, batch: Any, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph on a ``sitenet.batch.Batch`` (or a name -> array mapping); feeds only the graph's inputs.

        Returns:
            output name -> array, for ``outputs`` (default: all outputs).
        """
        if self.session is None:
            raise RuntimeError(f"{self.name} was opened with load=False (metadata only)")
        arrays: Mapping[str, np.ndarray] = batch.inputs() if hasattr(batch, "inputs") else batch
        missing = [name for name in self.input_names if name not in arrays]
        if missing:
            raise KeyError(f"{self.name} needs inputs {missing}")
        names = list(outputs) if outputs is not None else list(self.output_names)
        values = self.session.run(names, {name: arrays[name] for name in self.input_names})
        return dict(zip(names, values))

    def info(self) -> dict[str, Any]:
        """What is loaded: name, type, checksum, versions and the providers in use."""
        return {"name": self.name, "model_type": self.model_type, "sha256": self.sha256, "version": self.version,
                "library_version": self.library_version, "providers": self.providers,
                "providers_requested": self.requested, "inputs": list(self.input_names),
                "outputs": list(self.output_names)}

    def __repr__(self) -> str:
        return f"OnnxModel({self.name!r}, providers={self.providers})"


@functools.cache  # once per process: the libraries stay loaded
def _preload_cuda_libraries(ort: Any) -> None:
    """Load the CUDA and cuDNN libraries that ``onnxruntime-gpu[cuda,cudnn]`` installs as nvidia-* wheels.

    The dynamic loader does not search those wheels' folders, so without this ONNX Runtime falls back to CPU
    on a machine with no system-wide CUDA (it logs the failure and carries on; ``_load`` then catches the
    fallback). ``preload_dlls`` (onnxruntime-gpu >= 1.21) finds them, and reuses PyTorch's copies when torch
    is already imported. Failure is not fatal: a system CUDA on the library path may still serve.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as err:  # noqa: BLE001 - any failure leaves the system loader to try
        logger.warning("onnxruntime.preload_dlls failed (%s); relying on the system library path", err)


def _declared_outputs(config: Mapping[str, Any]) -> list[str]:
    """ONNX output names implied by a config (what ``training.export.output_names`` gives the graph)."""
    from pydantic import ValidationError

    from sitenet.config import RegressorConfig

    if config.get("model_type") == "sitenet":
        return ["embedding", "sites"]
    try:
        return list(RegressorConfig.model_validate(config).outputs)
    except ValidationError:
        return []  # the session's own output names stand; role checks report the bad config


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
