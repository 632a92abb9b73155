"""Run configurations (pydantic, frozen, unknown keys rejected) and ``load_recipe`` for the YAML recipes.

``PretrainConfig`` (DIM pretraining), ``FinetuneConfig`` (a property head on an encoder) and ``StudyConfig``
(the label-masking study). Defaults run on 2 CPU cores; recipes in ``training/recipes/`` scale them up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sitenet.config import SiteNetConfig, Target, check_targets, check_units, single_target, with_units

Negatives = Literal["standard", "domain-aware"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Frozen):
    """Which crystals, how they are split and batched."""

    path: str | None = Field(None, description="CSV(.gz) of the data set; None: sitenet.dataset.default_data_path()")
    columns: dict[str, str] = Field(default_factory=dict, description="target name -> CSV column (your own data); "
                                    "empty: the mp2018 columns")
    id_column: str | None = Field(None, description="id column; None: material_id if present, else id")
    cif_column: str = Field("cif", description="column of CIF texts")
    cache_root: str = Field("cache/features", description="feature cache root (sitenet.cache)")
    test_ids: str | None = Field(None, description="held-out id list; None: the committed data/splits/mp2018-test.txt")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share of the training rows held for validation; 0: "
                                "none (fine-tuning then trains on every row and keeps the last epoch)")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="share of the rows held out for testing, seeded, for "
                                 "a data set with no committed test list (your own CSV); 0: the test_ids list")
    max_primitive: int | None = Field(50, ge=1, description="train only on crystals with P <= this (method's -u 50)")
    limit: int | None = Field(None, ge=2, description="use at most this many training rows (seeded subset)")
    batch_size: int = Field(64, ge=1, description="most crystals per batch")
    max_pairs: int = Field(150_000, ge=1, description="budget on padded B*P_max*N_max per batch (memory)")
    seed: int = 0
    workers: int = Field(2, ge=1, description="featurisation processes for crystals missing from the cache")


class TrainerConfig(_Frozen):
    """Lightning Trainer settings; DDP is a matter of accelerator/devices/strategy/num_nodes."""

    max_epochs: int = Field(3, ge=1)
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: str = Field("auto", description="Lightning precision; 'auto': bf16 autocast where the hardware has "
                           "native bf16 (CPU AMX/AVX512-BF16, most GPUs), else 32-true (training/accel.py)")
    compile: bool | Literal["auto"] = Field("auto", description="torch.compile the training step; 'auto': when a C++ "
                                           "compiler is present and the run has >= 1,000 optimiser steps")
    log_every_n_steps: int = Field(20, ge=1)
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    fast_dev_run: bool = False
    progress_bar: bool = True
    threads: int | None = Field(2, ge=1, description="torch intra-op threads (None: torch's default)")
    checkpoint_every_n_steps: int | None = Field(200, ge=0, description="also write <output>/checkpoints/last.ckpt "
                                                 "every this many training steps (mid-epoch resume); 0/None: "
                                                 "only at epoch ends")


class PretrainConfig(_Frozen):
    """Deep InfoMax pretraining of a Site-Net encoder (method.md C, D.2; pitfalls F.10-F.14 fixed)."""

    encoder: SiteNetConfig = Field(SiteNetConfig(activation="silu"), description="the encoder to train; SiLU: "
                                   "benchmarks/results/train_step.md")
    data: DataConfig = DataConfig()
    trainer: TrainerConfig = TrainerConfig()
    negatives: Negatives = Field("domain-aware", description="'standard': other crystals only; 'domain-aware': "
                                 "plus the engineered corruptions of method.md C.3/C.4")
    local_weight: float = Field(1.0, ge=0)
    global_weight: float = Field(1.0, ge=0)
    kl_weight: float = Field(0.1, ge=0, description="weight of the standard-form KL, both levels")
    critic_dim: int = Field(128, ge=1, description="dot-product space of both critics")
    critic_hidden: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, description="AdamW lr (method: 1e-4 for long GPU runs; 1e-3 for CPU budgets)")
    weight_decay: float = Field(1e-4, ge=0)
    select: Literal["val_loss", "last"] = Field("val_loss", description="checkpoint kept: lowest validation DIM "
                                               "loss, or the last epoch; never chosen by labels")
    probe_labels: int = Field(1000, ge=0, description="after each validation, log a random forest's validation MAE "
                              "on the frozen embeddings of this many labelled training crystals (insight only, "
                              "never used for selection; 0: off)")
    output: str = "runs/dim-mp2018"
    resume: bool = Field(True, description="resume from <output>/checkpoints/last.ckpt if it exists")
    seed: int = 0


class FinetuneConfig(_Frozen):
    """A property head trained on an encoder (method.md D.5); several targets train one multi-task model."""

    targets: tuple[Target, ...] = Field(("band_gap",), description="properties to predict (``target: x`` is "
                                        "accepted for one); several: one encoder, one head, summed losses")
    init: str = Field("random", description="'random', a DIM model folder (pretrain output) or a zoo name")
    encoder: SiteNetConfig = Field(SiteNetConfig(activation="silu"), description="used only with init='random'")
    mode: Literal["full", "frozen"] = "full"
    element_embedding: int = Field(0, ge=0, description="add a learned Z embedding this wide to an encoder that "
                                   "has none (a DIM encoder), starting at zero weight so the pretrained function is kept")
    head_hidden: tuple[int, ...] = (64,)
    metal_classifier: bool = True
    units: dict[str, str] = Field(default_factory=dict, validate_default=True, description="unit of each target (filled in for the "
                                  "zoo's band_gap and formation_energy), e.g. {heat_of_formation: eV/atom}")
    loss_weights: dict[str, float] = Field(default_factory=dict, description="multi-task: target -> weight of its "
                                           "loss terms in the sum (default 1 each)")
    data: DataConfig = DataConfig()
    trainer: TrainerConfig = TrainerConfig(max_epochs=20)
    n_labels: int | None = Field(None, ge=2, description="train on a seeded subset of this many labelled rows")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(5, ge=1, description="early stopping on val/mae, in epochs")
    schedule: Literal["constant", "cosine"] = Field("constant", description="learning rate over max_epochs: "
                                                    "constant, or cosine decay to zero (longer runs)")
    output: str = "runs/finetune"
    resume: bool = Field(True, description="resume from <output>/checkpoints/last.ckpt if it exists")
    seed: int = 0

    _single_target = model_validator(mode="before")(classmethod(lambda cls, data: single_target(data)))
    _with_units = field_validator("units")(classmethod(lambda cls, units, info: with_units(units, info)))

    @model_validator(mode="after")
    def _check(self) -> "FinetuneConfig":
        check_targets(self.targets)
        check_units(self.targets, self.units)
        if self.data.columns and set(self.targets) - set(self.data.columns):
            raise ValueError(f"data.columns maps {sorted(self.data.columns)} but targets are {list(self.targets)}: "
                             "name the CSV column of every target")
        unknown = set(self.loss_weights) - set(self.targets)
        if unknown:
            raise ValueError(f"loss_weights names {sorted(unknown)}, which are not among targets {list(self.targets)}")
        if any(w <= 0 for w in self.loss_weights.values()):
            raise ValueError(f"loss_weights must be positive, got {self.loss_weights}")
        return self


class StudyConfig(_Frozen):
    """The label-masking study (method.md D.3-D.5)."""

    title: str = Field("mp2018", description="the data set's name in the plot")
    data: DataConfig = DataConfig(max_primitive=None)
    targets: tuple[Target, ...] = ("band_gap", "formation_energy")
    budgets: tuple[int, ...] = (50, 100, 250, 500, 1000)
    seeds_small: int = Field(5, ge=1, description="seeds for N <= 250")
    seeds_large: int = Field(5, ge=1, description="seeds for N > 250")
    pretrain: PretrainConfig = PretrainConfig(trainer=TrainerConfig(max_epochs=2))
    encoder_dim: str | None = Field(None, description="domain-aware DIM encoder folder; None: pretrain one")
    encoder_standard: str | None = Field(None, description="standard-DIM encoder folder; None: pretrain one")
    matched_ablation: bool = Field(False, description="with encoder_dim given, also pretrain a domain-aware "
                                   "encoder with exactly the standard one's settings ('dim-matched')")
    pretrain_variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="more frozen-embedding ablations: name -> overrides of ``pretrain`` "
        "(e.g. {'dim-lr1e-4': {'lr': 1.0e-4}}); each is pretrained with the dim-matched settings plus its "
        "overrides, on the same crystals")
    encoders: dict[str, str] = Field(default_factory=dict, description="more frozen encoders: name -> encoder or "
                                     "regressor folder / zoo name (e.g. an earlier DIM checkpoint)")
    embedding_files: dict[str, str] = Field(default_factory=dict, description="precomputed embeddings: name -> .npz "
                                            "with 'ids' and 'x' (e.g. CHGNet's, benchmarks/peers/chgnet_embeddings.py)")
    mlp_max_iter: int = Field(2000, ge=10, description="MLPRegressor iterations")
    finetune: FinetuneConfig = Field(
        FinetuneConfig(trainer=TrainerConfig(max_epochs=150, progress_bar=False), schedule="cosine"),
        description="the fine-tuning protocol, identical for every init: trains on all N labels (no validation "
        "carve, no early stopping) for trainer.max_epochs with this schedule, and keeps the last epoch")
    min_steps: int = Field(600, ge=0, description="fine-tuning runs at least this many optimiser steps: small N "
                           "gets more epochs than finetune.trainer.max_epochs (one batch per epoch at N <= batch size)")
    transfer: bool = Field(True, description="run the fine-tuning comparison (the expensive part)")
    transfer_from: dict[str, str | dict[str, str]] = Field(
        default_factory=dict, description="fine-tuning inits beside the DIM encoder and random init: name -> encoder "
        "or regressor folder / zoo name, or {target: init} (e.g. the zoo model of the other target)")
    transfer_budgets: tuple[int, ...] | None = Field(None, description="budgets for transfer; None: all")
    transfer_seeds: int | None = Field(None, ge=1, description="cap on transfer seeds per budget")
    transfer_from_budgets: dict[str, tuple[int, ...]] = Field(
        default_factory=dict, description="budgets of single transfer_from inits: name -> budgets (e.g. an "
        "ablation fine-tuned only at small N); inits not named here use transfer_budgets")
    test_limit: int | None = Field(None, ge=1, description="score on at most this many test rows (seeded)")
    output: str = "benchmarks/results/label_masking"
    work: str = Field("runs/study", description="folder for the study's encoders and fine-tunes")
    resume: bool = Field(True, description="keep the runs already in <output>.json when it was written with the "
                         "same settings, and run only the missing ones")

    @model_validator(mode="after")
    def _check(self) -> "StudyConfig":
        if not self.budgets or min(self.budgets) < 2:
            raise ValueError(f"budgets must be >= 2, got {self.budgets}")
        named = [*self.pretrain_variants, *self.encoders, *self.embedding_files]
        taken = {"dim", "dim-standard", "dim-matched", "random", "composition", "dim+composition"} & set(named)
        if taken or len(set(named)) < len(named):
            raise ValueError(f"pretrain_variants, encoders and embedding_files need distinct names, none of "
                             f"dim, dim-standard, dim-matched, random, composition, dim+composition: got {named}")
        if {"dim", "random"} & set(self.transfer_from):
            raise ValueError("transfer_from may not name 'dim' or 'random': they always run")
        if set(self.transfer_from_budgets) - set(self.transfer_from):
            raise ValueError(f"transfer_from_budgets names inits not in transfer_from: "
                             f"{sorted(set(self.transfer_from_budgets) - set(self.transfer_from))}")
        for name, init in self.transfer_from.items():
            if isinstance(init, dict) and set(self.targets) - set(init):
                raise ValueError(f"transfer_from[{name!r}] names no init for {sorted(set(self.targets) - set(init))}")
        for overrides in self.pretrain_variants.values():  # fail early on a typo, sections included
            PretrainConfig.model_validate(merged(self.pretrain.model_dump(), overrides))
        return self

    def seeds(self, n: int) -> int:
        """How many seeds budget ``n`` gets."""
        return self.seeds_small if n <= 250 else self.seeds_large


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied section by section (``{"trainer": {"max_epochs": 6}}`` keeps the rest
    of ``trainer``)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


ConfigT = TypeVar("ConfigT", PretrainConfig, FinetuneConfig, StudyConfig)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {key!r} is not a section")
        tree = node
    tree[keys[-1]] = value


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *,
                kind: type[ConfigT]) -> ConfigT:
    """Read a YAML recipe, apply ``key=value`` overrides (dotted keys for sections), validate.

    Args:
        path: YAML file, or None for the config's defaults.
        overrides: e.g. ``["trainer.max_epochs=3", "negatives=standard"]``; values are parsed as YAML.
        kind: the config class.

    Raises:
        ValueError: a malformed override; pydantic.ValidationError: an unknown key or a wrong type.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        tree = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: a recipe must be a mapping")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(raw))
    return kind.model_validate(tree)
