"""On-disk feature cache: featurise a data set once, in parallel, resumably, and memory-map it.

Layout: ``<root>/<spec.key()>/`` holds ``spec.json`` and one folder per shard of ``shard_size`` crystals with
``ids.json``, ``species.npy`` (sum P,), ``distance.npy`` (sum P*N,), ``sizes.npy`` (M, 3: P, N, images) and
``rejected.json``. A shard is written to a temporary folder and renamed when complete, so an interrupted build
resumes at the first missing shard; a changed featuriser config has another key and never reads stale
features. ``rejected.csv`` lists every crystal that could not be featurised, with its error code and reason.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sitenet.errors import SiteNetError
from sitenet.features import CrystalFeatures, FeatureSpec, featurize
from sitenet.structure import read_crystal


@dataclass(frozen=True)
class Rejection:
    """A crystal that was not featurised, and why."""

    id: str
    code: str
    message: str


class FeatureStore:
    """Read side of the cache: memory-mapped features of every accepted crystal, in input order."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.spec = FeatureSpec.model_validate_json((self.folder / "spec.json").read_text())
        ids: list[str] = []
        self._species: list[np.ndarray] = []
        self._distance: list[np.ndarray] = []
        sizes: list[np.ndarray] = []
        self.rejected: list[Rejection] = []
        for shard in sorted(p for p in self.folder.glob("shard-*") if p.is_dir() and ".tmp" not in p.name):
            ids += json.loads((shard / "ids.json").read_text())
            self._species.append(np.load(shard / "species.npy", mmap_mode="r"))
            self._distance.append(np.load(shard / "distance.npy", mmap_mode="r"))
            sizes.append(np.load(shard / "sizes.npy"))
            self.rejected += [Rejection(**r) for r in json.loads((shard / "rejected.json").read_text())]
        self.ids = np.array(ids, dtype=str)
        self.sizes = np.concatenate(sizes) if sizes else np.zeros((0, 3), dtype=np.int64)  # (M, 3): P, N, images
        self._shard = np.concatenate([np.full(len(s), k) for k, s in enumerate(sizes)]) if sizes else np.zeros(0, int)
        self._local = np.concatenate([np.arange(len(s)) for s in sizes]) if sizes else np.zeros(0, int)
        self._site_offsets = [np.concatenate([[0], np.cumsum(s[:, 0])]) for s in sizes]
        self._pair_offsets = [np.concatenate([[0], np.cumsum(s[:, 0] * s[:, 1])]) for s in sizes]
        self._row = {cid: k for k, cid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> CrystalFeatures:
        s, j = self._shard[k], self._local[k]
        p, n, images = (int(v) for v in self.sizes[k])
        b = self._pair_offsets[s][j]
        return CrystalFeatures(
            atomic_numbers=self.atomic_numbers(k),
            distance=np.asarray(self._distance[s][b : b + p * n], dtype=np.float32).reshape(p, n),
            images=images,
        )

    def atomic_numbers(self, k: int) -> np.ndarray:
        """(P,) int64 Z of the primitive sites of row ``k``, without reading its distances."""
        s, j = self._shard[k], self._local[k]
        a = self._site_offsets[s][j]
        return np.asarray(self._species[s][a : a + int(self.sizes[k, 0])], dtype=np.int64)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids``; ids that were rejected or are unknown raise KeyError."""
        return np.array([self._row[i] for i in ids], dtype=np.int64)

    def has(self, ids: Sequence[str]) -> np.ndarray:
        """Boolean mask: which of ``ids`` are in the store."""
        return np.array([i in self._row for i in ids], dtype=bool)


def build_features(
    ids: Sequence[str],
    cifs: Sequence[str],
    root: str | os.PathLike,
    *,
    spec: FeatureSpec = FeatureSpec(),
    max_sites: int = 500,
    workers: int | None = None,
    shard_size: int = 256,
    progress: bool = True,
) -> FeatureStore:
    """Featurise ``cifs`` into ``<root>/<spec.key()>`` (skipping shards already there) and open the store.

    Args:
        ids: one unique id per CIF.
        cifs: CIF texts.
        root: cache root folder.
        spec: featuriser configuration (its key names the cache folder).
        max_sites: input cells with more sites are rejected (``too_many_sites``).
        workers: worker processes (default: all cores).
        shard_size: crystals per shard (the unit of resumption).
        progress: show a tqdm bar.
    """
    from tqdm.auto import tqdm

    if len(ids) != len(cifs):
        raise ValueError(f"{len(ids)} ids but {len(cifs)} CIFs")
    folder = Path(root) / spec.key()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(spec.model_dump_json(indent=2))
    jobs = []
    for k, start in enumerate(range(0, len(ids), shard_size)):
        shard = folder / f"shard-{k:05d}"
        chunk_ids = [str(i) for i in ids[start : start + shard_size]]
        if shard.is_dir() and json.loads((shard / "manifest.json").read_text())["ids"] == chunk_ids:
            continue  # done in an earlier run
        if shard.exists():
            shutil.rmtree(shard)  # a shard of another id list: rebuild it
        jobs.append((shard, chunk_ids, list(cifs[start : start + shard_size]), spec, max_sites))
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(ids), initial=len(ids) - sum(len(j[1]) for j in jobs), unit="crystal",
               desc="featurise", disable=not progress)
    if workers == 1:
        for job in jobs:
            bar.update(_build_shard(*job))
    else:
        import multiprocessing

        # spawn, not fork: a fork taken while torch's or ONNX Runtime's thread pools hold a lock can hang the
        # child (seen when the cache was built after inference in the same process)
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(_build_shard, *zip(*jobs)) if jobs else []:
                bar.update(done)
    bar.close()
    store = FeatureStore(folder)
    _write_rejections(folder / "rejected.csv", store.rejected)
    return store


def _build_shard(shard: Path, ids: list[str], cifs: list[str], spec: FeatureSpec, max_sites: int) -> int:
    kept: list[str] = []
    features: list[CrystalFeatures] = []
    rejected: list[dict[str, str]] = []
    for cid, cif in zip(ids, cifs):
        try:
            # the service's reader (arrays, no pymatgen objects); a data set is trusted input: no CPU cap
            features.append(featurize(read_crystal(cif, max_sites=max_sites, max_cpu_s=None), spec=spec))
            kept.append(cid)
        except SiteNetError as err:
            rejected.append({"id": cid, "code": err.code, "message": err.message})
    # one scratch folder per process: two runs that start on a cold cache build the same shards side by side
    tmp = shard.with_name(f"{shard.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    sizes = np.array([[f.n_primitive, f.n_sites, f.images] for f in features], dtype=np.int64).reshape(-1, 3)
    np.save(tmp / "species.npy", np.concatenate([f.atomic_numbers for f in features] or [np.zeros(0, np.int64)]).astype(np.int8))
    np.save(tmp / "distance.npy", np.concatenate([f.distance.ravel() for f in features] or [np.zeros(0, np.float32)]))
    np.save(tmp / "sizes.npy", sizes)
    (tmp / "ids.json").write_text(json.dumps(kept))
    (tmp / "rejected.json").write_text(json.dumps(rejected))
    (tmp / "manifest.json").write_text(json.dumps({"ids": ids}))  # the full input list, for resumption checks
    try:
        tmp.rename(shard)
    except OSError:
        if not (shard / "manifest.json").is_file():
            raise
        shutil.rmtree(tmp)  # another process finished this shard first; shards are a pure function of the ids
    return len(ids)


def _write_rejections(path: Path, rejected: list[Rejection]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "code", "message"])
        for r in rejected:
            writer.writerow([r.id, r.code, r.message])
