"""Crystal data for training: the feature cache, seeded cluster-aware splits and size-bucketed batches.

The held-out test rows are the committed ``data/splits/mp2018-test.txt`` (near-duplicate clusters are never
split across it); validation is carved from the remaining rows by whole clusters, seeded. The ``P <= limit``
filter (method's ``-u 50``) applies to training and validation rows only and is applied *before* a label
budget is drawn, so "N labels" always means N (pitfall F.5).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sitenet.batch import bucket_batches, collate
from sitenet.cache import FeatureStore, build_features
from sitenet.dataset import CLUSTERS_NAME, CrystalDataset, default_data_path, held_out_ids, read_clusters, read_dataset
from sitenet.model import to_tensors
from training.configs import DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    """A data set with its features.

    Attributes:
        dataset: the table (M rows).
        store: the feature cache.
        store_row: (M,) row of each crystal in ``store``, -1 where featurisation rejected it.
        test: (M,) bool, held-out rows.
        groups: (M,) near-duplicate cluster label of each row (the row's own id when it has no cluster).
    """

    dataset: CrystalDataset
    store: FeatureStore
    store_row: np.ndarray
    test: np.ndarray
    groups: np.ndarray

    def sizes(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), 2) P and N of dataset rows."""
        return self.store.sizes[self.store_row[rows], :2]

    def atomic_numbers(self, rows: np.ndarray) -> list[np.ndarray]:
        """(P,) Z of the primitive sites of each dataset row."""
        return [self.store.atomic_numbers(self.store_row[r]) for r in rows]

    def labels(self, target: str) -> np.ndarray:
        """(M,) float64 labels of ``target``; NaN where missing or where the sources disagree."""
        y = self.dataset.targets[target].astype(np.float64).copy()
        agree = self.dataset.extra.get("labels_agree")
        if agree is not None:
            y[~np.asarray(agree, dtype=bool)] = np.nan
        return y


def load_corpus(cfg: DataConfig) -> Corpus:
    """Read the table, featurise what the cache lacks (resumable), and mark the held-out rows."""
    path = Path(cfg.path) if cfg.path else default_data_path()
    dataset = read_dataset(path, id_column=cfg.id_column, targets=dict(cfg.columns) or None, cif_column=cfg.cif_column)
    # a cache folder holds one data set's shards (a shard of other ids is rebuilt): the mp2018 files share the
    # root, any other data set (a user's CSV) gets a folder of its own beside them
    root = Path(cfg.cache_root)
    if not path.name.startswith("mp2018"):
        root = root / "datasets" / path.name.split(".")[0]
    store = build_features(dataset.ids, dataset.cifs, root, workers=cfg.workers, progress=False)
    present = store.has(dataset.ids)
    store_row = np.full(len(dataset), -1, dtype=np.int64)
    store_row[present] = store.rows(dataset.ids[present])
    if (~present).any():
        log.warning("%d of %d crystals were rejected by the featuriser (see %s)", int((~present).sum()),
                    len(dataset), store.folder / "rejected.csv")
    clusters_path = path.parent / CLUSTERS_NAME
    clusters = read_clusters(clusters_path) if clusters_path.exists() else {}
    groups = np.array([f"c{clusters[i]}" if i in clusters else f"s{i}" for i in dataset.ids])
    if cfg.test_fraction > 0:  # a seeded carve by whole clusters, its own generator: the same for any other setting
        rows = np.arange(len(dataset))
        _, held = _carve(rows, groups, cfg.test_fraction, np.random.default_rng([cfg.seed, 7]))
        test = np.isin(rows, held)
    else:
        test_ids = held_out_ids(cfg.test_ids) if cfg.test_ids else held_out_ids()
        test = np.isin(dataset.ids, list(test_ids))
    return Corpus(dataset=dataset, store=store, store_row=store_row, test=test, groups=groups)


@dataclass(frozen=True)
class Splits:
    """Dataset row indices of each split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def make_splits(corpus: Corpus, cfg: DataConfig, *, target: str | Sequence[str] | None = None,
                n_labels: int | None = None,
                seed: int | None = None) -> Splits:
    """Seeded train / validation / test rows.

    Args:
        corpus: the data.
        cfg: split settings (``val_fraction``, ``max_primitive``, ``limit``, ``seed``).
        target: if given, only rows with an agreed label of this target (of every one of these targets) are
            used (test: the scored rows).
        n_labels: draw this many labelled training rows first; validation is carved from them.
        seed: overrides ``cfg.seed``.

    Raises:
        ValueError: fewer candidate rows than ``n_labels``, or too few rows to split.
    """
    seed = cfg.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    ok = corpus.store_row >= 0
    for name in [target] if isinstance(target, str) else target or ():
        ok &= np.isfinite(corpus.labels(name))
    test = np.flatnonzero(ok & corpus.test)
    pool = ok & ~corpus.test
    if cfg.max_primitive is not None:
        pool &= np.where(corpus.store_row >= 0, corpus.store.sizes[np.maximum(corpus.store_row, 0), 0], 0) <= cfg.max_primitive
    pool_rows = np.flatnonzero(pool)
    budget = n_labels if n_labels is not None else cfg.limit
    if budget is not None:
        if budget > len(pool_rows):
            raise ValueError(f"{budget} rows requested but only {len(pool_rows)} are available")
        pool_rows = np.sort(rng.choice(pool_rows, size=budget, replace=False))
    train, val = _carve(pool_rows, corpus.groups[pool_rows], cfg.val_fraction, rng)
    return Splits(train=train, val=val, test=test)


def _carve(rows: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator):
    """Split rows into (train, val) by whole groups so that val holds about ``fraction`` of them (>= 1)."""
    if fraction == 0:
        return rows, rows[:0]
    if len(rows) < 2:
        raise ValueError(f"need at least 2 rows to carve a validation split, got {len(rows)}")
    unique, inverse = np.unique(groups, return_inverse=True)
    counts = np.bincount(inverse)
    wanted = max(1, round(fraction * len(rows)))
    chosen = np.zeros(len(unique), dtype=bool)
    taken = 0
    for g in rng.permutation(len(unique)):
        if taken >= wanted:
            break
        if taken + counts[g] >= len(rows):
            continue  # never leave training empty
        chosen[g] = True
        taken += counts[g]
    is_val = chosen[inverse]
    return rows[~is_val], rows[is_val]


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-size crystals under a padded-pair budget; reshuffled per epoch from (seed, epoch),
    so a resumed run sees the same order. Under DDP each rank takes every world-th batch of one shared list.

    Resumable mid-epoch: :meth:`state_dict` records the epoch and how many batches it has yielded in it;
    after :meth:`load_state_dict` the next iteration of *that same epoch* skips those batches (any other
    epoch starts from its beginning). ``__iter__`` is lazy, so ``set_epoch`` may come after ``iter()``
    (Lightning does so); ``__len__`` is always the full epoch.
    """

    def __init__(self, sizes: np.ndarray, *, batch_size: int, max_pairs: int, shuffle: bool, seed: int):
        self.sizes, self.batch_size, self.max_pairs = sizes, batch_size, max_pairs
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self._yielded_epoch, self._yielded = 0, 0  # progress of the latest iteration
        self._skip: tuple[int, int] | None = None  # (epoch, batches) to skip, from load_state_dict

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (through :attr:`sampler`)."""
        self.epoch = epoch

    @property
    def sampler(self) -> BucketBatchSampler:
        """Itself: Lightning calls ``set_epoch`` on ``loader.sampler`` and ``loader.batch_sampler.sampler``, never
        on the batch sampler itself; without this alias every epoch would replay epoch 0's order."""
        return self

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: batches yielded so far in that epoch (== consumed: no prefetching with a
        sized loader and no workers). Under DDP every rank yields equal counts, so rank 0's state fits all."""
        return {"epoch": int(self._yielded_epoch), "batches": int(self._yielded)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = (int(state["epoch"]), int(state["batches"]))

    def _batches(self) -> list[np.ndarray]:
        batches = bucket_batches(self.sizes, batch_size=self.batch_size, max_pairs=self.max_pairs,
                                 shuffle=self.shuffle, seed=self.seed + self.epoch)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
            # equal batch counts on every rank, or the collective ops of DDP hang: drop the remainder, or
            # (fewer batches than ranks) repeat batches so that every rank gets one
            if len(batches) >= world:
                batches = batches[: len(batches) // world * world]
            elif batches:
                batches = [batches[k % len(batches)] for k in range(world)]
            batches = batches[rank::world]
        return batches

    def __iter__(self):
        batches = self._batches()  # runs at the first next(), after Lightning's set_epoch
        skip = 0
        if self._skip is not None:
            if self._skip[0] == self.epoch:
                skip = min(self._skip[1], len(batches))
            self._skip = None
        self._yielded_epoch, self._yielded = self.epoch, skip
        for b in batches[skip:]:
            self._yielded += 1
            yield b.tolist()

    def __len__(self) -> int:
        return len(self._batches())


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning saves in checkpoints and restores (``state_dict`` /
    ``load_state_dict`` delegate to its :class:`BucketBatchSampler`), so a run resumes mid-epoch exactly.

    It owns a torch Generator, so ``iter()`` draws no number from the global RNG (a resumed run would
    otherwise be one draw out of step with an uninterrupted one)."""

    def __init__(self, dataset: Dataset, *, batch_sampler: BucketBatchSampler, collate_fn):
        super().__init__(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn,
                         generator=torch.Generator().manual_seed(0))

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)


class _Rows(Dataset):
    """Position k of a split -> dataset row; the collate function does the real work."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> int:
        return int(self.rows[k])


class Collate:
    """Dataset rows -> model input tensors plus ``target`` (B,) for one target name, (B,T) for a sequence of
    T names (NaN where missing or for no target) and ``row`` (B,)."""

    def __init__(self, corpus: Corpus, target: str | Sequence[str] | None):
        self.corpus = corpus
        if target is None or isinstance(target, str):
            self.labels = corpus.labels(target) if target else None
        else:
            self.labels = np.stack([corpus.labels(name) for name in target], axis=1)  # (M,T)

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        rows_arr = np.asarray(rows, dtype=np.int64)
        store = self.corpus.store
        batch = collate([store[int(r)] for r in self.corpus.store_row[rows_arr]], store.spec)
        out = to_tensors(batch)
        y = self.labels[rows_arr] if self.labels is not None else np.full(len(rows_arr), np.nan)
        out["target"] = torch.as_tensor(y, dtype=torch.float32)  # (B,) or (B,T)
        out["row"] = torch.as_tensor(rows_arr)  # (B,)
        return out


def loader(corpus: Corpus, rows: np.ndarray, cfg: DataConfig, *, target: str | Sequence[str] | None = None, shuffle: bool = False,
           seed: int = 0) -> ResumableLoader:
    """A resumable DataLoader over dataset ``rows`` with size-bucketed batches (no worker processes: 2-core
    budget; also what makes "batches yielded == batches consumed" hold for mid-epoch resume)."""
    sampler = BucketBatchSampler(corpus.sizes(rows), batch_size=cfg.batch_size, max_pairs=cfg.max_pairs,
                                 shuffle=shuffle, seed=seed)
    # the sampler yields positions within ``rows``; _Rows maps them to dataset rows for Collate
    return ResumableLoader(_Rows(rows), batch_sampler=sampler, collate_fn=Collate(corpus, target))


class CrystalDataModule(L.LightningDataModule):
    """Train / validation / test loaders over a :class:`Corpus` (loaded in ``setup`` unless given)."""

    def __init__(self, cfg: DataConfig, *, target: str | Sequence[str] | None = None, n_labels: int | None = None,
                 corpus: Corpus | None = None):
        super().__init__()
        self.cfg, self.target, self.n_labels = cfg, target, n_labels
        self.corpus = corpus
        self.splits: Splits | None = None

    def prepare_data(self) -> None:
        if self.corpus is None:  # featurise on one process; under DDP the other ranks read the cache in setup()
            self.corpus = load_corpus(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:
            self.corpus = load_corpus(self.cfg)
        if self.splits is None:
            self.splits = make_splits(self.corpus, self.cfg, target=self.target, n_labels=self.n_labels)
            log.info("splits: %d train, %d val, %d test", len(self.splits.train), len(self.splits.val),
                     len(self.splits.test))

    def train_dataloader(self) -> DataLoader:
        return loader(self.corpus, self.splits.train, self.cfg, target=self.target, shuffle=True, seed=self.cfg.seed)

    def val_dataloader(self) -> DataLoader:
        return loader(self.corpus, self.splits.val, self.cfg, target=self.target)

    def test_dataloader(self) -> DataLoader:
        return loader(self.corpus, self.splits.test, self.cfg, target=self.target)
