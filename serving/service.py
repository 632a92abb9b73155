"""SiteNet prediction service: BentoML over ONNX Runtime (CUDA when usable, else CPU). No torch.

``SiteNetService`` here (HTTP) reads, validates and featurises every CIF, per item, so a bad CIF never
reaches, or fails, a batch. Only featurised tensors go on to the models, in one of two modes
(``SITENET_BATCHING``): ``inline`` (the default, on CPU and GPU: faster on both, see
``ServiceSettings.batching_mode``) runs the core's own path (``Predictor.predict``: one batched ONNX run per
request) in the HTTP worker; ``adaptive`` sends them to ``SiteNetModels`` (``serving/inference.py``), a
separate worker whose ``infer`` is adaptively batched across concurrent requests. Errors have one shape ``{"code",
"message", "detail"}`` (``serving/errors.py``). Under overload each HTTP worker works on a bounded number of
requests, lets a few wait and answers the rest 503 ``overloaded`` with Retry-After (``serving/admission.py``);
the CPU work runs in a few threads per worker (``SITENET_MODEL_THREADS``), not one per request. Settings:
``SITENET_*`` variables (``serving/settings.py``). Run: ``bentoml serve`` at the repository root.
"""

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio
import bentoml
from bentoml.exceptions import ServiceUnavailable
from pydantic import Field
from starlette.responses import JSONResponse

from serving import patches, readiness
from serving.admission import Admission, arrival_time
from serving.errors import (RequestGuard, error_response, overloaded_response, rejection_out,
                            rejection_response)
from serving.inference import SETTINGS, SiteNetModels, check_models, load_predictor
from serving.schemas import (BatchItemOut, BatchOut, EmbeddingItemOut, EmbedOut, InferItem, InferOut, InfoOut,
                             PredictionOut, PredictOptions)
from sitenet.errors import DeadlineExceededError, SiteNetError
from sitenet.cif import split_blocks
from sitenet.limits import check_deadline, deadline
from sitenet.predict import Prediction, Prepared, Rejection

logger = logging.getLogger("sitenet.serving")
patches.apply()  # before BentoML builds the app: see serving/patches.py
# resolved once (the defaults depend on the cores and the GPU), then used by the service, the middleware and /info
PLACEMENT = {"batching": SETTINGS.batching_mode(), "http_workers": SETTINGS.worker_count()}
# per HTTP worker; /info reports them with the request limits
OVERLOAD_LIMITS = {"max_concurrency": SETTINGS.concurrency_limit(), "max_queue": SETTINGS.queue_limit(),
                   "queue_timeout_s": SETTINGS.queue_timeout_s, "model_threads": SETTINGS.thread_count()}
INLINE = PLACEMENT["batching"] == "inline"
#: BentoML's own request timeout, a safety net behind the service's (``SITENET_TIMEOUT_S``, answered 504 in the
#: error shape with the request's work stopped): BentoML's answer has another shape and leaves the work running.
BENTOML_TIMEOUT_S = SETTINGS.timeout_s + 10
T = TypeVar("T")
ROUTES = {"/predict": "multipart", "/predict_files": "multipart", "/embed_files": "multipart",
          "/predict_text": "json", "/predict_batch": "json", "/embed": "json"}


