"""Request and response bodies of the SiteNet service (pydantic; descriptions and units show in OpenAPI).

Units: band gap eV, formation energy eV/atom, embedding dimensionless (E = 64 floats from the DIM encoder).
Every error, whole-request or per item, has one shape: :class:`ErrorOut` ``{"code", "message", "detail"}``.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from bentoml.validators import TensorSchema
from pydantic import BaseModel, ConfigDict, Field

from sitenet.config import Target  # a property name: the zoo's, or any a deployment's own models predict

#: Most nearest crystals one prediction may ask for.
MAX_NEIGHBOURS = 20


def _null_first(schema: dict[str, Any]) -> None:
    """Put ``null`` first among a nullable field's ``anyOf``. BentoML's client decodes a response by the
    *first* member of each ``anyOf`` (bentoml 1.4, ``_bentoml_sdk/method.py::_flatten_field``): with the
    array first, it iterates over a null embedding and raises ``TypeError: 'NoneType' object is not
    iterable``; with null first it passes the value through as the JSON has it."""
    schema.get("anyOf", []).sort(key=lambda member: member.get("type") != "null")


#: 64 floats of the DIM embedding, or null when not asked for (see ``_null_first``).
OptionalFloats = Annotated[list[float] | None, Field(json_schema_extra=_null_first)]


class PredictOptions(BaseModel):
    """What to predict."""

    model_config = ConfigDict(extra="forbid")

    targets: list[Target] | None = Field(None, description="properties to predict (default: every one the "
                                         "service serves; /info lists them with their units): the zoo's band_gap "
                                         "(eV) and formation_energy (eV/atom), and those of any other models served")
    return_embedding: bool = Field(False, description="also return the 64-d DIM crystal embedding")
    uncertainty: bool = Field(False, description="also return each target's calibrated standard deviation "
                              "(<target>_std; the 95% interval is value +- 1.96 std)")
    neighbours: int = Field(0, ge=0, le=MAX_NEIGHBOURS, description="also return this many nearest training "
                            "crystals (id, formula, embedding distance, labels) and the in-domain score")


class NeighbourOut(BaseModel):
    """A training crystal near the query in the property model's embedding space."""

    id: str = Field(description="Materials Project id")
    formula: str = Field(description="reduced formula")
    distance: float = Field(description="Euclidean distance between the embeddings")
    labels: dict[str, float | None] = Field(description="its DFT labels, by target, in the targets' units")


#: Nearest training crystals, or null when not asked for (see ``_null_first``).
OptionalNeighbours = Annotated[list[NeighbourOut] | None, Field(json_schema_extra=_null_first)]


class PredictionOut(BaseModel):
    """Predicted properties of one crystal; a target that was not asked for is null."""

    formula: str = Field(description="reduced formula, e.g. 'NaCl'")
    n_sites: int = Field(description="sites in the uploaded cell")
    band_gap: float | None = Field(None, description="band gap, eV (exactly 0 when metal_probability >= 0.5)")
    metal_probability: float | None = Field(None, description="probability that the crystal is a metal (gap 0)")
    formation_energy: float | None = Field(None, description="formation energy, eV/atom")
    band_gap_std: float | None = Field(None, description="band gap standard deviation, eV (options.uncertainty)")
    formation_energy_std: float | None = Field(None, description="formation energy standard deviation, eV/atom "
                                               "(options.uncertainty)")
    embedding: OptionalFloats = Field(None, description="DIM encoder crystal embedding (64 floats), if asked for")
    neighbours: OptionalNeighbours = Field(None, description="nearest training crystals, nearest first "
                                           "(options.neighbours)")
    properties: dict[str, float | None] = Field(default_factory=dict, description="targets of the deployment's "
                                                "other property models (a user's own), by name, with <target>_std "
                                                "when uncertainty was asked for; units in /info")
    in_domain: float | None = Field(None, description="share of unseen MP crystals that lie farther from the training "
                                    "set than this one (0: far outside the training data, 1: well inside; "
                                    "options.neighbours)")
    models: dict[str, str] = Field(default_factory=dict,
                                   description="role -> '<model>@<first 12 hex of model.onnx sha256>' of the models used")


