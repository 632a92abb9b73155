"""Model folders: where they come from, whether they are intact, and how they reach the Hugging Face Hub.

A model folder (one per model, Hugging Face style) holds ``config.json``, ``model.safetensors``,
``model.onnx``, ``README.md`` (the model card), optionally a ``*.png`` plot, and ``manifest.json``
with the sha256 of every other published file. Only files matching :data:`ALLOWED_PATTERNS` are ever
uploaded, downloaded or listed in a manifest, so no pickle ever travels.

This module is imported by the serving side, which has no torch: it must never import torch, and it
imports ``huggingface_hub`` only inside the functions that talk to the Hub.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from sitenet.errors import ChecksumMismatchError, ModelLoadError

__all__ = [
    "ALLOWED_PATTERNS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ZOO_DIR",
    "bundled_models",
    "pull",
    "push",
    "resolve",
    "verify_folder",
    "write_manifest",
    "zoo_dir",
]

#: The only files that are uploaded, downloaded or covered by a manifest. Never pickle.
ALLOWED_PATTERNS: tuple[str, ...] = ("*.json", "*.safetensors", "*.onnx", "*.md", "*.png")

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1

#: Default location of the bundled models; ``SITENET_ZOO_DIR`` overrides it (read at call time).
ZOO_DIR: Path = Path(__file__).resolve().parents[1] / "zoo"

# Hidden entries (``.cache/`` written by snapshot_download(local_dir=...), ``.git``...) are local
# bookkeeping, not part of the model, so they are neither hashed nor uploaded.
_HIDDEN_PATTERNS: tuple[str, ...] = (".*", "*/.*")

# Deliberately stricter than a path: "./x" or "../x" must never be mistaken for a repo id.
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_COMMIT_SHA_RE = re.compile(r"[0-9a-f]{40}")
_TRUE_VALUES = {"1", "on", "yes", "true"}
_HASH_CHUNK = 1 << 20


# --- manifest -------------------------------------------------------------------------------------------
def _library_version() -> str:
    import sitenet

    return str(getattr(sitenet, "__version__", "0.0.0"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_published(relpath: str) -> bool:
    """Whether a folder-relative POSIX path is a file that :func:`push` would upload."""
    if any(part.startswith(".") for part in relpath.split("/")):
        return False
    return any(fnmatch.fnmatch(relpath, pattern) for pattern in ALLOWED_PATTERNS)


def _published_files(folder: Path) -> list[str]:
    """Folder-relative POSIX paths of the files a manifest must cover, sorted."""
    relpaths = (path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    return sorted(rel for rel in relpaths if rel != MANIFEST_NAME and _is_published(rel))


def write_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Hash the files of a model folder and write ``manifest.json`` next to them.

    The manifest covers every file that would be published, i.e. matching :data:`ALLOWED_PATTERNS`
    outside hidden directories, except ``manifest.json`` itself. Files that are never uploaded
    (a stray ``*.pkl``, a log) are left out on purpose: listing them would make every downloaded copy
    fail verification.

    Args:
        folder: The model folder.

    Returns:
        The manifest that was written.

    Raises:
        ModelLoadError: If ``folder`` is not a directory.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ModelLoadError(f"Cannot write a manifest: model folder {root} does not exist.")
    manifest = {
        "format_version": FORMAT_VERSION,
        "library": "sitenet",
        "library_version": _library_version(),
        "files": {rel: _sha256(root / rel) for rel in _published_files(root)},
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _read_manifest(root: Path) -> dict[str, Any]:
    """Load and structurally validate ``manifest.json`` of ``root``."""
    if not root.is_dir():
        raise ModelLoadError(f"Model folder {root} does not exist or is not a directory.")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"Model folder {root} has no {MANIFEST_NAME}; create it with sitenet.hub.write_manifest({str(root)!r})."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"Cannot parse {path}: {err}") from err
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(manifest).__name__}.")
    version = manifest.get("format_version")
    # bool is an int subclass: `true` must not pass for version 1.
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} has format_version {version!r}; this sitenet reads format_version {FORMAT_VERSION} only.",
            detail={"folder": str(root), "format_version": version},
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ModelLoadError(f"{path}: 'files' must map relative paths to sha256 hex strings.")
    return manifest


def _check_relpath(root: Path, relpath: str) -> Path:
    """Resolve a manifest entry inside ``root``, refusing anything that escapes it."""
    parts = relpath.split("/")
    if relpath.startswith("/") or "\\" in relpath or any(part in ("", ".", "..") for part in parts):
        raise ModelLoadError(
            f"{root / MANIFEST_NAME} lists an unsafe path {relpath!r}; entries must be plain relative paths."
        )
    return root.joinpath(*parts)


def verify_folder(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a model folder against its ``manifest.json``.

    Args:
        folder: The model folder.

    Returns:
        The parsed manifest.

    Raises:
        ModelLoadError: If the folder or its manifest is missing or unparsable, the format version is
            unsupported, an entry is not a plain relative path, or a listed file is missing.
        ChecksumMismatchError: If a listed file's sha256 differs from the manifest; the message names
            the file and both hashes, which are also in ``detail``.
    """
    root = Path(folder)
    manifest = _read_manifest(root)
    for relpath, expected in sorted(manifest["files"].items()):
        path = _check_relpath(root, relpath)
        if not path.is_file():
            raise ModelLoadError(
                f"Model folder {root} is incomplete: {relpath} is listed in {MANIFEST_NAME} but missing.",
                detail={"folder": str(root), "file": relpath},
            )
        actual = _sha256(path)
        if actual != expected.lower():
            raise ChecksumMismatchError(
                f"Checksum mismatch for {relpath} in {root}: expected sha256 {expected}, got {actual}.",
                detail={"folder": str(root), "file": relpath, "expected": expected, "actual": actual},
            )
    return manifest


