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
    # the zoo encoder runs on ONNX Runtime; the same weights in PyTorch give the same vectors
    from sitenet.embed import embed_features, load_encoder
    from sitenet.features import featurize
    from sitenet.structure import read_structure

    encoder = load_encoder("sitenet-dim-mp2018")
    torch_vectors = embed_features(encoder, [featurize(read_structure(p), spec=encoder.config.features) for p in good])
    assert np.allclose(np.load(npy), torch_vectors, atol=1e-4)



def test_embed_with_a_regressor_folder_gives_its_encoders_vectors(tmp_path, monkeypatch):
    """A regressor folder embeds in PyTorch with its own encoder, resolved (and verified) once."""
    from sitenet import embed, hub
    from sitenet.features import featurize
    from sitenet.model import SiteNetRegressor
    from sitenet.structure import read_structure

    folder = hub.resolve("sitenet-dim-mp2018-formation-energy")
    calls = []
    monkeypatch.setattr(hub, "resolve", lambda model, *a, **k: calls.append(model) or folder)
    good = sorted((REPO / "examples").glob("*.cif"))[:2]
    assert embed.embed_files([str(p) for p in good], output=tmp_path / "e.npy", model="anything") == 0
    assert calls == ["anything"]
    encoder = SiteNetRegressor.from_pretrained(folder).encoder.eval()
    expected = embed.embed_features(encoder, [featurize(read_structure(p), spec=encoder.config.features) for p in good])
    assert np.allclose(np.load(tmp_path / "e.npy"), expected, atol=1e-6)

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


def test_help_and_predict_never_import_torch():
    probe = ("import sys\nfrom sitenet.cli import build_parser\nbuild_parser().format_help()\n"
             "assert 'torch' not in sys.modules, 'help imported torch'\n"
             "from sitenet.cli import main\n"
             "main(['predict', 'examples/Si_mp-149.cif', '-o', '-', '--providers', 'cpu'])\n"
             "assert 'torch' not in sys.modules, 'predict imported torch'\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["formula"] == "Si"


def test_predict_folders_zips_and_tables_with_model_and_targets(tmp_path):
    import zipfile

    examples = sorted((REPO / "examples").glob("*.cif"))
    folder = tmp_path / "cifs"
    folder.mkdir()
    for path in examples[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not a CIF: skipped")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(examples[2], arcname=f"inner/{examples[2].name}")
    table = tmp_path / "table.csv"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["material_id", "cif"])
        writer.writerow(["mine-1", examples[3].read_text()])
    out = tmp_path / "p.csv"
    result = _run("predict", str(folder), str(archive), str(table), str(tmp_path / "missing.cif"),
                  "--model", "sitenet-dim-mp2018-band-gap", "--targets", "band_gap", "-o", str(out),
                  "--providers", "cpu")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["source"] for r in rows] == [str(folder / examples[0].name), str(folder / examples[1].name),
                                           f"{archive}:inner/{examples[2].name}", f"{table}:mine-1",
                                           str(tmp_path / "missing.cif")]
    assert list(rows[0])[:6] == ["index", "source", "formula", "n_sites", "band_gap", "metal_probability"]
    assert all(r["band_gap"] != "" for r in rows[:4]) and rows[4]["code"] == "cif_parse_error"
    assert "rejected" in result.stderr and "missing.cif" in result.stderr
    refused = _run("predict", str(examples[0]), "--model", "sitenet-dim-mp2018-band-gap", "--targets",
                   "formation_energy", "--providers", "cpu")
    assert refused.returncode == 2 and "no model loaded for ['formation_energy']" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_readme_cli_example_runs_as_written(tmp_path: Path) -> None:
    """Every line of the README's runnable CLI block, in a folder holding a copy of examples/: exit 0, its
    output file written, and torch never imported."""
    import re
    import shlex
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- cli-example -->\n```bash\n(.*?)```", readme, flags=re.S).group(1)
    shutil.copytree(repo / "examples", tmp_path / "examples")
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.startswith("sitenet ") for line in lines)
    check = "import sys; sys.argv = ['sitenet', *sys.argv[1:]]; "
    check += "from sitenet.cli import main; code = main(); "
    check += "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)"
    for line in lines:
        done = subprocess.run([sys.executable, "-c", check, *shlex.split(line)[1:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (line, done.stderr[-2000:])
        if " -o " in line:
            assert (tmp_path / shlex.split(line.split(" -o ")[1])[0]).stat().st_size > 0
        else:
            assert '"band_gap_std"' in done.stdout and '"neighbours"' in done.stdout, done.stdout[:500]
