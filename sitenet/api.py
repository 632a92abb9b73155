"""The Python API: ``sitenet.load_model(...)``, then ``.predict(x)`` and ``.embed(x)``. No torch here.

    import sitenet

    model = sitenet.load_model()                      # the zoo's encoder and property models
    model.predict("NaCl.cif").band_gap                # eV; a list in gives a list out
    model.embed(structure)                            # (64,) float32, the DIM embedding
    gap = sitenet.load_model("sitenet-dim-mp2018-band-gap")   # one model: zoo name, folder or Hub id

An input is a CIF path, CIF text or bytes, a pymatgen ``Structure`` or an ASE ``Atoms``. One input gives one
result and raises the typed ``SiteNetError`` (``sitenet.errors``) when it is rejected; a list gives one
``Prediction`` or ``Rejection`` per item, in order, and never raises for a bad item. Models load offline first
(``sitenet.hub.resolve``: the bundled zoo, a folder, then the Hub cache, then the Hub) and run on ONNX Runtime.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sitenet.errors import SiteNetError
from sitenet.predict import Prediction, Predictor, Rejection
from sitenet.runtime import ProviderChoice
from sitenet.structure import StructureSource

__all__ = ["SiteNetModel", "load_model"]


class SiteNetModel:
    """Loaded models (by role: ``encoder`` and each property they predict) behind one call per task."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @property
    def targets(self) -> tuple[str, ...]:
        """Properties :meth:`predict` gives."""
        return self.predictor.targets

    @property
    def units(self) -> dict[str, str]:
        """Unit of each target."""
        return self.predictor.units()

    @property
    def can_embed(self) -> bool:
        """Whether :meth:`embed` works (a DIM encoder is loaded)."""
        return "encoder" in self.predictor.models

    def predict(self, x: StructureSource | Sequence[StructureSource], *, targets: Sequence[str] | None = None,
                return_embedding: bool = False, uncertainty: bool = False,
                neighbours: int = 0) -> Prediction | list[Prediction | Rejection]:
        """Predict ``targets`` (default: all of :attr:`targets`) for one crystal or a list of them.

        Args:
            uncertainty: add each target's calibrated standard deviation (``band_gap_std``, ...).
            neighbours: k > 0 adds the k nearest training crystals (id, formula, distance, labels) and the
                in-domain score (0..1: the share of unseen validation crystals lying farther out).

        Raises:
            SiteNetError: one input that cannot be read, validated or featurised (a list never raises).
            ValueError: a target no loaded model gives; an embedding without an encoder; uncertainty or
                neighbours from models that ship no neighbour index.
        """
        options = {"targets": tuple(self.targets if targets is None else targets),
                   "return_embedding": return_embedding, "uncertainty": uncertainty, "neighbours": neighbours}
        items, single = _items(x)
        if single:
            return self._one(items[0], **options)
        return self.predictor.predict(items, **options)

    def embed(self, x: StructureSource | Sequence[StructureSource]) -> np.ndarray | list[np.ndarray | Rejection]:
        """The DIM encoder's crystal embedding, (E,) float32, of one crystal or of each in a list.

        Raises:
            SiteNetError: one input that cannot be read (a list gives its ``Rejection`` in place).
            ValueError: no encoder is loaded.
        """
        if not self.can_embed:
            raise ValueError("no encoder is loaded: load one with sitenet.load_model('sitenet-dim-mp2018')")
        items, single = _items(x)
        if single:
            return np.asarray(self._one(items[0], targets=(), return_embedding=True).embedding, dtype=np.float32)
        results = self.predictor.predict(items, targets=(), return_embedding=True)
        return [r if isinstance(r, Rejection) else np.asarray(r.embedding, dtype=np.float32) for r in results]

    def _one(self, x: StructureSource, **options: Any) -> Prediction:
        self.predictor.roles(options["targets"], options["return_embedding"], uncertainty=options.get("uncertainty",
                             False), neighbours=options.get("neighbours", 0))  # a bad option fails before parsing
        prepared = self.predictor.prepare(x)
        if isinstance(prepared, SiteNetError):
            raise prepared
        return self.predictor.prediction(0, prepared, self.predictor.run([prepared], **options)[0])

    def info(self) -> dict[str, Any]:
        """The models, their checksums and providers, targets, units and limits."""
        return self.predictor.info()

    def close(self) -> None:
        self.predictor.close()

    def __enter__(self) -> "SiteNetModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = {role: m.name for role, m in self.predictor.models.items()}
        return f"SiteNetModel({names})"


def load_model(name: str | os.PathLike[str] | None = None, *, revision: str | None = None,
               providers: ProviderChoice = "auto", threads: int | None = None) -> SiteNetModel:
    """Load a model by zoo name, folder or Hub repo id; None: the zoo's encoder and property models.

    A regressor serves the targets its config names (a multi-task one all of them, in one pass); an encoder
    serves :meth:`SiteNetModel.embed`.

    Raises:
        ModelLoadError: the model is missing, corrupt or not a SiteNet model.
        ProviderUnavailableError: ``providers="cuda"`` and CUDA cannot be used.
    """
    from sitenet.hub import model_type, resolve

    if name is None:
        return SiteNetModel(Predictor.from_pretrained(revision=revision, providers=providers, threads=threads))
    folder = resolve(name, revision=revision)
    encoder = folder if model_type(folder) == "sitenet" else None
    return SiteNetModel(Predictor.from_pretrained(encoder, None, None, models=() if encoder else (folder,),
                                                  revision=revision, providers=providers, threads=threads))


def _items(x: Any) -> tuple[list[Any], bool]:
    """(inputs as a list, whether one input was given)."""
    if isinstance(x, (str, bytes, os.PathLike)) or _is_structure(x):
        return [x], True
    if isinstance(x, Sequence) or hasattr(x, "__iter__"):
        return list(x), False
    return [x], True  # anything else is one input; the reader says what is wrong with it


def _is_structure(x: Any) -> bool:
    """A pymatgen Structure or an ASE Atoms (or a subclass), without importing either."""
    return any(f"{c.__module__}.{c.__name__}" in {"pymatgen.core.structure.Structure", "ase.atoms.Atoms"}
               for c in type(x).__mro__)
