"""Fine-tuning: a property head on an encoder (DIM model folder, zoo name or random init), full or frozen.

Band gap: a metal classifier (BCE on gap == 0) plus an L1 gap regression on the non-metals; the served
output is never negative (method.md D.5, sitenet.model.SiteNetRegressor). Formation energy: L1.
Targets are standardised with the training labels' mean and std while training; at the end the scaling is
folded into the head's last Linear layer, so the saved model predicts eV or eV/atom directly.
Several targets make one multi-task model: the losses (each in standardised units) are summed, and
``val/mae`` is the mean over targets of MAE / std, so no target's units dominate the epoch chosen.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from sitenet.config import RegressorConfig
from sitenet.model import SiteNetEncoder, SiteNetRegressor, nonnegative
from training.accel import compiled, should_compile
from training.checkpoints import LastCheckpoint, ResumableEarlyStopping
from training.configs import FinetuneConfig
from training.data import Corpus, CrystalDataModule
from training.pretrain import INPUTS, make_trainer

log = logging.getLogger(__name__)


def load_encoder(init: str, config=None) -> SiteNetEncoder:
    """'random' (needs ``config``), or an encoder or regressor folder / zoo name / Hub id (a regressor gives its
    encoder: transfer from a model trained on another property)."""
    if init == "random":
        return SiteNetEncoder(config)
    from sitenet.embed import load_encoder as pretrained

    return pretrained(init).train()


def with_element_embedding(encoder: SiteNetEncoder, width: int, seed: int = 0) -> SiteNetEncoder:
    """``encoder`` plus a learned embedding of Z (``width`` wide) in its site input, computing the same function.

    A DIM encoder pretrained without one keeps every weight; the new input columns of the first site layer start
    at zero, so fine-tuning starts from exactly the pretrained encoder and learns how far to use element identity
    beyond the fixed element descriptors (composition decides much of formation energy and of metallicity)."""
    if encoder.config.element_embedding:
        raise ValueError(f"the encoder already has a {encoder.config.element_embedding}-wide element embedding")
    wider = SiteNetEncoder(type(encoder.config).model_validate({**encoder.config.model_dump(), "element_embedding": width}))
    state = encoder.state_dict()
    first = next(k for k in state if k.startswith("site_embed.") and k.endswith(".weight"))
    old = state[first]  # (D,F)
    grown = torch.zeros(old.shape[0], old.shape[1] + width, dtype=old.dtype)  # (D,F+Z)
    grown[:, : old.shape[1]] = old
    state[first] = grown
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        state["species_embedding.weight"] = torch.randn(100, width) * 0.1  # (100,Z)
    wider.load_state_dict(state, strict=True)
    return wider


def head_losses(raw: torch.Tensor, y: torch.Tensor, config: RegressorConfig,
                scaling: dict[str, tuple[float, float]], weights: dict[str, float] | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of raw head outputs (B,K) against labels (B,) or (B,T) in target units, with each target's value
    column standardised by ``scaling[target] = (mean, std)``: (summed loss, served prediction (B,) per target).

    Band gap with a metal classifier: BCE on gap == 0 plus L1 on the non-metals; other targets: L1. ``weights``
    scales each target's terms (default 1) in the sum."""
    y = y.reshape(len(raw), -1)  # (B,T)
    loss, served = raw.new_zeros(()), {}
    for j, target in enumerate(config.targets):
        value_col, logit_col = config.columns[target]
        mean, std = scaling[target]
        value = raw[:, value_col] * std + mean  # (B,) in target units
        if target == "band_gap":
            value = nonnegative(value)
        yt = y[:, j]  # (B,)
        w = (weights or {}).get(target, 1.0)
        if logit_col is None:
            loss = loss + w * (value - yt).abs().mean() / std
            served[target] = value
            continue
        metal = yt <= 0.0  # (B,)
        loss = loss + w * F.binary_cross_entropy_with_logits(raw[:, logit_col], metal.to(raw.dtype))
        if (~metal).any():  # gap regression on the non-metals only
            loss = loss + w * (value[~metal] - yt[~metal]).abs().mean() / std
        served[target] = value * (torch.sigmoid(raw[:, logit_col]) < 0.5).to(value.dtype)  # as forward()
    return loss, served


