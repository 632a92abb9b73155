"""Typed errors of SiteNet-DIM: every rejection has a stable machine-readable ``code``.

The service maps these to HTTP 4xx in one place; batch APIs return them per item instead of raising.
"""

from __future__ import annotations

from typing import Any


class SiteNetError(Exception):
    """Base class. ``code`` is stable snake_case; ``message`` is for humans; ``detail`` is JSON-able."""

    code: str = "sitenet_error"
    http_status: int = 422

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "detail": self.detail}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


# --- input that is not a readable crystal --------------------------------------------------------------
class InputTypeError(SiteNetError):
    """The object handed in is not CIF text/bytes/path, a pymatgen Structure or an ASE Atoms."""

    code = "unsupported_input"
    http_status = 415


class EmptyInputError(SiteNetError):
    code = "empty_input"
    http_status = 400


class InputTooLargeError(SiteNetError):
    code = "input_too_large"
    http_status = 413


class CifParseError(SiteNetError):
    code = "cif_parse_error"
    http_status = 422


class MultipleBlocksError(SiteNetError):
    code = "multiple_data_blocks"
    http_status = 422


# --- a crystal we refuse to model ----------------------------------------------------------------------
class DisorderedStructureError(SiteNetError):
    code = "disordered_structure"


class UnknownSpeciesError(SiteNetError):
    """A dummy or unknown species (pymatgen parses ``Xx`` into a DummySpecies with only a warning)."""

    code = "unknown_species"


class UnsupportedElementError(SiteNetError):
    """A real element outside the bundled property table (Z > 94)."""

    code = "unsupported_element"


class OverlappingAtomsError(SiteNetError):
    code = "overlapping_atoms"


class InvalidLatticeError(SiteNetError):
    """Zero, negative or degenerate cell volume, or non-finite lattice parameters."""

    code = "invalid_lattice"


class NonFiniteCoordinatesError(SiteNetError):
    code = "non_finite_coordinates"


class EmptyStructureError(SiteNetError):
    code = "empty_structure"


class TooManySitesError(SiteNetError):
    code = "too_many_sites"
    http_status = 413


class TimeLimitError(SiteNetError):
    """Reading one input took more CPU time than its budget (``sitenet.limits``): a small file that asks for
    far more work than its size suggests is refused like one that is too large."""

    code = "input_too_costly"
    http_status = 413


class DeadlineExceededError(SiteNetError):
    """The request this input belongs to ran out of time; its remaining work was stopped, not finished."""

    code = "timeout"
    http_status = 504


# --- models and files ----------------------------------------------------------------------------------
class ModelLoadError(SiteNetError):
    """A model folder is missing, malformed or of an unsupported format version."""

    code = "model_load_error"
    http_status = 500


class ChecksumMismatchError(ModelLoadError):
    code = "checksum_mismatch"


class FeatureSpecMismatchError(ModelLoadError):
    """Two models (e.g. a head and the encoder it runs on) expect different featurisation."""

    code = "feature_spec_mismatch"


ERROR_CODES: dict[str, type[SiteNetError]] = {
    cls.code: cls
    for cls in (
        SiteNetError,
        InputTypeError,
        EmptyInputError,
        InputTooLargeError,
        CifParseError,
        MultipleBlocksError,
        DisorderedStructureError,
        UnknownSpeciesError,
        UnsupportedElementError,
        OverlappingAtomsError,
        InvalidLatticeError,
        NonFiniteCoordinatesError,
        EmptyStructureError,
        TooManySitesError,
        TimeLimitError,
        DeadlineExceededError,
        ModelLoadError,
        ChecksumMismatchError,
        FeatureSpecMismatchError,
    )
}
