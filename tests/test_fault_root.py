"""Issue #15, item 5: a data root that does not exist (a typo, a disk not mounted) or that vanishes
under a running mount is an error everywhere, never an empty, healthy root; once it is back, all is
as before."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from helpers import cid_for, make_backend, run_pinfs
from mounting import mounted, needs_fuse, write_errno

from pinfs.ops.pins import PinRequest, add_pins

T = TypeVar("T")


def settled(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 2.5) -> T:
    """What ``read`` gives once ``done`` holds: the mount shows a change within 2 s (CONTRACT §2)."""
    deadline = time.monotonic() + timeout
    while not done(value := read()):
        assert time.monotonic() < deadline, f"still {value!r} after {timeout} s"
        time.sleep(0.1)
    return value


COMMANDS = [
    ("health",),
    ("status",),
    ("insights",),
    ("migrate",),
    ("migrate", "--verify-only"),
    ("sync",),
    ("verify",),
    ("car", "regenerate"),
    ("pin", "ls"),
    ("pin", "add", cid_for("x"), "--backend", "b1"),
    ("find", cid_for("x")),
    ("query", "SELECT count(*) FROM pins"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_on_a_missing_root_exits_1_with_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "typo-ipfs_kit"
    result = run_pinfs(missing, *command)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"data root {missing} does not exist" in lines[0]
    assert not missing.exists()  # nothing was made in its place


def test_a_root_that_is_a_file_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "root").write_text("not a directory")
    result = run_pinfs(tmp_path / "root", "health")
    assert result.returncode == 1 and "is not a directory" in result.stderr


def test_once_the_root_is_there_the_same_commands_succeed(tmp_path: Path) -> None:
    root = tmp_path / "late"
    assert run_pinfs(root, "health").returncode == 1
    make_backend(root, "b1")
    add_pins(root, "b1", [PinRequest(cid_for("x"))])
    health = run_pinfs(root, "health", "--json")
    assert health.returncode == 0 and json.loads(health.stdout)["state"] in ("ok", "degraded")
    assert run_pinfs(root, "pin", "ls").stdout.startswith(cid_for("x"))


@needs_fuse
@pytest.mark.mount
def test_a_mount_whose_root_vanished_says_error_and_recovers(tmp_path: Path) -> None:
    root = tmp_path / "ipfs_kit"
    make_backend(root, "b1")
    add_pins(root, "b1", [PinRequest(cid_for("v"))])
    moved = tmp_path / "moved-away"
    with mounted(root, tmp_path / "m", expected_log=("data root",)) as mount:
        assert json.loads(mount.path("health.json").read_text())["state"] != "error"
        os.rename(root, moved)
        health = settled(lambda: json.loads(mount.path("health.json").read_text()), lambda h: h["state"] == "error")
        assert f"data root {root} does not exist" in health["error"]
        assert write_errno(mount.path(".control", "migrate"), b"\n") == errno.EIO
        state = json.loads(mount.path(".control", "migrate").read_text())
        assert state["state"] == "failed" and "does not exist" in state["error"]
        with pytest.raises(OSError) as listing:
            os.listdir(mount.path("backends"))
        assert listing.value.errno == errno.EIO
        os.rename(moved, root)
        settled(lambda: json.loads(mount.path("health.json").read_text()), lambda h: h["state"] != "error")
        assert os.listdir(mount.path("backends")) == ["b1"]
        assert write_errno(mount.path(".control", "migrate"), b"\n") is None