class FinetuneModule(L.LightningModule):
    """Trains a :class:`SiteNetRegressor` against standardised targets (mean, std of the training labels)."""

    def __init__(self, model: SiteNetRegressor, *, lr: float, weight_decay: float,
                 scaling: dict[str, tuple[float, float]], schedule: str = "constant", config: dict | None = None,
                 compile: bool | str = False, loss_weights: dict[str, float] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "compile"])
        self.compile_setting = compile
        self.model = model
        self.targets = model.config.targets

    def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(summed standardised loss, served prediction (B,) of each target in its units)."""
        raw, _ = self.model.raw(**{k: batch[k] for k in INPUTS})  # (B,K)
        return head_losses(raw, batch["target"], self.model.config, self.hparams.scaling,
                           self.hparams.get("loss_weights"))

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, served = self._losses(batch)
        y = batch["target"].reshape(len(batch["row"]), -1)  # (B,T)
        b = len(y)
        self.log(f"{stage}/loss", loss, batch_size=b, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        score = 0.0
        for j, target in enumerate(self.targets):
            mae = (served[target].detach() - y[:, j]).abs().mean()
            self.log(f"{stage}/mae_{target}", mae, batch_size=b, on_step=False, on_epoch=True, sync_dist=True)
            score = score + (mae if len(self.targets) == 1 else mae / self.hparams.scaling[target][1])
        self.log(f"{stage}/mae", score / len(self.targets), batch_size=b, prog_bar=stage == "val", on_step=False,
                 on_epoch=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_fit_start(self) -> None:
        if should_compile(self.compile_setting, self.trainer.estimated_stepping_batches):
            self.model.raw = compiled(self.model.raw)  # instance attribute: the state dict is unchanged

    def on_fit_end(self) -> None:
        self.model.__dict__.pop("raw", None)  # the saved / exported model is the plain module

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                      amsgrad=True, eps=1e-7)
        if self.hparams.schedule == "constant":
            return optimizer
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


class BestWeights(Callback):
    """Keeps an in-memory copy of the weights with the lowest ``monitor`` (no checkpoint files of its own; the
    copy travels in the run's checkpoints, so a resumed run still ends with the best epoch's weights)."""

    def __init__(self, monitor: str = "val/mae"):
        self.monitor, self.best, self.state, self.epoch = monitor, float("inf"), None, -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    def on_validation_epoch_end(self, trainer, module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking and float(value) < self.best:
            self.best, self.epoch = float(value), trainer.current_epoch
            self.state = copy.deepcopy(module.state_dict())

    def state_dict(self) -> dict:
        return {"best": self.best, "epoch": self.epoch, "state": self.state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.epoch, self.state = float(state_dict["best"]), int(state_dict["epoch"]), state_dict["state"]


def fold_standardisation(model: SiteNetRegressor, scaling: dict[str, tuple[float, float]]) -> None:
    """Make each target's value column of the head output the target in its units: w <- std w, b <- std b + mean."""
    last = model.head.net[-1]  # the head's final Linear (B,K)
    with torch.no_grad():
        for target, (mean, std) in scaling.items():
            col = model.config.columns[target][0]
            last.weight[col].mul_(std)
            last.bias[col].mul_(std).add_(mean)


