"""Who may do what through a real mount (CONTRACT §2, docs/reliability.md "Permissions").

Control files are the mounting user's alone (0600). Without ``--allow-other`` no other user can even
look at the mount (the kernel refuses them: EACCES); with it they can browse (``ls``, ``cat`` of the
0444 files) but neither read nor write a control file, because the mount also asks the kernel to check
modes (``default_permissions``). The other user is ``nobody``, through ``setpriv``; the tests run as
root (which needs no ``user_allow_other`` in /etc/fuse.conf).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import cid_for, file_digests, make_backend
from mounting import Mount, mounted, needs_fuse
from requirements import needs

from pinfs.ops.pins import PinRequest, add_pins

pytestmark = [
    needs_fuse,
    needs("root", None if os.geteuid() == 0 and shutil.which("setpriv") else "not root, or no setpriv"),
]

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
CONTROL_FILES = (".control/migrate", ".control/sync", "backends/b1/.control/pin", "backends/b1/.control/unpin")


def as_nobody(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AS_NOBODY, "sh", "-c", command], capture_output=True, text=True, timeout=30)


def denied(result: subprocess.CompletedProcess[str]) -> bool:
    text = result.stderr.lower()
    return result.returncode != 0 and ("permission denied" in text or "operation not permitted" in text)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"  # under pytest's 0700 directory: readable by the mounting user only
    make_backend(root, "b1")
    add_pins(root, "b1", [PinRequest(cid_for("perm"), "stored")])
    return root


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A 0755 directory under /tmp for the mount point, so that nobody can reach it at all."""
    directory = Path(tempfile.mkdtemp(prefix="pinfs-perm-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def private_mount(data_root: Path, public_dir: Path) -> Iterator[Mount]:
    with mounted(data_root, public_dir / "mnt") as mount:
        yield mount


@pytest.fixture
def shared_mount(data_root: Path, public_dir: Path) -> Iterator[Mount]:
    with mounted(data_root, public_dir / "mnt", "--allow-other") as mount:
        yield mount


def test_control_files_are_owner_only(private_mount: Mount) -> None:
    for name in CONTROL_FILES:
        info = os.stat(private_mount.path(name))
        assert stat.S_IMODE(info.st_mode) == 0o600, name
        assert info.st_uid == os.getuid()
    assert stat.S_IMODE(os.stat(private_mount.path("status.json")).st_mode) == 0o444


def test_other_users_cannot_enter_without_allow_other(private_mount: Mount) -> None:
    mountpoint = private_mount.mountpoint
    assert as_nobody(f"ls {mountpoint.parent}").returncode == 0  # the directory above is reachable
    for command in (
        f"ls {mountpoint}",
        f"cat {mountpoint}/status.json",
        f"stat {mountpoint}/README",
        f"cat {mountpoint}/.control/migrate",
        f"echo > {mountpoint}/.control/migrate",
    ):
        result = as_nobody(command)
        assert denied(result), (command, result.returncode, result.stderr)


def test_with_allow_other_others_browse_but_cannot_touch_control_files(shared_mount: Mount, data_root: Path) -> None:
    mountpoint = shared_mount.mountpoint
    listing = as_nobody(f"ls {mountpoint}")
    assert listing.returncode == 0, listing.stderr
    assert {"README", "status.json", "backends"} <= set(listing.stdout.split())
    assert as_nobody(f"ls {mountpoint}/backends/b1/by-cid").stdout.split() == [cid_for("perm")]
    status = as_nobody(f"cat {mountpoint}/status.json")
    assert status.returncode == 0 and status.stdout.lstrip().startswith("{"), status.stderr
    before = file_digests(data_root)
    for name in CONTROL_FILES:
        line = cid_for("intruder") if name.endswith("pin") else ""
        for command in (f"cat {mountpoint}/{name}", f"echo '{line}' > {mountpoint}/{name}"):
            result = as_nobody(command)
            assert denied(result), (command, result.returncode, result.stderr)
    assert file_digests(data_root) == before  # nothing ran
    # the owner still can
    own = subprocess.run(["sh", "-c", f"cat {mountpoint}/.control/migrate"], capture_output=True, text=True)
    assert own.returncode == 0 and '"state"' in own.stdout
