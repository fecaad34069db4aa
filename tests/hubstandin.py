"""A stand-in for the Hugging Face Hub: no Hub server can be installed here, so this serves, over
stdlib HTTP on 127.0.0.1, exactly the endpoints ``huggingface_hub`` calls for the huggingface driver.
They were read from huggingface_hub 2.4.0 (``hf_api.py``, ``_commit_api.py``, ``lfs.py``,
``file_download.py``) with ``HF_HUB_DISABLE_XET=1`` (Xet's CAS cannot run locally):

- ``POST /api/repos/create``                               create_repo (409 when it exists)
- ``GET  /api/{type}s/{owner}/{name}[/revision/{rev}]``     repo_info
- ``POST /api/{type}s/{owner}/{name}/preupload/{rev}``      upload modes: binary samples go to LFS, as on the Hub
- ``POST /{prefix}{owner}/{name}.git/info/lfs/objects/batch``  LFS batch ("basic" transfer), then
  ``PUT  /lfs-upload/{sha256}``                              the object's bytes (their sha256 is checked)
- ``POST /api/{type}s/{owner}/{name}/commit/{rev}``         ndjson: header, file (base64), lfsFile
- ``POST /api/{type}s/{owner}/{name}/paths-info/{rev}``     form ``paths``: what get_paths_info returns
- ``GET  /api/{type}s/{owner}/{name}/tree/{rev}[/{path}]``   list_repo_tree
- ``HEAD``/``GET /{prefix}{owner}/{name}/resolve/{rev}/{path}``  with ``X-Repo-Commit``, ``ETag``
  (and ``X-Linked-Etag``/``X-Linked-Size`` for LFS files)

Errors as the Hub sends them: 401 for a wrong token, 404 with ``X-Error-Code: RepoNotFound``,
``RevisionNotFound`` or ``EntryNotFound``. Every request needs ``Authorization: Bearer <token>``. The
state (repositories, commits, LFS objects) lives in memory; tests read it directly. The drivers never
know they talk to a stand-in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest

TOKEN = "hf_TestToken0123456789abcdef"  # what the tests look for in every report, file and log
SIGNATURE = secrets.token_hex(16)
PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # paths stored through LFS
    commits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


@dataclass
class HubState:
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)  # (type, id) -> repo
    objects: dict[str, bytes] = field(default_factory=dict)  # LFS objects by sha256
    requests: list[str] = field(default_factory=list)


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Handler(BaseHTTPRequestHandler):
    state: HubState
    endpoint: str

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass

    # -- plumbing --

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._send(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def _repo(self, kind: str, repo_id: str) -> Repo | None:
        repo = self.state.repos.get((kind, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}")
        return repo

    def _route(self) -> None:
        self.state.requests.append(f"{self.command} {urlparse(self.path).path}")
        path = unquote(urlparse(self.path).path)
        # An LFS upload goes to a presigned URL (S3 on the Hub): its signature, not the token, admits it.
        presigned = path.startswith("/lfs-upload/") and parse_qs(urlparse(self.path).query).get("sig") == [SIGNATURE]
        if not presigned and not self._authorized():
            return
        for pattern, handler in ROUTES:
            match = re.fullmatch(pattern, path)
            if match and handler[0] == self.command or (match and self.command == "HEAD" and handler[0] == "GET"):
                getattr(self, handler[1])(**match.groupdict())
                return
        self._error(404, "NotFound", f"the stand-in does not serve {self.command} {path}")

    do_GET = do_POST = do_PUT = do_HEAD = _route  # noqa: N815 (http.server's names)

    # -- endpoints --

    def create_repo(self) -> None:
        request = json.loads(self._body())
        kind = request.get("type") or "model"
        repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
        if (kind, repo_id) in self.state.repos:
            self._send(409, {"error": "You already created this repo", "url": f"{self.endpoint}/{repo_id}"})
            return
        self.state.repos[(kind, repo_id)] = Repo()
        self._send(200, {"url": f"{self.endpoint}/{PREFIXES[kind]}{repo_id}", "name": repo_id})

    def repo_info(self, kind: str, repo_id: str, rev: str | None = None) -> None:
        repo = self._repo(kind, repo_id)
        if repo is not None:
            siblings = [{"rfilename": name} for name in sorted(repo.files)]
            self._send(200, {"id": repo_id, "sha": repo.head, "private": True, "siblings": siblings})

    def preupload(self, kind: str, repo_id: str, rev: str) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return
        files = []
        for item in json.loads(self._body())["files"]:
            sample = base64.b64decode(item["sample"])
            binary = b"\0" in sample or item["size"] > 10 * 1024 * 1024
            existing = repo.files.get(item["path"])
            oid = None
            if existing is not None:
                oid = hashlib.sha256(existing).hexdigest() if item["path"] in repo.lfs else _git_blob_id(existing)
            files.append(
                {"path": item["path"], "uploadMode": "lfs" if binary else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._send(200, {"files": files, "commitOid": repo.head})

    def lfs_batch(self, prefix: str, repo_id: str) -> None:
        kind = {value: key for key, value in PREFIXES.items()}[prefix or ""]
        if self._repo(kind, repo_id) is None:
            return
        request = json.loads(self._body())
        objects = []
        for item in request["objects"]:
            entry: dict[str, Any] = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.state.objects:
                href = f"{self.endpoint}/lfs-upload/{item['oid']}?sig={SIGNATURE}"
                entry["actions"] = {"upload": {"href": href}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            self._error(400, "BadRequest", "sha256 of the upload does not match its oid")
            return
        self.state.objects[oid] = data
        self._send(200, b"")

    def commit(self, kind: str, repo_id: str, rev: str) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        changes: dict[str, tuple[bytes, bool]] = {}
        summary = ""
        for line in lines:
            value = line["value"]
            if line["key"] == "header":
                summary = value["summary"]
            elif line["key"] == "file":
                changes[value["path"]] = (base64.b64decode(value["content"]), False)
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.state.objects:
                    self._error(422, "BadRequest", f"LFS object {value['oid']} was never uploaded")
                    return
                changes[value["path"]] = (self.state.objects[value["oid"]], True)
            else:
                self._error(400, "BadRequest", f"the stand-in does not take {line['key']}")
                return
        for path, (data, through_lfs) in changes.items():
            repo.files[path] = data
            if through_lfs:
                repo.lfs.add(path)
            else:
                repo.lfs.discard(path)
        oid = hashlib.sha1(f"{repo.head}{summary}{sorted(changes)}".encode()).hexdigest()
        repo.commits.append({"oid": oid, "summary": summary, "paths": sorted(changes)})
        url = f"{self.endpoint}/{PREFIXES[kind]}{repo_id}/commit/{oid}"
        self._send(200, {"success": True, "commitOid": oid, "commitUrl": url})

    def _file_info(self, repo: Repo, path: str) -> dict[str, Any]:
        data = repo.files[path]
        info: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": _git_blob_id(data)}
        if path in repo.lfs:
            info["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return info

    def paths_info(self, kind: str, repo_id: str, rev: str) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return
        if not repo.commits:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return
        form = parse_qs(self._body().decode())
        self._send(200, [self._file_info(repo, path) for path in form.get("paths", []) if path in repo.files])

    def tree(self, kind: str, repo_id: str, rev: str, path: str | None = None) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return
        top = (path or "").strip("/")
        found = [self._file_info(repo, name) for name in sorted(repo.files) if not top or name.startswith(top + "/")]
        self._send(200, found)

    def resolve(self, prefix: str, repo_id: str, rev: str, path: str) -> None:
        kind = {value: key for key, value in PREFIXES.items()}[prefix or ""]
        repo = self._repo(kind, repo_id)
        if repo is None:
            return
        if path not in repo.files:
            self._error(404, "EntryNotFound", f"{path} does not exist on {rev}")
            return
        data = repo.files[path]
        etag = hashlib.sha256(data).hexdigest() if path in repo.lfs else _git_blob_id(data)
        headers = {"X-Repo-Commit": repo.head, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
        if path in repo.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        self._send(200, data, headers)


_REPO = r"(?P<repo_id>[^/]+/[^/]+)"
ROUTES: list[tuple[str, tuple[str, str]]] = [
    (r"/api/repos/create", ("POST", "create_repo")),
    (rf"/api/(?P<kind>model|dataset|space)s/{_REPO}(?:/revision/(?P<rev>[^/]+))?", ("GET", "repo_info")),
    (rf"/api/(?P<kind>model|dataset|space)s/{_REPO}/preupload/(?P<rev>[^/]+)", ("POST", "preupload")),
    (rf"/api/(?P<kind>model|dataset|space)s/{_REPO}/commit/(?P<rev>[^/]+)", ("POST", "commit")),
    (rf"/api/(?P<kind>model|dataset|space)s/{_REPO}/paths-info/(?P<rev>[^/]+)", ("POST", "paths_info")),
    (rf"/api/(?P<kind>model|dataset|space)s/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", ("GET", "tree")),
    (rf"/(?P<prefix>datasets/|spaces/)?{_REPO}\.git/info/lfs/objects/batch", ("POST", "lfs_batch")),
    (r"/lfs-upload/(?P<oid>[0-9a-f]{64})", ("PUT", "lfs_upload")),
    (rf"/(?P<prefix>datasets/|spaces/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", ("GET", "resolve")),
]


@dataclass
class HubStandIn:
    endpoint: str
    state: HubState
    server: ThreadingHTTPServer

    def config(self, name: str, repo_id: str = "user/pins", **extra: Any) -> dict[str, Any]:
        settings = {"repo_id": repo_id, "endpoint": self.endpoint, "token_env": "PINFS_TEST_HF_TOKEN", **extra}
        return {"name": name, "type": "huggingface", "config": settings}


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStandIn]:
    state = HubState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    handler = type("BoundHandler", (Handler,), {"state": state, "endpoint": endpoint})
    server.RequestHandlerClass = handler
    thread = threading.Thread(target=server.serve_forever, name="hub stand-in", daemon=True)
    thread.start()
    try:
        yield HubStandIn(endpoint, state, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