def finetune(cfg: FinetuneConfig, *, corpus: Corpus | None = None, loggers: bool = True,
             checkpointing: bool | None = None, callbacks: Sequence[Callback] = ()) -> Path:
    """Train a head (and the encoder, in ``full`` mode) on the training labels, early-stopped on validation MAE.

    Args:
        cfg: the run.
        corpus: an already loaded corpus (the study reuses one); None loads ``cfg.data``.
        loggers: write CSV/TensorBoard logs under ``cfg.output``.
        checkpointing: write ``<output>/checkpoints/last.ckpt`` (every epoch and every
            ``trainer.checkpoint_every_n_steps`` steps) and, with ``cfg.resume``, continue exactly from it
            (mid-epoch too). None: as ``loggers`` (the study's many short fine-tunes write neither).
        callbacks: extra Trainer callbacks (monitoring, tests).

    Returns:
        The model folder ``cfg.output`` (SiteNetRegressor ``save_pretrained`` + ``training.json``).
    """
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    data = CrystalDataModule(cfg.data, target=cfg.targets, n_labels=cfg.n_labels, corpus=corpus)
    data.prepare_data()
    data.setup()
    encoder = load_encoder(cfg.init, cfg.encoder)
    if cfg.element_embedding and encoder.config.element_embedding != cfg.element_embedding:
        encoder = with_element_embedding(encoder, cfg.element_embedding, cfg.seed)
    reg = RegressorConfig(encoder=encoder.config, targets=cfg.targets, units=cfg.units, head_hidden=cfg.head_hidden,
                          metal_classifier=cfg.metal_classifier)
    model = SiteNetRegressor.from_encoder(encoder, reg)
    if cfg.mode == "frozen":
        model.encoder.requires_grad_(False)
    # DIM's noise heads take no part in the regression, and DDP rejects unused trainable parameters
    model.encoder.local_logvar.requires_grad_(False)
    model.encoder.embedding_logvar.requires_grad_(False)
    scaling = {}
    for target in cfg.targets:
        y = data.corpus.labels(target)[data.splits.train]
        rows = y[y > 0] if reg.gated(target) and (y > 0).any() else y  # the gap is regressed on non-metals only
        scaling[target] = (float(rows.mean()), float(max(rows.std(), 1e-3)))
    module = FinetuneModule(model, lr=cfg.lr, weight_decay=cfg.weight_decay, scaling=scaling, schedule=cfg.schedule,
                            config=cfg.model_dump(mode="json"), compile=cfg.trainer.compile,
                            loss_weights=dict(cfg.loss_weights))
    best = BestWeights("val/mae")
    validated = len(data.splits.val) > 0  # no validation rows (val_fraction 0): a fixed schedule, last epoch kept
    choosing = [best, ResumableEarlyStopping("val/mae", patience=cfg.patience, mode="min")] if validated else []
    checkpointing = loggers if checkpointing is None else checkpointing
    ckpt_dir = output / "checkpoints"
    saves = [LastCheckpoint(ckpt_dir, cfg.trainer.checkpoint_every_n_steps)] if checkpointing else []
    trainer_cfg = cfg.trainer if validated else cfg.trainer.model_copy(update={"limit_val_batches": 0})
    trainer = make_trainer(trainer_cfg, output, [*choosing, *saves, *callbacks], with_loggers=loggers,
                           checkpointing=checkpointing)  # False: no default ModelCheckpoint in the working dir
    last = ckpt_dir / "last.ckpt"
    resume = last if checkpointing and cfg.resume and last.exists() and not cfg.trainer.fast_dev_run else None
    if resume:
        log.info("resuming from %s", resume)
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    if best.state is not None:
        module.load_state_dict(best.state, strict=True)
    fold_standardisation(model, scaling)
    if trainer.is_global_zero:
        model.save_pretrained(output)
        (output / "training.json").write_text(json.dumps({
            "config": cfg.model_dump(mode="json"), "standardisation": {t: {"mean": m, "std": sd} for t, (m, sd) in scaling.items()},
            "best_epoch": best.epoch if validated else None, "best_val_mae": best.best if validated else None,
            "epochs_run": trainer.current_epoch,
            "splits": {k: int(len(getattr(data.splits, k))) for k in ("train", "val", "test")}}, indent=2))
    return output
