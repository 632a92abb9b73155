"""Model configurations (pydantic, frozen, unknown keys rejected). No torch here.

``SiteNetConfig`` describes an encoder and carries the ``FeatureSpec`` it was trained with;
``RegressorConfig`` adds one property head. Presets: ``dim_config()`` (method.md C.2/C.4, the zoo's encoder)
and ``paper_config()`` (Site-Net as published, method.md B.1).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from sitenet.features import FeatureSpec

#: A property a model predicts: any snake_case name (it is the model's output name in ONNX and in JSON). The
#: zoo's are ``TARGETS``; a user's own fine-tuned model names its own (e.g. ``heat_of_formation``).
Target = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
#: The zoo's properties, in the order results list them.
TARGETS: tuple[str, ...] = ("band_gap", "formation_energy")
#: Units of the zoo's properties; any other target's model config states its own.
UNITS: dict[str, str] = {"band_gap": "eV", "formation_energy": "eV/atom"}
#: Output names that are not properties (the metal probability of a gated band gap, the embedding, the
#: ``<target>_std`` uncertainties).
RESERVED = re.compile(r"^(embedding|metal_probability|encoder|.*_std)$")
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
    """Raises ValueError unless ``targets`` is one or more distinct properties with names of their own."""
    if not targets or len(set(targets)) != len(targets):
        raise ValueError(f"targets must be one or more distinct properties, got {targets}")
    reserved = [t for t in targets if RESERVED.match(t)]
    if reserved:
        raise ValueError(f"target name(s) {reserved} are reserved for other outputs (embedding, metal_probability, "
                         "encoder, <target>_std); name the property otherwise")


def with_units(units: dict[str, str], info: ValidationInfo) -> dict[str, str]:
    """``units`` completed for the zoo's targets (configs written before units existed); a field validator of
    ``units`` on a model whose ``targets`` field comes first."""
    targets = info.data.get("targets") or ()
    # a zoo target's own unit left over from a config copied with other targets is dropped, not an error
    kept = {t: u for t, u in units.items() if t in targets or UNITS.get(t) != u}
    return {**{t: UNITS[t] for t in targets if t in UNITS}, **kept}


def check_units(targets: tuple[str, ...], units: dict[str, str]) -> None:
    """Raises ValueError unless every target has a unit and no unit names another property."""
    missing = [t for t in targets if not units.get(t)]
    if missing:
        raise ValueError(f"give the unit of {missing} (units: {{{missing[0]}: 'eV/atom'}}, or '1' if dimensionless)")
    extra = sorted(set(units) - set(targets))
    if extra:
        raise ValueError(f"units name {extra}, which are not among targets {list(targets)}")


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
    units: dict[str, str] = Field(default_factory=dict, validate_default=True, description="unit of each target (the zoo's targets: "
                                  "filled in); the service and the cards show them")
    head_hidden: tuple[int, ...] = Field((64,), description="hidden widths of the head MLP")
    #: Band gap only: predict a metal probability too and output exactly 0 eV where it is >= 0.5
    #: (the zero-inflated target: ~43% of MP crystals are metals).
    metal_classifier: bool = True

    _single_target = model_validator(mode="before")(classmethod(lambda cls, data: single_target(data)))
    _with_units = field_validator("units")(classmethod(lambda cls, units, info: with_units(units, info)))

    @model_validator(mode="after")
    def _check(self) -> "RegressorConfig":
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"config format_version {self.format_version} is not supported (expected {FORMAT_VERSION})")
        check_targets(self.targets)
        check_units(self.targets, self.units)
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
        return (*(name for target in self.targets for name in self.outputs_of(target)), "embedding")

    def outputs_of(self, target: str) -> tuple[str, ...]:
        """The output names that serve ``target``: its value, and the metal probability of a gated band gap."""
        return (target, "metal_probability") if self.gated(target) else (target,)


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
