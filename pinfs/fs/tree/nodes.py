"""The nodes of the mount's tree and the bytes of an open file.

What it is for: ``Node`` is one entry as the adapter sees it (kind, size, times, content or the real
file behind it, a symlink's target, a control file's key, the lease the kernel may keep it under);
``Content`` is the bytes of one open file, fixed for the life of its handle.

What it must not do: import pyfuse3 or decide what exists (the directory kinds, ``pinfs.fs.tree.kinds``).

Threading: nodes are immutable and may cross threads. ``RealFileContent.read`` blocks (a worker
thread); ``BytesContent`` never does.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from pinfs.data.rootfs import local_copy
from pinfs.errors import PinfsError
from pinfs.fs.tree.names import TreePath
from pinfs.fs.versions import Lease


class NotADirectory(PinfsError):
    """A path goes through something that is not a directory."""

    errno = errno.ENOTDIR


class NodeKind(Enum):
    DIRECTORY = "directory"
    FILE = "file"  # bytes known now (``content``) or a real file (``real_path``)
    GENERATED = "generated"  # bytes made by pinfs (reports, summary, CAR as JSON), cached briefly
    SYMLINK = "symlink"
    CONTROL = "control"


_MODES = {
    # 0755, not 0555 (issue #16): a copy made with 'cp -r' keeps the modes, and its owner must be able
    # to remove it again. Nothing here is writable all the same: every change is refused with EROFS.
    NodeKind.DIRECTORY: stat.S_IFDIR | 0o755,
    NodeKind.FILE: stat.S_IFREG | 0o444,
    NodeKind.GENERATED: stat.S_IFREG | 0o444,
    NodeKind.SYMLINK: stat.S_IFLNK | 0o777,
    NodeKind.CONTROL: stat.S_IFREG | 0o600,
}


@dataclass(frozen=True)
class Node:
    """One entry of the tree. ``size`` is exact, except for a GENERATED node made for a directory
    listing (``size_known`` False: rendering every report just to list a directory would make ``ls``
    slow, so the adapter gives such entries no attribute lifetime and the next ``stat`` renders it).
    GENERATED and CONTROL files are opened with direct_io, so a read is never cut at ``size`` even when
    the content changed between ``stat`` and ``open``."""

    path: TreePath
    kind: NodeKind
    size: int = 0
    mtime_ns: int = 0
    content: bytes | None = None
    real_path: Path | None = None
    target: str | None = None
    control_key: tuple[str | None, str] | None = None  # (backend or None for the root, command)
    size_known: bool = True
    lease: Lease | None = None  # how long the kernel may keep it (``kernel_timeout``); None: briefly

    @property
    def mode(self) -> int:
        return _MODES[self.kind]

    @property
    def is_dir(self) -> bool:
        return self.kind is NodeKind.DIRECTORY

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""


# -- file contents --


class Content(Protocol):
    """The bytes of one open file, fixed for the life of the handle."""

    size: int

    def read(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


class BytesContent:
    """Bytes made once (at open) and kept, so one read sequence sees one version."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    def close(self) -> None:
        pass


class RealFileContent:
    """A real file, open for the life of the handle (an atomic replace leaves this version readable)."""

    def __init__(self, path: Path) -> None:
        # A file on an S3 root is read from its copy in the local read cache.
        self._fd = os.open(local_copy(path), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
