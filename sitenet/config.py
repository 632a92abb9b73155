"""Model configurations (pydantic, frozen, unknown keys rejected). No torch here.

``SiteNetConfig`` describes an encoder and carries the ``FeatureSpec`` it was trained with;
``RegressorConfig`` adds one property head. Presets: ``dim_config()`` (method.md C.2/C.4, the zoo's encoder)
and ``paper_config()`` (Site-Net as published, method.md B.1).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sitenet.features import FeatureSpec

Target = Literal["band_gap", "formation_energy"]
TARGETS: tuple[str, ...] = ("band_gap", "formation_energy")
UNITS: dict[str, str] = {"band_gap": "eV", "formation_energy": "eV/atom"}
FORMAT_VERSION = 1
#: Activations an encoder may use. Site-Net as published uses Mish everywhere; SiLU (x * sigmoid(x)) has the
#: same shape and costs one exp instead of Mish's exp + log1p + tanh, which is most of a CPU training step
#: (benchmarks/results/train_step.md). Configs without the key are Mish (every model before it existed).
Activation = Literal["mish", "silu"]


def single_target(data: object) -> object:
    """Config input with the one-target spelling ``target: x`` (older configs, short recipes) as ``targets: [x]``."""
    if isinstance(data, dict) and "target" in data:
        if "targets" in data:
            raise ValueError("give either target or targets, not both")
        data = {key: value for key, value in data.items() if key != "target"} | {"targets": (data["target"],)}
    return data


def check_targets(targets: tuple[str, ...]) -> None:
    """Raises ValueError unless ``targets`` is one or more distinct properties."""
    if not targets or len(set(targets)) != len(targets):
        raise ValueError(f"targets must be one or more distinct properties, got {targets}")


class SiteNetConfig(BaseModel):
    """A Site-Net encoder: attention blocks over (P query sites x N supercell sites), a per-site local vector,
    then a pooled crystal embedding. Defaults are the DIM encoder of method.md C.2/C.4."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_type: Literal["sitenet"] = "sitenet"
    format_version: int = FORMAT_VERSION
    features: FeatureSpec = FeatureSpec()
    element_embedding: int = Field(0, ge=0, description="width of a learned embedding of Z (0: none)")
    activation: Activation = Field("mish", description="hidden-layer activation of every MLP (and of DIM's critics)")
    heads: int = Field(1, ge=1, description="H, attention heads (they share one value vector, as in Site-Net)")
    head_width: int = Field(64, ge=1, description="value width per head; the site width D is heads * head_width")
    pair_width: int = Field(64, ge=1, description="pair (interaction) width")
    blocks: int = Field(1, ge=1, description="attention blocks")
    attention_hidden: tuple[int, ...] = Field((64,), description="hidden widths of the attention-logit MLP")
    value_hidden: tuple[int, ...] = Field((64,), description="hidden widths of the value MLP before its last layer")
    local_dim: int = Field(32, ge=1, description="width of the per-site local vector l_i")
    pre_pool: tuple[int, ...] = Field((64, 128), description="per-site MLP before mean pooling")
    post_pool: tuple[int, ...] = Field((64,), description="MLP after pooling")
    embedding_dim: int = Field(64, ge=1, description="E, the crystal embedding width")

    @model_validator(mode="after")
    def _check(self) -> "SiteNetConfig":
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"config format_version {self.format_version} is not supported (expected {FORMAT_VERSION})")
        if not self.pre_pool:
            raise ValueError("pre_pool needs at least one layer")
        return self

    @property
    def site_width(self) -> int:
        """D, the site width."""
        return self.heads * self.head_width


class RegressorConfig(BaseModel):
    """An encoder plus one property head with a column per target (several targets: one multi-task model,
    one encoder pass for all of them). Configs written before multi-task models name one ``target``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_type: Literal["sitenet-regressor"] = "sitenet-regressor"
    format_version: int = FORMAT_VERSION
    encoder: SiteNetConfig = SiteNetConfig()
    targets: tuple[Target, ...] = Field(("formation_energy",), description="predicted properties, in head order")
    head_hidden: tuple[int, ...] = Field((64,), description="hidden widths of the head MLP")
    #: Band gap only: predict a metal probability too and output exactly 0 eV where it is >= 0.5
    #: (the zero-inflated target: ~43% of MP crystals are metals).
    metal_classifier: bool = True

    _single_target = model_validator(mode="before")(classmethod(lambda cls, data: single_target(data)))

    @model_validator(mode="after")
    def _check(self) -> "RegressorConfig":
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"config format_version {self.format_version} is not supported (expected {FORMAT_VERSION})")
        check_targets(self.targets)
        return self

    def gated(self, target: str) -> bool:
        """Whether ``target`` has a metal classifier (band gap exactly 0 where the metal probability >= 0.5)."""
        return target == "band_gap" and self.metal_classifier

    @property
    def columns(self) -> dict[str, tuple[int, int | None]]:
        """target -> (head column of its value, head column of its metal logit or None)."""
        out, k = {}, 0
        for target in self.targets:
            out[target] = (k, k + 1 if self.gated(target) else None)
            k += 2 if self.gated(target) else 1
        return out

    @property
    def head_width(self) -> int:
        """K, the head's raw output width."""
        return sum(2 if self.gated(t) else 1 for t in self.targets)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Output names of the model, in order (also the ONNX output names)."""
        names: list[str] = []
        for target in self.targets:
            names += [target, "metal_probability"] if self.gated(target) else [target]
        return (*names, "embedding")


def dim_config(**overrides: object) -> SiteNetConfig:
    """The DIM encoder (method.md C.2/C.4): 1 block, 1 head of 64, l in R^32, g in R^64."""
    return SiteNetConfig(**overrides)  # the defaults are this preset


def paper_config(**overrides: object) -> SiteNetConfig:
    """Site-Net as published (method.md B.1): 2 blocks, 3 heads of 30, pair width 48, pre-pool [94],
    post-pool [200, 200] then a 200-d linear embedding (the paper's third 200-wide post-pool layer)."""
    values: dict[str, object] = dict(
        element_embedding=92, heads=3, head_width=30, pair_width=48, blocks=2, attention_hidden=(225,),
        value_hidden=(), local_dim=180, pre_pool=(94,), post_pool=(200, 200), embedding_dim=200,
    )
    values.update(overrides)
    return SiteNetConfig(**values)
