"""The nearest known crystals: an index of training crystals' embeddings shipped in a model folder. No torch.

``neighbours.safetensors`` holds ``embeddings`` (M,E) float16 and ``reference`` (R,) float32, the sorted
nearest-training-crystal distances of crystals the model was not trained on (its validation crystals);
``neighbours.json`` holds the ids, formulas and labels (by target) of the M training crystals. A query is
brute force (M = 23k x 64: a few ms per batch), exact, and needs nothing beyond numpy.

The in-domain score of a crystal is the share of those reference crystals whose nearest distance is at
least its own: 1.0 is closer to the training set than any of them, 0.0 farther than all.

Uncertainty (``neighbours.json`` ``uncertainty``, per target): a standard deviation from what the neighbours
say, ``std = scale * exp(w . f + b)`` with features ``f`` (:func:`uncertainty_features`) of the distances, of
how far the prediction is from the nearest crystals' labels, of how much those labels disagree, of how badly
the model fits those neighbours (their training residuals, ``neighbours.json`` ``residuals``), of the crystal's
composition (number of elements; an oxide or fluoride of a metal MP corrects with GGA+U), and for a gated band
gap of how close the metal probability is to 0.5. ``w, b`` are a least-squares fit of log |error| on
validation crystals, and ``scale`` makes the nominal 95% interval (+- 1.96 std) cover 95% of them
(``training/uncertainty.py``; ``benchmarks/uncertainty_features.py`` compared the feature sets). A fit records
which optional features it read, so an index written before they existed still serves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INDEX_FILES = ("neighbours.safetensors", "neighbours.json")
#: Neighbours whose labels and distances the uncertainty features read.
FEATURE_NEIGHBOURS = 5
EPS = 1e-3
Z95 = 1.959964
# Materials Project 2018 mixes GGA and GGA+U: oxides and fluorides of these metals (V Cr Mn Fe Co Ni Mo W) take
# the +U energy correction, where formation energies err most
_U_METALS = np.array([23, 24, 25, 26, 27, 28, 42, 74])
_U_ANIONS = np.array([8, 9])


@dataclass(frozen=True)
class Neighbour:
    """One known crystal near a query: its id, formula, labels and Euclidean embedding distance."""

    id: str
    formula: str
    distance: float
    labels: dict[str, float | None]


def write_index(folder: str | Path, embeddings: np.ndarray, *, ids: list[str], formulas: list[str],
                labels: dict[str, np.ndarray], reference: np.ndarray,
                uncertainty: dict[str, dict[str, Any]] | None = None,
                residuals: dict[str, np.ndarray] | None = None) -> None:
    """Write the index of ``embeddings`` (M,E) into ``folder``; ``reference`` (R,E) are embeddings of crystals
    not in the index (validation), whose nearest distances calibrate the in-domain score; ``uncertainty``: the
    fitted model of each target (module docstring); ``residuals``: (M,) |prediction - label| by target."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    stored = embeddings.astype(np.float16)
    closest = nearest(stored.astype(np.float32), reference.astype(np.float32), 1)[0][:, 0]
    save_file({"embeddings": stored, "reference": np.sort(closest).astype(np.float32)},
              str(folder / "neighbours.safetensors"))
    def column(values: np.ndarray) -> list[float | None]:
        return [None if not np.isfinite(v) else round(float(v), 5) for v in values]

    table = {"ids": ids, "formulas": formulas, "labels": {t: column(v) for t, v in labels.items()},
             "residuals": {t: column(v) for t, v in (residuals or {}).items()}, "uncertainty": uncertainty or {}}
    (folder / "neighbours.json").write_text(json.dumps(table, separators=(",", ":")), encoding="utf-8")


def uncertainty_features(prediction: np.ndarray, distances: np.ndarray, labels: np.ndarray, sites: np.ndarray,
                         metal_probability: np.ndarray | None = None, *,
                         atomic_numbers: Sequence[np.ndarray] | None = None,
                         residuals: np.ndarray | None = None) -> np.ndarray:
    """(B,F) features of B predictions (B,) from their nearest crystals' distances and labels (B,k), k >= 5,
    and their primitive-cell site counts (B,) (small cells err more: composition is nearly all they have);
    optionally the composition (each crystal's site Z) and the neighbours' training residuals (B,k)."""
    near = labels[:, :FEATURE_NEIGHBOURS]
    first = np.where(np.isfinite(near[:, 0]), near[:, 0], np.nanmean(near, 1))
    columns = [np.log(distances[:, 0] + EPS), np.log(distances[:, :FEATURE_NEIGHBOURS].mean(1) + EPS),
               np.log(np.abs(prediction - first) + EPS), np.log(np.nanmean(np.abs(prediction[:, None] - near), 1) + EPS),
               np.log(np.nanstd(near, 1) + EPS), np.log(np.asarray(sites, dtype=np.float64))]
    if metal_probability is not None:
        columns.append(-np.abs(metal_probability - 0.5))
    if atomic_numbers is not None:
        columns += list(composition_features(atomic_numbers).T)
    if residuals is not None:
        columns.append(np.log(np.nanmean(np.abs(residuals[:, :FEATURE_NEIGHBOURS]), 1) + EPS))
    return np.nan_to_num(np.stack(columns, 1), nan=0.0)


