"""The GitHub driver: a git repository, spoken to with git itself (which is what github.com serves).

Config: ``repo_url`` (``https://github.com/owner/repo.git``; also ``git://`` and ``file://``; or
``repo: owner/name`` for a repository on github.com), ``branch``
(``main``), ``token_env`` (an environment variable holding a token, sent as HTTPS basic auth
``x-access-token:<token>`` as GitHub takes it), ``path`` (a folder in the repository the keys are
below), ``author_name``/``author_email`` (of the commits).

A pin's CAR (``car_file_path`` ``/github-repo/cars/<cid>.car``, where ``github-repo`` stands for the
repository) is committed at ``cars/<cid>.car`` below ``path``; the backend's ``pin_mappings.car`` and
the backup copies beside it. The driver keeps a bare *partial* clone (``--filter=blob:none``: trees
only; a CAR's bytes are fetched only when they are read) in ``ROOT/.pinfs-cache/git/<backend>``. A put
writes the blob into that clone and stages it; ``flush`` makes ONE commit of everything staged on top
of the branch's newest commit (plumbing: read-tree, update-index, write-tree, commit-tree; no work
tree) and pushes it. No commit is made when nothing changed. A push that lost a race against another
writer is made again once on the new tip. Existence is a tree lookup (``ls-tree``, no blob fetched),
size ``cat-file -s``.

The token never appears on a command line, in the remote URL or in a message: it reaches git as an
``http.extraHeader`` through ``GIT_CONFIG_*`` environment variables, and every error is scrubbed.
GitHub refuses files above 100 MB, so larger objects are refused before anything is sent.
"""

from __future__ import annotations

import base64
import os
import posixpath
import subprocess
from pathlib import Path

from pinfs.data.backends import Backend
from pinfs.errors import NotFound
from pinfs.ops.drivers.base import (
    MAX_OBJECT_BYTES,
    REQUEST_TIMEOUT,
    BaseDriver,
    DriverError,
    Secrets,
    checked_key,
    in_repository,
    required,
    text_setting,
)

GITHUB_MAX_FILE_BYTES = 100 * 1000 * 1000  # GitHub blocks pushes of files above 100 MB
GIT_TIMEOUT = 120.0  # one git command, pushes of many CARs included
CACHE_DIR = ".pinfs-cache/git"


