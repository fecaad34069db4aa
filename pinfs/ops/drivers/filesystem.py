"""The filesystem driver: a directory on local disk, or an sshfs mount point that must already be mounted.

Writes are atomic (temp file + rename in the same directory). A relative ``storage_path`` is below the
data root.
"""

from __future__ import annotations

import os
from pathlib import Path

from pinfs.data.backends import Backend
from pinfs.data.fsutil import atomic_write_bytes
from pinfs.errors import NotFound
from pinfs.ops.drivers.base import MAX_OBJECT_BYTES, BaseDriver, DriverError
from pinfs.ops.drivers.base import checked_key as _check_key


class FilesystemDriver(BaseDriver):
    """A directory (local disk, or an sshfs mount point that must already be mounted)."""

    kind = "filesystem"

    def __init__(self, base: Path, *, create: bool) -> None:
        self.base = base
        self.create = create

    @classmethod
    def from_backend(cls, backend: Backend, root: Path | None = None) -> FilesystemDriver:
        raw = backend.setting("storage_path", "path", "base_path", "mount_point", "local_path")
        if not isinstance(raw, str) or not raw.strip():
            raise DriverError(f"backend {backend.name!r} ({backend.type}): no storage_path in its config")
        base = Path(os.path.expanduser(raw.strip()))
        if not base.is_absolute():
            base = (root or backend.directory.parent.parent) / base
        # An sshfs mount point that is not mounted must not be filled with files.
        return cls(base, create=backend.type != "sshfs")

    def describe(self) -> str:
        return str(self.base)

    def check(self) -> None:
        if self.base.is_dir():
            return
        if self.create and not self.base.exists():
            try:
                self.base.mkdir(parents=True, exist_ok=True)
                return
            except OSError as exc:
                raise DriverError(f"storage_path {self.base} cannot be created ({exc.strerror or exc})") from None
        raise DriverError(f"storage_path {self.base} is not a directory (not mounted?)")

    def _path(self, key: str) -> Path:
        return self.base / _check_key(key)

    def put(self, key: str, data: bytes) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        except OSError as exc:
            raise DriverError(f"writing {target} failed ({exc.strerror or exc})") from None

    def get(self, key: str) -> bytes:
        target = self._path(key)
        try:
            if target.stat().st_size > MAX_OBJECT_BYTES:
                raise DriverError(f"{target} is larger than {MAX_OBJECT_BYTES} bytes")
            return target.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{target} does not exist") from None
        except IsADirectoryError:
            raise NotFound(f"{target} is a directory, not a file") from None
        except OSError as exc:
            raise DriverError(f"reading {target} failed ({exc.strerror or exc})") from None

    def size(self, key: str) -> int | None:
        target = self._path(key)
        try:
            info = target.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise DriverError(f"stat {target} failed ({exc.strerror or exc})") from None
        return info.st_size if target.is_file() else None

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def list(self, prefix: str = "") -> list[str]:
        start = self.base / _check_key(prefix) if prefix.strip("/") else self.base
        keys: list[str] = []
        for directory, _dirs, files in os.walk(start):
            for name in files:
                if ".pinfs-tmp." in name:
                    continue
                keys.append(Path(directory, name).relative_to(self.base).as_posix())
        return sorted(keys)
