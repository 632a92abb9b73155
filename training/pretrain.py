"""Deep InfoMax pretraining of a Site-Net encoder: a thin LightningModule and ``pretrain(cfg) -> folder``.

The kept checkpoint is the one with the lowest validation DIM loss (or the last epoch); labels never take
part (pitfall F.14). The per-dimension variance of the validation embeddings is logged every epoch so a
collapsed representation is visible (``val/embedding_var_min``, ``val/collapsed_dims``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from sitenet.batch import INPUT_NAMES
from sitenet.model import SiteNetEncoder
from training.accel import compiled, resolve_precision, should_compile
from training.checkpoints import EpochMetricsCarry, LastCheckpoint, RngStateCheckpoint, TrainLoaderPosition
from training.configs import PretrainConfig, TrainerConfig
from training.data import CrystalDataModule
from training.dim import DeepInfoMax
from training.probe import EmbeddingProbe

log = logging.getLogger(__name__)
INPUTS = INPUT_NAMES  # the model's inputs, by name, in every batch
COLLAPSED_VARIANCE = 1e-3  # a dimension whose validation variance is below this carries ~no information


class PretrainModule(L.LightningModule):
    """Optimises a :class:`DeepInfoMax`; validation is noise-free with a seeded permutation (comparable epochs)."""

    def __init__(self, dim: DeepInfoMax, *, lr: float, weight_decay: float, config: dict | None = None,
                 history_path: str | None = None, compile: bool | str = False):
        super().__init__()
        self.save_hyperparameters(ignore=["dim", "history_path", "compile"])
        self.compile_setting = compile
        self.dim = dim
        self.history_path = Path(history_path) if history_path else None
        self.history: list[dict] = []
        self._val_embeddings: list[torch.Tensor] = []
        self._variance: list[float] | None = None
        self._epoch_start = time.monotonic()

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        inputs = {k: batch[k] for k in INPUTS}
        if stage == "train":
            out = self.dim(**inputs)
        else:
            gen = torch.Generator(device=batch["site"].device).manual_seed(int(batch["row"][0]))
            out = self.dim(**inputs, noise=False, generator=gen)
            self._val_embeddings.append(out.embedding)
        b = batch["site"].shape[0]
        on_step = stage == "train"
        self.log(f"{stage}/loss", out.loss, batch_size=b, prog_bar=True, on_step=on_step, on_epoch=True, sync_dist=not on_step)
        self.log(f"{stage}/dim", out.dim_local + out.dim_global, batch_size=b, on_step=False, on_epoch=True, sync_dist=True)
        for name in ("dim_local", "dim_global", "kl_local", "kl_global"):
            self.log(f"{stage}/{name}", getattr(out, name), batch_size=b, on_step=False, on_epoch=True, sync_dist=True)
        return out.loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.monotonic()

    def on_train_epoch_end(self) -> None:
        # runs after this epoch's validation, so callback_metrics hold both stages
        self.log("train/epoch_seconds", time.monotonic() - self._epoch_start, sync_dist=True)
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()
                   if k.startswith(("val/", "train/")) and not k.endswith("_step")}
        self.history = [h for h in self.history if h["epoch"] < self.current_epoch]
        self.history.append({"epoch": self.current_epoch, **metrics, "embedding_variance": self._variance})
        if self.history_path is not None and self.trainer.is_global_zero:  # written every epoch: survives a kill
            self.history_path.write_text(json.dumps(self.history, indent=2))

    def on_fit_start(self) -> None:
        if should_compile(self.compile_setting, self.trainer.estimated_stepping_batches):
            self.dim.forward = compiled(self.dim.forward)  # instance attribute: the state dict is unchanged
        if self.history_path is not None and self.history_path.exists():  # a resumed run keeps earlier epochs
            self.history = json.loads(self.history_path.read_text())

    def on_fit_end(self) -> None:
        self.dim.__dict__.pop("forward", None)  # the saved encoder is the plain module

    def on_validation_epoch_end(self) -> None:
        if not self._val_embeddings:
            return
        local = torch.cat(self._val_embeddings)  # (m,E) this rank's rows
        self._val_embeddings.clear()
        if self.trainer.world_size > 1:  # ranks may hold different numbers of rows: pad to the longest, gather, trim
            counts = self.all_gather(torch.tensor(local.shape[0], device=local.device)).reshape(-1)  # (W,)
            padded = local.new_zeros(int(counts.max()), local.shape[1])
            padded[: local.shape[0]] = local
            gathered = self.all_gather(padded)  # (W,max m,E)
            emb = torch.cat([gathered[r, : int(c)] for r, c in enumerate(counts.tolist())])  # (M,E)
        else:
            emb = local
        var = emb.var(0, unbiased=False)  # (E,)
        self.log("val/embedding_var_mean", var.mean())
        self.log("val/embedding_var_min", var.min())
        self.log("val/collapsed_dims", (var < COLLAPSED_VARIANCE).sum().to(torch.float32))
        self._variance = var.tolist()

    def configure_optimizers(self):
        # one AdamW over both levels == two optimisers: the levels share no parameters and l is detached
        return torch.optim.AdamW(self.dim.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                 amsgrad=True, eps=1e-7)


def make_trainer(t: TrainerConfig, output: Path, callbacks: list[Callback], *, with_loggers: bool = True,
                 checkpointing: bool = True) -> L.Trainer:
    """The one Trainer factory: DDP, devices and nodes come from the config. ``checkpointing=False`` stops
    Lightning from adding its default ModelCheckpoint (it writes into the working directory). Checkpoints
    always carry the RNG states, the train loader's position and the running epoch metrics
    (:mod:`training.checkpoints`), for an exact resume."""
    if t.threads:
        torch.set_num_threads(t.threads)
    callbacks = [RngStateCheckpoint(), TrainLoaderPosition(), EpochMetricsCarry(), *callbacks]
    loggers = [CSVLogger(output, name="logs"), TensorBoardLogger(output, name="tb")] if with_loggers else False
    if t.progress_bar:
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=10)]
    return L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        num_nodes=t.num_nodes, precision=resolve_precision(t.precision, t.accelerator), logger=loggers, callbacks=callbacks,
        log_every_n_steps=t.log_every_n_steps, limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches, fast_dev_run=t.fast_dev_run, enable_progress_bar=t.progress_bar,
        use_distributed_sampler=False,  # BucketBatchSampler shards batches by rank itself
        num_sanity_val_steps=0, enable_checkpointing=checkpointing, default_root_dir=output,
    )


def load_weights(module: L.LightningModule, ckpt: str | Path) -> None:
    """Load a Lightning checkpoint's weights strictly, without unpickling arbitrary objects."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state, strict=True)


