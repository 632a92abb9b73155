"""scripts/perov5_csv.py: CDVAE's two perov_5 files become one user CSV, heat of formation in eV/atom."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "perov5-sample" / "perov5_sample.csv.gz"


def _cdvae_files(folder: Path, frame: pd.DataFrame) -> None:
    """The sample rewritten in CDVAE's layout (an unnamed index column, heat_ref in eV per 5-atom cell)."""
    cdvae = frame.assign(heat_ref=frame["heat_of_formation"] * 5).drop(columns="heat_of_formation")
    cdvae.iloc[:70].to_csv(folder / "perov_5_dev_train.csv.gz")
    cdvae.iloc[70:].to_csv(folder / "perov_5_val.csv.gz")


def test_both_files_join_with_the_heat_per_atom(tmp_path):
    sample = pd.read_csv(SAMPLE)
    _cdvae_files(tmp_path, sample)
    out = tmp_path / "perov5.csv.gz"
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "perov5_csv.py"), str(tmp_path), str(out)],
                         capture_output=True, text=True, check=True)
    assert f"{len(sample)} rows" in run.stdout
    got = pd.read_csv(out)
    assert list(got.columns) == ["material_id", "formula", "heat_of_formation", "cif"]
    pd.testing.assert_series_equal(got["heat_of_formation"], sample["heat_of_formation"], check_exact=False)


def test_an_id_in_both_files_is_refused(tmp_path):
    sample = pd.read_csv(SAMPLE)
    _cdvae_files(tmp_path, pd.concat([sample, sample.iloc[:1]], ignore_index=True))
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "perov5_csv.py"), str(tmp_path),
                          str(tmp_path / "out.csv.gz")], capture_output=True, text=True)
    assert run.returncode != 0 and "material ids repeat" in run.stderr
