"""The one inference path, shared by ``sitenet predict`` and the BentoML service. No torch here.

CIF -> ``prepare`` (read + validate + featurise once, whatever models run) -> ``run`` (size-bucketed padded
batches through the ONNX models that the requested targets need) -> ``Prediction`` or ``Rejection`` per
input, in input order. Three zoo models take part: the DIM encoder (the 64-d embedding) and one regressor
per target (band gap in eV with its metal probability; formation energy in eV/atom). They must share one
``FeatureSpec``, so one featurisation serves all of them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np

from sitenet.batch import collate
from sitenet.config import UNITS, RegressorConfig, SiteNetConfig, Target
from sitenet.errors import FeatureSpecMismatchError, ModelLoadError, SiteNetError
from sitenet.features import CrystalFeatures, FeatureSpec, featurize
from sitenet.runtime import OnnxModel, ProviderChoice
from sitenet.structure import DEFAULT_MAX_BYTES, DEFAULT_MAX_SITES, StructureSource, read_crystal

__all__ = ["DEFAULT_MODELS", "Predictor", "Prediction", "Prepared", "Rejection", "predict_main", "size_batches"]

logger = logging.getLogger(__name__)

#: The bundled zoo models used when nothing else is named, by role.
DEFAULT_MODELS: dict[str, str] = {
    "encoder": "sitenet-dim-mp2018",
    "band_gap": "sitenet-dim-mp2018-band-gap",
    "formation_energy": "sitenet-dim-mp2018-formation-energy",
}
TARGETS: tuple[str, ...] = get_args(Target)
#: ONNX outputs read from each role's model (metal_probability only if the graph has it).
_OUTPUTS: dict[str, tuple[str, ...]] = {"encoder": ("embedding",), "band_gap": ("band_gap", "metal_probability"),
                                         "formation_energy": ("formation_energy",)}


@dataclass(frozen=True)
class Prepared:
    """A validated, featurised crystal, ready for any of the models."""

    features: CrystalFeatures
    formula: str
    n_sites: int


@dataclass(frozen=True)
class Prediction:
    """Model outputs for the crystal at ``index`` of the input list. Absent targets are None."""

    index: int
    formula: str  #: reduced formula
    n_sites: int  #: sites in the given cell
    band_gap: float | None = None  #: eV; exactly 0 where metal_probability >= 0.5
    metal_probability: float | None = None
    formation_energy: float | None = None  #: eV/atom
    embedding: list[float] | None = None  #: the DIM encoder's E=64 crystal embedding
    models: dict[str, str] = field(default_factory=dict)  #: role -> "<model name>@<sha256[:12]> of model.onnx"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Rejection:
    """Why the crystal at ``index`` was not predicted: a stable ``code`` (see ``sitenet.errors``)."""

    index: int
    code: str
    message: str
    detail: Any = None
    http_status: int = 422

    @classmethod
    def from_error(cls, index: int, error: SiteNetError) -> "Rejection":
        return cls(index=index, code=error.code, message=error.message, detail=error.detail,
                   http_status=error.http_status)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "code": self.code, "message": self.message, "detail": self.detail}


class Predictor:
    """The encoder and property models, one shared featurisation, and batched ONNX inference."""

    def __init__(
        self,
        models: dict[str, OnnxModel | None],
        *,
        max_sites: int = DEFAULT_MAX_SITES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        batch_size: int = 32,
        max_pairs: int = 60_000,
    ) -> None:
        """Use :meth:`from_pretrained`; this takes already loaded models by role (None: role not served)."""
        unknown = set(models) - set(DEFAULT_MODELS)
        if unknown:
            raise ValueError(f"unknown model roles {sorted(unknown)}; roles are {list(DEFAULT_MODELS)}")
        self.models = {role: m for role, m in models.items() if m is not None}
        if not self.models:
            raise ValueError("a Predictor needs at least one model")
        self.spec = _shared_spec(self.models)
        self.max_sites, self.max_bytes = max_sites, max_bytes
        self.batch_size, self.max_pairs = batch_size, max_pairs
        self._pool: ProcessPoolExecutor | None = None
        self._pool_key: tuple[int, int, int] | None = None  # (workers, batch_size, max_pairs) of the pool

    @classmethod
    def from_pretrained(
        cls,
        encoder: str | os.PathLike[str] | None = DEFAULT_MODELS["encoder"],
        band_gap: str | os.PathLike[str] | None = DEFAULT_MODELS["band_gap"],
        formation_energy: str | os.PathLike[str] | None = DEFAULT_MODELS["formation_energy"],
        *,
        revision: str | None = None,
        providers: ProviderChoice = "auto",
        threads: int | None = None,
        verify: bool = True,
        load: bool = True,
        max_sites: int = DEFAULT_MAX_SITES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> "Predictor":
        """Load models by zoo name, folder or Hub repo id (``sitenet.hub.resolve``, checksums verified).

        Args:
            encoder, band_gap, formation_energy: the model of each role; None (or "") leaves a role out.
            revision: Hub revision (branch, tag or commit) for the Hub repo ids among them.
            providers: "auto" (CUDA when usable, else CPU), "cpu" or "cuda" (fail if CUDA is unusable).
            threads: ONNX Runtime intra-op threads per session (None: its default, all cores).
            verify: check each folder against its manifest.
            load: create the ONNX sessions; False gives a predictor that can only :meth:`prepare` (and
                describe its models), e.g. for an HTTP front end whose inference runs in another process.
            max_sites, max_bytes: input limits applied by :meth:`prepare`.

        Raises:
            ModelLoadError: a model is missing, corrupt, of the wrong kind for its role.
            FeatureSpecMismatchError: the models were trained with different featurisation.
            ProviderUnavailableError: ``providers="cuda"`` and CUDA cannot be used.
        """
        from sitenet.hub import resolve

        names = {"encoder": encoder, "band_gap": band_gap, "formation_energy": formation_energy}
        models: dict[str, OnnxModel | None] = {}
        for role, name in names.items():
            if name is None or os.fspath(name) == "":
                models[role] = None
                continue
            folder = resolve(name, revision=revision, verify=verify)
            models[role] = OnnxModel(folder, providers=providers, threads=threads, load=load)
        return cls(models, max_sites=max_sites, max_bytes=max_bytes)

    # --- inference -------------------------------------------------------------------------------------
    @property
    def targets(self) -> tuple[str, ...]:
        """Targets this predictor can serve."""
        return tuple(t for t in TARGETS if t in self.models)

    def prepare(self, cif: StructureSource) -> Prepared | SiteNetError:
        """Read, validate and featurise one crystal (CIF text/bytes/path or a Structure); never raises a
        ``SiteNetError``, returns it."""
        try:
            crystal = read_crystal(cif, max_sites=self.max_sites, max_bytes=self.max_bytes)
            features = featurize(crystal, spec=self.spec)
        except SiteNetError as err:
            return err
        return Prepared(features=features, formula=crystal.formula, n_sites=len(crystal))

    def roles(self, targets: Iterable[str], return_embedding: bool) -> list[str]:
        """The model roles needed for ``targets`` (+ the encoder for embeddings); ValueError if unavailable."""
        targets = tuple(targets)
        bad = [t for t in targets if t not in TARGETS]
        if bad:
            raise ValueError(f"unknown targets {bad}; choose from {list(TARGETS)}")
        missing = [t for t in targets if t not in self.models]
        if return_embedding and "encoder" not in self.models:
            missing.append("embedding (encoder)")
        if missing:
            raise ValueError(f"no model loaded for {missing}")
        return [r for r in ("encoder", *TARGETS) if r in targets or (r == "encoder" and return_embedding)]

    def run(
        self,
        prepared: Sequence[Prepared | CrystalFeatures],
        *,
        targets: Sequence[str] = TARGETS,
        return_embedding: bool = False,
    ) -> list[dict[str, Any]]:
        """Model outputs per crystal (output name -> float, or (E,) float32 array for ``embedding``)."""
        roles = self.roles(targets, return_embedding)
        features = [p.features if isinstance(p, Prepared) else p for p in prepared]
        out: list[dict[str, Any]] = [{} for _ in features]
        if not features:
            return out
        sizes = [(f.n_primitive, f.n_sites) for f in features]
        for idx in size_batches(sizes, batch_size=self.batch_size, max_pairs=self.max_pairs):
            batch = collate([features[i] for i in idx], self.spec)
            for role in roles:
                model = self.models[role]
                names = [n for n in _OUTPUTS[role] if n in model.output_names]
                for name, values in model.run(batch, outputs=names).items():
                    for row, i in enumerate(idx):
                        out[i][name] = values[row] if values.ndim > 1 else float(values[row])
        return out

    def predict(
        self,
        cifs: Sequence[StructureSource],
        *,
        targets: Sequence[str] = TARGETS,
        return_embedding: bool = False,
        workers: int | None = None,
    ) -> list[Prediction | Rejection]:
        """Predict every crystal; item k of the result is for ``cifs[k]``.

        Args:
            cifs: CIF texts, CIF bytes, paths or pymatgen Structures.
            targets: any of "band_gap", "formation_energy".
            return_embedding: include the DIM encoder's embedding.
            workers: processes for large inputs (None or 1: this process). Each worker loads the models
                once and keeps them for later calls; :meth:`close` stops them.
        """
        self.roles(targets, return_embedding)  # fail fast on bad options
        if workers and workers > 1 and len(cifs) > 1:
            return self._predict_parallel(cifs, targets=tuple(targets), return_embedding=return_embedding,
                                          workers=workers)
        return self._predict_local(list(enumerate(cifs)), targets=tuple(targets), return_embedding=return_embedding)

    def _predict_local(self, items: Sequence[tuple[int, StructureSource]], *, targets: tuple[str, ...],
                       return_embedding: bool) -> list[Prediction | Rejection]:
        results: list[Prediction | Rejection | None] = []
        ready: list[tuple[int, int, Prepared]] = []  # (position, input index, prepared)
        for position, (index, cif) in enumerate(items):
            prepared = self.prepare(cif)
            if isinstance(prepared, SiteNetError):
                results.append(Rejection.from_error(index, prepared))
            else:
                results.append(None)
                ready.append((position, index, prepared))
        outputs = self.run([p for _, _, p in ready], targets=targets, return_embedding=return_embedding)
        for (position, index, prepared), values in zip(ready, outputs):
            results[position] = self.prediction(index, prepared, values)
        return results  # type: ignore[return-value]

    def prediction(self, index: int, prepared: Prepared, values: dict[str, Any]) -> Prediction:
        """Assemble a :class:`Prediction` from :meth:`run`'s outputs for one crystal."""
        embedding = values.get("embedding")
        used = [r for r in self.models if any(n in values for n in _OUTPUTS[r])]
        return Prediction(
            index=index,
            formula=prepared.formula,
            n_sites=prepared.n_sites,
            band_gap=values.get("band_gap"),
            metal_probability=values.get("metal_probability"),
            formation_energy=values.get("formation_energy"),
            embedding=None if embedding is None else [float(v) for v in embedding],
            models={r: f"{self.models[r].name}@{self.models[r].version}" for r in used},
        )

    # --- many CIFs in several processes --------------------------------------------------------------
    def _predict_parallel(self, cifs: Sequence[StructureSource], *, targets: tuple[str, ...],
                          return_embedding: bool, workers: int) -> list[Prediction | Rejection]:
        pool = self._ensure_pool(workers)
        n = len(cifs)
        chunk = int(min(256, max(16, -(-n // (workers * 4)))))
        indexed = list(enumerate(cifs))
        jobs = [indexed[start:start + chunk] for start in range(0, n, chunk)]
        results: list[Prediction | Rejection] = []
        for part in pool.map(_worker_predict, jobs, [targets] * len(jobs), [return_embedding] * len(jobs)):
            results.extend(part)
        return results

    def _ensure_pool(self, workers: int) -> ProcessPoolExecutor:
        # workers copy the batching settings when they start: a changed setting needs new workers
        if self._pool is not None and self._pool_key == (workers, self.batch_size, self.max_pairs):
            return self._pool
        self.close()
        import multiprocessing

        folders = {role: str(m.folder) for role, m in self.models.items()}
        providers = next(iter(self.models.values())).requested
        # spawn, not fork: ONNX Runtime's thread pools do not survive a fork. One ORT thread per worker.
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
            initargs=(folders, providers, self.max_sites, self.max_bytes, self.batch_size, self.max_pairs))
        self._pool_key = (workers, self.batch_size, self.max_pairs)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._pool_key = None, None

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- description ---------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Models by role (name, sha256, version, providers in use), the feature spec, targets and units."""
        return {
            "sitenet_version": _library_version(),
            "models": {role: model.info() for role, model in self.models.items()},
            "targets": list(self.targets),
            "embedding": "encoder" in self.models,
            "units": dict(UNITS),
            "feature_spec": self.spec.model_dump(),
            "limits": {"max_sites": self.max_sites, "max_bytes": self.max_bytes},
        }


def size_batches(sizes: Sequence[tuple[int, int]], *, batch_size: int = 32, max_pairs: int = 60_000,
                 max_padding: float = 0.15) -> list[np.ndarray]:
    """Index batches for inference: sorted by size, cut so that padding stays small.

    The model's cost grows with the padded pair count B * P_max * N_max, so one 24-site crystal in a batch
    of 2-site ones makes every member cost as much as it does. A batch is closed when adding the next
    crystal would make padding more than ``max_padding`` of the padded pairs (beyond a small floor), when
    it has ``batch_size`` crystals, or when it would exceed ``max_pairs`` padded pairs.
    """
    p_n = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((p_n[:, 1], p_n[:, 0]))  # by P, then N
    batches: list[np.ndarray] = []
    current: list[int] = []
    p_max = n_max = real = 0
    for i in order:
        p, n = (int(v) for v in p_n[i])
        new_p, new_n, new_real = max(p_max, p), max(n_max, n), real + p * n
        padded = (len(current) + 1) * new_p * new_n
        if current and (len(current) >= batch_size or padded > max_pairs
                        or padded - new_real > max(max_padding * padded, 256)):
            batches.append(np.array(current, dtype=np.int64))
            current, new_p, new_n, new_real = [], p, n, p * n
        current.append(int(i))
        p_max, n_max, real = new_p, new_n, new_real
    if current:
        batches.append(np.array(current, dtype=np.int64))
    return batches


def _library_version() -> str:
    import sitenet

    version = getattr(sitenet, "__version__", None)
    if version:
        return str(version)
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("sitenet-dim")
    except PackageNotFoundError:
        return "unknown"


def _shared_spec(models: dict[str, OnnxModel]) -> FeatureSpec:
    """Check each model's config against its role and return the one FeatureSpec they all share."""
    from pydantic import ValidationError

    specs: dict[str, FeatureSpec] = {}
    for role, model in models.items():
        try:
            if role == "encoder":
                if model.model_type != "sitenet":
                    raise ModelLoadError(f"{model.name} is a {model.model_type!r} model, not an encoder ('sitenet')")
                specs[role] = SiteNetConfig.model_validate(model.config).features
            else:
                config = RegressorConfig.model_validate(model.config)
                if config.target != role:
                    raise ModelLoadError(f"{model.name} predicts {config.target!r}, but was given as the {role} model")
                specs[role] = config.encoder.features
        except ValidationError as err:
            raise ModelLoadError(f"{model.folder}/config.json is not a valid {role} config: {err}") from None
    first_role, first = next(iter(specs.items()))
    for role, spec in specs.items():
        if spec != first:
            raise FeatureSpecMismatchError(
                f"{models[role].name} ({role}) was trained with features {spec.model_dump()}, but "
                f"{models[first_role].name} ({first_role}) with {first.model_dump()}; use models from one zoo release",
                detail={r: s.model_dump() for r, s in specs.items()})
    return first


# --- worker processes -------------------------------------------------------------------------------------
_WORKER: Predictor | None = None


def _worker_init(folders: dict[str, str], providers: ProviderChoice, max_sites: int, max_bytes: int,
                 batch_size: int, max_pairs: int) -> None:
    global _WORKER
    models = {role: OnnxModel(folder, providers=providers, threads=1) for role, folder in folders.items()}
    _WORKER = Predictor(models, max_sites=max_sites, max_bytes=max_bytes, batch_size=batch_size,
                        max_pairs=max_pairs)


def _worker_predict(items: list[tuple[int, StructureSource]], targets: tuple[str, ...],
                    return_embedding: bool) -> list[Prediction | Rejection]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER._predict_local(items, targets=targets, return_embedding=return_embedding)


# --- sitenet predict -------------------------------------------------------------------------------------
def predict_main(args: Any) -> int:
    """``sitenet predict CIF... [-o out.json|out.csv|-] [--embedding]``: 0 if at least one CIF was predicted."""
    import csv
    import json

    paths = [Path(p) for p in args.cifs]
    workers = getattr(args, "workers", None)
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if len(paths) >= 256 else 1
    with Predictor.from_pretrained(providers=getattr(args, "providers", "auto")) as predictor:
        results = predictor.predict(paths, return_embedding=bool(args.embedding), workers=workers)
    rows = [dict(source=str(paths[r.index]), **r.to_dict()) for r in results]
    for r in results:
        if isinstance(r, Rejection):
            print(f"rejected {paths[r.index]}: {r.code}: {r.message}", file=sys.stderr)
    output = str(args.output)
    if output.endswith(".csv"):
        emb = max((len(r.get("embedding") or []) for r in rows), default=0)
        columns = ["index", "source", "formula", "n_sites", "band_gap", "metal_probability", "formation_energy",
                   "code", "message"]
        with open(output, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns + [f"e{k}" for k in range(emb)])
            for r in rows:
                vector = r.get("embedding") or []
                writer.writerow([_csv_value(r.get(c)) for c in columns] + [f"{v:.6g}" for v in vector])
    else:
        text = json.dumps(rows, indent=2)
        if output == "-":
            print(text)
        else:
            Path(output).write_text(text + "\n", encoding="utf-8")
    return 0 if any(isinstance(r, Prediction) for r in results) else 1


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value