# --- bundled zoo ----------------------------------------------------------------------------------------
def zoo_dir() -> Path:
    """The folder holding the bundled models: ``$SITENET_ZOO_DIR`` if set, else :data:`ZOO_DIR`."""
    override = os.environ.get("SITENET_ZOO_DIR")
    return Path(override).expanduser() if override else ZOO_DIR


def bundled_models() -> list[str]:
    """Names of the bundled models (sub-folders of :func:`zoo_dir`), sorted; empty if there is no zoo."""
    root = zoo_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


# --- Hub ------------------------------------------------------------------------------------------------
def _env_endpoint() -> str | None:
    # Read at call time: huggingface_hub reads HF_ENDPOINT only once, at its import.
    return os.environ.get("HF_ENDPOINT") or None


def _env_cache_dir() -> str | None:
    # Same reason as _env_endpoint: HF_HUB_CACHE may be set after huggingface_hub was imported.
    return os.environ.get("HF_HUB_CACHE") or None


def _as_path(path: str | os.PathLike[str] | None) -> Path | None:
    return Path(path).expanduser() if path else None


def _offline_requested() -> bool:
    """HF_HUB_OFFLINE as it is now, or as huggingface_hub saw it at import time."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES or constants.is_offline_mode()


def _describe(repo_id: str, revision: str | None) -> str:
    return f"Hub model {repo_id!r}" + (f" at revision {revision!r}" if revision else "")


def _download(
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    local_dir: str | os.PathLike[str] | None,
    endpoint: str | None,
) -> Path:
    """``snapshot_download`` restricted to :data:`ALLOWED_PATTERNS`, with its errors made actionable."""
    import httpx2
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = endpoint or _env_endpoint()
    cache = _as_path(cache_dir or _env_cache_dir())
    target = _as_path(local_dir)
    offline = _offline_requested()
    what = _describe(repo_id, revision)
    where = endpoint or constants.ENDPOINT
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            local_dir=target,
            allow_patterns=list(ALLOWED_PATTERNS),
            endpoint=endpoint,
            # Passed explicitly so that HF_HUB_OFFLINE set after huggingface_hub's import still counts.
            local_files_only=offline,
        )
    except HFValidationError as err:
        raise ModelLoadError(f"{repo_id!r} is not a valid Hub repo id: {err}") from err
    except RevisionNotFoundError as err:
        raise ModelLoadError(
            f"{what} does not exist on {where}: check the branch, tag or commit sha.",
            detail={"repo_id": repo_id, "revision": revision},
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelLoadError(
            f"{what} was not found on {where}: check the repo id, and pass a token (or set HF_TOKEN) "
            "if the repo is private.",
            detail={"repo_id": repo_id, "revision": revision},
        ) from err
    except LocalEntryNotFoundError as err:
        where_cached = target or cache or constants.HF_HUB_CACHE
        if offline:
            message = (
                f"{what} is not in the local cache ({where_cached}) and HF_HUB_OFFLINE=1: download it once with "
                f"network access (sitenet.hub.pull({repo_id!r})) or unset HF_HUB_OFFLINE."
            )
        else:
            message = (
                f"{what} could not be fetched from {where} and is not in the local cache ({where_cached}): check the "
                "network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use cached models only."
            )
        raise ModelLoadError(message, detail={"repo_id": repo_id, "revision": revision}) from err
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as err:
        raise ModelLoadError(
            f"Downloading {what} from {where} failed: {err}", detail={"repo_id": repo_id, "revision": revision}
        ) from err
    return Path(path)


def resolve(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = True,
) -> Path:
    """Find a model folder from a local path, a bundled model name or a Hub repo id.

    Tried in order: (1) an existing local directory; (2) the name of a bundled model; (3) a Hub repo id
    ``org/name``, downloaded with ``snapshot_download`` (only :data:`ALLOWED_PATTERNS`) from
    ``$HF_ENDPOINT`` if set. With ``HF_HUB_OFFLINE=1`` only the local Hub cache is used.

    Args:
        name_or_path: A folder, a bundled model name or a Hub repo id.
        revision: Branch, tag or commit sha; only used for Hub repo ids.
        cache_dir: Hub cache to use; defaults to ``$HF_HUB_CACHE`` or huggingface_hub's default.
        verify: Check the folder against its manifest before returning it.

    Returns:
        The model folder.

    Raises:
        ModelLoadError: If nothing matches, the download fails (with what to do about it), or the
            folder fails verification.
        ChecksumMismatchError: If ``verify`` and a file differs from the manifest.
    """
    name = os.fspath(name_or_path)
    if not name:
        # Path("") is the current directory, which is never what an empty name means.
        raise ModelLoadError("An empty model name was given.")
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        folder = candidate
    elif isinstance(name_or_path, str) and name in bundled_models():
        folder = zoo_dir() / name
    elif isinstance(name_or_path, str) and _REPO_ID_RE.fullmatch(name):
        folder = _download(name, revision=revision, cache_dir=cache_dir, local_dir=None, endpoint=None)
    else:
        bundled = ", ".join(bundled_models()) or "none"
        raise ModelLoadError(
            f"{name!r} is not a model folder, a bundled model (bundled: {bundled}) or a Hub repo id 'org/name'.",
            detail={"name": name, "bundled": bundled_models()},
        )
    # A user's own folder (e.g. straight from save_pretrained or `sitenet pretrain`) may carry no manifest:
    # there is nothing recorded to check it against. Zoo and Hub folders always have one and are checked.
    if verify and not (folder is candidate and not (folder / MANIFEST_NAME).exists()):
        verify_folder(folder)
    return folder


def model_type(folder: str | os.PathLike[str]) -> str:
    """The ``model_type`` of a model folder's config.json: ``sitenet`` (an encoder) or ``sitenet-regressor``.

    Raises:
        ModelLoadError: config.json is missing or unreadable, or names no SiteNet model type."""
    path = Path(folder) / "config.json"
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise ModelLoadError(f"{folder}: cannot read config.json: {err}") from None
    if kind not in ("sitenet", "sitenet-regressor"):
        raise ModelLoadError(f"{folder}: config.json has model_type {kind!r}, not a SiteNet model "
                             "('sitenet' or 'sitenet-regressor')")
    return kind


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Download a model from the Hub and verify it.

    Args:
        repo_id: Hub repo id ``org/name``.
        revision: Branch, tag or commit sha; defaults to ``main``.
        local_dir: Download into this folder (real files plus a hidden ``.cache/``) instead of the
            Hub cache.
        endpoint: Hub URL; defaults to ``$HF_ENDPOINT`` or https://huggingface.co.
        cache_dir: Hub cache to use when ``local_dir`` is not given; defaults to ``$HF_HUB_CACHE``.

    Returns:
        The verified model folder.

    Raises:
        ModelLoadError: If the download fails or the folder fails verification.
        ChecksumMismatchError: If a downloaded file differs from the manifest.
    """
    folder = _download(repo_id, revision=revision, cache_dir=cache_dir, local_dir=local_dir, endpoint=endpoint)
    verify_folder(folder)
    return folder