@bentoml.service(name="sitenet", workers=PLACEMENT["http_workers"], traffic={"timeout": BENTOML_TIMEOUT_S})
class SiteNetService:
    """Band gap (eV), formation energy (eV/atom) and DIM embeddings of crystals given as CIF."""

    if not INLINE:
        models = bentoml.depends(SiteNetModels)

    @bentoml.on_deployment
    def _before_workers() -> None:
        """Once, in ``bentoml serve`` itself, before it spawns any worker: a model that cannot be used ends the
        server now with the reason (``check_models``), and the workers get a place to say they are ready."""
        check_models()
        readiness.prepare()

    def __init__(self) -> None:
        # adaptive: featurisation only here, the model worker runs the graphs
        self.predictor = load_predictor(load=INLINE)
        # anyio's default limiter would run up to 40 requests' CPU work at once on a worker's share of the cores
        self.threads = anyio.CapacityLimiter(OVERLOAD_LIMITS["model_threads"])
        if INLINE:
            logger.info("models ready (inline): %s", {r: m.providers for r, m in self.predictor.models.items()})
        else:
            _keep_sessions(self.models)
        readiness.mark_ready(bentoml.server_context.worker_index)

    @bentoml.api(route="/predict")
    async def predict(self, cif: Path, options: PredictOptions = PredictOptions()) -> PredictionOut:
        """Predict one uploaded CIF file: ``curl -F cif=@x.cif [-F 'options={"return_embedding":true}']``.

        One crystal per file: a file of several data blocks is read if only one block holds a structure
        (e.g. a publication block and a crystal), and refused with 422 ``multiple_data_blocks`` naming the
        blocks if several do; ``/predict_files`` and ``/predict_batch`` predict every block of such a file."""
        return await self._one(cif.read_bytes(), options)

    @bentoml.api(route="/predict_text")
    async def predict_text(self, cif: str = Field(description="CIF text"),
                           options: PredictOptions = PredictOptions()) -> PredictionOut:
        """Predict one CIF given as text in JSON: ``{"cif": "data_...", "options": {...}}``. Several data blocks:
        as ``/predict``."""
        return await self._one(cif.encode("utf-8", "surrogateescape"), options)

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, cifs: list[str] = Field(description="CIF texts"),
                            options: PredictOptions = PredictOptions()) -> BatchOut:
        """Predict many CIF texts; each entry has a prediction or its own error. A text of several data blocks
        gets one entry per block, in block order, each named by its block."""
        return await self._many([c.encode("utf-8", "surrogateescape") for c in cifs], options)

    @bentoml.api(route="/predict_files")
    async def predict_files(self, cifs: list[Path], options: PredictOptions = PredictOptions()) -> BatchOut:
        """Predict several uploaded CIF files: ``curl -F cifs=@a.cif -F cifs=@b.cif``. A file of several data
        blocks gets one entry per block, in block order, each named by its block."""
        return await self._many([p.read_bytes() for p in cifs], options)

    @bentoml.api(route="/embed")
    async def embed(self, cifs: list[str] = Field(description="CIF texts")) -> EmbedOut:
        """64-d DIM embeddings of one or more CIF texts."""
        return await self._embed([c.encode("utf-8", "surrogateescape") for c in cifs])

    @bentoml.api(route="/embed_files")
    async def embed_files(self, cifs: list[Path]) -> EmbedOut:
        """64-d DIM embeddings of uploaded CIF files."""
        return await self._embed([p.read_bytes() for p in cifs])

    @bentoml.api(route="/info")
    async def info(self) -> InfoOut:
        """Models (names, sha256, versions), execution providers in use, units and request limits."""
        info = self.predictor.info() if INLINE else await self.models.info()
        info["limits"] = {"max_request_bytes": SETTINGS.max_request_bytes, "max_cif_bytes": SETTINGS.max_cif_bytes,
                          "max_cifs": SETTINGS.max_cifs, "max_sites": SETTINGS.max_sites,
                          "max_cif_cpu_s": SETTINGS.max_cif_cpu_s, **OVERLOAD_LIMITS}
        info["placement"] = PLACEMENT
        return InfoOut.model_validate(info)

    def __is_ready__(self) -> bool:
        # every HTTP worker, not just this one (serving/readiness.py); the model worker is probed by BentoML
        return bool(self.predictor.models) and readiness.server_ready(PLACEMENT["http_workers"])

    # --- inference: prepare here (per item); run the batch here (inline) or in the model worker -------
    async def _run(self, sources: list[bytes], options: PredictOptions) -> list[Prediction | Rejection]:
        if INLINE:  # the core's own steps, in one model thread: prepare each, run the batch, assemble
            return await self._in_thread(lambda: self._predict(sources, options))
        prepared = await self._in_thread(lambda: self._prepare(sources))
        check_deadline("the models ran")
        ready = [(k, p) for k, p in enumerate(prepared) if isinstance(p, Prepared)]
        items = [InferItem(atomic_numbers=p.features.atomic_numbers, distance=p.features.distance,
                           images=p.features.images, targets=options.targets, embedding=options.return_embedding,
                           uncertainty=options.uncertainty, neighbours=options.neighbours) for _, p in ready]
        outs = await self._infer(items) if items else []
        results: list[Prediction | Rejection] = [p if isinstance(p, Prepared) else Rejection.from_error(k, p)
                                                 for k, p in enumerate(prepared)]
        for (k, p), out in zip(ready, outs):
            out = InferOut.model_validate(out)
            values = {**out.values, **({"embedding": out.embedding} if out.embedding is not None else {}),
                      **({"neighbours": out.neighbours, "in_domain": out.in_domain} if out.neighbours else {})}
            results[k] = (self.predictor.prediction(k, p, values) if out.error is None else
                          Rejection(k, "internal_error", out.error, http_status=500))
        return results

    async def _in_thread(self, work: Callable[[], T]) -> T:
        """``work()`` in one of this worker's model threads, within the request's time limits, both counted
        from its arrival: no thread free within ``queue_timeout_s`` -> 503 (``_QueueTimeout``), and past
        ``timeout_s`` the work stops (``DeadlineExceededError``, 504) instead of finishing for nobody."""
        arrived = arrival_time()
        wait_s = arrived + SETTINGS.queue_timeout_s - time.monotonic()
        try:
            if wait_s <= 0:
                self.threads.acquire_nowait()
            else:
                with anyio.fail_after(wait_s):
                    await self.threads.acquire()
        except (anyio.WouldBlock, TimeoutError):
            raise _QueueTimeout from None
        try:
            # the deadline travels into the thread with the context: every CIF read there stops at it
            with deadline(arrived + SETTINGS.timeout_s):
                return await anyio.to_thread.run_sync(work)  # our own limiter is held: the default one is idle
        finally:
            self.threads.release()

    def _prepare(self, sources: list[bytes]) -> list[Prepared | SiteNetError]:
        prepared: list[Prepared | SiteNetError] = []
        for source in sources:
            check_deadline("all CIFs were read")
            item = self.predictor.prepare(source)
            if isinstance(item, DeadlineExceededError):  # the request's time, not this CIF's fault
                raise item
            prepared.append(item)
        return prepared

    def _predict(self, sources: list[bytes], options: PredictOptions) -> list[Prediction | Rejection]:
        prepared = self._prepare(sources)
        check_deadline("the models ran")
        ready = [(k, p) for k, p in enumerate(prepared) if isinstance(p, Prepared)]
        values = self.predictor.run([p for _, p in ready], targets=options.targets,
                                    return_embedding=options.return_embedding, uncertainty=options.uncertainty,
                                    neighbours=options.neighbours)
        results: list[Prediction | Rejection] = [p if isinstance(p, Prepared) else Rejection.from_error(k, p)
                                                 for k, p in enumerate(prepared)]
        for (k, p), v in zip(ready, values):
            results[k] = self.predictor.prediction(k, p, v)
        return results

    async def _infer(self, items: list[InferItem]) -> list[Any]:
        for attempt in range(3):  # the call is idempotent; see _keep_sessions for why connections drop
            try:
                return await self.models.infer(items)
            except ServiceUnavailable as err:  # the batcher's queue would exceed max_latency_ms: it shed this one
                raise _ModelsOverloaded from err
            except aiohttp.ClientConnectionError as err:
                if attempt == 2:
                    raise
                logger.warning("model worker connection dropped (%s); retrying", err)
        raise AssertionError("unreachable")

    def _check(self, sources: list[bytes], options: PredictOptions) -> Any:
        if not sources:
            return error_response(400, "empty_request", "no CIF given")
        if len(sources) > SETTINGS.max_cifs:
            return error_response(413, "too_many_cifs", f"{len(sources)} CIFs (data blocks of multi-block files "
                                  f"counted one by one) in one request, more than the limit of {SETTINGS.max_cifs}; "
                                  "split the request", {"n": len(sources), "max": SETTINGS.max_cifs})
        try:
            self.predictor.roles(options.targets, options.return_embedding, uncertainty=options.uncertainty,
                                 neighbours=options.neighbours)
        except ValueError as err:
            return error_response(400, "target_unavailable", str(err), {"available": list(self.predictor.targets)})
        return None

    async def _results(self, sources: list[bytes],
                       options: PredictOptions) -> list[Prediction | Rejection] | JSONResponse:
        """Per-item results, or the whole request's error response."""
        if options.targets is None:  # every target served
            options = options.model_copy(update={"targets": list(self.predictor.targets)})
        refusal = self._check(sources, options)
        if refusal is not None:
            return refusal
        try:
            return await self._run(sources, options)
        except _QueueTimeout:
            return overloaded_response(f"the service is overloaded (no model thread became free within "
                                       f"{SETTINGS.queue_timeout_s:g} s); retry later", 1,
                                       {"reason": "queue_timeout", "queue_timeout_s": SETTINGS.queue_timeout_s})
        except DeadlineExceededError as err:
            return error_response(504, "timeout", f"{err.message} (the limit is {SETTINGS.timeout_s} s per request); "
                                  "its work was stopped. Send fewer or smaller CIFs per request, or retry later",
                                  {"timeout_s": SETTINGS.timeout_s})
        except _ModelsOverloaded:
            retry = max(1, math.ceil(SETTINGS.max_latency_ms / 1000))  # the wait the batcher refused to exceed
            return overloaded_response("the model worker is overloaded (its queue would exceed the latency budget "
                                       f"of {SETTINGS.max_latency_ms} ms); retry later", retry,
                                       {"reason": "model_queue_full", "max_latency_ms": SETTINGS.max_latency_ms})

    async def _one(self, source: bytes, options: PredictOptions) -> Any:
        results = await self._results([source], options)
        if isinstance(results, JSONResponse):
            return results
        (result,) = results
        return rejection_response(result) if isinstance(result, Rejection) else PredictionOut(**_fields(result))

    async def _many(self, sources: list[bytes], options: PredictOptions) -> Any:
        items, origin = _split_blocks(sources)
        results = await self._results(items, options)
        if isinstance(results, JSONResponse):
            return results
        entries = [BatchItemOut(index=origin[r.index][0], block=origin[r.index][1],
                                error=rejection_out(r) if isinstance(r, Rejection) else None,
                                prediction=PredictionOut(**_fields(r)) if isinstance(r, Prediction) else None)
                   for r in results]
        n_ok = sum(e.prediction is not None for e in entries)
        return BatchOut(results=entries, n_ok=n_ok, n_failed=len(entries) - n_ok)

    async def _embed(self, sources: list[bytes]) -> Any:
        items, origin = _split_blocks(sources)
        results = await self._results(items, PredictOptions(targets=[], return_embedding=True))
        if isinstance(results, JSONResponse):
            return results
        entries = [EmbeddingItemOut(index=origin[r.index][0], block=origin[r.index][1], error=rejection_out(r))
                   if isinstance(r, Rejection) else
                   EmbeddingItemOut(index=origin[r.index][0], block=origin[r.index][1], formula=r.formula,
                                    n_sites=r.n_sites, embedding=r.embedding)
                   for r in results]
        encoder = self.predictor.models["encoder"]
        return EmbedOut(results=entries, model=f"{encoder.name}@{encoder.version}")


