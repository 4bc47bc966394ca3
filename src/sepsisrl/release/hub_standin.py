"""A local stand-in for the Hugging Face Hub HTTP API, for dry runs and tests without a network.

:class:`LocalHub` serves, on ``127.0.0.1`` and a free port, exactly the routes that
``huggingface_hub`` uses to create a model repository, upload a folder to it (regular files
only: no LFS, no Xet), describe it and download it, so that ``sepsisrl export --push`` and
``huggingface_hub.snapshot_download`` run unchanged against it (docs/huggingface.md)::

    with LocalHub("hub-store") as hub:
        env = {**os.environ, **hub.environ()}  # HF_ENDPOINT, HF_TOKEN, ... for a subprocess
        subprocess.run(["sepsisrl", "export", ..., "--push", "user/sepsis-iql"], env=env)
        hub.files("user/sepsis-iql")            # {path: bytes} at the head of main

Routes (model repositories only; ``{repo}`` is ``namespace/name``, ``{rev}`` a branch or a
commit id, URL-quoted):

- ``POST /api/repos/create``: a new repository with an empty first commit (409 if it exists,
  403 outside the stand-in's user namespace);
- ``POST /api/validate-yaml``: always accepted (the card is checked offline by ``sepsisrl``);
- ``POST /api/models/{repo}/preupload/{rev}``: ``uploadMode`` "regular" for every file, with
  the git blob id of a file already there (so unchanged files are skipped);
- ``POST /api/models/{repo}/commit/{rev}``: the NDJSON commit (a header line, then ``file``
  with base64 content, ``deletedFile`` or ``deletedFolder`` lines; ``lfsFile`` is refused);
- ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{rev}``: model info with the
  head commit ``sha`` and the ``siblings`` (their size and blob id with ``?blobs=true``);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: the file listing (``?recursive=true``);
- ``HEAD`` and ``GET /{repo}/resolve/{rev}/{path}``: a file, with the headers a download
  checks (``ETag`` = git blob id, ``X-Repo-Commit``, ``Content-Length``; ``Range`` honoured);
- ``GET /api/whoami-v2`` (the token's user) and ``GET /api/agent-harnesses`` (empty).

Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``) and a JSON ``{"error": ...}`` body. Writes need ``Authorization: Bearer
<token>``; a wrong token is a 401 on every route. :meth:`LocalHub.refuse` makes a route answer
an error status (a failing Hub, for tests).

Storage, one folder per repository under ``root`` (it survives the server: a new
:class:`LocalHub` on the same ``root`` serves the same repositories)::

    models/<namespace>/<name>/refs/<branch>      the branch's head commit id
    models/<namespace>/<name>/commits/<id>.json  parent, message, date, {path: blob id}
    models/<namespace>/<name>/blobs/<blob id>    file contents, named by git blob id

Standard library only; the stand-in never imports ``huggingface_hub``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

#: A repository name (and namespace) the stand-in accepts.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_COMMIT_ID = re.compile(r"[0-9a-f]{40}")


class HubError(Exception):
    """An error answer: HTTP status, message, and the Hub's ``X-Error-Code`` when it has one."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = {"X-Error-Message": message.encode("ascii", "replace").decode()}
        if code:
            self.headers["X-Error-Code"] = code
        self.headers.update(headers or {})


