"""The Hugging Face driver: a Hub repository through ``huggingface_hub`` (the client a Hub user uses).

Config: ``repo_id`` (``owner/name``), ``repo_type`` (``model``, ``dataset`` or ``space``; ``dataset``
by default: CARs are data), ``revision`` (``main``), ``endpoint`` (``https://huggingface.co``),
``token_env`` (an environment variable holding the token), ``path`` (a folder in the repository keys
are below), ``create_repo`` (create a missing repository, private; default true).

A pin's CAR (``/hf-repo/cars/<cid>.car``, ``hf-repo`` standing for the repository) is at
``cars/<cid>.car`` below ``path``. Puts are staged; ``flush`` makes ONE commit of them
(``HfApi.create_commit``: the binary CARs go through the Hub's LFS upload), none when every staged
file is already there with the same content. Size and existence: ``get_paths_info`` (no download); a
fetch: ``hf_hub_download`` into a temporary folder. The Hub refuses files above 50 GB in one piece
(``HUB_MAX_FILE_BYTES``); larger objects are refused before anything is sent. The token is passed to
the client only; errors are scrubbed. Xet uploads (the Hub's newer storage, used when the ``hf_xet``
package is installed) are a path this project does not test: docs/drivers.md."""

from __future__ import annotations

import hashlib
import posixpath
import tempfile
from pathlib import Path
from typing import Any

from pinfs.data.backends import Backend
from pinfs.errors import NotFound, Unsupported
from pinfs.ops.drivers.base import (
    MAX_OBJECT_BYTES,
    BaseDriver,
    DriverError,
    Secrets,
    checked_key,
    flag_setting,
    in_repository,
    required,
    text_setting,
)

HUB_MAX_FILE_BYTES = 50 * 1000**3
REPO_TYPES = ("model", "dataset", "space")
DEFAULT_ENDPOINT = "https://huggingface.co"


