"""Labelled (or unlabelled) crystal tables: the mp2018 set and a user's own CSV, plus the held-out split.

A table is a CSV (optionally gzipped) with an id column, zero or more target columns and either a ``cif``
column with the CIF text or a column of file names that point into a folder or a zip of CIFs.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PATH = REPO_ROOT / "data" / "mp2018-sample" / "mp2018_sample.csv.gz"
FULL_PATH = REPO_ROOT.parent / "shared" / "data" / "mp2018" / "mp2018.csv.gz"
CLUSTERS_NAME = "duplicate_clusters.csv"
TEST_IDS_PATH = REPO_ROOT / "data" / "splits" / "mp2018-test.txt"
#: Column names of the mp2018 targets, by the project's target names.
MP2018_TARGETS: dict[str, str] = {"band_gap": "band_gap", "formation_energy": "formation_energy_per_atom"}


@dataclass
class CrystalDataset:
    """CIF texts with ids and optional targets.

    Attributes:
        ids: (M,) identifiers, unique.
        cifs: M CIF texts.
        targets: target name -> (M,) float64 array, NaN where a label is missing.
        extra: other columns of the table (e.g. ``labels_agree``) as arrays.
    """

    ids: np.ndarray
    cifs: list[str]
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, mask_or_index: Any) -> "CrystalDataset":
        """Rows selected by a boolean mask or an index array."""
        idx = np.arange(len(self))[mask_or_index]
        return CrystalDataset(
            ids=self.ids[idx],
            cifs=[self.cifs[i] for i in idx],
            targets={k: v[idx] for k, v in self.targets.items()},
            extra={k: v[idx] for k, v in self.extra.items()},
        )


def default_data_path() -> Path:
    """``$SITENET_DATA`` if set, else the full mp2018 set beside the checkout, else the bundled sample."""
    env = os.environ.get("SITENET_DATA")
    if env:
        return Path(env)
    return FULL_PATH if FULL_PATH.exists() else SAMPLE_PATH


def read_dataset(
    path: str | os.PathLike,
    *,
    id_column: str | None = None,
    targets: dict[str, str] | list[str] | None = None,
    cif_column: str = "cif",
    file_column: str | None = None,
    cif_root: str | os.PathLike | None = None,
) -> CrystalDataset:
    """Read a crystal table.

    Args:
        path: CSV or CSV.gz file.
        id_column: id column; default ``material_id`` if present, else ``id``.
        targets: target columns, as a list or as {target name: column}; default: the mp2018 targets that
            are present.
        cif_column: column holding CIF text (used when ``file_column`` is not given).
        file_column: column of CIF file names, resolved inside ``cif_root`` (a folder or a ``.zip``).
        cif_root: folder or zip for ``file_column``; default the CSV's folder.

    Raises:
        ValueError: a named column is missing, ids repeat, or a CIF file is missing.
    """
    import pandas as pd

    path = Path(path)
    frame = pd.read_csv(path)
    if id_column is None:
        id_column = "material_id" if "material_id" in frame.columns else "id"
    if targets is None:
        targets = {name: col for name, col in MP2018_TARGETS.items() if col in frame.columns}
    elif isinstance(targets, list):
        targets = {col: col for col in targets}
    needed = [id_column, *targets.values(), file_column or cif_column]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{path.name}: missing column(s) {missing}; columns are {list(frame.columns)}")
    ids = frame[id_column].astype(str).to_numpy()
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path.name}: ids in {id_column!r} are not unique")
    if file_column is None:
        cifs = frame[cif_column].fillna("").astype(str).tolist()
    else:
        cifs = _read_cif_files(frame[file_column].astype(str).tolist(), Path(cif_root) if cif_root else path.parent)
    used = {id_column, cif_column, file_column, *targets.values()}
    return CrystalDataset(
        ids=ids,
        cifs=cifs,
        targets={name: pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
                 for name, col in targets.items()},
        extra={c: frame[c].to_numpy() for c in frame.columns if c not in used},
    )


def _read_cif_files(names: list[str], root: Path) -> list[str]:
    if root.suffix == ".zip":
        with zipfile.ZipFile(root) as archive:
            members = set(archive.namelist())
            missing = [n for n in names if n not in members]
            if missing:
                raise ValueError(f"{len(missing)} CIF file(s) not in {root.name}, e.g. {missing[:3]}")
            return [archive.read(n).decode("utf-8", errors="replace") for n in names]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} CIF file(s) not found in {root}, e.g. {missing[:3]}")
    return [(root / n).read_text(errors="replace") for n in names]


def held_out_split(
    ids: np.ndarray, labels_agree: np.ndarray, clusters: dict[str, int], *, fraction: float = 0.1, seed: int = 2018
) -> np.ndarray:
    """Boolean mask of the held-out test rows: about ``fraction`` of the ``labels_agree`` rows.

    Each near-duplicate cluster is one unit: all its members are held out or none are (members whose labels
    disagree are held out too, unscored, so no near-duplicate of a test crystal is ever trained on).
    """
    groups = np.array([f"c{clusters[i]}" if i in clusters else f"s{i}" for i in ids])
    unique = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(unique))
    target = fraction * int(np.sum(labels_agree))
    scored_per_group: dict[str, int] = {}
    for g, ok in zip(groups, labels_agree):
        scored_per_group[g] = scored_per_group.get(g, 0) + int(bool(ok))
    chosen: set[str] = set()
    scored = 0
    for k in order:
        if scored >= target:
            break
        g = unique[k]
        if scored_per_group[g] == 0:
            continue
        chosen.add(g)
        scored += scored_per_group[g]
    return np.isin(groups, list(chosen))


def read_clusters(path: str | os.PathLike) -> dict[str, int]:
    """material_id -> near-duplicate cluster id, from the data set's ``duplicate_clusters.csv``."""
    import pandas as pd

    frame = pd.read_csv(path)
    return dict(zip(frame["material_id"].astype(str), frame["dup_cluster"].astype(int)))


def held_out_ids(path: str | os.PathLike = TEST_IDS_PATH) -> set[str]:
    """The committed held-out ids (every number in the repository is measured on these crystals)."""
    return {line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")}
