"""Service settings, read once from the environment by pydantic-settings (every field is used by the service).

    SITENET_ENCODER / SITENET_BAND_GAP_MODEL / SITENET_FORMATION_ENERGY_MODEL
        zoo name, model folder or Hub repo id of each model ("" or "none" leaves a model out)
    SITENET_MODELS                more property models, comma-separated (e.g. your own fine-tuned ones): each
                                  serves the targets its config names, beside the zoo's
    SITENET_REVISION              Hub revision (branch, tag, commit) for Hub repo ids
    SITENET_PROVIDERS             auto | cpu | cuda  (cuda fails at startup if CUDA is unusable)
    SITENET_ORT_THREADS           ONNX Runtime threads per session in the model worker
    SITENET_MAX_REQUEST_BYTES     largest request body (all uploads together), else 413
    SITENET_MAX_CIF_BYTES         largest single CIF, else 413 (per item in batches)
    SITENET_MAX_CIFS              most CIFs in one request, else 413
    SITENET_MAX_SITES             most sites in one input cell, else 413 (per item in batches)
    SITENET_MAX_CIF_CPU_S         CPU seconds reading one CIF may take, else 413 ``input_too_costly`` (per item)
    SITENET_BATCHING              auto | adaptive | inline: where the ONNX models run (see ``batching_mode``)
    SITENET_MAX_BATCH_SIZE        adaptive batching: most crystals per ONNX batch
    SITENET_MAX_LATENCY_MS        adaptive batching: latency budget before the batcher sheds load (503)
    SITENET_WORKERS               HTTP worker processes (parsing, featurisation; the models too when inline)
    SITENET_TIMEOUT_S             longest a request may run from its arrival; then 504 ``timeout`` and its work stops
    SITENET_MAX_CONCURRENCY       prediction requests worked on at once per HTTP worker (see ``concurrency_limit``)
    SITENET_MAX_QUEUE             requests waiting for a slot per HTTP worker; beyond it 503 ``overloaded`` at once
    SITENET_QUEUE_TIMEOUT_S       longest wait for a slot or a model thread, from arrival; then 503, not a late answer
    SITENET_MODEL_THREADS         threads per HTTP worker that featurise and (inline) run the models
"""

from __future__ import annotations

import functools
import os
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sitenet.limits import DEFAULT_MAX_CPU_S
from sitenet.predict import DEFAULT_MODELS
from sitenet.structure import DEFAULT_MAX_BYTES, DEFAULT_MAX_SITES


