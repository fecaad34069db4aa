"""Issue #15, item 8: a mount whose process was killed, and ``pinfs umount`` waiting for the process
that served the mount to exit."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import cid_for, make_backend, run_pinfs
from mounting import force_unmount, mounted, needs_fuse, start_mount

from pinfs.fs.mount import is_mounted
from pinfs.ops.pins import PinRequest, add_pins

pytestmark = [pytest.mark.mount, needs_fuse]

STOPPED_FOR = 3.0


@pytest.fixture
def small(root: Path) -> Path:
    make_backend(root, "b1")
    add_pins(root, "b1", [PinRequest(cid_for("m"))])
    return root


def test_umount_returns_once_the_serving_process_has_exited(small: Path, tmp_path: Path) -> None:
    """The serving process is stopped (SIGSTOP) while it is unmounted, and let go a few seconds later
    (longer than the CLI takes to start and unmount): umount returns only after that, when the process
    has finished and exited."""
    mountpoint = tmp_path / "m"
    mount = start_mount(small, mountpoint)
    resume = threading.Timer(STOPPED_FOR, mount.process.send_signal, (signal.SIGCONT,))
    try:
        mount.process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        resume.start()
        result = run_pinfs(small, "umount", str(mountpoint))
        exited = mount.process.poll()  # before anything else waits
        assert result.returncode == 0, result.stderr
        assert exited == 0, f"umount returned after {time.monotonic() - started:.1f} s, the server still running"
        assert time.monotonic() - started >= STOPPED_FOR
        assert not is_mounted(mountpoint)
    finally:
        resume.cancel()
        mount.process.send_signal(signal.SIGCONT)
        force_unmount(mountpoint, mount.process)


def test_mount_on_a_dead_endpoint_says_what_to_run_then_mounts_after_it(small: Path, tmp_path: Path) -> None:
    mountpoint = tmp_path / "m"
    mount = start_mount(small, mountpoint)
    try:
        mount.process.send_signal(signal.SIGKILL)
        mount.process.wait(timeout=10)
        again = run_pinfs(small, "mount", str(mountpoint))
        assert again.returncode == 2
        lines = again.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in again.stderr
        assert "process has gone" in lines[0] and f"run 'pinfs umount {mountpoint}'" in lines[0]
        assert run_pinfs(small, "umount", str(mountpoint)).returncode == 0
    finally:
        force_unmount(mountpoint, mount.process)
    with mounted(small, mountpoint) as fresh:
        assert (fresh.path("backends", "b1", "by-cid", cid_for("m"))).is_dir()
