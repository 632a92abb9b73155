"""Tests of sitenet.hub: manifests, verification, resolution, and push/pull through the fake Hub.

Nothing here reaches huggingface.co: every Hub call goes to the ``fake_hub`` fixture (tests/fake_hub.py)
or, in offline mode, to a port nobody listens on.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from safetensors.numpy import save_file

from sitenet import hub
from sitenet.errors import ChecksumMismatchError, ModelLoadError

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_ID = "acme/tiny"
X = np.array([[0.5, -1.0, 2.0]], dtype=np.float32)
MODEL_FILES = {"README.md", "config.json", "model.onnx", "model.safetensors"}


# --- helpers ----------------------------------------------------------------------------------------------
def build_model_folder(folder: Path, *, offset: float = 1.0) -> Path:
    """A tiny but real model folder whose ONNX graph computes ``y = x + offset``; manifest included."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"offset": offset, "n_features": 3}), encoding="utf-8")
    save_file({"offset": np.full(3, offset, dtype=np.float32)}, str(folder / "model.safetensors"))
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], ["y"])],
        "add_offset",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor("offset", TensorProto.FLOAT, [1], [offset])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # old enough for any onnxruntime the serving side may pin
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "README.md").write_text(
        "---\nlibrary_name: sitenet\nlicense: mit\ntags: [test]\n---\n\n# tiny\n\ny = x + offset\n", encoding="utf-8"
    )
    hub.write_manifest(folder)
    return folder


def run_onnx(folder: Path) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": X})[0])


def dead_endpoint() -> str:
    """A local URL nobody listens on: any request to it fails at once instead of retrying the internet."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run_python(code: str, **env: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter and return its last stdout line, parsed as JSON.

    A fresh process is the only way to make huggingface_hub read ``env`` (HF_HUB_OFFLINE, HF_ENDPOINT,
    HF_HUB_CACHE) at its import.
    """
    clean = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    clean.update(PYTHONPATH=str(REPO_ROOT), HF_TOKEN="dummy-token", HF_HUB_DISABLE_PROGRESS_BARS="1", **env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=clean,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# --- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return build_model_folder(tmp_path / "tiny")


@pytest.fixture
def online_hub(fake_hub: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The fake Hub, with this process pointed at it even if a conftest turned offline mode on."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", "dummy-token")
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return fake_hub


# --- manifest and verification ----------------------------------------------------------------------------
def test_write_manifest_hashes_every_published_file(model_dir: Path) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())

    assert manifest["format_version"] == 1
    assert manifest["library"] == "sitenet"
    assert isinstance(manifest["library_version"], str) and manifest["library_version"]
    assert set(manifest["files"]) == MODEL_FILES
    for name, digest in manifest["files"].items():
        assert digest == hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
    assert hub.verify_folder(model_dir) == manifest


def test_manifest_leaves_out_hidden_and_unpublishable_files(model_dir: Path) -> None:
    (model_dir / "weights.pkl").write_bytes(b"\x80\x04pickle")
    (model_dir / ".cache" / "huggingface").mkdir(parents=True)
    (model_dir / ".cache" / "huggingface" / "state.json").write_text("{}")
    (model_dir / "plots").mkdir()
    (model_dir / "plots" / "parity.png").write_bytes(b"\x89PNG fake")

    manifest = hub.write_manifest(model_dir)

    assert set(manifest["files"]) == MODEL_FILES | {"plots/parity.png"}


def test_tampered_byte_raises_checksum_mismatch_naming_the_file(model_dir: Path) -> None:
    target = model_dir / "model.safetensors"
    expected = hashlib.sha256(target.read_bytes()).hexdigest()
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()

    with pytest.raises(ChecksumMismatchError) as info:
        hub.verify_folder(model_dir)

    assert "model.safetensors" in info.value.message
    assert expected in info.value.message and actual in info.value.message
    assert info.value.detail["file"] == "model.safetensors"
    assert (info.value.detail["expected"], info.value.detail["actual"]) == (expected, actual)


def _remove_manifest(folder: Path) -> None:
    (folder / "manifest.json").unlink()


def _garble_manifest(folder: Path) -> None:
    (folder / "manifest.json").write_text("{not json")


def _future_format(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))


