"""Running a real mount in a subprocess for end-to-end tests, and always taking it down again.

``mounted(root, mountpoint)`` starts ``python -m pinfs mount MOUNTPOINT --root ROOT``, waits until the
mount point is mounted (with a timeout, failing with the process's stderr), and in teardown always
unmounts: ``fusermount3 -u``, then ``-uz``, then kills the process. A test that kills the process
itself leaves the rest to the teardown.

Logs are assertions: the mount's stderr goes to a file next to the mount point, and ``mounted`` fails
when it holds a warning, an error or a traceback the caller did not declare (``expected_log``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from requirements import needs

from pinfs.fs.mount import is_mounted

MOUNT_TIMEOUT = 10.0
# What a mount logs when a control file refuses input (issue #16: every rejection is logged): declared by
# the tests that write bad input on purpose.
REJECTIONS = (": rejected: ",)

FUSE_PROBLEM = None if os.path.exists("/dev/fuse") and shutil.which("fusermount3") else "no /dev/fuse or fusermount3"
needs_fuse = needs("fuse", FUSE_PROBLEM)


@dataclass
class Mount:
    """A running mount: the process serving it and where it is."""

    process: subprocess.Popen[bytes]
    mountpoint: Path
    root: Path
    log_path: Path
    ready_after: float  # seconds from start until the mount point was mounted

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_mount(root: Path, mountpoint: Path, *extra: str) -> Mount:
    mountpoint.mkdir(parents=True, exist_ok=True)
    log_path = mountpoint.parent / f"{mountpoint.name}.mount.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pinfs", "mount", str(mountpoint), "--root", str(root), *extra],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = started + MOUNT_TIMEOUT
    while not os.path.ismount(mountpoint):
        if process.poll() is not None:
            raise AssertionError(f"pinfs mount exited {process.returncode} before mounting:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            force_unmount(mountpoint, process)
            raise AssertionError(f"{mountpoint} was not mounted within {MOUNT_TIMEOUT} s")
        time.sleep(0.02)
    return Mount(process, mountpoint, root, log_path, time.monotonic() - started)


def force_unmount(mountpoint: Path, process: subprocess.Popen[bytes] | None = None) -> None:
    """Take a mount down whatever state it is in: -u, then -uz, then kill the process."""
    if is_mounted(mountpoint):
        done = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        if done.returncode != 0 and is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
    if process is not None:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def unexpected_log_lines(text: str, expected: tuple[str, ...] = ()) -> list[str]:
    """Lines of a mount's log that report a problem nobody declared."""
    alarming = ("WARNING", "ERROR", "CRITICAL", "Traceback")
    return [
        line
        for line in text.splitlines()
        if any(word in line for word in alarming) and not any(pattern in line for pattern in expected)
    ]


@contextlib.contextmanager
def mounted(root: Path, mountpoint: Path, *extra: str, expected_log: tuple[str, ...] = ()) -> Iterator[Mount]:
    """A real mount of ``root`` at ``mountpoint`` for the duration of the block; fails afterwards if
    the mount logged a warning or error not in ``expected_log``."""
    mount = start_mount(root, mountpoint, *extra)
    try:
        yield mount
    finally:
        force_unmount(mountpoint, mount.process)
    unexpected = unexpected_log_lines(mount.log(), expected_log)
    assert not unexpected, "the mount logged:\n" + "\n".join(unexpected)


def write_errno(path: Path, data: bytes) -> int | None:
    """Write ``data`` to a control file as ``echo data > path`` does (open O_TRUNC, one write, close)
    with os calls, so a failing close is seen (a shell's builtin echo ignores it); return the errno
    the write or the close failed with, or None."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    except OSError as exc:
        os.close(fd)
        return exc.errno
    try:
        os.close(fd)
    except OSError as exc:
        return exc.errno
    return None


def write_control(path: Path, text: str) -> None:
    """Run a control command and require it to succeed (OSError with the errno otherwise)."""
    failed = write_errno(path, text.encode())
    if failed is not None:
        raise OSError(failed, os.strerror(failed), str(path))


def stop_with(mount: Mount, signum: int, timeout: float = 10.0) -> int:
    """Send ``signum`` to the mount process and return its exit status."""
    mount.process.send_signal(signum)
    return mount.process.wait(timeout=timeout)


def sh(command: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a shell command line (``ls``, ``cat``, ``echo … >``) as a user would."""
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=cwd, timeout=timeout)


__all__ = [
    "REJECTIONS",
    "Mount",
    "force_unmount",
    "mounted",
    "needs_fuse",
    "sh",
    "signal",
    "start_mount",
    "stop_with",
    "write_control",
    "write_errno",
]