class ServiceSettings(BaseSettings):
    """Settings of the SiteNet prediction service; field ``x`` is read from ``SITENET_X`` (``ServiceSettings()``)."""

    model_config = SettingsConfigDict(env_prefix="SITENET_", frozen=True, extra="forbid", str_strip_whitespace=True)

    encoder: str = Field(DEFAULT_MODELS["encoder"], description="DIM encoder (embeddings)")
    band_gap_model: str = Field(DEFAULT_MODELS["band_gap"], description="band-gap regressor")
    formation_energy_model: str = Field(DEFAULT_MODELS["formation_energy"], description="formation-energy regressor")
    models: str = Field("", description="more property models (zoo names, folders or Hub ids), comma-separated")
    revision: str | None = Field(None, description="Hub revision for Hub repo ids")
    providers: Literal["auto", "cpu", "cuda"] = Field("auto", description="ONNX Runtime execution providers")
    ort_threads: int = Field(1, ge=1, le=256, description="ONNX Runtime intra-op threads per session")
    max_request_bytes: int = Field(8 * 2**20, ge=1024, description="largest request body, bytes")
    max_cif_bytes: int = Field(DEFAULT_MAX_BYTES, ge=64, description="largest CIF, bytes")
    max_cifs: int = Field(64, ge=1, le=10_000, description="most CIFs per request")
    max_sites: int = Field(DEFAULT_MAX_SITES, ge=1, le=10_000, description="most sites per input cell")
    max_cif_cpu_s: float = Field(DEFAULT_MAX_CPU_S, gt=0, le=3600, description="CPU seconds reading and validating "
                                 "one CIF may take, s; beyond it 413 input_too_costly (the request's own time limit "
                                 "applies as well)")
    batching: Literal["auto", "adaptive", "inline"] = Field(
        "auto", description="adaptive: one model worker batches crystals across requests (BentoML adaptive "
        "batching); inline: each HTTP worker runs the models itself on each request's crystals (no "
        "inter-process hop); auto: inline (faster on CPU and on GPU, see batching_mode)")
    max_batch_size: int = Field(64, ge=2, le=4096, description="most crystals per adaptive batch")
    max_latency_ms: int = Field(10_000, ge=10, description="adaptive-batching latency budget, ms")
    workers: int | None = Field(None, ge=1, le=64, description="HTTP worker processes; None: inline, one per "
                                "CPU core (half as many with CUDA); adaptive, one (see worker_count)")
    timeout_s: int = Field(60, ge=1, description="longest a request may run from its arrival, s; then 504 timeout "
                           "and its remaining work is stopped")
    max_concurrency: int | None = Field(None, ge=1, le=4096, description="prediction requests worked on at once "
                                        "per HTTP worker; None: see concurrency_limit")
    max_queue: int | None = Field(None, ge=0, le=4096, description="requests that may wait for a slot per HTTP "
                                  "worker, beyond which 503 at once; None: twice the concurrency limit")
    queue_timeout_s: float = Field(5.0, gt=0, description="longest wait for a slot, s; then 503 instead of a late "
                                   "answer")
    model_threads: int | None = Field(None, ge=1, le=256, description="threads per HTTP worker that featurise and "
                                      "(inline) run the models; None: the worker's share of the CPU cores")

    @field_validator("revision", mode="before")
    @classmethod
    def _no_revision(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value

    @model_validator(mode="after")
    def _queue_timeout_within_request_timeout(self) -> ServiceSettings:
        # past timeout_s BentoML answers 504 anyway: a longer queue wait could only end in that
        if self.queue_timeout_s >= self.timeout_s:
            raise ValueError(f"queue_timeout_s ({self.queue_timeout_s:g}) must be less than timeout_s "
                             f"({self.timeout_s})")
        return self

    def batching_mode(self) -> Literal["adaptive", "inline"]:
        """``batching`` with "auto" resolved: inline, on CPU and GPU alike. Measured (benchmarks/results/
        service_placement_*, service_gpu_*): on CPU the per-crystal cost does not shrink with batch size, so the
        hop to a model worker is pure overhead (inline 1.6x the requests/s at 16 clients); on an H100 the one
        model worker's Python side, not the GPU, is the limit (inline 2.5x at 16 clients, 641 vs 254 req/s)."""
        return "inline" if self.batching == "auto" else self.batching

    def uses_gpu(self) -> bool:
        """Whether the models would run on an NVIDIA GPU: CUDA not excluded by ``providers`` and one visible."""
        return self.providers != "cpu" and _gpu_visible()

    def worker_count(self) -> int:
        """``workers`` with None resolved (see its description)."""
        if self.workers is not None:
            return self.workers
        if self.batching_mode() == "adaptive":
            return 1
        cores = len(os.sched_getaffinity(0))
        # With CUDA each worker holds its own context and contexts of different processes take turns on the
        # GPU: on an H100 with 16 cores, 8 workers served 969 req/s at 16 clients, 4/12/16 workers 490-560
        # (benchmarks/results/service_gpu_workers_*.md). On CPU the models are the work: one worker per core.
        return max(1, min(cores // 2 if self.uses_gpu() else cores, 16))

    def thread_count(self) -> int:
        """``model_threads`` with None resolved: the worker's share of the cores (over ONNX Runtime's own
        threads per session when the models run inline), so the workers together never run more CPU-bound
        threads than there are cores; more would only make each request slower."""
        if self.model_threads is not None:
            return self.model_threads
        per_thread = self.ort_threads if self.batching_mode() == "inline" else 1
        return max(1, len(os.sched_getaffinity(0)) // (self.worker_count() * per_thread))

    def concurrency_limit(self) -> int:
        """``max_concurrency`` with None resolved. Inline: 4 per model thread, so that while one request runs
        in a thread others are being parsed or answered on the event loop (at 16 clients p50 is then about 4
        requests' work, not 16). Adaptive: one full batch, so the model worker can still batch across
        requests."""
        if self.max_concurrency is not None:
            return self.max_concurrency
        return 4 * self.thread_count() if self.batching_mode() == "inline" else self.max_batch_size

    def queue_limit(self) -> int:
        """``max_queue`` with None resolved: twice the concurrency limit, a wait of about two requests' time."""
        return 2 * self.concurrency_limit() if self.max_queue is None else self.max_queue

    def model_names(self) -> dict[str, object]:
        """Keyword arguments of ``Predictor.from_pretrained`` naming the models: each zoo role's ("" / "none":
        role left out) and ``models``, the others."""
        names = {"encoder": self.encoder, "band_gap": self.band_gap_model,
                 "formation_energy": self.formation_energy_model}
        return {**{role: None if name.strip().lower() in ("", "none") else name for role, name in names.items()},
                "models": tuple(m.strip() for m in self.models.split(",") if m.strip())}


@functools.cache
def _gpu_visible() -> bool:
    """NVML asked once per process: worker, thread and concurrency defaults all depend on it, and each NVML
    start-up costs milliseconds."""
    from sitenet.runtime import cuda_device_count

    return cuda_device_count() > 0
