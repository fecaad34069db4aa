"""inotify through ctypes: which watched directories changed, for the mount's version watch.

What it is for: waking the kernel-cache duty (``pinfs.fs.kernel``) as soon as a commit lands in a
local table's ``_delta_log``, a backend appears, or a table is created. It only says *that* something
changed; ``VersionWatch.check`` finds out what. Linux's inotify(7) needs no package: three libc calls.

What it must not do: decide anything from event names, or be the only way a change is noticed (events
can overflow the queue, and S3 roots have none): the duty also polls.

Threading: one owner (the duty's task on the event loop); ``drain`` never blocks (the descriptor is
non-blocking), and the owner waits for it with ``trio.lowlevel.wait_readable``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# What a commit (delta-rs writes a temporary file, then renames it to the next version's name), a new
# backend or table, and an export replaced by rename look like.
DIRECTORY_EVENTS = (
    IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)
_HEADER = 16  # struct inotify_event: int wd; uint32 mask, cookie, len; then len bytes of name


class Inotify:
    """An inotify descriptor and the directories it watches."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            number = ctypes.get_errno()
            raise OSError(number, f"inotify_init1: {os.strerror(number)}")
        self.fd: int = fd
        self._watches: dict[int, str] = {}  # watch descriptor -> directory

    def watch(self, directory: Path, mask: int = DIRECTORY_EVENTS) -> bool:
        """Watch ``directory`` (again: a no-op); False when it does not exist (or is not a directory)."""
        path = str(directory)
        if path in self._watches.values():
            return True
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            number = ctypes.get_errno()
            if number in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return False
            raise OSError(number, f"inotify_add_watch {path}: {os.strerror(number)}")
        self._watches[wd] = path
        return True

    @property
    def watched(self) -> set[str]:
        return set(self._watches.values())

    def drain(self) -> int:
        """Read every pending event; returns how many there were. A directory that went away is no
        longer watched (the kernel said IN_IGNORED)."""
        count = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            offset = 0
            while offset + _HEADER <= len(data):
                wd = int.from_bytes(data[offset : offset + 4], "little", signed=True)
                mask = int.from_bytes(data[offset + 4 : offset + 8], "little")
                length = int.from_bytes(data[offset + 12 : offset + 16], "little")
                offset += _HEADER + length
                count += 1
                if mask & IN_IGNORED:
                    self._watches.pop(wd, None)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
