"""The one inference path, shared by ``sitenet predict`` and the BentoML service. No torch here.

CIF -> ``prepare`` (read + validate + featurise once, whatever models run) -> ``run`` (size-bucketed padded
batches through the ONNX models that the requested targets need) -> ``Prediction`` or ``Rejection`` per
input, in input order. Models fill roles: the DIM encoder (the 64-d embedding) and a regressor per target
(band gap in eV with its metal probability; formation energy in eV/atom). One multi-task regressor may fill
several target roles; it then runs once per batch for all of them. All models must share one ``FeatureSpec``,
so one featurisation serves all of them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sitenet.batch import collate
from sitenet.config import RESERVED, TARGETS, RegressorConfig, SiteNetConfig
from sitenet.errors import FeatureSpecMismatchError, ModelLoadError, SiteNetError
from sitenet.features import CrystalFeatures, FeatureSpec, featurize
from sitenet.limits import DEFAULT_MAX_CPU_S
from sitenet.runtime import OnnxModel, ProviderChoice
from sitenet.structure import DEFAULT_MAX_BYTES, DEFAULT_MAX_SITES, StructureSource, read_crystal

__all__ = ["DEFAULT_MODELS", "Predictor", "Prediction", "Prepared", "Rejection", "predict_main", "size_batches"]

logger = logging.getLogger(__name__)

#: The bundled zoo models used when nothing else is named, by role: per target the one best on validation
#: (benchmarks/results/zoo_candidates.md; band gap: the multi-task model).
DEFAULT_MODELS: dict[str, str] = {
    "encoder": "sitenet-dim-mp2018",
    "band_gap": "sitenet-dim-mp2018-band-gap-formation-energy",
    "formation_energy": "sitenet-dim-mp2018-formation-energy",
}
#: Key of a property model's own embedding in :meth:`Predictor.run`'s output (the neighbour index's space).
_PROPERTY_EMBEDDING = "property_embedding"


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
    band_gap_std: float | None = None  #: eV, calibrated standard deviation (``uncertainty=True``)
    formation_energy_std: float | None = None  #: eV/atom, likewise
    #: Targets of other property models (a user's own), by name, with ``<target>_std`` when asked for; units in
    #: :meth:`Predictor.info`.
    properties: dict[str, float | None] = field(default_factory=dict)
    embedding: list[float] | None = None  #: the DIM encoder's E=64 crystal embedding
    neighbours: list[dict[str, Any]] | None = None  #: nearest training crystals (id, formula, distance, labels)
    in_domain: float | None = None  #: share of unseen validation crystals farther from the training set (0..1)
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
        max_cpu_s: float | None = DEFAULT_MAX_CPU_S,
        batch_size: int = 32,
        max_pairs: int = 60_000,
    ) -> None:
        """Use :meth:`from_pretrained`; this takes already loaded models by role: "encoder" or the target a
        property model serves (None: role not served)."""
        unknown = [r for r in models if r != "encoder" and (not r.isidentifier() or RESERVED.match(r))]
        if unknown:
            raise ValueError(f"unknown model roles {sorted(unknown)}; roles are 'encoder' and property names")
        self.models = {role: m for role, m in models.items() if m is not None}
        if not self.models:
            raise ValueError("a Predictor needs at least one model")
        self.spec, self.configs = _shared_spec(self.models)
        # the zoo's targets first, then others in the order given; the models never change after this
        self._targets = tuple(sorted((r for r in self.models if r != "encoder"), key=lambda t: t not in TARGETS))
        self.max_sites, self.max_bytes, self.max_cpu_s = max_sites, max_bytes, max_cpu_s
        self.batch_size, self.max_pairs = batch_size, max_pairs
        self._indexes: dict[int, Any] = {}  # id(model) -> NeighbourIndex, loaded on first use
        self._pool: ProcessPoolExecutor | None = None
        self._pool_key: tuple[int, int, int] | None = None  # (workers, batch_size, max_pairs) of the pool

    @classmethod
    def from_pretrained(
        cls,
        encoder: str | os.PathLike[str] | None = DEFAULT_MODELS["encoder"],
        band_gap: str | os.PathLike[str] | None = DEFAULT_MODELS["band_gap"],
        formation_energy: str | os.PathLike[str] | None = DEFAULT_MODELS["formation_energy"],
        *,
        models: Sequence[str | os.PathLike[str]] = (),
        revision: str | None = None,
        providers: ProviderChoice = "auto",
        threads: int | None = None,
        verify: bool = True,
        load: bool = True,
        max_sites: int = DEFAULT_MAX_SITES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_cpu_s: float | None = DEFAULT_MAX_CPU_S,
    ) -> "Predictor":
        """Load models by zoo name, folder or Hub repo id (``sitenet.hub.resolve``, checksums verified).

        Args:
            encoder, band_gap, formation_energy: the model of each role; None (or "") leaves a role out.
            models: more property models (e.g. your own fine-tuned ones); each serves every target its config
                names. A target may be served by one model only: pass ``band_gap=None`` to serve your own.
            revision: Hub revision (branch, tag or commit) for the Hub repo ids among them.
            providers: "auto" (CUDA when usable, else CPU), "cpu" or "cuda" (fail if CUDA is unusable).
            threads: ONNX Runtime intra-op threads per session (None: its default, all cores).
            verify: check each folder against its manifest.
            load: create the ONNX sessions; False gives a predictor that can only :meth:`prepare` (and
                describe its models), e.g. for an HTTP front end whose inference runs in another process.
            max_sites, max_bytes: input limits applied by :meth:`prepare`.
            max_cpu_s: CPU seconds :meth:`prepare` may spend reading one input (None: no limit); past it the
                input gets ``input_too_costly``.

        Raises:
            ModelLoadError: a model is missing, corrupt, of the wrong kind for its role.
            FeatureSpecMismatchError: the models were trained with different featurisation.
            ProviderUnavailableError: ``providers="cuda"`` and CUDA cannot be used.
        """
        from sitenet.hub import resolve

        names = {"encoder": encoder, "band_gap": band_gap, "formation_energy": formation_energy}
        folders = {role: None if name is None or os.fspath(name) == "" else resolve(name, revision=revision, verify=verify)
                   for role, name in names.items()}
        for name in models:
            folder = resolve(name, revision=revision, verify=verify)
            for target in _declared_targets(folder):
                if folders.get(target) is not None:
                    raise ModelLoadError(f"{target} would be served by both {Path(folders[target]).name} and "
                                         f"{Path(folder).name}; leave one out (e.g. {target}=None)")
                folders[target] = folder
        return cls(_open(folders, providers=providers, threads=threads, load=load), max_sites=max_sites,
                   max_bytes=max_bytes, max_cpu_s=max_cpu_s)

    # --- inference -------------------------------------------------------------------------------------
    @property
    def targets(self) -> tuple[str, ...]:
        """Targets this predictor can serve: the zoo's first, then others in the order given."""
        return self._targets

    def outputs(self, role: str) -> tuple[str, ...]:
        """The ONNX outputs that serve ``role`` (its value, a gated band gap's metal probability, or the
        encoder's embedding): the model contract as the model's own config states it."""
        return ("embedding",) if role == "encoder" else self.configs[role].outputs_of(role)

    def units(self) -> dict[str, str]:
        """Unit of every target served, as each model's config states it."""
        return {t: self.configs[t].units[t] for t in self.targets}

    def prepare(self, cif: StructureSource) -> Prepared | SiteNetError:
        """Read, validate and featurise one crystal (CIF text/bytes/path or a Structure); never raises a
        ``SiteNetError``, returns it."""
        try:
            crystal = read_crystal(cif, max_sites=self.max_sites, max_bytes=self.max_bytes, max_cpu_s=self.max_cpu_s)
            features = featurize(crystal, spec=self.spec)
        except SiteNetError as err:
            return err
        return Prepared(features=features, formula=crystal.formula, n_sites=len(crystal))

    def roles(self, targets: Iterable[str], return_embedding: bool, *, uncertainty: bool = False,
              neighbours: int = 0) -> list[str]:
        """The model roles needed for ``targets`` (+ the encoder for embeddings); ValueError if unavailable."""
        targets = tuple(targets)
        missing = [t for t in targets if t not in self.models or t == "encoder"]
        if return_embedding and "encoder" not in self.models:
            missing.append("embedding (encoder)")
        if (neighbours or uncertainty) and not self.indexed_models():
            missing.append("uncertainty / neighbours (a property model folder with neighbours.safetensors)")
        if missing:
            raise ValueError(f"no model loaded for {missing}; this predictor serves {list(self.targets)}"
                             f"{' and embeddings' if 'encoder' in self.models else ''}")
        return [r for r in ("encoder", *self.targets) if r in targets or (r == "encoder" and return_embedding)]

    def indexed_models(self) -> list[OnnxModel]:
        """Distinct property models (in target order) whose folders ship a nearest-crystal index."""
        from sitenet.neighbours import NeighbourIndex

        found: list[OnnxModel] = []
        for target in self.targets:
            model = self.models.get(target)
            if model is not None and all(model is not m for m in found) and NeighbourIndex.present(model.folder):
                found.append(model)
        return found

    def _index(self, model: OnnxModel) -> Any:
        from sitenet.neighbours import NeighbourIndex

        if id(model) not in self._indexes:
            self._indexes[id(model)] = NeighbourIndex(model.folder)
        return self._indexes[id(model)]

    def run(
        self,
        prepared: Sequence[Prepared | CrystalFeatures],
        *,
        targets: Sequence[str] | None = None,
        return_embedding: bool = False,
        uncertainty: bool = False,
        neighbours: int = 0,
    ) -> list[dict[str, Any]]:
        """Model outputs per crystal (output name -> float, or (E,) float32 array for ``embedding``); with
        ``uncertainty`` also ``<target>_std``, and with ``neighbours`` = k > 0 also ``neighbours`` (the k
        nearest training crystals of the first indexed property model) and ``in_domain``."""
        targets = self.targets if targets is None else tuple(targets)
        roles = self.roles(targets, return_embedding, uncertainty=uncertainty, neighbours=neighbours)
        features = [p.features if isinstance(p, Prepared) else p for p in prepared]
        out: list[dict[str, Any]] = [{} for _ in features]
        if not features:
            return out
        sizes = [(f.n_primitive, f.n_sites) for f in features]
        plan: dict[int, tuple[OnnxModel, list[str]]] = {}  # one run per distinct model, all its roles' outputs
        for role in roles:
            model = self.models[role]
            names = plan.setdefault(id(model), (model, []))[1]
            names += [n for n in self.outputs(role) if n in model.output_names and n not in names]
        indexed = [m for m in self.indexed_models() if id(m) in plan] if uncertainty or neighbours else []
        for model in indexed:  # its own embedding: the space of its index
            names = plan[id(model)][1]
            names += [] if "embedding" in names else ["embedding"]
        for idx in size_batches(sizes, batch_size=self.batch_size, max_pairs=self.max_pairs):
            batch = collate([features[i] for i in idx], self.spec)
            for model, names in plan.values():
                for name, values in model.run(batch, outputs=names).items():
                    key = (_PROPERTY_EMBEDDING, id(model)) if name == "embedding" and model in indexed else name
                    for row, i in enumerate(idx):
                        out[i][key] = values[row] if values.ndim > 1 else float(values[row])
        for rank, model in enumerate(indexed):
            self._add_neighbours(model, out, features, targets=[t for t in targets if self.models[t] is model],
                                 uncertainty=uncertainty, neighbours=neighbours if rank == 0 else 0)
        return out

    def _add_neighbours(self, model: OnnxModel, out: list[dict[str, Any]], features: list[CrystalFeatures], *,
                        targets: list[str], uncertainty: bool, neighbours: int) -> None:
        """``<target>_std`` of ``model``'s targets and, with ``neighbours``, the nearest training crystals."""
        from sitenet.neighbours import FEATURE_NEIGHBOURS

        index = self._index(model)
        embedding = np.stack([o.pop((_PROPERTY_EMBEDDING, id(model))) for o in out])  # (B,E)
        distances, positions = index.search(embedding, max(neighbours, FEATURE_NEIGHBOURS))
        if uncertainty:
            metal = np.array([o.get("metal_probability", np.nan) for o in out])
            sites, atomic_numbers = np.array([f.n_primitive for f in features]), [f.atomic_numbers for f in features]
            for target in targets:
                std = index.std(target, np.array([o[target] for o in out]), distances, positions, sites, metal,
                                atomic_numbers=atomic_numbers)
                for o, value in zip(out, std if std is not None else [None] * len(out)):
                    o[f"{target}_std"] = None if value is None else float(value)
        if neighbours:
            found = index.neighbours(distances[:, :neighbours], positions[:, :neighbours])
            for o, near, score in zip(out, found, index.in_domain(distances[:, 0])):
                o["neighbours"], o["in_domain"] = [asdict(n) for n in near], float(score)

    def predict(
        self,
        cifs: Sequence[StructureSource],
        *,
        targets: Sequence[str] | None = None,
        return_embedding: bool = False,
        uncertainty: bool = False,
        neighbours: int = 0,
        workers: int | None = None,
    ) -> list[Prediction | Rejection]:
        """Predict every crystal; item k of the result is for ``cifs[k]``.

        Args:
            cifs: CIF texts, CIF bytes, paths or pymatgen Structures.
            targets: any of :attr:`targets` (None: all of them).
            return_embedding: include the DIM encoder's embedding.
            uncertainty: add each target's calibrated standard deviation (``<target>_std``).
            neighbours: k > 0 adds the k nearest training crystals and the in-domain score.
            workers: processes for large inputs (None or 1: this process). Each worker loads the models
                once and keeps them for later calls; :meth:`close` stops them.
        """
        targets = self.targets if targets is None else tuple(targets)
        self.roles(targets, return_embedding, uncertainty=uncertainty, neighbours=neighbours)  # fail fast
        options = {"targets": targets, "return_embedding": return_embedding, "uncertainty": uncertainty,
                   "neighbours": neighbours}
        if workers and workers > 1 and len(cifs) > 1:
            return self._predict_parallel(cifs, options, workers=workers)
        return self._predict_local(list(enumerate(cifs)), **options)

    def _predict_local(self, items: Sequence[tuple[int, StructureSource]], *, targets: tuple[str, ...],
                       return_embedding: bool, uncertainty: bool = False,
                       neighbours: int = 0) -> list[Prediction | Rejection]:
        results: list[Prediction | Rejection | None] = []
        ready: list[tuple[int, int, Prepared]] = []  # (position, input index, prepared)
        for position, (index, cif) in enumerate(items):
            prepared = self.prepare(cif)
            if isinstance(prepared, SiteNetError):
                results.append(Rejection.from_error(index, prepared))
            else:
                results.append(None)
                ready.append((position, index, prepared))
        outputs = self.run([p for _, _, p in ready], targets=targets, return_embedding=return_embedding,
                           uncertainty=uncertainty, neighbours=neighbours)
        for (position, index, prepared), values in zip(ready, outputs):
            results[position] = self.prediction(index, prepared, values)
        return results  # type: ignore[return-value]

    def prediction(self, index: int, prepared: Prepared, values: dict[str, Any]) -> Prediction:
        """Assemble a :class:`Prediction` from :meth:`run`'s outputs for one crystal."""
        embedding = values.get("embedding")
        used = [r for r in self.models if any(n in values for n in self.outputs(r))]
        others = [t for t in self.targets if t not in TARGETS]
        return Prediction(
            index=index,
            formula=prepared.formula,
            n_sites=prepared.n_sites,
            band_gap=values.get("band_gap"),
            metal_probability=values.get("metal_probability"),
            formation_energy=values.get("formation_energy"),
            band_gap_std=values.get("band_gap_std"),
            formation_energy_std=values.get("formation_energy_std"),
            embedding=None if embedding is None else [float(v) for v in embedding],
            neighbours=values.get("neighbours"),
            in_domain=values.get("in_domain"),
            properties={k: values[k] for t in others for k in (t, f"{t}_std") if k in values},
            models={r: f"{self.models[r].name}@{self.models[r].version}" for r in used},
        )

    # --- many CIFs in several processes --------------------------------------------------------------
    def _predict_parallel(self, cifs: Sequence[StructureSource], options: dict[str, Any], *,
                          workers: int) -> list[Prediction | Rejection]:
        pool = self._ensure_pool(workers)
        n = len(cifs)
        chunk = int(min(256, max(16, -(-n // (workers * 4)))))
        indexed = list(enumerate(cifs))
        jobs = [indexed[start:start + chunk] for start in range(0, n, chunk)]
        results: list[Prediction | Rejection] = []
        for part in pool.map(_worker_predict, jobs, [options] * len(jobs)):
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
            "uncertainty": bool(self.indexed_models()),
            "units": self.units(),
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


def _shared_spec(models: dict[str, OnnxModel]) -> tuple[FeatureSpec, dict[str, RegressorConfig]]:
    """Check each model's config against its role: the one FeatureSpec they all share, and each property
    role's parsed config."""
    from pydantic import ValidationError

    specs: dict[str, FeatureSpec] = {}
    configs: dict[str, RegressorConfig] = {}
    for role, model in models.items():
        try:
            if role == "encoder":
                if model.model_type != "sitenet":
                    raise ModelLoadError(f"{model.name} is a {model.model_type!r} model, not an encoder ('sitenet')")
                specs[role] = SiteNetConfig.model_validate(model.config).features
            else:
                config = RegressorConfig.model_validate(model.config)
                if role not in config.targets:
                    raise ModelLoadError(f"{model.name} predicts {list(config.targets)}, but was given as the {role} "
                                         "model")
                specs[role], configs[role] = config.encoder.features, config
        except ValidationError as err:
            raise ModelLoadError(f"{model.folder}/config.json is not a valid {role} config: {err}") from None
    first_role, first = next(iter(specs.items()))
    for role, spec in specs.items():
        if spec != first:
            raise FeatureSpecMismatchError(
                f"{models[role].name} ({role}) was trained with features {spec.model_dump()}, but "
                f"{models[first_role].name} ({first_role}) with {first.model_dump()}; use models from one zoo release",
                detail={r: s.model_dump() for r, s in specs.items()})
    return first, configs


def _declared_targets(folder: Path) -> tuple[str, ...]:
    """The targets a property model folder's config names (ModelLoadError if it is not a property model)."""
    from pydantic import ValidationError

    try:
        config = RegressorConfig.model_validate_json((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValidationError) as err:
        raise ModelLoadError(f"{folder} is not a property model (a SiteNetRegressor folder): {err}") from None
    return config.targets


def _open(folders: dict[str, Any], *, providers: ProviderChoice, threads: int | None,
          load: bool) -> dict[str, OnnxModel | None]:
    """An OnnxModel per role from its folder (None: role left out); roles given one folder share one session."""
    opened: dict[str, OnnxModel] = {}
    models: dict[str, OnnxModel | None] = {}
    for role, folder in folders.items():
        if folder is None:
            models[role] = None
            continue
        key = str(Path(folder).resolve())
        if key not in opened:
            opened[key] = OnnxModel(folder, providers=providers, threads=threads, load=load)
        models[role] = opened[key]
    return models


# --- worker processes -------------------------------------------------------------------------------------
_WORKER: Predictor | None = None


def _worker_init(folders: dict[str, str], providers: ProviderChoice, max_sites: int, max_bytes: int,
                 batch_size: int, max_pairs: int) -> None:
    global _WORKER
    _WORKER = Predictor(_open(folders, providers=providers, threads=1, load=True), max_sites=max_sites,
                        max_bytes=max_bytes, batch_size=batch_size, max_pairs=max_pairs)


def _worker_predict(items: list[tuple[int, StructureSource]], options: dict[str, Any]) -> list[Prediction | Rejection]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER._predict_local(items, **options)


# --- sitenet predict -------------------------------------------------------------------------------------
CIF_SUFFIXES = (".cif", ".mcif")


def expand_inputs(paths: Sequence[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> list[tuple[str, StructureSource]]:
    """(name, input) of every crystal behind command-line arguments: CIF files, folders (every .cif/.mcif
    inside, sorted), .zip archives (every CIF member) and .csv(.gz) tables (a ``cif`` column, ids from
    ``material_id`` or ``id``). A zip member is read up to ``max_bytes`` + 1 bytes, so an oversized one is
    rejected by the reader, not loaded."""
    import zipfile

    items: list[tuple[str, StructureSource]] = []
    for arg in paths:
        path = Path(arg)
        name = path.name.lower()
        if path.is_dir():
            items += [(str(f), f) for f in sorted(path.rglob("*")) if f.suffix.lower() in CIF_SUFFIXES and f.is_file()]
        elif name.endswith(".zip") and path.is_file():
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir() and Path(info.filename).suffix.lower() in CIF_SUFFIXES:
                        with archive.open(info) as member:
                            items.append((f"{arg}:{info.filename}", member.read(max_bytes + 1)))
        elif name.endswith((".csv", ".csv.gz")) and path.is_file():
            from sitenet.dataset import read_dataset

            table = read_dataset(path, targets=[])
            items += [(f"{arg}:{i}", cif) for i, cif in zip(table.ids, table.cifs)]
        else:
            items.append((arg, path))
    return items


def predict_main(args: Any) -> int:
    """``sitenet predict INPUT... [--model NAME] [--targets ...] [-o out.json|out.csv|-] [--embedding]``:
    0 if at least one crystal was predicted."""
    import csv
    import json
    from dataclasses import replace

    from tqdm import tqdm

    from sitenet.api import load_model

    items = expand_inputs(args.cifs)
    names = [name for name, _ in items]
    workers = getattr(args, "workers", None)
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if len(items) >= 256 else 1
    with load_model(args.model, providers=getattr(args, "providers", "auto")) as model:
        targets = tuple(args.targets or model.targets)
        options = {"targets": targets, "return_embedding": bool(args.embedding),
                   "uncertainty": bool(getattr(args, "uncertainty", False)), "neighbours": getattr(args, "neighbours", 0)}
        model.predictor.roles(targets, options["return_embedding"], uncertainty=options["uncertainty"],
                              neighbours=options["neighbours"])  # a bad option fails before any parsing
        results: list[Prediction | Rejection] = []
        chunk = 1024 if workers > 1 else 256
        with tqdm(total=len(items), unit="crystal", desc="predict", disable=len(items) < 2 * chunk or None) as bar:
            for start in range(0, len(items), chunk):
                part = model.predictor.predict([x for _, x in items[start:start + chunk]], **options,
                                               workers=workers)
                results += [replace(r, index=r.index + start) for r in part]
                bar.update(len(part))
    rows = [dict(source=names[r.index], **r.to_dict()) for r in results]
    for r in results:
        if isinstance(r, Rejection):
            print(f"rejected {names[r.index]}: {r.code}: {r.message}", file=sys.stderr)
    output = str(args.output)
    if output.endswith(".csv"):
        emb = max((len(r.get("embedding") or []) for r in rows), default=0)
        stds = [f"{t}_std" for t in targets] if options["uncertainty"] else []
        for row in rows:  # other models' targets: columns of their own
            row.update(row.pop("properties", None) or {})
        columns = ["index", "source", "formula", "n_sites", *[c for t in targets for c in model.predictor.outputs(t)],
                   *stds,
                   *(["in_domain"] if options["neighbours"] else []), "code", "message"]  # neighbours: JSON only
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
    print(f"predicted {sum(isinstance(r, Prediction) for r in results)} of {len(results)} crystal(s) with "
          f"{model!r}", file=sys.stderr)
    return 0 if any(isinstance(r, Prediction) for r in results) else 1


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value

