"""The mount point: whether it can be mounted on, whether it is mounted, and unmounting it.

What it is for: ``check_mountpoint`` refuses a mount point that cannot be used, with one line saying
why (issue #16); ``is_mounted`` reads the mount table (``/proc/self/mountinfo``), which answers even
for a dead FUSE endpoint; ``unmount`` is ``fusermount3 -u``, or ``-uz`` when the process behind the
mount died, and waits for the serving process to exit (it writes what it still had to: issue #15).

What it must not do: touch the mount itself where the answer can come from /proc (a stat of a dead or
busy mount hangs or fails).

Threading: blocking; called from the command line, never from the mount's event loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import select
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pinfs.data.fsutil import unescape_mountinfo
from pinfs.errors import Busy, InvalidInput, NotFound, PinfsError


def is_fd_mountpoint(mountpoint: Path) -> bool:
    """``/dev/fd/N``: a FUSE device already mounted by the caller (mount.fuse3 -o drop_privileges)."""
    return re.fullmatch(r"/dev/fd/\d+", str(mountpoint)) is not None


def check_mountpoint(mountpoint: Path, *, nonempty: bool = False) -> None:
    """Raise InvalidInput (exit 2) when ``mountpoint`` cannot be mounted on: not a directory, a mount
    already, or (unless ``nonempty``) a directory with entries, which the mount would hide (issue #16:
    libfuse 3 mounts over them without a word)."""
    if is_fd_mountpoint(mountpoint):
        return
    # The mount table first: stat of a mount whose process died fails (ENOTCONN).
    if is_mounted(mountpoint) and not _connected(os.path.abspath(mountpoint)):
        raise InvalidInput(
            f"{mountpoint} is a mount whose process has gone (transport endpoint is not connected); "
            f"run 'pinfs umount {mountpoint}' to clear it, then mount again"
        )
    if is_mounted(mountpoint) or os.path.ismount(mountpoint):
        raise InvalidInput(f"{mountpoint} is already a mount point; 'pinfs umount {mountpoint}' first")
    try:
        is_dir = stat.S_ISDIR(os.stat(mountpoint).st_mode)
    except OSError:
        is_dir = False
    if not is_dir:
        raise InvalidInput(f"mount point {mountpoint} is not an existing directory")
    if not nonempty:
        with contextlib.suppress(OSError), os.scandir(mountpoint) as entries:
            if next(entries, None) is not None:
                raise InvalidInput(
                    f"mount point {mountpoint} is not empty: mounting would hide what is in it; use an empty "
                    "directory, or give --nonempty (-o nonempty) to mount over it anyway"
                )


# -- the mount table and unmounting --


def is_mounted(mountpoint: Path) -> bool:
    """Whether ``mountpoint`` is in the mount table (true also for a dead FUSE endpoint)."""
    target = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            return any(unescape_mountinfo(line.split()[4]) == target for line in table if len(line.split()) > 4)
    except OSError:
        return os.path.ismount(target)


def _connected(mountpoint: str) -> bool:
    """Whether a process still answers the mount. A name never looked up is asked of it (the kernel may
    answer a stat of the mount point itself from its cache, after the process died)."""
    for path in (mountpoint, os.path.join(mountpoint, f".pinfs-probe-{secrets.token_hex(8)}")):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return False
    return True


# How long ``unmount`` waits for the process that served the mount to finish (it writes the exports
# still deferred, a few seconds for a million pins) before saying it is still at work.
SERVER_EXIT_TIMEOUT = 120.0


def unmount(mountpoint: Path, wait: float = SERVER_EXIT_TIMEOUT) -> str:
    """Unmount ``mountpoint``; lazily (``-uz``) when the process behind it is gone. Returns how. When the
    mount was served by a live process, returns once that process has exited (issue #15, item 8), so
    that whatever it still had to write (deferred exports) is written.

    Raises NotFound when nothing is mounted there and PinfsError when unmounting fails.
    """
    target = os.path.abspath(mountpoint)
    if not is_mounted(Path(target)):
        raise NotFound(f"{target} is not mounted")
    servers = serving_processes(target)
    attempt = _fusermount("-u", target)
    if attempt.returncode == 0:
        left = _wait_for_exit(servers, wait)
        if left:
            return f"unmounted; the process serving it ({', '.join(map(str, left))}) has not exited after {wait:g} s"
        return "unmounted"
    if not _connected(target) or "not connected" in attempt.stderr.lower():
        lazy = _fusermount("-uz", target)
        if lazy.returncode == 0:
            return "unmounted (lazily: the process serving it had gone)"
        attempt = lazy
    message = (attempt.stderr.strip().splitlines() or [f"fusermount3 exited {attempt.returncode}"])[-1]
    if "busy" in message.lower():
        users = mount_users(target)
        held = "; ".join(users[:10]) + (f"; and {len(users) - 10} more" if len(users) > 10 else "")
        who = f"in use by {held}" if users else "in use by a process this user cannot see (try 'fuser -vm')"
        raise Busy(
            f"could not unmount {target}: it is busy, {who}; leave it (cd elsewhere, close those programs), "
            f"then run 'pinfs umount {target}' again"
        )
    raise PinfsError(f"could not unmount {target}: {message}")


def serving_processes(target: str) -> list[int]:
    """The pids of the processes serving the FUSE mount at ``target``: those holding a /dev/fuse
    descriptor of its connection (fdinfo's ``fuse_connection``, Linux 6.x, is the minor number of the
    mount's device). Empty when the kernel does not say, or no process is left."""
    device = _mount_device(target)
    if device is None:
        return []
    wanted = f"fuse_connection:\t{device[1]}"
    found: list[int] = []
    for name in os.listdir("/proc"):  # (a process that serves a mount and unmounts it does not wait for itself)
        if name.isdigit() and int(name) != os.getpid() and _holds_connection(name, wanted):
            found.append(int(name))
    return found


def _mount_device(target: str) -> tuple[int, int] | None:
    """(major, minor) of the mount at ``target``, from the mount table (stat would ask the mount)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 4 and unescape_mountinfo(fields[4]) == target:
                    major, _, minor = fields[2].partition(":")
                    return int(major), int(minor)
    except (OSError, ValueError):
        return None
    return None


def _holds_connection(pid: str, wanted: str) -> bool:
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{descriptor}") != "/dev/fuse":
                continue
            with open(f"/proc/{pid}/fdinfo/{descriptor}", encoding="ascii", errors="replace") as info:
                if any(line.rstrip("\n") == wanted for line in info):
                    return True
        except OSError:
            continue
    return False


def _wait_for_exit(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until every process in ``pids`` has exited (a pidfd becomes readable then); the pids
    still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = []
    for pid in pids:
        try:
            handle = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        try:
            ready, _, _ = select.select([handle], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                left.append(pid)
        finally:
            os.close(handle)
    return left


def mount_users(target: str) -> list[str]:
    """What holds a mount, as ``fuser -m`` tells it (issue #16): processes whose working directory,
    root, open files or mapped files are under ``target``, e.g. ``pid 4242 (bash: working directory)``.
    Read from /proc without touching the mount (a link's text is not the file it names); processes of
    other users are not readable and are left out."""
    inside = target.rstrip("/") + "/"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        uses = _uses_of(entry.path, target, inside)
        if uses:
            found.append(f"pid {entry.name} ({_process_name(entry.path)}: {', '.join(uses)})")
    return found


def _uses_of(process: str, target: str, inside: str) -> list[str]:
    def under(link: str) -> bool:
        try:
            path = os.readlink(link)
        except OSError:
            return False
        return path == target or path.startswith(inside)

    uses = [word for name, word in (("cwd", "working directory"), ("root", "root")) if under(f"{process}/{name}")]
    with contextlib.suppress(OSError):
        if any(under(f"{process}/fd/{fd}") for fd in os.listdir(f"{process}/fd")):
            uses.append("open file")
    return uses


def _process_name(process: str) -> str:
    try:
        with open(f"{process}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip() or "?"
    except OSError:
        return "?"


def _fusermount(flags: str, target: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["fusermount3", flags, target], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise PinfsError("fusermount3 is not installed (package fuse3)") from None