class ErrorOut(BaseModel):
    """Why a request, or one item of a batch, was refused."""

    code: str = Field(description="stable snake_case error code, e.g. cif_parse_error, too_many_sites")
    message: str = Field(description="what is wrong, for humans")
    detail: Any = Field(None, description="machine-readable specifics (numbers, site indices, parser reasons)")


class BatchItemOut(BaseModel):
    """The outcome for input ``index``: a prediction or an error, never both."""

    index: int = Field(description="position of the CIF in the request (upload order for files)")
    block: str | None = Field(None, description="the data block's name, when the file holds several crystals: "
                              "each such block has its own entry, in block order, all with the file's index")
    prediction: PredictionOut | None = None
    error: ErrorOut | None = None


class BatchOut(BaseModel):
    """One entry per input, in input order; a bad CIF does not affect the others."""

    results: list[BatchItemOut]
    n_ok: int = Field(description="entries with a prediction")
    n_failed: int = Field(description="entries with an error")


class EmbeddingItemOut(BaseModel):
    """The embedding of input ``index``, or why there is none."""

    index: int = Field(description="position of the CIF in the request (upload order for files)")
    block: str | None = Field(None, description="the data block's name, when the file holds several crystals")
    formula: str | None = None
    n_sites: int | None = None
    embedding: OptionalFloats = Field(None, description="64 floats from the DIM encoder")
    error: ErrorOut | None = None


class EmbedOut(BaseModel):
    results: list[EmbeddingItemOut]
    model: str = Field(description="'<encoder>@<sha256[:12]>' that made the embeddings")


class ModelInfoOut(BaseModel):
    name: str = Field(description="zoo / Hub name (the folder name)")
    model_type: str = Field(description="'sitenet' (encoder) or 'sitenet-regressor'")
    sha256: str = Field(description="sha256 of model.onnx")
    version: str = Field(description="first 12 hex digits of sha256")
    library_version: str | None = Field(None, description="sitenet version that wrote the model's manifest")
    providers: list[str] = Field(description="ONNX Runtime execution providers really in use")
    providers_requested: str = Field(description="auto | cpu | cuda, as configured")


class InfoOut(BaseModel):
    sitenet_version: str
    models: dict[str, ModelInfoOut] = Field(description="by role: encoder, band_gap, formation_energy")
    targets: list[str] = Field(description="targets this deployment can predict")
    embedding: bool = Field(description="whether embeddings are available")
    uncertainty: bool = Field(False, description="whether uncertainty and nearest crystals are available")
    units: dict[str, str]
    feature_spec: dict[str, Any] = Field(description="featurisation shared by all models")
    limits: dict[str, int | float] = Field(description="request limits: bytes, CIFs per request, sites per cell, "
                                           "CPU s per CIF; per HTTP worker: requests worked on at once, waiting, "
                                           "longest wait (s), model threads")
    placement: dict[str, Any] = Field(description="where the models run: batching (adaptive | inline) and the "
                                      "number of HTTP workers")


# --- between the HTTP workers and the model worker (not public) -----------------------------------------
class InferItem(BaseModel):
    """A featurised crystal (``sitenet.features.CrystalFeatures``) and what to compute for it."""

    atomic_numbers: Annotated[np.ndarray, TensorSchema("numpy-array", "int64", None)]  # (P,)
    distance: Annotated[np.ndarray, TensorSchema("numpy-array", "float32", None)]  # (P, N), Å
    images: int
    targets: list[Target]
    embedding: bool = False
    uncertainty: bool = False
    neighbours: int = 0


class InferOut(BaseModel):
    """Raw model outputs for one :class:`InferItem` (only what was asked for)."""

    values: dict[str, float] = Field(default_factory=dict)
    embedding: list[float] | None = None
    neighbours: list[dict[str, Any]] | None = None
    in_domain: float | None = None
    error: str | None = None
