"""Checkpoint callbacks for exact resume.

:class:`LastCheckpoint` writes ``<output>/checkpoints/last.ckpt`` every n steps and at every epoch end;
``training.pretrain.make_trainer`` adds :class:`RngStateCheckpoint` (global RNG states),
:class:`TrainLoaderPosition` (the train loader's position, see :class:`training.data.ResumableLoader`) and
:class:`EpochMetricsCarry` (the running epoch averages) to every Trainer; :class:`ResumableEarlyStopping`
stays stopped when a finished run is resumed. With Lightning's own state (weights, optimiser, schedulers,
loop counters, callback states) a run killed at any step and restarted from ``last.ckpt`` continues as if it
had not been interrupted. Everything stored is a tensor or a plain Python value, so checkpoints load with
``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

RNG_KEY = "rng_states"


def rng_states() -> dict[str, Any]:
    """The global RNG states of torch (CPU, and CUDA when available), numpy and ``random``."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RngStateCheckpoint(Callback):
    """Saves the global RNG states in every checkpoint and restores them when a run resumes, so the random
    draws after a resume (DIM's noise and corruptions, dropout) are those of an uninterrupted run.

    The states are applied at ``on_train_start``, after everything that runs between loading the checkpoint
    and the first training step. Under DDP the checkpoint holds rank 0's states and every rank gets them.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get(RNG_KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


class TrainLoaderPosition(Callback):
    """Makes sure the train loader's saved position (``ResumableLoader.state_dict``) is restored.

    Lightning restores it only when it builds the train loader after loading the checkpoint; anything that
    reads ``trainer.estimated_stepping_batches`` before that (a step-wise lr schedule in
    ``configure_optimizers``, an ``on_fit_start`` hook) builds the loader early, and the saved position is
    silently dropped. The position is applied again at ``on_train_start``, before the first batch is drawn
    (the loader's iteration is lazy); applying it twice is harmless.
    """

    def __init__(self) -> None:
        self._pending: list[dict] | None = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        states, self._pending = self._pending, None
        loader = trainer.train_dataloader
        if states and len(states) == 1 and callable(getattr(loader, "load_state_dict", None)):
            loader.load_state_dict(states[0])


class EpochMetricsCarry(Callback):
    """Carries the running epoch aggregates of training metrics (``self.log(..., on_epoch=True)``) across a
    mid-epoch resume, so the interrupted epoch's ``train/*`` averages (logs, ``epochs.json``) cover all its
    batches, not only those after the resume.

    Lightning keeps these aggregates in a private result collection and does not checkpoint them; this reads
    them (mean: weighted sum and count; max / min / sum) and adds them back after the first resumed step. If a
    Lightning version lays them out otherwise it does nothing. Under DDP rank 0's aggregates stand for every
    rank's (an approximation of the interrupted epoch's averages; weights and data order are unaffected).
    """

    KEY = "epoch_metrics"

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def _results(trainer: L.Trainer) -> dict | None:
        results = getattr(trainer.fit_loop.epoch_loop, "_results", None)
        return results if isinstance(results, dict) else None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        saved = {}
        for key, m in (self._results(trainer) or {}).items():
            meta = getattr(m, "meta", None)
            if not getattr(m, "is_tensor", False) or meta is None or not meta.on_epoch or m.has_reset:
                continue
            if meta.is_mean_reduction:
                saved[key] = {"reduce": "mean", "value": m.value.detach().cpu(), "n": m.cumulated_batch_size.cpu()}
            elif meta.is_max_reduction or meta.is_min_reduction:
                saved[key] = {"reduce": "max" if meta.is_max_reduction else "min", "value": m.value.detach().cpu()}
            elif meta.is_sum_reduction:
                saved[key] = {"reduce": "sum", "value": m.value.detach().cpu()}
        checkpoint[self.KEY] = {"epoch": trainer.current_epoch, "metrics": saved}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get(self.KEY)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        pending, self._pending = self._pending, None
        if not pending or pending["epoch"] != trainer.current_epoch:  # saved at an epoch end: nothing to carry
            return
        results = self._results(trainer) or {}
        for key, s in pending["metrics"].items():
            m = results.get(key)
            if m is None or not getattr(m, "is_tensor", False):
                continue
            value = s["value"].to(m.value.device, m.value.dtype)
            if s["reduce"] == "mean":
                m.value = value + m.value
                m.cumulated_batch_size = s["n"].to(m.cumulated_batch_size.device) + m.cumulated_batch_size
            elif s["reduce"] == "sum":
                m.value = value + m.value
            else:
                m.value = (torch.maximum if s["reduce"] == "max" else torch.minimum)(value, m.value)


class LastCheckpoint(Checkpoint):
    """Writes ``<folder>/last.ckpt`` every ``every_n_steps`` optimiser steps (a mid-epoch resume point; never
    when 0 or None) and at every epoch end, after validation and the other callbacks' epoch-end hooks
    (Lightning runs checkpoint callbacks last). Each write goes to ``last.ckpt.tmp`` first and is renamed over
    ``last.ckpt``, so a run killed while writing keeps the previous resume point.

    (One callback instead of ModelCheckpoints: Lightning takes their step and epoch triggers as mutually
    exclusive, and a second one writing ``last.ckpt`` gets renamed to ``last-v1.ckpt``.)
    """

    def __init__(self, folder: str | Path, every_n_steps: int | None = None):
        self.path = Path(folder) / "last.ckpt"
        self.every_n_steps = every_n_steps or 0
        self._saved_step = -1

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("LastCheckpoint")
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (self.every_n_steps and step % self.every_n_steps == 0 and step != self._saved_step
                and not trainer.is_last_batch):  # the epoch-end save follows
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)


class ResumableEarlyStopping(EarlyStopping):
    """EarlyStopping whose decision survives a resume: a run that had already stopped when its checkpoint was
    written stops again at once instead of training one more epoch (Lightning does not save
    ``trainer.should_stop``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stopped_before = False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._stopped_before = self.stopping_reason != EarlyStoppingReason.NOT_STOPPED

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stopped_before:
            trainer.should_stop = True
            self._stopped_before = False