class GitDriver(BaseDriver):
    kind = "github"
    max_object_bytes = GITHUB_MAX_FILE_BYTES

    def __init__(
        self,
        url: str,
        branch: str,
        base: str,
        cache: Path,
        token: str | None,
        author: tuple[str, str],
        secrets: Secrets,
    ) -> None:
        self.url, self.branch, self.base, self.cache = url, branch, base, cache
        self.secrets = secrets
        self._env = _git_env(token, author)
        self._tip: str | None = None  # the branch's commit as last fetched
        self._fetched = False
        self._staged: dict[str, tuple[str, int]] = {}  # repository path -> (blob id, size)

    @classmethod
    def from_backend(cls, backend: Backend, root: Path | None = None) -> GitDriver:
        url = text_setting(backend, "repo_url", "url", "repository")
        short = text_setting(backend, "repo")
        if not url and short and short.count("/") == 1 and "://" not in short:
            url = f"https://github.com/{short.strip('/')}.git"  # "owner/name", as GitHub shows it
        url = url or required(backend, "repo_url")
        if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
            raise DriverError(f"backend {backend.name!r} (github): put the credential in 'token_env', not in repo_url")
        branch = text_setting(backend, "branch", default="main") or "main"
        if branch.startswith("-") or any(ch in branch for ch in " ~^:?*[\\\0") or ".." in branch:
            raise DriverError(f"backend {backend.name!r} (github): branch {branch!r} is not a valid branch name")
        path = text_setting(backend, "path", "base_path", default="") or ""
        base = checked_key(path) if path.strip("/") else ""
        secrets = Secrets()
        token = secrets.secret(backend, None, "token_env", needed=False)
        if token:
            secrets.add(f"x-access-token:{token}")  # and so its base64 form, the header's value
        author = (
            text_setting(backend, "author_name", default="pinfs") or "pinfs",
            text_setting(backend, "author_email", default="pinfs@localhost") or "pinfs@localhost",
        )
        data_root = root or backend.directory.parent.parent
        return cls(url, branch, base, data_root / CACHE_DIR / backend.name, token, author, secrets)

    def describe(self) -> str:
        where = f"{self.url} branch {self.branch}"
        return f"{where}, folder {self.base}" if self.base else where

    # -- git --

    def _git(self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
        """Run git in the cache repository; DriverError (scrubbed) when it fails."""
        try:
            result = subprocess.run(
                ["git", "-C", str(self.cache), *args],
                input=stdin,
                capture_output=True,
                env={**self._env, **(env or {})},
                timeout=GIT_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise DriverError(f"{self.describe()}: git {args[0]} took more than {GIT_TIMEOUT:g}s") from None
        except OSError as exc:
            raise self.secrets.error(f"{self.describe()}: cannot run git", exc) from None
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise _GitFailed(self.secrets.scrub(" ".join(message[-3:]) or f"git {args[0]} exited {result.returncode}"))
        return result.stdout

    def _ensure_repo(self) -> None:
        if (self.cache / "HEAD").is_file():
            return
        self.cache.mkdir(parents=True, exist_ok=True)
        try:
            self._git("init", "--quiet", "--bare")
            self._git("remote", "add", "origin", self.url)
            self._git("config", "remote.origin.promisor", "true")
            self._git("config", "remote.origin.partialclonefilter", "blob:none")
        except _GitFailed as exc:
            raise self.secrets.error(f"{self.describe()}: cannot set up {self.cache}", exc) from None

    def _fetch(self) -> None:
        """Bring the branch's trees (not its blobs) up to date; an empty repository has no tip."""
        self._ensure_repo()
        self._git("remote", "set-url", "origin", self.url)
        try:
            heads = self._git("ls-remote", "--heads", "origin", f"refs/heads/{self.branch}").split()
        except _GitFailed as exc:
            raise self.secrets.error(f"{self.describe()}: cannot reach the repository", exc) from None
        if not heads:
            self._tip, self._fetched = None, True
            return
        try:
            self._git("fetch", "--quiet", "--filter=blob:none", "origin", f"+refs/heads/{self.branch}:refs/pinfs/tip")
            self._tip = self._git("rev-parse", "refs/pinfs/tip").decode().strip()
        except _GitFailed as exc:
            raise self.secrets.error(f"{self.describe()}: fetching the branch failed", exc) from None
        self._fetched = True

    def _path(self, key: str) -> str:
        key = in_repository(key, "github-repo")
        return posixpath.join(self.base, key) if self.base else key

    # -- the interface --

    def check(self) -> None:
        self._fetch()

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self.limit_check(path, len(data))
        self._ensure_repo()
        try:
            blob = self._git("hash-object", "-w", "--stdin", stdin=data).decode().strip()
        except _GitFailed as exc:
            raise self.secrets.error(f"{self.describe()}: storing {path} in {self.cache} failed", exc) from None
        self._staged[path] = (blob, len(data))

    def size(self, key: str) -> int | None:
        path = self._path(key)
        if path in self._staged:
            return self._staged[path][1]
        if not self._fetched:
            self._fetch()
        if self._tip is None:
            return None
        try:
            listed = self._git("ls-tree", "-z", self._tip, "--", path)  # trees only: no blob fetched
            if not listed.startswith(b"100"):
                return None  # absent, or a folder
            return int(self._git("cat-file", "-s", f"{self._tip}:{path}").decode().strip())
        except _GitFailed as exc:
            raise self.secrets.error(f"{self.describe()}: looking up {path} failed", exc) from None

    def get(self, key: str) -> bytes:
        path = self._path(key)
        size = self.size(key)
        if size is None:
            raise NotFound(f"{self.describe()}: {path} does not exist")
        if size > MAX_OBJECT_BYTES:
            raise DriverError(f"{self.describe()}: {path} is larger than {MAX_OBJECT_BYTES} bytes")
        source = self._staged[path][0] if path in self._staged else f"{self._tip}:{path}"
        try:
            return self._git("cat-file", "blob", source)  # a partial clone fetches the blob now
        except _GitFailed as exc:
            raise self.secrets.error(f"{self.describe()}: reading {path} failed", exc) from None

    def list(self, prefix: str = "") -> list[str]:
        if not self._fetched:
            self._fetch()
        if self._tip is None:
            return sorted(self._staged)
        top = self._path(prefix) if prefix.strip("/") else self.base
        try:
            listed = self._git("ls-tree", "-r", "-z", "--name-only", self._tip, "--", top or ".")
        except _GitFailed as exc:
            raise self.secrets.error(f"{self.describe()}: listing failed", exc) from None
        names = {name.decode() for name in listed.split(b"\0") if name} | set(self._staged)
        cut = len(self.base) + 1 if self.base else 0
        return sorted(name[cut:] for name in names if not top or name == top or name.startswith(top + "/"))

    def flush(self, message: str) -> None:
        """One commit of everything staged, pushed to the branch; none when nothing changed."""
        if not self._staged:
            return
        try:
            for attempt in (1, 2):
                self._fetch()
                commit = self._commit(message)
                if commit is None:
                    break
                try:
                    self._git("push", "--quiet", "origin", f"{commit}:refs/heads/{self.branch}")
                except _GitFailed as exc:
                    if attempt == 2 or not _lost_race(str(exc)):
                        raise self.secrets.error(f"{self.describe()}: push refused", exc) from None
                    continue  # someone else pushed meanwhile: commit again on the new tip
                self._tip = commit
                break
        finally:
            self._staged.clear()

    def _commit(self, message: str) -> str | None:
        """The commit of the staged files on the current tip, or None when they are all there already."""
        index = self.cache / f"pinfs-index-{os.getpid()}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            if self._tip is not None:
                self._git("read-tree", self._tip, env=env)
            else:
                self._git("read-tree", "--empty", env=env)
            lines = "".join(f"100644 {blob}\t{path}\n" for path, (blob, _size) in sorted(self._staged.items()))
            self._git("update-index", "--index-info", stdin=lines.encode(), env=env)
            tree = self._git("write-tree", env=env).decode().strip()
            if self._tip is not None and self._git("rev-parse", f"{self._tip}^{{tree}}").decode().strip() == tree:
                return None
            parents = ["-p", self._tip] if self._tip is not None else []
            return self._git("commit-tree", tree, *parents, "-m", message).decode().strip()
        except _GitFailed as exc:
            raise self.secrets.error(f"{self.describe()}: making the commit failed", exc) from None
        finally:
            index.unlink(missing_ok=True)


class _GitFailed(Exception):
    """A git command exited non-zero (its last stderr lines, scrubbed)."""


def _lost_race(message: str) -> bool:
    return any(word in message for word in ("non-fast-forward", "fetch first", "rejected", "stale info"))


def _git_env(token: str | None, author: tuple[str, str]) -> dict[str, str]:
    """The environment of every git command: no prompts, no pager, the token as a header (not argv)."""
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "true",
        "GIT_PAGER": "cat",
        "LC_ALL": "C",
        "GIT_AUTHOR_NAME": author[0],
        "GIT_AUTHOR_EMAIL": author[1],
        "GIT_COMMITTER_NAME": author[0],
        "GIT_COMMITTER_EMAIL": author[1],
        "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
        "GIT_HTTP_LOW_SPEED_TIME": str(int(REQUEST_TIMEOUT)),
    }
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env.update(
            GIT_CONFIG_COUNT="1",
            GIT_CONFIG_KEY_0="http.extraHeader",
            GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
        )
    return env
