"""Issue #15, item 4: a full disk, a read-only root and a user without write permission, injected
for real: a small tmpfs filled with fallocate (ENOSPC), a read-only bind mount (EROFS), the user
``nobody`` through setpriv (EACCES). Each test checks the one-line message and exit status (or errno),
that nothing acknowledged was lost, and the recovery once the fault is gone."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import cid_for, make_backend, run_pinfs
from mounting import mounted, needs_fuse, write_errno
from requirements import needs

from pinfs.data.backends import get_backend
from pinfs.data.exports import export_state
from pinfs.data.snapshots import DEFAULT_CACHE
from pinfs.data.store import PinStore
from pinfs.ops.pins import PinRequest, add_pins

pytestmark = needs(
    "root", None if os.geteuid() == 0 and shutil.which("setpriv") and shutil.which("fallocate") else "not root"
)

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
PINS = 2000
FILE_ROWS = "64"  # data files of 64 pins: a pin rewrites ~10 KB, the exports of 2000 pins are ~100s of KB
ROOM_FOR_A_COMMIT = 96 << 10  # a data file and a log entry fit; the exports do not


class Disk:
    """A small tmpfs, filled and emptied with fallocate."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fillers = 0

    def available(self) -> int:
        info = os.statvfs(self.path)
        return info.f_bavail * info.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Leave ``leave`` bytes free (rounded to pages by tmpfs)."""
        self._fillers += 1
        size = self.available() - leave
        if size > 0:
            subprocess.run(["fallocate", "-l", str(size), str(self.path / f".filler{self._fillers}")], check=True)

    def empty(self) -> None:
        for filler in self.path.glob(".filler*"):
            filler.unlink()


@pytest.fixture
def disk() -> Iterator[Disk]:
    directory = Path(tempfile.mkdtemp(prefix="pinfs-disk-", dir="/tmp"))
    directory.chmod(0o755)  # nobody may reach it (the EACCES test)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(directory)], check=True)
    try:
        yield Disk(directory)
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def big_backend(disk: Disk, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root on the small disk with one backend of PINS pins in data files of FILE_ROWS pins."""
    monkeypatch.setenv("PINFS_FILE_ROWS", FILE_ROWS)  # this process and the CLIs it starts
    root = disk.path / "root"
    make_backend(root, "b1")
    add_pins(root, "b1", [PinRequest(cid_for(n), "stored") for n in range(PINS)])
    return root


def pins_in_table(root: Path) -> set[str]:
    DEFAULT_CACHE.clear()
    return {record["cid"] for record in PinStore(get_backend(root, "b1")).snapshot().iter_records()}


def pins_in_export(root: Path) -> set[str]:
    return set(
        pq.read_table(root / "backends" / "b1" / "pin_mappings.parquet", columns=["cid"]).column("cid").to_pylist()
    )


def exports(root: Path) -> dict[str, str]:
    DEFAULT_CACHE.clear()
    backend = get_backend(root, "b1")
    return export_state(backend, PinStore(backend).table_state())


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_full_disk_before_the_commit_is_one_line_and_changes_nothing(big_backend: Path, disk: Disk) -> None:
    root, before = big_backend, pins_in_table(big_backend)
    disk.fill()
    for command in (("pin", "add", cid_for("new"), "--backend", "b1"), ("pin", "rm", cid_for(1), "--backend", "b1")):
        result = run_pinfs(root, *command)
        assert result.returncode == 1
        line = one_line(result)
        assert line.startswith(f"pinfs {' '.join(command[:2])}: error: ") and f"{root}/backends/b1/" in line
        assert line.endswith("No space left on device (ENOSPC)")
    assert pins_in_table(root) == before and exports(root) == {"parquet": "current", "car": "current"}
    disk.empty()
    assert run_pinfs(root, "pin", "add", cid_for("new"), "--backend", "b1").returncode == 0
    assert pins_in_table(root) == before | {cid_for("new")} == pins_in_export(root)