def pretrain(cfg: PretrainConfig, *, callbacks: Sequence[Callback] = ()) -> Path:
    """Train an encoder with Deep InfoMax and save it.

    Writes ``<output>/encoder/`` (``save_pretrained``: config.json + model.safetensors), ``<output>/config.json``
    (the resolved PretrainConfig), ``<output>/history.json`` (per-epoch losses and embedding variances),
    ``<output>/checkpoints/`` and CSV/TensorBoard logs. ``checkpoints/last.ckpt`` is written at every epoch end
    and every ``trainer.checkpoint_every_n_steps`` steps; with ``cfg.resume`` a rerun continues from it exactly
    (mid-epoch too: data position, optimiser, RNG states).

    Args:
        cfg: the run.
        callbacks: extra Trainer callbacks (monitoring, tests).

    Returns:
        The encoder folder.
    """
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    data = CrystalDataModule(cfg.data)
    data.prepare_data()
    data.setup()
    if data.corpus.store.spec != cfg.encoder.features:
        raise ValueError(f"the feature cache spec {data.corpus.store.spec} differs from the encoder's {cfg.encoder.features}")
    dim = DeepInfoMax(SiteNetEncoder(cfg.encoder), negatives=cfg.negatives, critic_dim=cfg.critic_dim,
                      critic_hidden=cfg.critic_hidden, local_weight=cfg.local_weight,
                      global_weight=cfg.global_weight, kl_weight=cfg.kl_weight)
    history_path = output / "epochs.json"
    if not cfg.resume and history_path.exists():
        history_path.unlink()
    module = PretrainModule(dim, lr=cfg.lr, weight_decay=cfg.weight_decay, config=cfg.model_dump(mode="json"),
                            history_path=str(history_path), compile=cfg.trainer.compile)
    ckpt_dir = output / "checkpoints"
    if cfg.select == "val_loss":
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch}", monitor="val/dim", mode="min")
    else:
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="epoch-{epoch}")
    last_ckpt = LastCheckpoint(ckpt_dir, cfg.trainer.checkpoint_every_n_steps)  # last.ckpt: steps and epoch ends
    probe = [EmbeddingProbe(data.corpus, data.splits.train, data.splits.val, cfg.data, labels=cfg.probe_labels,
                            seed=cfg.seed)] if cfg.probe_labels else []
    trainer = make_trainer(cfg.trainer, output, [checkpoint, last_ckpt, *probe, *callbacks])
    last = ckpt_dir / "last.ckpt"
    resume = last if cfg.resume and last.exists() and not cfg.trainer.fast_dev_run else None
    if resume:
        log.info("resuming from %s", resume)
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    if cfg.select == "val_loss" and checkpoint.best_model_path:
        load_weights(module, checkpoint.best_model_path)
    folder = output / "encoder"
    if trainer.is_global_zero:
        dim.encoder.save_pretrained(folder)
        (output / "config.json").write_text(cfg.model_dump_json(indent=2))
        (output / "history.json").write_text(json.dumps({
            "best_checkpoint": checkpoint.best_model_path or None,
            "splits": {k: int(len(getattr(data.splits, k))) for k in ("train", "val", "test")},
            "epochs": module.history}, indent=2))
        plot_history(module.history, output / "history.png")
    return folder


def plot_history(epochs: list[dict], path: str | Path) -> Path:
    """DIM losses per epoch (train and validation, local and global level, chance line) and, when logged, the
    frozen-embedding probes, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = sorted({k for e in epochs for k in e if k.startswith("val/probe_")})
    fig, axes = plt.subplots(1, 3 if probes else 2, figsize=(15 if probes else 10, 3.8))
    x = [e["epoch"] for e in epochs]
    for ax, stage in zip(axes[:2], ("train", "val")):
        for name in ("dim_local", "dim_global"):
            y = [e.get(f"{stage}/{name}", float("nan")) for e in epochs]
            ax.plot(x, y, marker="o", ms=3, label=name.replace("_", " "))
        ax.axhline(2 * math.log(2), color="grey", ls="--", lw=1, label="chance (2 ln 2)")  # a blind critic's JSD loss
        ax.set(title=f"{stage} DIM loss per level", xlabel="epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("JSD loss")
    axes[1].legend()
    for key in probes:  # insight only: the checkpoint is chosen by validation DIM loss
        axes[2].plot(x, [e.get(key, float("nan")) for e in epochs], marker="o", ms=3,
                     label=key.removeprefix("val/probe_").removesuffix("_mae"))
    if probes:
        axes[2].set(title="frozen-embedding probe (RF), validation MAE", xlabel="epoch")
        axes[2].grid(alpha=0.3)
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