def composition_features(atomic_numbers: Sequence[np.ndarray]) -> np.ndarray:
    """(B,3): number of elements, GGA+U oxide/fluoride (0/1), any GGA+U metal (0/1) of each crystal's site Z."""
    rows = []
    for z in atomic_numbers:
        metal, anion = np.isin(_U_METALS, z).any(), np.isin(_U_ANIONS, z).any()
        rows.append((len(np.unique(z)), float(metal and anion), float(metal)))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


class NeighbourIndex:
    """The index of a model folder (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        from safetensors.numpy import load_file

        folder = Path(folder)
        arrays = load_file(str(folder / "neighbours.safetensors"))
        self.embeddings = arrays["embeddings"].astype(np.float32)  # (M,E)
        self.reference = arrays["reference"]  # (R,) sorted
        self._sq = (self.embeddings ** 2).sum(1)  # (M,)
        table = json.loads((folder / "neighbours.json").read_text(encoding="utf-8"))
        self.ids: list[str] = table["ids"]
        self.formulas: list[str] = table["formulas"]
        self.labels: dict[str, list[float | None]] = table["labels"]
        self.uncertainty: dict[str, dict[str, Any]] = table.get("uncertainty", {})
        self.residuals: dict[str, list[float | None]] = table.get("residuals", {})
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    @staticmethod
    def present(folder: str | Path) -> bool:
        return all((Path(folder) / name).is_file() for name in INDEX_FILES)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, embeddings: np.ndarray, k: int = FEATURE_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
        """(distances (B,k), positions (B,k)) of the ``k`` nearest indexed crystals, nearest first."""
        return nearest(self.embeddings, np.asarray(embeddings, dtype=np.float32), k, self._sq)

    def neighbours(self, distances: np.ndarray, positions: np.ndarray) -> list[list[Neighbour]]:
        """The :class:`Neighbour` records of :meth:`search`'s result."""
        return [[Neighbour(id=self.ids[j], formula=self.formulas[j], distance=float(d),
                           labels={t: values[j] for t, values in self.labels.items()})
                 for j, d in zip(row_positions, row_distances)]
                for row_positions, row_distances in zip(positions, distances)]

    def query(self, embeddings: np.ndarray, k: int = 5) -> tuple[list[list[Neighbour]], np.ndarray]:
        """The ``k`` nearest indexed crystals of each row of ``embeddings`` (B,E), nearest first, and each
        row's in-domain score (B,)."""
        distances, positions = self.search(embeddings, k)
        return self.neighbours(distances, positions), self.in_domain(distances[:, 0])

    def in_domain(self, nearest: np.ndarray) -> np.ndarray:
        """Share of the reference crystals whose nearest distance is >= each given distance (B,)."""
        below = np.searchsorted(self.reference, np.asarray(nearest, dtype=np.float32), side="left")
        return 1.0 - below / max(len(self.reference), 1)

    def label_matrix(self, target: str, positions: np.ndarray, table: str = "labels") -> np.ndarray:
        """(B,k) labels (or ``table="residuals"``: training residuals) of ``target`` of the crystals at
        ``positions`` (NaN where unlabelled)."""
        key = (table, target)
        if key not in self._arrays:  # once per index: a (M,) list to array costs more than the lookup
            self._arrays[key] = np.array([np.nan if v is None else v for v in getattr(self, table)[target]],
                                         dtype=np.float64)
        return self._arrays[key][positions]

    def std(self, target: str, prediction: np.ndarray, distances: np.ndarray, positions: np.ndarray,
            sites: np.ndarray, metal_probability: np.ndarray | None = None,
            atomic_numbers: Sequence[np.ndarray] | None = None) -> np.ndarray | None:
        """Calibrated standard deviation (B,) of ``target`` predictions of crystals with ``sites`` primitive
        sites (and site Z ``atomic_numbers``, which a fit reading composition needs); None if the index has no
        model for ``target``."""
        fit = self.uncertainty.get(target)
        if not fit:
            return None
        if fit.get("composition") and atomic_numbers is None:
            raise ValueError(f"the {target} uncertainty reads the composition: pass atomic_numbers")
        features = uncertainty_features(
            prediction, distances, self.label_matrix(target, positions), sites,
            metal_probability if fit.get("gated") else None,
            atomic_numbers=atomic_numbers if fit.get("composition") else None,
            residuals=self.label_matrix(target, positions, "residuals") if fit.get("residuals") else None)
        return float(fit["scale"]) * np.exp(features @ np.asarray(fit["weights"]) + float(fit["bias"]))

    def info(self) -> dict[str, Any]:
        return {"crystals": len(self), "reference_crystals": int(len(self.reference)),
                "embedding_dim": int(self.embeddings.shape[1])}


def nearest(index: np.ndarray, queries: np.ndarray, k: int,
             index_sq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(distances (B,k), positions (B,k)) of the k nearest rows of ``index`` (M,E) to each query (B,E)."""
    k = min(k, len(index))
    sq = (index ** 2).sum(1) if index_sq is None else index_sq
    out_d = np.empty((len(queries), k), dtype=np.float32)
    out_i = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):  # (256, M) distance blocks keep memory flat
        q = queries[start:start + 256]
        d2 = np.maximum(sq[None, :] - 2.0 * q @ index.T + (q ** 2).sum(1)[:, None], 0.0)  # (b,M)
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        part_d = np.take_along_axis(d2, part, 1)
        order = np.argsort(part_d, axis=1)
        out_i[start:start + len(q)] = np.take_along_axis(part, order, 1)
        out_d[start:start + len(q)] = np.sqrt(np.take_along_axis(part_d, order, 1))
    return out_d, out_i
