"""A small in-process fake Hugging Face Hub for integration tests.

The server runs on ``127.0.0.1`` (random free port) in a daemon thread and implements the handful of endpoints that
``huggingface_hub`` 2.4 calls for ``create_repo``, ``upload_folder`` / ``PyTorchModelHubMixin.push_to_hub`` and
``hf_hub_download`` / ``snapshot_download`` of *model* repos, and of *Space* repos, which ``hub.repos`` keys as
``"spaces/org/name"``. Every uploaded file is answered ``"regular"`` by the
preupload endpoint, so the client inlines the content base64 in the commit NDJSON: no LFS batch, Xet token or CAS
call is ever made, even with ``hf_xet`` installed.

``HF_ENDPOINT`` is read by ``huggingface_hub`` at import time, so the client must see
``HF_ENDPOINT=hub.endpoint`` *before* it imports ``huggingface_hub`` (typically: run the client in a subprocess).

Example::

    from fake_hub import FakeHub

    with FakeHub(forbidden={"acme/secret"}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
        subprocess.run([sys.executable, "-c", client_code], env=env, check=True)
        assert hub.repos["acme/tiny"]["config.json"] == b"..."

Endpoints (``{repo}`` is ``org/name``, ``{rev}`` a branch name or a 40-hex commit oid):

==========================================================  ===============================================
``POST /api/repos/create``                                  201 ``{"url"}``; 409 if it exists
``POST /api/validate-yaml``                                 200 ``{}``
``POST /api/models/{repo}/preupload/{rev}``                 every file ``"regular"``
``POST /api/models/{repo}/commit/{rev}``                    NDJSON commit -> ``{"commitUrl", "commitOid"}``
``GET  /api/models/{repo}[/revision/{rev}]``                ``{"id", "sha", "siblings": [{"rfilename"}]}``
``GET  /api/models/{repo}/tree/{rev}[/{path}]``             ``[{"type", "path", "size", "oid"}]``
``HEAD|GET /{repo}/resolve/{rev}/{path}``                   file bytes, ``X-Repo-Commit``, ``ETag``
``/api/spaces/...``, ``/spaces/{repo}/resolve/...``         the same for Space repos (created with an ``sdk``)
``GET  /api/agent-harnesses``                               404 (huggingface_hub's best-effort telemetry)
anything else                                               404 JSON error, recorded in ``hub.unhandled``
==========================================================  ===============================================

Write endpoints (create, preupload, commit) answer 401 without an ``Authorization: Bearer <token>`` header (or with a
token outside ``valid_tokens`` when that is set). Every endpoint touching a repo in ``hub.forbidden`` answers 403.
Reads of a private repo without a token answer 401 with ``X-Error-Code: RepoNotFound``, like the real Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeHub", "git_blob_oid", "run_client"]

DEFAULT_NAMESPACE = "fake-user"
SPACES_PREFIX = "spaces/"  # a Space's key in FakeHub.repos: "spaces/org/name"
_COMMIT_OID_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_oid(content: bytes) -> str:
    """Return the git blob sha1 of ``content`` (what the Hub reports as ``oid``/``ETag`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _HubError(Exception):
    """An HTTP error answer: status code, message, optional ``X-Error-Code`` and extra JSON body fields."""

    def __init__(
        self, status: int, message: str, error_code: str | None = None, extra: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.extra = dict(extra or {})


class _Repo:
    """Server-side state of one model repo: branches and the file snapshot of each commit."""

    def __init__(self, repo_id: str, private: bool) -> None:
        self.repo_id = repo_id
        self.private = private
        self.branches: dict[str, str] = {}
        self.snapshots: dict[str, dict[str, bytes]] = {}
        self.nb_prs = 0


class FakeHub:
    """In-process fake Hugging Face Hub serving model repos over HTTP on ``127.0.0.1``.

    Use it as a context manager (``with FakeHub() as hub:``) or call :meth:`start` / :meth:`stop`.

    Attributes:
        endpoint: Base URL to put in ``HF_ENDPOINT`` (``http://127.0.0.1:<port>``), set once started.
        repos: ``repo_id -> {path: bytes}`` of the latest commit on the ``main`` branch.
        commits: ``(repo_id, commit message, [paths added or deleted])`` for every commit received, in order.
        requests: ``(method, path)`` of every request received, in order (path without the query string).
        unhandled: ``(method, path)`` of the requests that matched no route (answered 404).
        errors: tracebacks of requests that crashed the fake itself (answered 400); should stay empty.
        forbidden: repo ids for which every request is answered 403.
        valid_tokens: if not ``None``, only these bearer tokens are accepted on write endpoints.
        report_remote_oids: if ``True`` (the real Hub's behaviour), preupload reports the oid of files that already
            exist, so the client skips unchanged files and an all-unchanged upload creates no commit.
    """

    def __init__(
        self,
        forbidden: Iterable[str] = (),
        valid_tokens: Iterable[str] | None = None,
        report_remote_oids: bool = True,
    ) -> None:
        self.endpoint: str = ""
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[tuple[str, str, list[str]]] = []
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.forbidden: set[str] = set(forbidden)
        self.valid_tokens: set[str] | None = set(valid_tokens) if valid_tokens is not None else None
        self.report_remote_oids = report_remote_oids
        self._state: dict[str, _Repo] = {}
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeHub:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None:
            return self
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
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

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests

    def create_repo(self, repo_id: str, files: Mapping[str, bytes] | None = None, private: bool = False) -> str:
        """Create ``repo_id`` server-side (optionally with an initial commit of ``files``); return its head oid."""
        with self._lock:
            if repo_id in self._state:
                raise ValueError(f"Repo {repo_id} already exists on the FakeHub")
            repo = self._new_repo(repo_id, private)
            if files:
                ops = [("file", path, bytes(content)) for path, content in files.items()]
                return self._apply_commit(repo, "main", "Add files (FakeHub seed)", ops)
            return repo.branches["main"]

    def head(self, repo_id: str, revision: str = "main") -> str:
        """Return the commit oid that ``revision`` of ``repo_id`` points to."""
        with self._lock:
            return self._resolve(self._get_repo(repo_id), revision)

    def files_at(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Return a copy of the files of ``repo_id`` at ``revision`` (branch name or commit oid)."""
        with self._lock:
            repo = self._get_repo(repo_id)
            return dict(repo.snapshots[self._resolve(repo, revision)])

    # ------------------------------------------------------------------ state (callers hold the lock)

    def _new_repo(self, repo_id: str, private: bool) -> _Repo:
        repo = _Repo(repo_id, private)
        self._state[repo_id] = repo
        oid = self._new_commit_oid(repo_id, "initial commit")
        repo.snapshots[oid] = {}
        repo.branches["main"] = oid
        self.repos[repo_id] = {}
        return repo

    def _new_commit_oid(self, repo_id: str, message: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{repo_id}\0{message}\0{self._counter}\0{time.time_ns()}".encode()).hexdigest()

    def _get_repo(self, repo_id: str) -> _Repo:
        repo = self._state.get(repo_id)
        if repo is None:
            raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        if _COMMIT_OID_RE.match(revision) and revision in repo.snapshots:
            return revision
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _apply_commit(self, repo: _Repo, branch: str, message: str, ops: list[tuple[str, str, bytes]]) -> str:
        """Apply ``(kind, path, content)`` operations on top of ``branch`` and return the new commit oid."""
        parent = repo.branches.get(branch) or repo.branches["main"]
        files = dict(repo.snapshots[parent])
        touched: list[str] = []
        for kind, path, content in ops:
            if kind == "file":
                files[path] = content
                touched.append(path)
            elif kind == "deletedFile":
                if files.pop(path, None) is not None:
                    touched.append(path)
            elif kind == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for existing in [p for p in files if p.startswith(prefix)]:
                    del files[existing]
                    touched.append(existing)
        oid = self._new_commit_oid(repo.repo_id, message)
        repo.snapshots[oid] = files
        repo.branches[branch] = oid
        if branch == "main":
            self.repos[repo.repo_id] = dict(files)
        self.commits.append((repo.repo_id, message, touched))
        return oid


class _Server(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` carrying a reference to its :class:`FakeHub`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], hub: FakeHub) -> None:
        super().__init__(address, handler)
        self.hub = hub


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to the matching fake endpoint."""

    protocol_version = "HTTP/1.1"
    server: _Server
    query: dict[str, str]
    body: bytes

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def do_GET(self) -> None:
        """Handle a GET request."""
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        """Handle a HEAD request."""
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        """Handle a POST request."""
        self._dispatch("POST")

    def do_PUT(self) -> None:
        """Handle a PUT request."""
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        """Handle a DELETE request."""
        self._dispatch("DELETE")

    @property
    def hub(self) -> FakeHub:
        """The :class:`FakeHub` whose state this request reads and writes."""
        return self.server.hub

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.body = self._read_body()
        with self.hub._lock:
            self.hub.requests.append((method, url.path))
        try:
            if not self._route(method, [unquote(part) for part in url.path.split("/")[1:]]):
                with self.hub._lock:
                    self.hub.unhandled.append((method, url.path))
                raise _HubError(404, f"FakeHub: no route for {method} {url.path}")
        except _HubError as err:
            payload = {"error": err.message, **err.extra}
            self._send_json(payload, status=err.status, error_code=err.error_code, message=err.message)
        except Exception as err:  # a bug in the fake: answer 400 (a 5xx would make the client retry with backoff)
            with self.hub._lock:
                self.hub.errors.append(f"{method} {url.path}: {traceback.format_exc()}")
            self._send_json({"error": f"FakeHub internal error: {err!r}"}, status=400)

    def _read_body(self) -> bytes:
        """Read the request body (``Content-Length`` or chunked transfer encoding)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        """Send a complete response (no body on HEAD requests; Content-Length is always the full body's)."""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(
        self, payload: Any, status: int = 200, error_code: str | None = None, message: str | None = None
    ) -> None:
        headers = {"Content-Type": "application/json"}
        if error_code:
            headers["X-Error-Code"] = error_code
        if message:
            headers["X-Error-Message"] = message.replace("\n", " ")
        self._send(status, json.dumps(payload).encode(), headers)

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise _HubError(400, f"Invalid JSON body: {err}") from err

    # ------------------------------------------------------------------ auth

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[len("Bearer ") :].strip():
            return auth[len("Bearer ") :].strip()
        return None

    def _require_write_auth(self) -> None:
        token = self._token()
        if token is None:
            raise _HubError(401, "Unauthorized: a write endpoint needs an 'Authorization: Bearer <token>' header")
        if self.hub.valid_tokens is not None and token not in self.hub.valid_tokens:
            raise _HubError(401, "Invalid credentials in Authorization header")

    def _check_access(self, repo_id: str) -> None:
        if repo_id in self.hub.forbidden:
            raise _HubError(403, f"You don't have the rights to access or write to {repo_id} (FakeHub.forbidden)")

    def _readable_repo(self, repo_id: str) -> _Repo:
        self._check_access(repo_id)
        repo = self.hub._get_repo(repo_id)
        if repo.private and self._token() is None:
            raise _HubError(401, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    # ------------------------------------------------------------------ routes

    def _route(self, method: str, parts: list[str]) -> bool:
        """Serve the request and return ``True``, or return ``False`` when no route matches."""
        if parts[:1] == ["api"]:
            if method == "POST" and parts == ["api", "repos", "create"]:
                return self._create_repo()
            if method == "POST" and parts == ["api", "validate-yaml"]:
                self._send_json({})
                return True
            if parts == ["api", "agent-harnesses"]:
                raise _HubError(404, "Not found (FakeHub has no agent-harnesses registry)")
            if len(parts) >= 4 and parts[1] in ("models", "spaces"):
                repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
                if parts[1] == "spaces":
                    repo_id = f"{SPACES_PREFIX}{repo_id}"
                if method == "GET" and not rest:
                    return self._repo_info(repo_id, "main")
                if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                    return self._repo_info(repo_id, rest[1])
                if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                    return self._tree(repo_id, rest[1], "/".join(rest[2:]))
                if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                    return self._preupload(repo_id, rest[1])
                if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                    return self._commit(repo_id, rest[1])
            return False
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve_file(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        if method in ("GET", "HEAD") and len(parts) >= 6 and parts[0] == "spaces" and parts[3] == "resolve":
            return self._resolve_file(f"{SPACES_PREFIX}{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:]))
        return False

    def _create_repo(self) -> bool:
        self._require_write_auth()
        body = self._json_body()
        repo_type = body.get("type") or "model"
        if repo_type not in ("model", "space"):
            raise _HubError(400, f"FakeHub only supports model and Space repos, got type={repo_type!r}")
        if repo_type == "space" and not body.get("sdk"):
            raise _HubError(400, "A Space needs an sdk (gradio, docker, static)")
        repo_id = f"{body.get('organization') or DEFAULT_NAMESPACE}/{body['name']}"
        self._check_access(repo_id)
        if repo_type == "space":  # Spaces live under "spaces/" in hub.repos, as in their URLs
            repo_id = f"{SPACES_PREFIX}{repo_id}"
        url = f"{self.hub.endpoint}/{repo_id}"
        with self.hub._lock:
            if repo_id in self.hub._state:
                # The real Hub puts the url in the 409 body and `create_repo(exist_ok=True)` reads it from there.
                raise _HubError(409, f"You already created this model repo: {repo_id}", extra={"url": url})
            private = body.get("visibility") == "private" or bool(body.get("private"))
            self.hub._new_repo(repo_id, private)
        self._send_json({"url": url, "name": repo_id, "id": repo_id}, status=200)
        return True

    def _repo_info(self, repo_id: str, revision: str) -> bool:
        with self.hub._lock:
            repo = self._readable_repo(repo_id)
            sha = self.hub._resolve(repo, revision)
            files = repo.snapshots[sha]
            name = repo_id.removeprefix(SPACES_PREFIX)
            payload = {
                "id": name,
                "modelId": name,
                "author": name.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(files)],
            }
        self._send_json(payload)
        return True

    def _tree(self, repo_id: str, revision: str, path: str) -> bool:
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        with self.hub._lock:
            repo = self._readable_repo(repo_id)
            files = repo.snapshots[self.hub._resolve(repo, revision)]
            entries: dict[str, dict[str, Any]] = {}
            for file_path in sorted(files):
                if not file_path.startswith(prefix):
                    continue
                parts = file_path[len(prefix) :].split("/")
                for depth in range(1, len(parts)):  # parent folders
                    if depth > 1 and not recursive:
                        break
                    folder = prefix + "/".join(parts[:depth])
                    entries.setdefault(folder, {"type": "directory", "path": folder, "size": 0, "oid": "0" * 40})
                if recursive or len(parts) == 1:
                    content = files[file_path]
                    entries[file_path] = {
                        "type": "file",
                        "path": file_path,
                        "size": len(content),
                        "oid": git_blob_oid(content),
                    }
            if prefix and not entries:
                raise _HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        self._send_json(list(entries.values()))
        return True

    def _resolve_file(self, repo_id: str, revision: str, path: str) -> bool:
        with self.hub._lock:
            repo = self._readable_repo(repo_id)
            sha = self.hub._resolve(repo, revision)
            content = repo.snapshots[sha].get(path)
        if content is None:
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{git_blob_oid(content)}"',
            "Accept-Ranges": "bytes",
        }
        status, body = 200, content
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and self.command != "HEAD" and int(match.group(1)) < len(content):
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(content) - 1, len(content) - 1)
            status, body = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        self._send(status, body, headers)
        return True

    def _preupload(self, repo_id: str, revision: str) -> bool:
        self._require_write_auth()
        self._check_access(repo_id)
        files = self._json_body().get("files", [])
        with self.hub._lock:
            repo = self.hub._get_repo(repo_id)
            branch_files = repo.snapshots[repo.branches[revision]] if revision in repo.branches else {}
            answer = []
            for file in files:
                existing = branch_files.get(file["path"])
                oid = git_blob_oid(existing) if existing is not None and self.hub.report_remote_oids else None
                answer.append({"path": file["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        self._send_json({"files": answer, "commitOid": repo.branches.get(revision)})
        return True

    def _commit(self, repo_id: str, revision: str) -> bool:
        self._require_write_auth()
        self._check_access(repo_id)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "Commit payload must start with a header line")
        header = lines[0].get("value", {})
        ops: list[tuple[str, str, bytes]] = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {value.get('path')}")
                ops.append(("file", value["path"], base64.b64decode(value["content"])))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append((key, value["path"], b""))
            elif key == "lfsFile":
                raise _HubError(400, f"FakeHub does not store LFS/Xet files ({value.get('path')}): use 'regular'")
            else:
                raise _HubError(400, f"FakeHub does not support commit operation {key!r}")
        create_pr = self.query.get("create_pr") == "1"
        with self.hub._lock:
            repo = self.hub._get_repo(repo_id)
            if create_pr:
                base = self.hub._resolve(repo, revision)
                repo.nb_prs += 1
                branch = f"refs/pr/{repo.nb_prs}"
                repo.branches[branch] = base
            elif revision in repo.branches:
                branch = revision
            elif _COMMIT_OID_RE.match(revision):
                raise _HubError(400, f"Cannot commit to {revision}: FakeHub only commits on top of a branch")
            else:
                raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            parent = header.get("parentCommit")
            if parent and parent != repo.branches[branch]:
                raise _HubError(412, f"A commit has happened since {parent}: head of {branch} is now different")
            oid = self.hub._apply_commit(repo, branch, header.get("summary", ""), ops)
        payload: dict[str, Any] = {"commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid}
        payload["pullRequestUrl"] = f"{self.hub.endpoint}/{repo_id}/discussions/{repo.nb_prs}" if create_pr else None
        self._send_json(payload)
        return True


# Env vars that would make the subprocess use something other than the fake Hub, a fresh cache and no token.
SCRUBBED_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_XET_CACHE",
    "HF_HUB_DISABLE_XET",
)


def run_client(
    hub: FakeHub, code: str, hf_home: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter whose huggingface_hub talks to ``hub`` with its cache under ``hf_home``."""
    env = {key: value for key, value in os.environ.items() if key not in SCRUBBED_ENV}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        **(extra_env or {}),
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=hf_home.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
