"""The model side of the service: ONNX Runtime sessions behind one adaptively batched ``infer`` API.

Only featurised crystals (``serving.schemas.InferItem``) reach it, from ``SiteNetService``; it never parses a
CIF, so one bad upload can never fail a batch. ``infer`` checks each item again and answers per item.
"""

import logging
import time
from typing import Any

import anyio
import bentoml
import numpy as np
from pydantic import ValidationError

from serving.schemas import InferItem, InferOut
from serving.settings import ServiceSettings
from sitenet.elements import MAX_Z
from sitenet.errors import SiteNetError
from sitenet.features import CrystalFeatures
from sitenet.predict import Predictor
from sitenet.runtime import ProviderUnavailableError, pick_providers

logger = logging.getLogger("sitenet.serving")
#: How every reason not to start is said: one line on stderr, exit status 1 (see ``check_models``).
CANNOT_START = "sitenet: the service cannot start: "


def _settings() -> ServiceSettings:
    """The settings, or SystemExit with the reason: read at import, so a bad value stops ``bentoml serve`` itself
    (which imports this module before it spawns any worker)."""
    try:
        settings = ServiceSettings()
        if settings.providers == "cuda":
            # fail once, at startup, with the reason; not in a worker that BentoML would restart forever
            pick_providers("cuda")
    except ValidationError as err:
        problems = "; ".join(f"SITENET_{str(e['loc'][0]).upper()}={e.get('input')!r}: {e['msg']}" if e["loc"]
                             else e["msg"] for e in err.errors())
        raise SystemExit(f"{CANNOT_START}{problems}") from None
    except ProviderUnavailableError as err:
        raise SystemExit(f"{CANNOT_START}{err}") from None
    return settings


SETTINGS = _settings()


def check_models() -> None:
    """Resolve, verify and open every configured model once, in the process that starts the server, before
    any worker exists (the service's deployment hook). Why: a worker whose models fail to load is restarted by
    BentoML every ~10 s forever while the port accepts connections and ``/readyz`` hangs; here the same failure
    (a checksum mismatch, a missing model, an unreachable Hub, a graph ONNX Runtime cannot load) ends
    ``bentoml serve`` at once with the reason. Hub models are downloaded here, so the workers find them cached.

    Raises:
        SystemExit: a model cannot be used; its message (printed on stderr, exit status 1) says which and why.
    """
    start = time.monotonic()
    try:
        # CPU sessions: enough to know that each graph loads, without a CUDA context in the long-lived parent
        predictor = Predictor.from_pretrained(**SETTINGS.model_names(), revision=SETTINGS.revision,
                                              providers="cpu", threads=1, load=True)
    except (SiteNetError, ValueError) as err:
        raise SystemExit(f"{CANNOT_START}{err}") from None
    logger.info("models checked in %.2f s: %s", time.monotonic() - start,
                {role: str(model.folder) for role, model in predictor.models.items()})


def load_predictor(load: bool) -> Predictor:
    """The configured models; ``load=False``: configs and checksums only (the HTTP side)."""
    return Predictor.from_pretrained(**SETTINGS.model_names(), revision=SETTINGS.revision, providers=SETTINGS.providers,
                                     threads=SETTINGS.ort_threads, load=load, max_sites=SETTINGS.max_sites,
                                     max_bytes=SETTINGS.max_cif_bytes, max_cpu_s=SETTINGS.max_cif_cpu_s)


@bentoml.service(name="sitenet-models", workers=1, traffic={"timeout": SETTINGS.timeout_s},
                 logging={"access": {"enabled": False}},  # internal hop: the HTTP worker logs every request
                 resources={"gpu": 1} if SETTINGS.uses_gpu() else {"cpu": "1"})
class SiteNetModels:
    """The ONNX models; sees only featurised crystals."""

    def __init__(self) -> None:
        self.predictor = load_predictor(load=True)
        logger.info("models ready: %s", {r: m.providers for r, m in self.predictor.models.items()})

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    async def infer(self, items: list[InferItem]) -> list[InferOut]:
        """Model outputs for featurised crystals (internal; batched across concurrent requests)."""
        return await anyio.to_thread.run_sync(self._infer, items)

    def _infer(self, items: list[InferItem]) -> list[InferOut]:
        features = [_features(item) for item in items]
        ok = [k for k, f in enumerate(features) if f is not None]
        # one run for the whole batch, with the union of what its items asked for; each item gets its own part
        targets = sorted({t for k in ok for t in items[k].targets})
        embedding = any(items[k].embedding for k in ok)
        uncertainty = any(items[k].uncertainty for k in ok)
        neighbours = max((items[k].neighbours for k in ok), default=0)
        values = self.predictor.run([features[k] for k in ok], targets=targets, return_embedding=embedding,
                                    uncertainty=uncertainty, neighbours=neighbours)
        out = [InferOut(error="malformed features") for _ in items]
        for k, v in zip(ok, values):
            item = items[k]
            names = [n for t in item.targets
                     for n in (*self.predictor.outputs(t), *((f"{t}_std",) if item.uncertainty else ()))]
            emb = v.get("embedding") if item.embedding else None
            out[k] = InferOut(values={n: v[n] for n in names if v.get(n) is not None},
                              embedding=None if emb is None else [float(x) for x in emb],
                              neighbours=v["neighbours"][:item.neighbours] if item.neighbours else None,
                              in_domain=v.get("in_domain") if item.neighbours else None)
        return out

    @bentoml.api
    async def info(self) -> dict[str, Any]:
        """Models, checksums and the execution providers really in use."""
        return self.predictor.info()

    def __is_ready__(self) -> bool:
        return all(m.session is not None for m in self.predictor.models.values())


def _features(item: InferItem) -> CrystalFeatures | None:
    """The item as CrystalFeatures, or None if it is not a well-formed one (never raises: one item, one answer)."""
    z, d = item.atomic_numbers, item.distance
    if z.ndim != 1 or d.ndim != 2 or not np.all((z >= 1) & (z <= MAX_Z)) or not np.all(np.isfinite(d)):
        return None
    try:
        return CrystalFeatures(atomic_numbers=z.astype(np.int64), distance=d.astype(np.float32), images=item.images)
    except ValueError:
        return None