def _split_blocks(sources: list[bytes]) -> tuple[list[bytes], list[tuple[int, str | None]]]:
    """Each file of several structure blocks becomes one item per block (in block order, named by block);
    every other input stays one item. Returns the items and, per item, (input index, block name or None)."""
    items: list[bytes] = []
    origin: list[tuple[int, str | None]] = []
    for k, source in enumerate(sources):
        blocks: list[tuple[str, bytes]] = []
        if source.count(b"data_") > 1:
            try:
                blocks = split_blocks(source)
            except SiteNetError:
                blocks = []  # read whole, the reader refuses it with the same error as an item of its own
        if len(blocks) > 1:
            items += [block for _, block in blocks]
            origin += [(k, name) for name, _ in blocks]
        else:
            items.append(source)
            origin.append((k, None))
    return items, origin


class _QueueTimeout(Exception):
    """No model thread became free within ``queue_timeout_s`` of the request's arrival."""


class _ModelsOverloaded(Exception):
    """The model worker's adaptive batcher refused the items (BentoML's 503)."""


def _keep_sessions(proxy: Any) -> None:
    """bentoml 1.4.40 replaces its client session to a dependency every 100 requests and closes the old one
    with requests still in flight on it, which then fail with ServerDisconnectedError (a 500 under load).
    Renew by age only (every 300 s); the retry in ``_infer`` covers that renewal."""
    manager = getattr(getattr(proxy, "to_async", None), "_session_manager", None)
    if manager is not None and hasattr(manager, "max_requests"):
        manager.max_requests = 2**62


def _fields(prediction: Prediction) -> dict[str, Any]:
    return {k: v for k, v in prediction.to_dict().items() if k != "index"}


# the first added is the outer one: the guard reads and checks the body, then admission bounds the work
SiteNetService.add_asgi_middleware(RequestGuard, max_request_bytes=SETTINGS.max_request_bytes, routes=ROUTES)
SiteNetService.add_asgi_middleware(Admission, limit=OVERLOAD_LIMITS["max_concurrency"],
                                   queue=OVERLOAD_LIMITS["max_queue"], queue_timeout_s=SETTINGS.queue_timeout_s,
                                   routes=ROUTES)