def _check_publishable(root: Path, manifest: dict[str, Any]) -> None:
    """Refuse a manifest listing files that would not be uploaded: the published copy could never verify."""
    unpublished = sorted(rel for rel in manifest["files"] if not _is_published(rel))
    if unpublished:
        raise ModelLoadError(
            f"{root / MANIFEST_NAME} lists {', '.join(unpublished)}, which would not be uploaded (allowed: "
            f"{', '.join(ALLOWED_PATTERNS)}); remove them and rerun write_manifest.",
            detail={"folder": str(root), "files": unpublished},
        )


def push(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Publish a verified model folder to the Hub.

    The folder is verified first so that a corrupt model is never published. The repo is created if
    needed, and so is the branch ``revision``. Only :data:`ALLOWED_PATTERNS` outside hidden folders
    are uploaded.

    Args:
        folder: The model folder, with an up-to-date ``manifest.json``.
        repo_id: Hub repo id ``org/name``.
        revision: Branch to commit to; defaults to ``main``.
        token: Hub token; defaults to ``$HF_TOKEN`` or the saved login.
        private: Create the repo as private (ignored if it exists).
        endpoint: Hub URL; defaults to ``$HF_ENDPOINT`` or https://huggingface.co.
        commit_message: Commit summary; a default names the folder and the sitenet version.

    Returns:
        The commit sha, usable as ``revision`` in :func:`resolve` and :func:`pull` to pin this upload.

    Raises:
        ModelLoadError: If the folder fails verification or lists files that would not be uploaded.
        ChecksumMismatchError: If a file differs from the manifest.
        ValueError: If ``revision`` is a commit sha (commits go to branches).
        huggingface_hub.errors.HfHubHTTPError: If the Hub refuses the request (e.g. bad token).
    """
    root = Path(folder)
    manifest = verify_folder(root)
    _check_publishable(root, manifest)
    if revision is not None and _COMMIT_SHA_RE.fullmatch(revision):
        raise ValueError(f"push needs a branch name as revision, not the commit sha {revision}.")

    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint or _env_endpoint(), token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(
        folder_path=root,
        repo_id=repo_id,
        revision=revision,
        allow_patterns=list(ALLOWED_PATTERNS),
        ignore_patterns=list(_HIDDEN_PATTERNS),
        commit_message=commit_message or f"Upload {root.name} (sitenet {_library_version()})",
    )
    return str(info.oid)
