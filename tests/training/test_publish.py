"""Publishing model folders: ONNX parity on real crystals, save/reload, checksums, ``sitenet export`` and the
whole push -> pull -> offline load round trip through the fake Hub (tests/fake_hub.py, no internet)."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sitenet import hub
from sitenet.batch import Batch, collate
from sitenet.cli import main as sitenet_main
from sitenet.config import RegressorConfig, dim_config
from sitenet.errors import ChecksumMismatchError, ModelLoadError
from sitenet.features import FeatureSpec, featurize
from sitenet.model import SiteNetEncoder, SiteNetRegressor, to_tensors
from training import publish as publish_module
from training.export import PARITY_ATOL, export_onnx, output_names, parity
from training.publish import export_folder, load_model, parity_batches, publish

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_ID = "acme/sitenet-tiny-eform"
FOLDER_FILES = {"config.json", "model.safetensors", "model.onnx", "README.md", "provenance.json", "manifest.json"}


# --- models and real batches ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models() -> dict[str, SiteNetEncoder | SiteNetRegressor]:
    """The zoo architecture (DIM encoder, ~70k parameters), seeded: encoder and both regressors."""
    torch.manual_seed(0)
    encoder = SiteNetEncoder(dim_config()).eval()
    out: dict[str, SiteNetEncoder | SiteNetRegressor] = {"encoder": encoder}
    for target in ("band_gap", "formation_energy"):
        out[target] = SiteNetRegressor.from_encoder(encoder, RegressorConfig(encoder=encoder.config, target=target)).eval()
    return out


@pytest.fixture(scope="module")
def real_batches(sample_structures: list[Any]) -> dict[str, Batch]:
    """Real MP crystals in batches of varied size: B = 1, several, N = 1 crystals, and heavy padding."""
    spec = dim_config().features
    one_site = [s for s in sample_structures if len(s) == 1]
    mid = [s for s in sample_structures if 2 <= len(s) <= 40]
    feats = [featurize(s, spec=spec) for s in mid[:10]]
    largest = max(feats, key=lambda f: f.n_primitive * f.n_sites)
    tiny = [featurize(s, spec=spec) for s in one_site]
    # A supercell cap of 1 atom gives 1-site crystals N = 1 (no images): the smallest possible key axis.
    n1 = [featurize(s, spec=FeatureSpec(max_atoms=1)) for s in one_site]
    assert all(f.n_sites == 1 for f in n1) and largest.n_primitive > 4 * tiny[0].n_primitive
    return {
        "single": collate([feats[0]], spec),
        "single_n1": collate(n1[:1], spec),
        "several": collate(feats[:7], spec),
        "all_n1": collate(n1 + n1, spec),
        "padded": collate([largest, *tiny, *n1], spec),
    }


@pytest.fixture(scope="module")
def onnx_paths(models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    return {name: export_onnx(model, root / f"{name}.onnx") for name, model in models.items()}


@functools.lru_cache(maxsize=16)
def _session(path: Path, mtime_ns: int) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path: Path, batch: Batch) -> dict[str, np.ndarray]:
    session = _session(path, path.stat().st_mtime_ns)
    feed = {i.name: batch.inputs()[i.name] for i in session.get_inputs()}  # unused inputs are pruned
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def run_torch(model: SiteNetEncoder | SiteNetRegressor, batch: Batch) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model.eval()(**to_tensors(batch))
    named = {"embedding": out.embedding, "sites": out.sites} if isinstance(model, SiteNetEncoder) else out
    return {k: v.numpy() for k, v in named.items()}


def row(batch: Batch, k: int, spec: FeatureSpec) -> Batch:
    """Crystal ``k`` of a padded batch alone, unpadded (B = 1)."""
    p, n = int(batch.site_mask[k].sum()), int(batch.atom_mask[k].sum())
    return Batch(site=batch.site[k:k + 1, :p], species=batch.species[k:k + 1, :p], pair=batch.pair[k:k + 1, :p, :n],
                 parent=batch.parent[k:k + 1, :n], site_mask=batch.site_mask[k:k + 1, :p],
                 atom_mask=batch.atom_mask[k:k + 1, :n])


# --- ONNX parity -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["encoder", "band_gap", "formation_energy"])
def test_onnx_matches_torch_on_real_crystals(name: str, models: dict, onnx_paths: dict, real_batches: dict) -> None:
    model, path = models[name], onnx_paths[name]
    # parity() raises on NaN/inf or a max abs diff above 1e-4, over every batch and output.
    assert parity(model, path, list(real_batches.values())) <= PARITY_ATOL
    got, want = run_onnx(path, real_batches["padded"]), run_torch(model, real_batches["padded"])
    assert list(got) == list(output_names(model)) and set(want) == set(got)


@pytest.mark.parametrize("name", ["encoder", "band_gap"])
def test_padding_does_not_change_a_crystals_onnx_outputs(name: str, models: dict, onnx_paths: dict,
                                                         real_batches: dict) -> None:
    batch, spec = real_batches["padded"], dim_config().features
    together = run_onnx(onnx_paths[name], batch)
    for k in range(len(batch)):
        alone = run_onnx(onnx_paths[name], row(batch, k, spec))
        for key, value in alone.items():
            if key == "sites":  # (B, P, L): compare the real rows only
                np.testing.assert_allclose(together[key][k, : value.shape[1]], value[0], atol=1e-4, rtol=0)
                assert np.all(together[key][k, value.shape[1]:] == 0)
            else:
                np.testing.assert_allclose(together[key][k], value[0], atol=1e-4, rtol=0, err_msg=f"{k}/{key}")


def test_parity_batches_cover_single_n1_and_heavy_padding() -> None:
    batches = parity_batches(dim_config())
    sizes = [b.pair.shape for b in batches]
    assert any(s[0] == 1 for s in sizes) and any(s[0] >= 5 for s in sizes)
    assert any(bool(np.all(b.atom_mask.sum(1) == 1)) for b in batches), "a batch of N = 1 crystals"
    assert max(b.padding_fraction for b in batches) > 0.9, "a heavily padded batch"


# --- publish ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def published(models: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    plot = tmp_path_factory.mktemp("plots") / "parity.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\nnot really an image")
    return publish(models["formation_energy"], tmp_path_factory.mktemp("pub") / "eform", card="# card\n",
                   extra_files={"parity.png": plot}, trained=True, facts={"source": "runs/x"})


def test_publish_writes_a_complete_verified_folder(published: Path, models: dict) -> None:
    assert {p.name for p in published.iterdir()} == FOLDER_FILES | {"parity.png"}
    manifest = hub.verify_folder(published)
    assert set(manifest["files"]) == FOLDER_FILES - {"manifest.json"} | {"parity.png"}
    assert (published / "README.md").read_text() == "# card\n"
    facts = json.loads((published / "provenance.json").read_text())
    assert facts["trained"] is True and facts["sitenet_version"] and facts["source"] == "runs/x"
    assert facts["features"] == models["formation_energy"].config.encoder.features.model_dump(mode="json")
    config = json.loads((published / "config.json").read_text())
    assert config["model_type"] == "sitenet-regressor" and config["encoder"]["features"]["max_atoms"] == 50
    assert not [p for p in published.parent.iterdir() if p.name.startswith(".")], "no staging folder left behind"


def test_save_then_from_pretrained_round_trip(published: Path, models: dict, real_batches: dict) -> None:
    original = models["formation_energy"]
    loaded = SiteNetRegressor.from_pretrained(hub.resolve(published))
    assert loaded.config == original.config
    for batch in real_batches.values():
        want, got = run_torch(original, batch), run_torch(loaded, batch)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
        onnx_out = run_onnx(published / "model.onnx", batch)
        np.testing.assert_allclose(onnx_out["formation_energy"], want["formation_energy"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("victim", ["model.onnx", "model.safetensors", "config.json", "README.md"])
def test_tampered_file_raises_checksum_mismatch(published: Path, tmp_path: Path, victim: str) -> None:
    import shutil

    copy = Path(shutil.copytree(published, tmp_path / "copy"))
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match=victim):
        hub.resolve(copy)


def test_failed_parity_keeps_the_previous_folder(published: Path, models: dict, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    target = Path(shutil.copytree(published, tmp_path / "eform"))
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def broken(*args: Any, **kwargs: Any) -> float:
        raise ValueError("ONNX and PyTorch differ by 1 (> 0.0001)")

    monkeypatch.setattr(publish_module, "parity", broken)
    with pytest.raises(ValueError, match="differ"):
        publish(models["band_gap"], target, card="# other\n")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["eform"], "the staging folder was removed"


def test_publish_refuses_bad_destinations_and_extra_files(models: dict, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="not a model folder"):
        publish(models["encoder"], tmp_path / "notes")
    run = tmp_path / "run"
    models["encoder"].save_pretrained(run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    (run / "metrics.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="checkpoints/last.ckpt, metrics.json"):
        export_folder(run)  # in place would delete the run's checkpoints: refused
    assert sitenet_main(["export", str(run)]) == 2  # the command says why, without a traceback
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"ckpt"
    stray = tmp_path / "x.pkl"
    stray.write_bytes(b"pickle")
    for name in ("weights.pkl", "config.json", "../escape.png", ".hidden.png"):
        with pytest.raises(ValueError):
            publish(models["encoder"], tmp_path / "enc", extra_files={name: stray})
    assert not (tmp_path / "enc").exists()


# --- sitenet export --------------------------------------------------------------------------------------
def test_sitenet_export_rebuilds_a_saved_torch_folder(models: dict, tmp_path: Path, real_batches: dict,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "run"
    models["band_gap"].save_pretrained(source)  # config.json + model.safetensors (+ a generated README)
    (source / "README.md").unlink()
    evaluation = {"target": "band_gap", "n_train": 300, "n_val": 20, "n_test": 80, "plot": "parity_band_gap.png",
                  "metrics": {"mae": 0.51, "mae_nonmetal": 0.73, "metal_accuracy": 0.84},
                  "command": "python -m training.evaluate runs/finetune-band-gap"}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    (tmp_path / "parity_band_gap.png").write_bytes(b"\x89PNG fake")

    assert sitenet_main(["export", str(source), "--output", str(tmp_path / "out"), "--eval",
                         str(tmp_path / "eval.json"), "--name", "tiny-band-gap"]) == 0
    out = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["folder"])
    hub.verify_folder(out)
    assert {p.name for p in out.iterdir()} == FOLDER_FILES | {"parity-band-gap.png"}
    card = (out / "README.md").read_text()
    assert "0.5100 eV" in card and "84.00 %" in card and "](parity-band-gap.png)" in card
    assert "python -m training.evaluate runs/finetune-band-gap" in card
    np.testing.assert_allclose(run_onnx(out / "model.onnx", real_batches["several"])["band_gap"],
                               run_torch(models["band_gap"], real_batches["several"])["band_gap"], atol=1e-4)

    # In place, without an evaluation: the existing card is kept, ONNX and manifest are rebuilt.
    (out / "model.onnx").unlink()
    assert sitenet_main(["export", str(out)]) == 0
    hub.verify_folder(out)
    assert (out / "README.md").read_text() == card and (out / "parity-band-gap.png").read_bytes() == b"\x89PNG fake"
    assert isinstance(load_model(out), SiteNetRegressor)


def test_sitenet_export_rejects_a_folder_without_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        export_folder(tmp_path)
    assert sitenet_main(["export", str(tmp_path)]) == 2 and "model.safetensors" in capsys.readouterr().err


# --- end to end: publish -> sitenet push -> sitenet pull -> offline load in a fresh process --------------
def _dead_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_push_pull_then_load_offline_in_a_fresh_process(
    published: Path, models: dict, real_batches: dict, fake_hub: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_TOKEN", "dummy-token")
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    assert sitenet_main(["push", str(published), "--repo-id", REPO_ID]) == 0
    commit = json.loads(capsys.readouterr().out)["commit"]
    assert sitenet_main(["pull", REPO_ID]) == 0
    pulled = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert pulled.is_relative_to(cache) and commit in str(pulled)
    assert {p.name for p in pulled.iterdir()} == FOLDER_FILES | {"parity.png"}
    served = len(fake_hub.requests)

    batch = real_batches["padded"]
    np.savez(tmp_path / "batch.npz", **batch.inputs())
    code = textwrap.dedent(f"""
        import json
        import numpy as np, onnxruntime as ort
        from sitenet.batch import Batch
        from sitenet.hub import resolve
        from sitenet.model import SiteNetRegressor, to_tensors
        import torch

        folder = resolve({REPO_ID!r})
        batch = Batch(**dict(np.load({str(tmp_path / 'batch.npz')!r})))
        with torch.no_grad():
            torch_out = SiteNetRegressor.from_pretrained(folder)(**to_tensors(batch))
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        feed = {{i.name: batch.inputs()[i.name] for i in session.get_inputs()}}
        onnx_out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        print(json.dumps({{"folder": str(folder), "torch": {{k: v.tolist() for k, v in torch_out.items()}},
                          "onnx": {{k: v.tolist() for k, v in onnx_out.items()}}}}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_ENDPOINT=_dead_endpoint(),
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert Path(result["folder"]) == pulled
    want = run_torch(models["formation_energy"], batch)
    for key in ("formation_energy", "embedding"):
        np.testing.assert_array_equal(np.array(result["torch"][key], dtype=np.float32), want[key])
        np.testing.assert_allclose(np.array(result["onnx"][key], dtype=np.float32), want[key], atol=1e-4, rtol=0)
    assert len(fake_hub.requests) == served, "the offline load must not contact the Hub"
