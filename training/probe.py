"""Frozen-embedding probes: how much a (pretraining) encoder's embedding says about a property.

``embed`` gives the frozen crystal embeddings of dataset rows (the study uses it too). ``EmbeddingProbe`` is a
pretraining callback that, after every validation, fits a random forest on the embeddings of a fixed seeded
set of labelled *training* crystals and logs its MAE on the labelled *validation* crystals as
``val/probe_<target>_mae``. It is for insight only (``epochs.json``, the history plot): the kept checkpoint
is still chosen by the validation DIM loss, and no test label is ever read.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from sitenet.batch import INPUT_NAMES
from sitenet.model import SiteNetEncoder
from training.configs import DataConfig
from training.data import Corpus, loader

log = logging.getLogger(__name__)


@torch.no_grad()
def embed(encoder: SiteNetEncoder, corpus: Corpus, rows: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Frozen crystal embeddings g (no noise), (len(rows), E), in the order of ``rows``."""
    was_training = encoder.training
    encoder.eval()
    out = np.zeros((len(rows), encoder.config.embedding_dim))
    position = {int(r): k for k, r in enumerate(rows)}
    for batch in loader(corpus, rows, cfg):
        g = encoder(**{k: batch[k] for k in INPUT_NAMES}).embedding  # (B,E)
        out[[position[int(r)] for r in batch["row"]]] = g.float().numpy()
    encoder.train(was_training)
    return out


class EmbeddingProbe(Callback):
    """Logs ``val/probe_<target>_mae`` after each validation (rank 0 computes, every rank logs the value)."""

    def __init__(self, corpus: Corpus, train_rows: np.ndarray, val_rows: np.ndarray, cfg: DataConfig, *,
                 targets: tuple[str, ...] = ("formation_energy", "band_gap"), labels: int = 1000, seed: int = 0,
                 trees: int = 100):
        self.corpus, self.cfg, self.trees, self.seed = corpus, cfg, trees, seed
        self.sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        rng = np.random.default_rng(seed)
        for target in (t for t in targets if t in corpus.dataset.targets):  # an unlabelled set has no probe
            y = corpus.labels(target)
            train = train_rows[np.isfinite(y[train_rows])]
            val = val_rows[np.isfinite(y[val_rows])]
            if len(train) and len(val):
                self.sets[target] = (np.sort(rng.choice(train, size=min(labels, len(train)), replace=False)), val)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.sets:
            return
        from sklearn.ensemble import RandomForestRegressor

        if trainer.is_global_zero:  # every crystal any probe needs, embedded once
            rows = np.unique(np.concatenate([r for pair in self.sets.values() for r in pair]))
            g = embed(module.dim.encoder, self.corpus, rows, self.cfg)  # (len(rows),E)
        for target, (train, val) in self.sets.items():
            mae = float("nan")
            if trainer.is_global_zero:
                y = self.corpus.labels(target)
                forest = RandomForestRegressor(n_estimators=self.trees, random_state=self.seed, n_jobs=1)
                forest.fit(g[np.searchsorted(rows, train)], y[train])
                mae = float(np.abs(forest.predict(g[np.searchsorted(rows, val)]) - y[val]).mean())
            value = torch.tensor(mae, device=module.device)
            if trainer.world_size > 1:
                value = trainer.strategy.broadcast(value, src=0)
            module.log(f"val/probe_{target}_mae", value, sync_dist=False, rank_zero_only=False)
