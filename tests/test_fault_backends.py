"""Issue #15, items 6, 7 and 8: damaged files and broken backends.

- A damaged data file of a backend's table: writers refuse to build a version that would carry it
  (one line, exit 1, nothing committed), and write again once the file is restored.
- A damaged export (pin_mappings.parquet, pin_mappings.car): nothing depends on it; the next write
  moves a damaged parquet aside with its reason, never losing it, and writes both exports anew.
- A broken backend never hides the others: ``pin ls`` lists every other backend, says which one is
  broken on stderr and exits 1; ``cids/<cid>`` in the mount is EIO, not ENOENT, when the only
  backends that could hold the CID cannot be read.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import break_store, cid_for, file_digests, make_backend, run_pinfs
from mounting import mounted, needs_fuse

from pinfs.data import datafiles
from pinfs.data.backends import get_backend
from pinfs.data.car import read_pin_mappings_car
from pinfs.data.snapshots import DEFAULT_CACHE
from pinfs.data.store import PinStore
from pinfs.errors import CorruptData
from pinfs.ops.pins import PinRequest, add_pins


def damage(path: Path) -> bytes:
    """Overwrite ``path`` with garbage of the same size; return what it held."""
    held = path.read_bytes()
    path.write_bytes((b"garbage!" * (len(held) // 8 + 1))[: len(held)])
    return held


@pytest.fixture
def several_files(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Backend b1 with 40 pins in data files of 8."""
    monkeypatch.setenv("PINFS_FILE_ROWS", "8")
    make_backend(root, "b1")
    add_pins(root, "b1", [PinRequest(cid_for(n), "stored") for n in range(40)])
    return root


def table_version(root: Path) -> int:
    DEFAULT_CACHE.clear()
    state = PinStore(get_backend(root, "b1")).table_state()
    assert state is not None
    return state.version


def test_a_damaged_data_file_is_refused_by_writers_and_nothing_depends_on_it(several_files: Path) -> None:
    root = several_files
    state = PinStore(get_backend(root, "b1")).table_state()
    assert state is not None and len(state.files) >= 3
    last = state.files[-1]
    new = next(cid_for(f"new{n}") for n in range(1000) if cid_for(f"new{n}") < (last.min_cid or ""))
    damaged = root / "backends" / "b1" / "pin_mappings.delta" / last.path
    held = damage(damaged)  # a file this pin would not rewrite, but would carry into the new version
    before, version = file_digests(root / "backends" / "b1"), table_version(root)
    result = run_pinfs(root, "pin", "add", new, "--backend", "b1")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and f"{damaged}: not a readable parquet file" in lines[0]
    assert "nothing was written" in lines[0]
    assert table_version(root) == version and file_digests(root / "backends" / "b1") == before
    damaged.write_bytes(held)  # the fault is removed: restored from a copy
    assert run_pinfs(root, "pin", "add", new, "--backend", "b1").returncode == 0
    assert table_version(root) == version + 1


def test_a_long_running_writer_finds_a_file_damaged_after_it_last_looked(
    several_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount writes for days: a file it found sound once is looked at again (a stat, at most every
    ``RECHECK_SECONDS``), so a file damaged since is still refused."""
    monkeypatch.setattr(datafiles, "RECHECK_SECONDS", 0.2)
    root = several_files
    add_pins(root, "b1", [PinRequest(cid_for("first"))])  # every kept file looked at, found sound
    state = PinStore(get_backend(root, "b1")).table_state()
    assert state is not None
    kept = next(f for f in state.files if not f.is_insert and f.min_cid and f.min_cid > cid_for("second"))
    damage(root / "backends" / "b1" / "pin_mappings.delta" / kept.path)
    time.sleep(0.3)
    with pytest.raises(CorruptData, match="not a readable parquet file"):
        add_pins(root, "b1", [PinRequest(cid_for("second"))])


def test_a_damaged_parquet_export_is_moved_aside_and_written_anew(several_files: Path) -> None:
    root = several_files
    export = root / "backends" / "b1" / "pin_mappings.parquet"
    damage(export)
    garbage = export.read_bytes()
    result = run_pinfs(root, "pin", "add", cid_for("after"), "--backend", "b1")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rejected = sorted(export.parent.glob("pin_mappings.parquet.rejected.*[0-9Z]"))
    assert len(rejected) == 1 and rejected[0].read_bytes() == garbage  # never lost
    assert "not a readable parquet file" in rejected[0].with_name(rejected[0].name + ".reason").read_text()
    cids = set(pq.read_table(export, columns=["cid"]).column("cid").to_pylist())
    assert cids == {cid_for(n) for n in range(40)} | {cid_for("after")}


def test_a_damaged_car_export_is_written_anew_by_the_next_write(several_files: Path) -> None:
    root = several_files
    car = root / "backends" / "b1" / "pin_mappings.car"
    damage(car)
    result = run_pinfs(root, "pin", "add", cid_for("car"), "--backend", "b1")
    assert result.returncode == 0, result.stderr
    assert len(read_pin_mappings_car(car).records) == 41


@pytest.fixture
def three_backends(root: Path) -> Path:
    for name, status in (("a1", "failed"), ("b2", "failed"), ("c3", "failed")):
        make_backend(root, name)
        add_pins(root, name, [PinRequest(cid_for(f"{name}{n}"), status) for n in range(5)])
    break_store(root / "backends" / "b2")
    return root


@pytest.mark.parametrize("extra", [(), ("--status", "failed"), ("--json",)], ids=["all", "failed", "json"])
def test_pin_ls_lists_every_other_backend_and_exits_1(three_backends: Path, extra: tuple[str, ...]) -> None:
    result = run_pinfs(three_backends, "pin", "ls", *extra)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    json_lines = "--json" in extra
    listed = [json.loads(line)["cid"] if json_lines else line.split("\t")[0] for line in lines]
    assert sorted(listed) == sorted(cid_for(f"{name}{n}") for name in ("a1", "c3") for n in range(5))
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("pinfs pin ls: error: backend b2: ")
    assert "Traceback" not in result.stderr


def test_pin_ls_of_the_broken_backend_alone_is_its_error(three_backends: Path) -> None:
    result = run_pinfs(three_backends, "pin", "ls", "--backend", "b2")
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "b2" in result.stderr


@needs_fuse
@pytest.mark.mount
def test_cids_of_a_cid_only_a_broken_backend_could_hold_is_eio(three_backends: Path, tmp_path: Path) -> None:
    with mounted(three_backends, tmp_path / "m") as mount:
        assert os.listdir(mount.path("cids", cid_for("a10"))) == ["a1"]  # held by a readable backend
        with pytest.raises(OSError) as only_broken:
            os.stat(mount.path("cids", cid_for("b20")))
        assert only_broken.value.errno == errno.EIO
        with pytest.raises(OSError) as unknown:
            os.stat(mount.path("cids", cid_for("nowhere")))
        assert unknown.value.errno == errno.EIO  # b2 cannot be read: nobody can say it is not there
        (three_backends / "backends" / "b2" / "pin_mappings.delta").rename(tmp_path / "b2-table")
        (three_backends / "backends" / "b2" / "pin_mappings.parquet").unlink()
        (three_backends / "backends" / "b2" / "pin_mappings.car").unlink()
        with pytest.raises(OSError) as now_empty:  # b2 is an empty backend now: the answer is known
            os.stat(mount.path("cids", cid_for("nowhere-else")))
        assert now_empty.value.errno == errno.ENOENT
