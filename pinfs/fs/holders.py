"""Whether an open control file is still held by another process: when its command may run.

Why (issue #15, item 1): a control file's command must run once, on everything written through one
open file, after every writer has closed it. ``( cat a; cat b ) > .control/pin`` opens the file once
in a subshell; ``cat a`` and ``cat b`` inherit that open file and each sends a FLUSH when it exits,
and the subshell sends the last FLUSH, then RELEASE. FUSE says nothing about which FLUSH is the last,
and the command cannot wait for RELEASE: the kernel sends it only after the last FLUSH was answered,
without waiting for its answer (close() has returned by then), and pyfuse3 drops its errors. So a
FLUSH asks here whether any other process still has a descriptor of the same open file; only when
none has is the command run, in that FLUSH, whose answer is the closing writer's close().

How: an open file is inherited only by the children of the process that opened it (pyfuse3 gives that
pid at ``open``), so the opener and its descendants (``/proc/<pid>/task/<tid>/children``) are looked
at: a descriptor whose link ends with the control file's path, with the file's inode number, opened
for writing, at the offset where this open file's last write ended. A descriptor passed to another
process over a socket, or held by a process this one cannot inspect (another user's, another PID
namespace's), is not seen: the command then runs at the last close that is seen, as it did before.

What it must not do: block on anything but /proc (reading a /proc link or fdinfo never calls into a
FUSE filesystem), or raise: a process that exits meanwhile is simply not a holder.

Threading: blocking (a few /proc reads per process of the family); called from a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

PROC = "/proc"
# A family this big is not a shell and its children: stop looking (and run the command) rather than
# spend seconds on a fork bomb.
MAX_FAMILY = 4096
_ACCESS_MODE = os.O_ACCMODE
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


def held_elsewhere(opener_pid: int, path_suffix: str, inode: int, position: int) -> bool:
    """Whether ``opener_pid`` or one of its descendants still has a descriptor of the open file
    described by (the link's ``path_suffix``, ``inode``, ``position``) open for writing."""
    if opener_pid <= 0:
        return False  # the opener is not visible from here
    return any(_holds(pid, path_suffix, inode, position) for pid in family(opener_pid))


def family(pid: int) -> Iterator[int]:
    """``pid`` and its descendants (breadth first, each once), as far as /proc shows them."""
    seen = {pid}
    queue = [pid]
    while queue and len(seen) <= MAX_FAMILY:
        current = queue.pop(0)
        yield current
        for child in _children(current):
            if child not in seen:
                seen.add(child)
                queue.append(child)


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        threads = os.listdir(f"{PROC}/{pid}/task")
    except OSError:
        return children
    for thread in threads:
        try:
            with open(f"{PROC}/{pid}/task/{thread}/children", "rb") as handle:
                children.extend(int(word) for word in handle.read().split())
        except (OSError, ValueError):
            continue
    return children


def _holds(pid: int, path_suffix: str, inode: int, position: int) -> bool:
    directory = f"{PROC}/{pid}/fd"
    try:
        descriptors = os.listdir(directory)
    except OSError:
        return False  # gone, or not ours to look at
    for descriptor in descriptors:
        try:
            if not os.readlink(f"{directory}/{descriptor}").endswith(path_suffix):
                continue
            with open(f"{PROC}/{pid}/fdinfo/{descriptor}", "rb") as handle:
                info = _fdinfo(handle.read())
        except (OSError, ValueError):
            continue  # closed meanwhile (or a format this kernel does not write)
        if (
            info.get("ino") == inode
            and info.get("pos") == position
            and (info.get("flags", 0) & _ACCESS_MODE) in _WRITE_MODES
        ):
            return True
    return False


def _fdinfo(data: bytes) -> dict[str, int]:
    """``pos``, ``flags`` (octal in the file) and ``ino`` of a /proc fdinfo file."""
    info: dict[str, int] = {}
    for line in data.splitlines():
        key, _, value = line.partition(b":")
        name = key.strip().decode("ascii", "replace")
        if name in ("pos", "ino"):
            info[name] = int(value.strip() or b"-1")
        elif name == "flags":
            info[name] = int(value.strip() or b"0", 8)
    return info