def git_blob_id(data: bytes) -> str:
    """The git blob id of ``data`` (sha1 of ``blob <size>\\0<data>``): the Hub's ETag and oid
    of a regular file."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class _Repo:
    """One model repository in the stand-in's storage folder."""

    def __init__(self, folder: Path, repo_id: str) -> None:
        self.folder = folder
        self.repo_id = repo_id

    def head(self, revision: str) -> str:
        """The commit id a branch name or a commit id names."""
        if (
            _COMMIT_ID.fullmatch(revision)
            and (self.folder / "commits" / f"{revision}.json").is_file()
        ):
            return revision
        ref = self.folder / "refs" / revision
        if "/" in revision or revision.startswith(".") or not ref.is_file():
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return ref.read_text().strip()

    def commit(self, commit_id: str) -> dict[str, Any]:
        return json.loads((self.folder / "commits" / f"{commit_id}.json").read_text())

    def files(self, revision: str) -> tuple[str, dict[str, str]]:
        """(commit id, {path: blob id}) at ``revision``."""
        commit_id = self.head(revision)
        return commit_id, self.commit(commit_id)["files"]

    def blob(self, blob_id: str) -> bytes:
        return (self.folder / "blobs" / blob_id).read_bytes()

    def size(self, blob_id: str) -> int:
        return (self.folder / "blobs" / blob_id).stat().st_size

    def store_blob(self, data: bytes) -> str:
        blob_id = git_blob_id(data)
        path = self.folder / "blobs" / blob_id
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{blob_id}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return blob_id

    def write_commit(
        self, branch: str, parent: str | None, summary: str, description: str, files: dict
    ) -> str:
        """A new commit on ``branch``; its id is the sha1 of its parent, message and tree."""
        record = {"parent": parent, "summary": summary, "description": description,
                  "files": dict(sorted(files.items()))}  # fmt: skip
        commit_id = hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()
        record["date"] = _now()
        (self.folder / "commits").mkdir(parents=True, exist_ok=True)
        (self.folder / "commits" / f"{commit_id}.json").write_text(json.dumps(record, indent=1))
        (self.folder / "refs").mkdir(parents=True, exist_ok=True)
        ref = self.folder / "refs" / branch
        tmp = ref.with_name(f".{branch}.tmp")
        tmp.write_text(commit_id + "\n")
        tmp.replace(ref)
        return commit_id


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: LocalHub


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to :class:`LocalHub` and writes its answer."""

    server: _Server
    # one request per connection: no kept-alive connection outlives the server
    protocol_version = "HTTP/1.0"
    server_version = "sepsisrl-LocalHub"

    def _handle(self) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._body()
        try:
            status, headers, payload = hub.answer(
                self.command, url.path, query, dict(self.headers.items()), body
            )
        except HubError as exc:
            status, headers, payload = exc.status, exc.headers, {"error": str(exc)}
        except Exception as exc:  # a bug of the stand-in: a 500 the client reports, not a hang
            status, headers = 500, {"X-Error-Message": "LocalHub internal error"}
            payload = {"error": f"LocalHub internal error: {type(exc).__name__}: {exc}"}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json")
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self, fmt: str, *args: Any) -> None:
        """Keep the access log with the hub instead of printing it to stderr."""
        self.server.hub.log.append(fmt % args)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle
    log_message = _record


class LocalHub:
    """A Hugging Face Hub stand-in on ``127.0.0.1`` storing its repositories under ``root``.

    Use it as a context manager (the server runs in a background thread from ``__enter__`` to
    ``__exit__``). ``endpoint`` is its base URL; ``environ()`` gives the environment variables
    that point ``huggingface_hub`` at it in a new process (they are read when
    ``huggingface_hub`` is imported). ``user`` owns the repositories it creates; ``token`` is
    the only token it accepts.
    """

    def __init__(
        self, root: str | Path, *, user: str = "user", token: str = "hf_localhub_token"
    ) -> None:
        if not _NAME.fullmatch(user):
            raise ValueError(f"user {user!r} is not a valid Hub namespace")
        self.root = Path(root)
        self.user = user
        self.token = token
        #: (method, path) of every request, in arrival order
        self.requests: list[tuple[str, str]] = []
        #: the server's access log lines
        self.log: list[str] = []
        self._refusals: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LocalHub:
        self.root.mkdir(parents=True, exist_ok=True)
        server = _Server(("127.0.0.1", 0), _Handler)
        server.hub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="LocalHub", kwargs={"poll_interval": 0.05}
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>`` while the server runs."""
        if self._server is None:
            raise RuntimeError(
                "the LocalHub is not running: use it as `with LocalHub(root) as hub`"
            )
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def environ(self) -> dict[str, str]:
        """Environment variables pointing a new process's ``huggingface_hub`` at this hub:
        its endpoint and token, a private ``HF_HOME`` under ``root`` (no stored login, no
        shared cache), Xet, telemetry and progress bars off, offline mode off, and no proxy
        for 127.0.0.1."""
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_TOKEN": self.token,
            "HF_HOME": str(self.root.absolute() / ".hf_home"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_OFFLINE": "0",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    def refuse(self, route: str, status: int, message: str = "refused by the LocalHub") -> None:
        """Answer every later request of ``route`` (``create``, ``validate-yaml``,
        ``preupload``, ``commit``, ``info``, ``tree``, ``resolve``, ``whoami``; ``*`` for all)
        with ``status`` and ``message``."""
        self._refusals[route] = (status, message)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """{path: content} of ``repo_id`` at ``revision``."""
        repo = self._repo(repo_id)
        _, tree = repo.files(revision)
        return {path: repo.blob(blob_id) for path, blob_id in tree.items()}

    # -- the HTTP API ---------------------------------------------------------------------------

    def answer(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON value or bytes) for one request; raises :class:`HubError`."""
        self.requests.append((method, path))
        route, handler, args = self._route(method, path)
        refused = self._refusals.get(route) or self._refusals.get("*")
        if refused:
            raise HubError(refused[0], refused[1])
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization")
        if auth is not None and auth != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        if method == "POST" and route not in ("validate-yaml",) and auth is None:
            raise HubError(401, "You must be authenticated to write to the Hub (no token sent)")
        with self._lock:
            return handler(*args, query=query, headers=headers, body=body)

    def _route(self, method: str, path: str) -> tuple[str, Any, tuple]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "POST" and parts == ["api", "repos", "create"]:
            return "create", self._create, ()
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return "validate-yaml", self._validate_yaml, ()
        if method == "GET" and parts == ["api", "whoami-v2"]:
            return "whoami", self._whoami, ()
        if method == "GET" and parts == ["api", "agent-harnesses"]:
            return "agent-harnesses", self._harnesses, ()
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            if method == "GET" and not rest:
                return "info", self._info, (repo_id, "main")
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                return "info", self._info, (repo_id, rest[1])
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return "tree", self._tree, (repo_id, rest[1], "/".join(rest[2:]))
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return "preupload", self._preupload, (repo_id, rest[1])
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return "commit", self._commit, (repo_id, rest[1])
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return "resolve", self._resolve, ("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        raise HubError(404, f"the LocalHub stand-in does not implement {method} {path}")

    def _repo(self, repo_id: str) -> _Repo:
        namespace, _, name = repo_id.partition("/")
        folder = self.root / "models" / namespace / name
        if not (
            _NAME.fullmatch(namespace) and _NAME.fullmatch(name) and (folder / "refs").is_dir()
        ):
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return _Repo(folder, repo_id)

    def _create(self, *, body: bytes, **_: Any) -> tuple[int, dict, Any]:
        doc = _json(body)
        kind = doc.get("type") or "model"
        if kind != "model":
            raise HubError(400, f"the LocalHub stand-in stores model repositories only, not {kind}")
        namespace, name = doc.get("organization") or self.user, str(doc.get("name") or "")
        if not (_NAME.fullmatch(namespace) and _NAME.fullmatch(name)):
            raise HubError(400, f"invalid repository name {namespace}/{name}")
        url = f"{self.endpoint}/{namespace}/{name}"
        if namespace != self.user:
            raise HubError(
                403,
                f'You don\'t have the rights to create a model under the namespace "{namespace}"',
            )
        folder = self.root / "models" / namespace / name
        if (folder / "refs").is_dir():
            return 409, {}, {"error": "You already created this model repo", "url": url}
        _Repo(folder, f"{namespace}/{name}").write_commit("main", None, "initial commit", "", {})
        return 200, {}, {"url": url, "name": f"{namespace}/{name}", "id": f"{namespace}/{name}"}

    def _validate_yaml(self, **_: Any) -> tuple[int, dict, Any]:
        return 200, {}, {"errors": [], "warnings": []}

    def _whoami(self, *, headers: dict[str, str], **_: Any) -> tuple[int, dict, Any]:
        if not any(k.lower() == "authorization" for k in headers):
            raise HubError(401, "You must be authenticated (no token sent)")
        token = {"displayName": "LocalHub token", "role": "write"}
        user = {"type": "user", "name": self.user, "fullname": self.user, "orgs": []}
        return 200, {}, {**user, "auth": {"type": "access_token", "accessToken": token}}

    def _harnesses(self, **_: Any) -> tuple[int, dict, Any]:
        return 200, {}, {"standardEnvVars": [], "harnesses": {}}

    def _info(self, repo_id: str, revision: str, *, query: dict, **_: Any) -> tuple[int, dict, Any]:
        repo = self._repo(repo_id)
        commit_id, tree = repo.files(revision)
        blobs = query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, blob_id in tree.items():
            entry: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry.update(size=repo.size(blob_id), blobId=blob_id)
            siblings.append(entry)
        date = repo.commit(commit_id)["date"]
        return 200, {}, {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": commit_id,
            "lastModified": date, "createdAt": date, "private": False, "disabled": False,
            "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "usedStorage": sum(repo.size(b) for b in set(tree.values())),
        }  # fmt: skip

    def _tree(
        self, repo_id: str, revision: str, folder: str, *, query: dict, **_: Any
    ) -> tuple[int, dict, Any]:
        repo = self._repo(repo_id)
        commit_id, tree = repo.files(revision)
        recursive = query.get("recursive", "").lower() in ("1", "true")
        base = PurePosixPath(folder) if folder else None
        entries: dict[str, dict[str, Any]] = {}
        for path, blob_id in sorted(tree.items()):
            pure = PurePosixPath(path)
            if base is not None and base not in pure.parents:
                continue
            rel = pure.relative_to(base) if base is not None else pure
            dirs = [PurePosixPath(*rel.parts[: i + 1]) for i in range(len(rel.parts) - 1)]
            for d in dirs if recursive else dirs[:1]:
                full = str(base / d) if base is not None else str(d)
                oid = hashlib.sha1(f"{commit_id}:{full}".encode()).hexdigest()
                entries.setdefault(full, {"type": "directory", "oid": oid, "size": 0, "path": full})
            if recursive or len(rel.parts) == 1:
                entries[path] = {"type": "file", "oid": blob_id, "size": repo.size(blob_id),
                                 "path": path}  # fmt: skip
        if base is not None and not entries:
            raise HubError(404, f"{folder} does not exist at {revision}", "EntryNotFound")
        return 200, {}, list(entries.values())

    def _preupload(
        self, repo_id: str, revision: str, *, query: dict, body: bytes, **_: Any
    ) -> tuple[int, dict, Any]:
        repo = self._repo(repo_id)
        if query.get("create_pr"):
            raise HubError(400, "the LocalHub stand-in does not open pull requests")
        _, tree = repo.files(revision)
        files = _json(body).get("files") or []
        return (
            200,
            {},
            {
                "files": [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": tree.get(f["path"]),
                    }
                    for f in files
                ],
                "commitOid": repo.head(revision),
            },
        )

    def _commit(
        self, repo_id: str, revision: str, *, query: dict, body: bytes, **_: Any
    ) -> tuple[int, dict, Any]:
        repo = self._repo(repo_id)
        if query.get("create_pr"):
            raise HubError(400, "the LocalHub stand-in does not open pull requests")
        if _COMMIT_ID.fullmatch(revision):
            raise HubError(400, f"commits go to a branch, not to the commit id {revision}")
        parent, tree = repo.files(revision)
        tree = dict(tree)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit starts with its header line")
        header = lines[0]["value"]
        expected = header.get("parentCommit")
        if expected and not parent.startswith(expected):
            raise HubError(
                412, f"parent commit {expected} is not the head of {revision} ({parent})"
            )
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            raw = str(value.get("path", ""))
            path = _repo_path(raw.rstrip("/") if key == "deletedFolder" else raw)
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"{path}: only base64 file content is accepted")
                tree[path] = repo.store_blob(base64.b64decode(value["content"], validate=True))
            elif key == "deletedFile":
                if tree.pop(path, None) is None:
                    raise HubError(
                        404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                    )
            elif key == "deletedFolder":
                tree = {p: b for p, b in tree.items() if not p.startswith(path + "/")}
            elif key == "lfsFile":
                raise HubError(
                    400, f"{path}: the LocalHub stand-in stores regular files only (no LFS)"
                )
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        summary, description = (
            str(header.get("summary") or ""),
            str(header.get("description") or ""),
        )
        commit_id = repo.write_commit(revision, parent, summary, description, tree)
        url = f"{self.endpoint}/{repo_id}/commit/{commit_id}"
        return 200, {}, {"success": True, "commitOid": commit_id, "commitUrl": url,
                         "hookOutput": "", "pullRequestUrl": None}  # fmt: skip

    def _resolve(
        self, repo_id: str, revision: str, path: str, *, headers: dict[str, str], **_: Any
    ) -> tuple[int, dict, Any]:
        repo = self._repo(repo_id)
        commit_id, tree = repo.files(revision)
        blob_id = tree.get(path)
        if blob_id is None:
            raise HubError(404, f"Entry not found: {path} at {commit_id}", "EntryNotFound",
                           {"X-Repo-Commit": commit_id})  # fmt: skip
        data = repo.blob(blob_id)
        out = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{blob_id}"',
            "X-Repo-Commit": commit_id,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(PurePosixPath(path).name)}",
        }
        start, end, status = 0, len(data), 200
        wanted = {k.lower(): v for k, v in headers.items()}.get("range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted or "")
        if match:
            start = int(match.group(1))
            end = min(len(data), int(match.group(2)) + 1) if match.group(2) else len(data)
            if start >= len(data) and len(data):
                raise HubError(416, f"range {wanted} is beyond the file's {len(data)} bytes")
            out["Content-Range"] = f"bytes {start}-{max(end - 1, start)}/{len(data)}"
            status = 206
        out["Content-Length"] = str(end - start)
        return status, out, data[start:end]


def _json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body or b"{}")
    except json.JSONDecodeError as exc:
        raise HubError(400, f"the request body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HubError(400, "the request body is not a JSON object")
    return doc


def _repo_path(path: str) -> str:
    """A path in a repository: relative, no ``..`` or empty parts (else 400)."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise HubError(400, f"invalid path in repository: {path!r}")
    return path