class HubDriver(BaseDriver):
    kind = "huggingface"
    max_object_bytes = HUB_MAX_FILE_BYTES

    def __init__(
        self,
        repo_id: str,
        repo_type: str,
        revision: str,
        endpoint: str,
        base: str,
        token: str | None,
        create: bool,
        secrets: Secrets,
    ) -> None:
        self.repo_id, self.repo_type, self.revision, self.endpoint, self.base = (
            repo_id,
            repo_type,
            revision,
            endpoint,
            base,
        )
        self._token = token
        self.create = create
        self.secrets = secrets
        self._api: Any = None
        self._staged: dict[str, bytes] = {}

    @classmethod
    def from_backend(cls, backend: Backend, root: Path | None = None) -> HubDriver:
        repo_id = required(backend, "repo_id", "repo", "repository")
        if repo_id.count("/") != 1 or any(part in ("", ".", "..") for part in repo_id.split("/")):
            raise DriverError(f"backend {backend.name!r} (huggingface): repo_id {repo_id!r} is not 'owner/name'")
        repo_type = text_setting(backend, "repo_type", default="dataset") or "dataset"
        if repo_type not in REPO_TYPES:
            raise DriverError(
                f"backend {backend.name!r} (huggingface): repo_type must be one of {', '.join(REPO_TYPES)}"
            )
        revision = text_setting(backend, "revision", "branch", default="main") or "main"
        endpoint = (text_setting(backend, "endpoint", "endpoint_url", default=DEFAULT_ENDPOINT) or "").rstrip("/")
        path = text_setting(backend, "path", "base_path", default="") or ""
        base = checked_key(path) if path.strip("/") else ""
        secrets = Secrets()
        token = secrets.secret(backend, None, "token_env", needed=False)
        create = flag_setting(backend, "create_repo", True)
        return cls(repo_id, repo_type, revision, endpoint, base, token, create, secrets)

    def describe(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        where = f"{self.endpoint}/{prefix}{self.repo_id}@{self.revision}"
        return f"{where}/{self.base}" if self.base else where

    # -- the client --

    def _client(self) -> Any:
        if self._api is None:
            try:
                from huggingface_hub import HfApi
                from huggingface_hub.utils import disable_progress_bars
            except ImportError:
                raise Unsupported(
                    "the huggingface driver needs huggingface_hub: pip install 'pinfs[huggingface]'"
                ) from None
            disable_progress_bars()  # pinfs draws its own progress, on a terminal only
            # token=False when there is none: never fall back to a token stored on this machine for another use
            self._api = HfApi(endpoint=self.endpoint, token=self._token or False)
        return self._api

    def _error(self, what: str, exc: BaseException) -> DriverError:
        return self.secrets.error(f"{self.describe()}: {what} failed", exc)

    def _path(self, key: str) -> str:
        key = in_repository(key, "hf-repo")
        return posixpath.join(self.base, key) if self.base else key

    def _info(self, paths: list[str]) -> dict[str, Any]:
        """What the Hub has at ``paths`` (files only), by path; {} for a repository or revision not there yet."""
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            found = self._client().get_paths_info(
                self.repo_id, paths, repo_type=self.repo_type, revision=self.revision, expand=False
            )
        except (EntryNotFoundError, RevisionNotFoundError):
            return {}
        except RepositoryNotFoundError as exc:
            if self.create:
                return {}  # made by the first flush
            raise self._error("finding the repository", exc) from None
        except Exception as exc:  # the client raises httpx, OSError and its own errors
            raise self._error("get_paths_info", exc) from None
        return {item.path: item for item in found if getattr(item, "size", None) is not None}

    # -- the interface --

    def check(self) -> None:
        """The repository can be read with the token (a missing one is made by the first flush when
        ``create_repo``: a dry run must not create it)."""
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            self._client().repo_info(self.repo_id, repo_type=self.repo_type)
        except RepositoryNotFoundError as exc:
            if not self.create:
                raise self._error("finding the repository", exc) from None
        except Unsupported:
            raise
        except Exception as exc:
            raise self._error("reaching the Hub", exc) from None

    def _create(self) -> None:
        self._client().create_repo(self.repo_id, repo_type=self.repo_type, private=True, exist_ok=True)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self.limit_check(path, len(data))
        self._staged[path] = data

    def size(self, key: str) -> int | None:
        path = self._path(key)
        if path in self._staged:
            return len(self._staged[path])
        item = self._info([path]).get(path)
        return int(item.size) if item is not None else None

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if path in self._staged:
            return self._staged[path]
        size = self.size(key)
        if size is None:
            raise NotFound(f"{self.describe()}: {path} does not exist")
        if size > MAX_OBJECT_BYTES:
            raise DriverError(f"{self.describe()}: {path} is larger than {MAX_OBJECT_BYTES} bytes")
        from huggingface_hub.errors import EntryNotFoundError

        with tempfile.TemporaryDirectory(prefix="pinfs-hf-") as folder:
            try:
                local = self._client().hf_hub_download(
                    self.repo_id, path, repo_type=self.repo_type, revision=self.revision, local_dir=folder
                )
            except EntryNotFoundError:
                raise NotFound(f"{self.describe()}: {path} does not exist") from None
            except Exception as exc:
                raise self._error(f"downloading {path}", exc) from None
            return Path(local).read_bytes()

    def list(self, prefix: str = "") -> list[str]:
        top = self._path(prefix) if prefix.strip("/") else self.base
        try:
            items = self._client().list_repo_tree(
                self.repo_id, path_in_repo=top or None, recursive=True, repo_type=self.repo_type, revision=self.revision
            )
            names = {item.path for item in items if getattr(item, "size", None) is not None}
        except Exception as exc:
            raise self._error("listing", exc) from None
        cut = len(self.base) + 1 if self.base else 0
        return sorted(name[cut:] for name in names | set(self._staged) if not top or name.startswith(top))

    def flush(self, message: str) -> None:
        """One commit of the staged files that differ from what the revision has; none when all are there."""
        if not self._staged:
            return
        from huggingface_hub import CommitOperationAdd

        try:
            known = self._info(sorted(self._staged))
            changed = {path: data for path, data in self._staged.items() if not _same(known.get(path), data)}
            if not changed:
                return
            if self.create:
                self._create()
            operations = [CommitOperationAdd(path, data) for path, data in sorted(changed.items())]
            self._client().create_commit(
                self.repo_id,
                operations,
                commit_message=message,
                repo_type=self.repo_type,
                revision=self.revision,
            )
        except (DriverError, Unsupported):
            raise
        except Exception as exc:
            raise self._error("the commit", exc) from None
        finally:
            self._staged.clear()


def _same(item: Any, data: bytes) -> bool:
    """Whether the Hub's file ``item`` holds ``data``: by the LFS sha256, or git's blob id."""
    if item is None or int(item.size) != len(data):
        return False
    lfs = getattr(item, "lfs", None)
    if lfs is not None:
        return getattr(lfs, "sha256", None) == hashlib.sha256(data).hexdigest()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return getattr(item, "blob_id", None) == blob
