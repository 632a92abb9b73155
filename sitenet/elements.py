"""Per-element property table (Z = 1..94), bundled as ``sitenet/data/elements.csv``.

Source: pymatgen's periodic table data (``pymatgen.core.Element``), written to the CSV by
``python -m sitenet.elements``; the CSV is committed so inference never depends on the pymatgen version.
Properties, in column order: atomic number, atomic mass (u), period (row), group (lanthanides and
actinides are group 3 in pymatgen), Mendeleev number, first ionisation energy (eV), Pauling
electronegativity, atomic radius (Å), molar volume (cm^3/mol).

Missing values (Pauling electronegativity of He, Ne, Ar; the empirical atomic radius of the noble gases,
At and Fr, for which the calculated radius is used first; molar volume of At and Fr) are filled with the
value of the nearest element of the same group that has one, else the nearest Z. ``filled`` records
which cells were filled, so no crystal can ever turn into NaN. Features are standardised column-wise
(mean 0, std 1 over Z = 1..94) so that all channels have similar magnitudes.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np

MAX_Z = 94
PROPERTIES: tuple[str, ...] = (
    "atomic_number",
    "atomic_mass",
    "row",
    "group",
    "mendeleev_number",
    "first_ionization_energy",
    "electronegativity",
    "atomic_radius",
    "molar_volume",
)
TABLE_PATH = Path(__file__).with_name("data") / "elements.csv"


@lru_cache(maxsize=1)
def raw_table() -> np.ndarray:
    """The raw property table, shape (MAX_Z + 1, len(PROPERTIES)); row Z holds element Z, row 0 is zeros."""
    table = np.zeros((MAX_Z + 1, len(PROPERTIES)), dtype=np.float64)
    with TABLE_PATH.open(newline="") as fh:
        for row in csv.DictReader(fh):
            z = int(row["atomic_number"])
            table[z] = [float(row[p]) for p in PROPERTIES]
    if not np.all(np.isfinite(table)):  # pragma: no cover - guarded by tests on the committed file
        raise ValueError(f"{TABLE_PATH} has missing values")
    return table


@lru_cache(maxsize=1)
def scaled_table() -> np.ndarray:
    """Standardised properties, float32, shape (MAX_Z + 1, F); row 0 (padding) is all zeros."""
    raw = raw_table()
    body = raw[1:]
    scaled = np.zeros_like(raw)
    scaled[1:] = (body - body.mean(0)) / body.std(0)
    return scaled.astype(np.float32)


def site_features(atomic_numbers: np.ndarray) -> np.ndarray:
    """Look up scaled element properties: (P,) int -> (P, F) float32."""
    return scaled_table()[np.asarray(atomic_numbers, dtype=np.int64)]


def build_table(path: Path = TABLE_PATH) -> None:
    """Regenerate the CSV from pymatgen's element data (run once by a maintainer; the CSV is committed)."""
    import warnings

    from pymatgen.core import Element

    columns: dict[str, list[float]] = {p: [] for p in PROPERTIES}
    groups: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, MAX_Z + 1):
            el = Element.from_Z(z)
            radius = el.atomic_radius if el.atomic_radius is not None else el.atomic_radius_calculated
            x = el.X
            values = {
                "atomic_number": z,
                "atomic_mass": float(el.atomic_mass),
                "row": el.row,
                "group": el.group,
                "mendeleev_number": el.mendeleev_no,
                "first_ionization_energy": el.ionization_energies[0] if el.ionization_energies else None,
                "electronegativity": None if x is None or not np.isfinite(x) else float(x),
                "atomic_radius": None if radius is None else float(radius),
                "molar_volume": None if el.molar_volume is None else float(el.molar_volume),
            }
            groups.append(el.group)
            for p in PROPERTIES:
                v = values[p]
                columns[p].append(np.nan if v is None else float(v))
    filled: list[list[str]] = [[] for _ in range(MAX_Z)]
    for p in PROPERTIES:
        col = np.array(columns[p])
        for i in np.flatnonzero(~np.isfinite(col)):
            same_group = [k for k in range(MAX_Z) if groups[k] == groups[i] and np.isfinite(col[k])]
            pool = same_group or [k for k in range(MAX_Z) if np.isfinite(col[k])]
            donor = min(pool, key=lambda k: (abs(k - i), k))
            columns[p][i] = columns[p][donor]
            filled[i].append(p)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["symbol", *PROPERTIES, "filled"])
        for i in range(MAX_Z):
            writer.writerow(
                [Element.from_Z(i + 1).symbol, *[f"{columns[p][i]:.6g}" for p in PROPERTIES], ";".join(filled[i])]
            )


def symbols() -> list[str]:
    """Element symbols of Z = 1..MAX_Z, in order."""
    with TABLE_PATH.open(newline="") as fh:
        return [row["symbol"] for row in csv.DictReader(fh)]


if __name__ == "__main__":
    build_table()
    print(f"wrote {TABLE_PATH}")
