"""The ``sitenet`` command: featurise and embed (real subprocesses)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "sitenet.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_embed_cif_files_to_csv_and_npy_reports_rejections(tmp_path):
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a 1\n")
    good = sorted((REPO / "examples").glob("*.cif"))[:2]
    out = tmp_path / "emb.csv"
    result = _run("embed", *map(str, good), str(bad), "-o", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == [str(p) for p in good] and len(rows[0]) == 3 + 64
    rejected = list(csv.DictReader((tmp_path / "emb.rejected.csv").open()))
    assert rejected[0]["id"] == str(bad) and rejected[0]["code"] == "cif_parse_error"
    assert "rejected" in result.stderr
    npy = tmp_path / "emb.npy"
    assert _run("embed", *map(str, good), "-o", str(npy), "--seed", "0").returncode == 0
    assert np.allclose(np.load(npy), np.array([[float(r[f"e{k}"]) for k in range(64)] for r in rows]), atol=1e-5)


def test_featurize_a_user_table(tmp_path):
    table = tmp_path / "t.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "cif"])
        for p in sorted((REPO / "examples").glob("*.cif")):
            w.writerow([p.stem, p.read_text()])
        w.writerow(["junk", "not a cif"])
    result = _run("featurize", "--data", str(table), "--cache", str(tmp_path / "cache"), "--workers", "1")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["featurised"] == 5 and summary["rejected"] == 1 and summary["rejected_by_code"] == {"cif_parse_error": 1}