def _remove_listed_file(folder: Path) -> None:
    (folder / "model.onnx").unlink()


def _escape_folder(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["../outside.json"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("breakage", "needle"),
    [
        (_remove_manifest, "no manifest.json"),
        (_garble_manifest, "Cannot parse"),
        (_future_format, "format_version 2"),
        (_remove_listed_file, "model.onnx"),
        (_escape_folder, "unsafe path"),
    ],
)
def test_broken_folder_raises_model_load_error(model_dir: Path, breakage: Any, needle: str) -> None:
    breakage(model_dir)

    with pytest.raises(ModelLoadError) as info:
        hub.verify_folder(model_dir)

    assert type(info.value) is ModelLoadError
    assert needle in info.value.message
    assert str(model_dir) in info.value.message


def test_missing_folder_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        hub.verify_folder(tmp_path / "nowhere")


# --- local resolution -------------------------------------------------------------------------------------
def test_resolve_local_folder_and_bundled_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zoo = tmp_path / "zoo"
    bundled = build_model_folder(zoo / "tiny-bandgap")
    monkeypatch.setenv("SITENET_ZOO_DIR", str(zoo))

    assert hub.bundled_models() == ["tiny-bandgap"]
    assert hub.resolve("tiny-bandgap") == bundled
    assert hub.resolve(bundled) == bundled
    assert hub.resolve(str(bundled)) == bundled


def test_resolve_unknown_name_lists_bundled_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_model_folder(tmp_path / "zoo" / "tiny-bandgap")
    monkeypatch.setenv("SITENET_ZOO_DIR", str(tmp_path / "zoo"))

    with pytest.raises(ModelLoadError, match="tiny-bandgap"):
        hub.resolve("no-such-model")


def _imported_modules(nodes: Iterable[ast.AST]) -> set[str]:
    """Top-level package names imported by the given AST nodes."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_hub_module_imports_neither_torch_nor_huggingface_hub_at_import() -> None:
    tree = ast.parse(Path(hub.__file__).read_text(encoding="utf-8"))

    assert "torch" not in _imported_modules(ast.walk(tree))
    assert not _imported_modules(tree.body) & {"huggingface_hub", "httpx2"}


# --- Hub round trips ----------------------------------------------------------------------------------------
def test_push_then_pull_to_local_dir(online_hub: Any, model_dir: Path, tmp_path: Path) -> None:
    oid = hub.push(model_dir, REPO_ID)

    assert oid == online_hub.head(REPO_ID)
    assert set(online_hub.files(REPO_ID)) == MODEL_FILES | {"manifest.json"}
    pulled = hub.pull(REPO_ID, local_dir=tmp_path / "pulled")
    assert pulled == (tmp_path / "pulled").resolve()
    assert files_of(pulled) == files_of(model_dir)


def test_push_skips_pickles_and_hidden_files(online_hub: Any, model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "weights.pkl").write_bytes(b"\x80\x04pickle")
    (model_dir / ".cache").mkdir()
    (model_dir / ".cache" / "secret.json").write_text("{}")
    hub.write_manifest(model_dir)

    hub.push(model_dir, REPO_ID)

    assert set(online_hub.files(REPO_ID)) == MODEL_FILES | {"manifest.json"}
    pulled = hub.pull(REPO_ID, local_dir=tmp_path / "pulled")
    assert not (pulled / "weights.pkl").exists()


def test_push_refuses_a_corrupt_folder_before_contacting_the_hub(online_hub: Any, model_dir: Path) -> None:
    (model_dir / "config.json").write_text('{"offset": 99}')

    with pytest.raises(ChecksumMismatchError, match=r"config\.json"):
        hub.push(model_dir, REPO_ID)

    assert online_hub.requests == []


def test_push_at_a_revision_and_resolve_by_commit_sha(online_hub: Any, model_dir: Path) -> None:
    first = hub.push(model_dir, REPO_ID)
    build_model_folder(model_dir, offset=2.0)
    second = hub.push(model_dir, REPO_ID, revision="dev", commit_message="offset 2")

    assert first != second
    assert online_hub.head(REPO_ID) == first, "pushing to a branch must leave main alone"
    assert online_hub.head(REPO_ID, "dev") == second
    assert json.loads((hub.resolve(REPO_ID, revision=first) / "config.json").read_text())["offset"] == 1.0
    assert json.loads((hub.resolve(REPO_ID, revision=second) / "config.json").read_text())["offset"] == 2.0
    assert hub.resolve(REPO_ID, revision="dev") == hub.resolve(REPO_ID, revision=second)
    np.testing.assert_allclose(run_onnx(hub.resolve(REPO_ID)), X + 1.0)


def test_unknown_repo_or_revision_online_raises_model_load_error(online_hub: Any, model_dir: Path) -> None:
    hub.push(model_dir, REPO_ID)

    with pytest.raises(ModelLoadError, match="not found"):
        hub.resolve("acme/missing")
    with pytest.raises(ModelLoadError, match="revision 'v9'"):
        hub.resolve(REPO_ID, revision="v9")


def test_unreachable_hub_raises_model_load_error_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", dead_endpoint())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1 to use cached models only"):
        hub.resolve(REPO_ID)


def test_fake_hub_answers_metadata_requests_like_the_hub(online_hub: Any, model_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    (model_dir / "plots").mkdir()
    (model_dir / "plots" / "parity.png").write_bytes(b"\x89PNG fake")
    hub.write_manifest(model_dir)
    commit = hub.push(model_dir, REPO_ID)
    api = HfApi(endpoint=online_hub.url, token="dummy-token")

    latest, pinned = api.model_info(REPO_ID), api.model_info(REPO_ID, revision=commit)
    assert latest.sha == pinned.sha == commit
    assert {s.rfilename for s in latest.siblings or []} == MODEL_FILES | {"manifest.json", "plots/parity.png"}
    assert [f.path for f in api.list_repo_tree(REPO_ID, path_in_repo="plots", revision=commit)] == ["plots/parity.png"]
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO_ID, "missing.json", endpoint=online_hub.url, cache_dir=tmp_path / "cache")


def test_pull_into_fresh_cache_then_resolve_offline_in_new_processes(
    online_hub: Any, model_dir: Path, tmp_path: Path
) -> None:
    commit = hub.push(model_dir, REPO_ID)
    cache = str(tmp_path / "fresh_cache")

    pulled = run_python(
        f"""
        import json
        from sitenet import hub
        print(json.dumps({{"folder": str(hub.pull({REPO_ID!r}))}}))
        """,
        HF_HUB_CACHE=cache,
        HF_ENDPOINT=online_hub.url,
    )
    assert Path(pulled["folder"]).is_relative_to(cache)
    served = len(online_hub.requests)

    offline = run_python(
        f"""
        import json, time
        import numpy as np, onnxruntime as ort
        from sitenet import hub
        from sitenet.errors import ModelLoadError

        folder = hub.resolve({REPO_ID!r})
        pinned = hub.resolve({REPO_ID!r}, revision={commit!r})
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        y = session.run(None, {{"x": np.array({X.tolist()!r}, dtype=np.float32)}})[0]
        start = time.perf_counter()
        try:
            hub.resolve("acme/not-cached")
            error = None
        except ModelLoadError as err:
            error = err.message
        print(json.dumps({{"folder": str(folder), "pinned": str(pinned), "y": y.tolist(), "error": error,
                          "seconds": time.perf_counter() - start}}))
        """,
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=cache,
        HF_ENDPOINT=dead_endpoint(),
    )

    assert offline["folder"] == offline["pinned"] == pulled["folder"]
    np.testing.assert_allclose(np.array(offline["y"], dtype=np.float32), run_onnx(model_dir))
    np.testing.assert_allclose(np.array(offline["y"], dtype=np.float32), X + 1.0)
    assert offline["error"] is not None
    assert "not in the local cache" in offline["error"] and "HF_HUB_OFFLINE=1" in offline["error"]
    assert offline["seconds"] < 5.0
    assert len(online_hub.requests) == served, "offline mode must not contact the Hub"


def test_a_folder_that_is_not_a_sitenet_model_is_named_with_its_model_type(tmp_path):
    import sitenet
    from sitenet.errors import ModelLoadError
    from sitenet.hub import model_type

    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="model_type 'bert', not a SiteNet model"):
        model_type(tmp_path)
    with pytest.raises(ModelLoadError, match="not a SiteNet model"):
        sitenet.load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read config.json"):
        model_type(tmp_path)
