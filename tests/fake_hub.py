"""A Hugging Face Hub look-alike for tests: standard library only, 127.0.0.1 only, no internet.

It answers the requests that huggingface_hub 2.x sends for ``create_repo``, ``create_branch``,
``upload_folder``/``upload_file``, ``model_info``, ``list_repo_tree``, ``hf_hub_download`` and
``snapshot_download`` (see docs/stack-notes.md section 4). Uploads are always "regular": the preupload
answer never asks for LFS or Xet, so file contents arrive base64-encoded in the commit.

Blobs are stored on disk under ``<root>/blobs/<git oid>``; repos, branches and the commit history live
in memory, so a branch name or any past commit sha resolves. Load the ``fake_hub`` fixture with
``pytest_plugins = ["fake_hub"]`` (or ``-p fake_hub``) and point the client at ``fake_hub.url``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

DEFAULT_BRANCH = "main"


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob, which is what the Hub uses as ETag for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(timestamp))


class HubError(Exception):
    """An error answer; ``error_code`` goes to ``X-Error-Code``, which the client maps to its exceptions."""

    def __init__(
        self, status: int, message: str, *, error_code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    message: str
    timestamp: float
    files: dict[str, str]  # path in repo -> git blob oid


@dataclass
class Repo:
    repo_id: str
    private: bool
    created: float
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # branch -> head commit oid


class HubStore:
    """Repos and their commit histories; thread-safe, since the server answers requests in threads."""

    def __init__(self, root: Path) -> None:
        self.blobs_dir = root / "blobs"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self._repos: dict[str, Repo] = {}
        self._lock = threading.RLock()
        self._commit_counter = 0

    # -- repos and revisions ------------------------------------------------------------------------------
    def create_repo(self, repo_id: str, *, private: bool) -> bool:
        """Create a repo with an empty initial commit on ``main``; False if it already exists."""
        with self._lock:
            if repo_id in self._repos:
                return False
            repo = Repo(repo_id=repo_id, private=private, created=time.time())
            initial = self._new_commit(parent=None, message="initial commit", files={})
            repo.commits[initial.oid] = initial
            repo.branches[DEFAULT_BRANCH] = initial.oid
            self._repos[repo_id] = repo
            return True

    def repo(self, repo_id: str, *, authorized: bool = True) -> Repo:
        with self._lock:
            repo = self._repos.get(repo_id)
        # Like the Hub, a private repo is indistinguishable from a missing one without a token.
        if repo is None or (repo.private and not authorized):
            raise HubError(404, f"Repository {repo_id} not found", error_code="RepoNotFound")
        return repo

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """A branch name or a full commit sha -> its commit."""
        with self._lock:
            oid = repo.branches.get(revision, revision)
            commit = repo.commits.get(oid)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", error_code="RevisionNotFound")
        return commit

    def create_branch(self, repo: Repo, branch: str, starting_point: str | None) -> bool:
        with self._lock:
            if branch in repo.branches:
                return False
            start = self.resolve(repo, starting_point or DEFAULT_BRANCH)
            repo.branches[branch] = start.oid
            return True

    # -- commits and blobs --------------------------------------------------------------------------------
    def commit(
        self,
        repo: Repo,
        branch: str,
        *,
        message: str,
        added: dict[str, bytes],
        deleted: list[str],
        parent_commit: str | None = None,
    ) -> Commit:
        """Add a commit on top of ``branch``; deletions ending in "/" remove a whole folder."""
        with self._lock:
            if branch not in repo.branches:
                raise HubError(404, f"Branch {branch} not found in {repo.repo_id}", error_code="RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            if parent_commit is not None and parent_commit != head.oid:
                raise HubError(412, f"Parent commit {parent_commit} is not the head of {branch}")
            files = {
                path: oid
                for path, oid in head.files.items()
                if not any(path == gone or (gone.endswith("/") and path.startswith(gone)) for gone in deleted)
            }
            files.update({path: self._store_blob(data) for path, data in added.items()})
            commit = self._new_commit(parent=head.oid, message=message, files=files)
            repo.commits[commit.oid] = commit
            repo.branches[branch] = commit.oid
            return commit

    def read_blob(self, oid: str) -> bytes:
        return (self.blobs_dir / oid).read_bytes()

    def _store_blob(self, data: bytes) -> str:
        oid = git_blob_oid(data)
        path = self.blobs_dir / oid
        if not path.exists():
            path.write_bytes(data)
        return oid

    def _new_commit(self, *, parent: str | None, message: str, files: dict[str, str]) -> Commit:
        # The counter keeps two identical commits (same tree, message and parent) distinct.
        self._commit_counter += 1
        seed = json.dumps([parent, message, sorted(files.items()), self._commit_counter]).encode()
        return Commit(
            oid=hashlib.sha1(seed).hexdigest(), parent=parent, message=message, timestamp=time.time(), files=files
        )


# --- HTTP layer -------------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, payload: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"


class _Handler(BaseHTTPRequestHandler):
    """Routes a request to a ``FakeHub`` method.

    Paths are matched before unquoting, so that a quoted revision such as ``refs%2Fpr%2F1`` stays one
    path segment.
    """

    server: _Server
    ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
        (method, re.compile(pattern), action)
        for method, pattern, action in (
            ("POST", r"/api/repos/create", "create_repo"),
            ("POST", r"/api/validate-yaml", "validate_yaml"),
            ("GET", rf"/api/models/{_REPO}(?:/revision/{_REV})?", "model_info"),
            ("GET", rf"/api/models/{_REPO}/tree/{_REV}(?:/(?P<path>.+))?", "tree"),
            ("POST", rf"/api/models/{_REPO}/preupload/{_REV}", "preupload"),
            ("POST", rf"/api/models/{_REPO}/commit/{_REV}", "commit"),
            ("POST", rf"/api/models/{_REPO}/branch/{_REV}", "create_branch"),
            ("HEAD", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", "resolve_file"),
            ("GET", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", "resolve_file"),
        )
    )

    def do_GET(self) -> None:  # http.server naming
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: pytest output should only show test results."""

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        hub = self.server.hub
        hub.requests.append((self.command, self.path))
        try:
            reply = self._route(hub, url.path, parse_qs(url.query))
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
            reply = Reply.of_json({"error": err.message}, status=err.status)
            reply.headers.update(headers)
        self._send(reply)

    def _route(self, hub: FakeHub, path: str, query: dict[str, list[str]]) -> Reply:
        for method, pattern, action in self.ROUTES:
            match = pattern.fullmatch(path)
            if match and method == self.command:
                params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                handler: Callable[..., Reply] = getattr(hub, f"handle_{action}")
                return handler(self, query=query, **params)
        raise HubError(404, f"{self.command} {path} is not served by the fake Hub")

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def json_body(self) -> Any:
        try:
            return json.loads(self.body() or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    def has_token(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        headers = {"Content-Length": str(len(reply.body)), **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not block the shutdown at test teardown
    hub: FakeHub


class FakeHub:
    """The fake Hub server.

    ``url`` is its endpoint, ``root`` the folder holding the blobs, and ``requests`` logs every
    ``(method, raw path)`` received, e.g. to assert that offline code sent nothing.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.store = HubStore(self.root)
        self.requests: list[tuple[str, str]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("The fake Hub is not running.")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        # A short poll interval keeps shutdown (and so every test's teardown) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- helpers for assertions ---------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = DEFAULT_BRANCH) -> dict[str, bytes]:
        """Path -> content of every file of ``repo_id`` at ``revision``."""
        commit = self.store.resolve(self.store.repo(repo_id), revision)
        return {path: self.store.read_blob(oid) for path, oid in commit.files.items()}

    def head(self, repo_id: str, branch: str = DEFAULT_BRANCH) -> str:
        """The commit sha at the tip of ``branch``."""
        return self.store.resolve(self.store.repo(repo_id), branch).oid

    # -- request handlers ---------------------------------------------------------------------------------
    def handle_create_repo(self, request: _Handler, *, query: dict[str, list[str]]) -> Reply:
        _require_token(request)
        payload = request.json_body()
        if payload.get("type", "model") != "model":
            raise HubError(400, "The fake Hub serves model repos only")
        name, organization = payload.get("name"), payload.get("organization")
        if not name or not organization:
            raise HubError(400, "The fake Hub needs repo ids of the form 'org/name'")
        repo_id = f"{organization}/{name}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        created = self.store.create_repo(repo_id, private=private)
        body = {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if not created:
            # The client reads "url" from the 409 body when exist_ok=True.
            return Reply.of_json({**body, "error": "You already created this model repo"}, status=HTTPStatus.CONFLICT)
        return Reply.of_json(body)

    def handle_validate_yaml(self, request: _Handler, *, query: dict[str, list[str]]) -> Reply:
        request.json_body()  # read the body so the connection stays well-formed
        return Reply.of_json({"errors": [], "warnings": []})

    def handle_model_info(
        self, request: _Handler, *, query: dict[str, list[str]], repo: str, rev: str = DEFAULT_BRANCH
    ) -> Reply:
        found = self.store.repo(repo, authorized=request.has_token())
        commit = self.store.resolve(found, rev)
        with_blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [self._sibling(path, oid, with_blobs) for path, oid in sorted(commit.files.items())]
        return Reply.of_json(
            {
                "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": commit.oid,
                "lastModified": _iso(commit.timestamp),
                "createdAt": _iso(found.created),
                "private": found.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        )

    def _sibling(self, path: str, oid: str, with_blobs: bool) -> dict[str, Any]:
        if not with_blobs:
            return {"rfilename": path}
        return {"rfilename": path, "blobId": oid, "size": (self.store.blobs_dir / oid).stat().st_size}

    def handle_tree(
        self, request: _Handler, *, query: dict[str, list[str]], repo: str, rev: str, path: str = ""
    ) -> Reply:
        commit = self.store.resolve(self.store.repo(repo, authorized=request.has_token()), rev)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        under = {p: oid for p, oid in commit.files.items() if p.startswith(prefix)}
        if prefix and not under:
            raise HubError(
                404, f"{path} not found at {rev}", error_code="EntryNotFound", headers={"X-Repo-Commit": commit.oid}
            )
        return Reply.of_json(self._tree_entries(under, prefix, recursive))

    def _tree_entries(self, files: dict[str, str], prefix: str, recursive: bool) -> list[dict[str, Any]]:
        entries: dict[str, dict[str, Any]] = {}
        for path, oid in files.items():
            parts = path[len(prefix) :].split("/")
            # Every folder between `prefix` and the file is listed once, as the Hub does.
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder, "size": 0, "oid": _tree_oid(folder)})
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                size = (self.store.blobs_dir / oid).stat().st_size
                entries[path] = {"type": "file", "path": path, "size": size, "oid": oid}
        return [entries[key] for key in sorted(entries)]

    def handle_preupload(self, request: _Handler, *, query: dict[str, list[str]], repo: str, rev: str) -> Reply:
        _require_token(request)
        commit = self.store.resolve(self.store.repo(repo), rev)
        files = request.json_body().get("files", [])
        return Reply.of_json(
            {
                "commitOid": commit.oid,
                "files": [
                    {
                        "path": item["path"],
                        "uploadMode": "regular",  # never LFS/Xet: contents come base64-encoded in the commit
                        "shouldIgnore": False,
                        **({"oid": commit.files[item["path"]]} if item["path"] in commit.files else {}),
                    }
                    for item in files
                ],
            }
        )

    def handle_commit(self, request: _Handler, *, query: dict[str, list[str]], repo: str, rev: str) -> Reply:
        _require_token(request)
        if "create_pr" in query:
            raise HubError(400, "The fake Hub does not support pull requests")
        found = self.store.repo(repo)
        header, added, deleted = _parse_commit_ndjson(request.body())
        commit = self.store.commit(
            found,
            rev,
            message=header.get("summary") or "commit",
            added=added,
            deleted=deleted,
            parent_commit=header.get("parentCommit"),
        )
        return Reply.of_json(
            {"success": True, "commitOid": commit.oid, "commitUrl": f"{self.url}/{repo}/commit/{commit.oid}"}
        )

    def handle_create_branch(self, request: _Handler, *, query: dict[str, list[str]], repo: str, rev: str) -> Reply:
        _require_token(request)
        starting_point = request.json_body().get("startingPoint")
        if not self.store.create_branch(self.store.repo(repo), rev, starting_point):
            return Reply.of_json({"error": f"Branch {rev} already exists"}, status=HTTPStatus.CONFLICT)
        return Reply.of_json({})

    def handle_resolve_file(
        self, request: _Handler, *, query: dict[str, list[str]], repo: str, rev: str, path: str
    ) -> Reply:
        commit = self.store.resolve(self.store.repo(repo, authorized=request.has_token()), rev)
        oid = commit.files.get(path)
        if oid is None:
            # X-Repo-Commit lets the client cache the file's absence for this commit.
            raise HubError(
                404, f"{path} not found at {rev}", error_code="EntryNotFound", headers={"X-Repo-Commit": commit.oid}
            )
        return Reply(
            200,
            self.store.read_blob(oid),
            {"Content-Type": "application/octet-stream", "ETag": f'"{oid}"', "X-Repo-Commit": commit.oid},
        )


def _tree_oid(folder: str) -> str:
    return hashlib.sha1(f"tree {folder}".encode()).hexdigest()


def _require_token(request: _Handler) -> None:
    if not request.has_token():
        raise HubError(401, "Invalid credentials in Authorization header")


def _parse_commit_ndjson(body: bytes) -> tuple[dict[str, Any], dict[str, bytes], list[str]]:
    """Split a commit payload into its header, the added files and the deleted paths."""
    header: dict[str, Any] = {}
    added: dict[str, bytes] = {}
    deleted: list[str] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        key, value = item.get("key"), item.get("value", {})
        if key == "header":
            header = value
        elif key == "file":
            added[value["path"]] = _decode_content(value)
        elif key == "deletedFile":
            deleted.append(value["path"])
        elif key == "deletedFolder":
            deleted.append(value["path"].rstrip("/") + "/")
        else:
            # lfsFile would need an LFS/Xet store, which preupload never asks for.
            raise HubError(400, f"The fake Hub does not support commit operations of kind {key!r}")
    return header, added, deleted


def _decode_content(value: dict[str, Any]) -> bytes:
    if value.get("encoding") != "base64":
        return str(value.get("content", "")).encode()
    try:
        return base64.b64decode(value["content"], validate=True)
    except (binascii.Error, KeyError) as err:
        raise HubError(400, f"Invalid base64 content for {value.get('path')}") from err


@pytest.fixture
def fake_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """A running fake Hub on 127.0.0.1 (random port), stopped after the test."""
    with FakeHub(tmp_path_factory.mktemp("fake_hub")) as hub:
        yield hub