def test_pins_committed_but_exports_behind_says_so_and_a_retry_succeeds(big_backend: Path, disk: Disk) -> None:
    root = big_backend
    gone = cid_for(7)
    disk.fill(leave=ROOM_FOR_A_COMMIT)
    result = run_pinfs(root, "pin", "rm", gone, "--backend", "b1", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["committed"] is True and report["exports"] == "behind" and report["removed"] == [gone]
    line = one_line(result)
    assert "pins committed" in line and "No space left on device (ENOSPC)" in line
    assert "run 'pinfs car regenerate --backend b1'" in line
    assert gone not in pins_in_table(root)  # the commit is the truth
    assert gone in pins_in_export(root)  # the export is one version behind, whole
    health = json.loads(run_pinfs(root, "health", "--json").stdout)
    assert any("behind the table" in reason for reason in health["backends"][0]["reasons"])
    # The regeneration it asks for fails the same way while the disk is full, in one line.
    regenerate = run_pinfs(root, "car", "regenerate", "--backend", "b1")
    assert regenerate.returncode == 1 and "No space left on device (ENOSPC)" in regenerate.stdout + regenerate.stderr
    disk.empty()
    retry = run_pinfs(root, "pin", "rm", gone, "--backend", "b1")  # the same command, run again
    assert retry.returncode == 0, retry.stderr
    assert "already removed" in retry.stdout
    assert exports(root) == {"parquet": "current", "car": "current"}
    assert gone not in pins_in_export(root) and len(pins_in_export(root)) == PINS - 1


def test_car_regenerate_catches_up_once_there_is_room(big_backend: Path, disk: Disk) -> None:
    root = big_backend
    disk.fill(leave=ROOM_FOR_A_COMMIT)
    added = run_pinfs(root, "pin", "add", cid_for("late"), "--backend", "b1", "--json")
    assert added.returncode == 1 and json.loads(added.stdout)["committed"] is True
    disk.empty()
    result = run_pinfs(root, "car", "regenerate", "--backend", "b1")
    assert result.returncode == 0, result.stderr
    assert exports(root) == {"parquet": "current", "car": "current"}
    assert cid_for("late") in pins_in_export(root)


@contextlib.contextmanager
def read_only_view(root: Path) -> Iterator[Path]:
    """``root`` bind-mounted read-only elsewhere."""
    view = Path(tempfile.mkdtemp(prefix="pinfs-ro-", dir="/tmp"))
    subprocess.run(["mount", "--bind", str(root), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=False)
        view.rmdir()


@pytest.mark.parametrize(
    "command",
    [
        ("pin", "add", cid_for("ro"), "--backend", "b1"),
        ("pin", "rm", cid_for(3), "--backend", "b1"),
        ("car", "regenerate", "--backend", "b1"),
        ("maintain", "--backend", "b1"),
    ],
    ids=lambda words: " ".join(words[:2]),
)
def test_a_read_only_root_is_one_line_with_erofs(big_backend: Path, command: tuple[str, ...]) -> None:
    before = pins_in_table(big_backend)
    with read_only_view(big_backend) as view:
        result = run_pinfs(view, *command)
        assert result.returncode == 1
        text = result.stdout.strip() if command[0] in ("car", "maintain") else one_line(result)
        assert f"{view}/backends/b1/" in text and text.endswith("Read-only file system (EROFS)")
        assert "Traceback" not in result.stderr
        listed = run_pinfs(view, "pin", "ls", "--backend", "b1")  # reading needs no writing
        assert listed.returncode == 0 and len(listed.stdout.splitlines()) == PINS
    assert pins_in_table(big_backend) == before
    assert run_pinfs(big_backend, *command).returncode == 0  # the same, on the writable root


def test_a_user_who_may_not_write_gets_eacces_in_one_line(big_backend: Path) -> None:
    before = pins_in_table(big_backend)
    env = {**os.environ, "PINFS_ROOT": str(big_backend)}
    for command in (("pin", "add", cid_for("nobody")), ("pin", "rm", cid_for(2))):
        result = subprocess.run(
            [*AS_NOBODY, *_pinfs(), *command, "--backend", "b1"], capture_output=True, text=True, env=env, timeout=120
        )
        assert result.returncode == 1
        line = one_line(result)
        assert f"{big_backend}/backends/b1/" in line and line.endswith("Permission denied (EACCES)")
    listed = subprocess.run([*AS_NOBODY, *_pinfs(), "pin", "ls"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == PINS
    assert pins_in_table(big_backend) == before


def _pinfs() -> list[str]:
    return [sys.executable, "-m", "pinfs"]


@needs_fuse
@pytest.mark.mount
def test_a_mount_on_a_full_disk_says_why_and_catches_up_by_itself(
    big_backend: Path, disk: Disk, tmp_path: Path
) -> None:
    root, control = big_backend, Path("backends", "b1", ".control")
    expected = ("refreshing the exports", "control command pin failed")
    with mounted(root, tmp_path / "m", expected_log=expected) as mount:
        try:
            disk.fill()
            assert write_errno(mount.path(*control.parts, "pin"), f"{cid_for('m1')}\n".encode()) == errno.EIO
            state = json.loads(mount.path(*control.parts, "pin").read_text())
            assert "No space left on device (ENOSPC)" in state["error"] and "internal error" not in state["error"]
            disk.empty()
            disk.fill(leave=ROOM_FOR_A_COMMIT)
            assert write_errno(mount.path(*control.parts, "pin"), f"{cid_for('m2')}\n".encode()) == errno.EIO
            state = json.loads(mount.path(*control.parts, "pin").read_text())
            assert state["result"]["committed"] is True and "pins committed" in state["error"]
            assert mount.path("backends", "b1", "by-cid", cid_for("m2")).is_dir()  # committed: served
            health = json.loads(mount.path("health.json").read_text())
            assert any("tried again in the background" in reason for reason in health["backends"][0]["reasons"])
        finally:
            disk.empty()
        deadline = time.monotonic() + 60  # a hang guard: the retry comes within seconds
        while exports(root) != {"parquet": "current", "car": "current"}:
            assert time.monotonic() < deadline, exports(root)
            time.sleep(0.2)
        assert cid_for("m2") in pins_in_export(root) and cid_for("m1") not in pins_in_export(root)
