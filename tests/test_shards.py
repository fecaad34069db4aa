"""The sharded form of ``pin_mappings.parquet`` (issue #6; README "Data layout"): a big backend's table
is a link to a generation directory of sorted shards, so one pin rewrites one shard.

``PINFS_SHARD_ROWS=8`` makes the form appear at a few dozen pins (more than 4 × 8 rows), so every test
here runs on small data; the code paths are those of a million pins.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import cid_for, make_backend, run_pinfs, run_pinfs_json
from mounting import mounted, needs_fuse, sh, write_control

from pinfs.backends import get_backend
from pinfs.car import read_pin_mappings_car
from pinfs.errors import CorruptData
from pinfs.ops import carops, reports
from pinfs.ops.carops import CarRefresher, car_agreement, car_is_current, refresh_car
from pinfs.ops.migrate import MigrateOptions, migrate
from pinfs.ops.pins import PinRequest, add_pins, remove_pins
from pinfs.ops.sync import SyncOptions, sync
from pinfs.shards import MANIFEST_NAME, SHARD_DIR, collect_garbage, generation_dir, read_manifest
from pinfs.snapshots import ShardedSnapshot
from pinfs.store import PinStore
from pinfs.tables import read_whole_table

SHARD_ROWS = 8


@pytest.fixture(autouse=True)
def _small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINFS_SHARD_ROWS", str(SHARD_ROWS))  # inherited by the CLI and mount subprocesses


def _pin(root: Path, name: str, cids: list[str], status: str = "pending") -> dict:
    return add_pins(root, name, [PinRequest(cid, status) for cid in cids])


def _sharded_backend(root: Path, name: str = "big", count: int = 100) -> tuple[Path, list[str]]:
    directory = make_backend(root, name)
    cids = [cid_for(f"{name}-{n}") for n in range(count)]
    _pin(root, name, cids)
    assert os.path.islink(directory / "pin_mappings.parquet")
    return directory, sorted(cids)


def _generation_inodes(directory: Path) -> dict[str, int]:
    """Shard file -> inode in the current generation, keyed by shard position (names carry the generation)."""
    generation = generation_dir(directory / "pin_mappings.parquet")
    shards = read_manifest(generation).shards
    return {shard.file.split("-")[1]: os.stat(generation / shard.file).st_ino for shard in shards}


# -- the form on disk --


def test_pandas_pyarrow_and_duckdb_read_every_pin_in_cid_order(root: Path) -> None:
    directory, cids = _sharded_backend(root)
    parquet = directory / "pin_mappings.parquet"
    frame = pd.read_parquet(parquet)
    assert list(frame["cid"]) == cids
    assert list(frame.columns[:6]) == ["cid", "car_file_path", "backend_name", "created_at", "status", "metadata"]
    assert pq.read_table(parquet).num_rows == 100
    rows = duckdb.sql(f"SELECT count(*), min(cid), max(cid) FROM read_parquet('{parquet}/*.parquet')").fetchall()
    assert rows == [(100, cids[0], cids[-1])]
    shards = sorted(p.name for p in parquet.iterdir() if p.suffix == ".parquet")
    assert len(shards) >= 100 // (2 * SHARD_ROWS)
    for shard in shards:  # every shard sorted, and each one's CIDs above the one before
        assert pq.read_table(parquet / shard).column("cid").to_pylist() == sorted(
            pq.read_table(parquet / shard).column("cid").to_pylist()
        )
    assert os.readlink(parquet).startswith(f"{SHARD_DIR}/g")


def test_one_pin_rewrites_one_shard_and_links_the_rest(root: Path) -> None:
    directory, cids = _sharded_backend(root)
    before = _generation_inodes(directory)
    new = cid_for("one more")
    assert _pin(root, "big", [new], "failed")["total"] == 101
    after = _generation_inodes(directory)
    rewritten = [position for position, inode in after.items() if before.get(position) != inode]
    assert len(rewritten) == 1, rewritten  # the shard that holds the new CID; the others are hard links
    snapshot = PinStore(get_backend(root, "big")).snapshot()
    assert isinstance(snapshot, ShardedSnapshot)
    assert snapshot.lookup(new)["status"] == "failed"
    assert snapshot.lookup(cids[57])["status"] == "pending"
    assert snapshot.count == 101 and snapshot.count_by_status()["failed"] == 1


def test_the_form_follows_the_size_both_ways_and_no_pin_is_lost(root: Path) -> None:
    directory = make_backend(root, "grow")
    cids = [cid_for(f"grow-{n}") for n in range(40)]
    _pin(root, "grow", cids[:30])
    assert (directory / "pin_mappings.parquet").is_file()  # 30 <= 4 x 8: one file
    _pin(root, "grow", cids[30:])
    assert os.path.islink(directory / "pin_mappings.parquet")  # 40 > 32: shards
    remove_pins(root, "grow", cids[:33])
    assert (directory / "pin_mappings.parquet").is_file()  # 7 rows, at most one shard's worth: one file again
    remaining = sorted(cids[33:])
    assert pd.read_parquet(directory / "pin_mappings.parquet")["cid"].tolist() == remaining


def test_removals_compact_small_shards(root: Path) -> None:
    directory, cids = _sharded_backend(root, count=200)
    remove_pins(root, "big", cids[::2][:60])
    manifest = read_manifest(generation_dir(directory / "pin_mappings.parquet"))
    assert manifest.count == 140
    small = [shard for shard in manifest.shards if shard.rows < SHARD_ROWS // 4]
    assert not small, small
    assert sorted(pd.read_parquet(directory / "pin_mappings.parquet")["cid"]) == sorted(set(cids) - set(cids[::2][:60]))


def test_old_generations_are_removed_after_the_grace_period(root: Path) -> None:
    directory, cids = _sharded_backend(root)
    for n in range(4):
        _pin(root, "big", [cid_for(f"extra-{n}")])
    shard_root = directory / SHARD_DIR
    assert len(list(shard_root.iterdir())) == 5  # within the grace period every generation stays
    collect_garbage(directory, grace_seconds=0)
    left = sorted(p.name for p in shard_root.iterdir())
    current = os.readlink(directory / "pin_mappings.parquet").split("/")[1]
    assert len(left) == 2 and left[-1] == current  # the current one and the one before it
    assert len(pd.read_parquet(directory / "pin_mappings.parquet")) == 104


def test_a_snapshot_keeps_reading_its_generation_after_writes(root: Path) -> None:
    directory, cids = _sharded_backend(root)
    store = PinStore(get_backend(root, "big"))
    snapshot = store.snapshot()
    listed = snapshot.cid_column(0, 10).to_pylist()
    remove_pins(root, "big", cids[:50])
    assert snapshot.cid_column(0, 10).to_pylist() == listed  # the version it was taken from, whole
    assert store.snapshot().count == 50


def test_car_is_current_after_cli_pins_and_agrees_with_the_shards(root: Path) -> None:
    directory, _cids = _sharded_backend(root)
    new = cid_for("by the cli")
    run_pinfs(root, "pin", "add", "--backend", "big", new, check=True)
    backend = get_backend(root, "big")
    assert car_is_current(backend)
    assert car_agreement(backend, read_whole_table(backend.parquet_path)) == []
    car = read_pin_mappings_car(backend.car_path)
    assert len(car.records) == 101 and new in {record["cid"] for record in car.records}
    report = run_pinfs_json(root, "migrate", "--verify-only")
    assert report["ok"], report


def test_sync_and_verify_write_only_what_changed(root: Path, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    make_backend(root, "fs", config={"type": "filesystem", "storage_path": str(storage)})
    cids = [cid_for(f"fs-{n}") for n in range(60)]
    _pin(root, "fs", cids, "stored")
    assert os.path.islink(root / "backends" / "fs" / "pin_mappings.parquet")
    report = sync(root, SyncOptions(backends=["fs"]))
    assert report["ok"], report
    backup = storage / "pin_mappings" / "fs" / "pin_mappings.parquet"
    assert backup.is_file()  # a sharded table is backed up as one parquet file
    assert sorted(pd.read_parquet(backup)["cid"]) == sorted(cids)
    again = sync(root, SyncOptions(backends=["fs"]))
    copied = [item["file"] for target in again.get("backups", []) for item in target.get("copied", [])]
    assert "pin_mappings.parquet" not in copied


def test_verify_only_reports_tampered_shards(root: Path) -> None:
    directory, _cids = _sharded_backend(root)
    generation = generation_dir(directory / "pin_mappings.parquet")
    (generation / "part-99999-g0000000001.parquet").write_bytes(
        (generation / read_manifest(generation).shards[0].file).read_bytes()
    )
    report = migrate(root, MigrateOptions(verify_only=True))
    problems = report["backends"][0]["problems"]
    assert not report["ok"] and any("does not name" in problem for problem in problems), problems


def test_a_shard_of_another_size_than_its_manifest_says_is_corrupt(root: Path) -> None:
    directory, cids = _sharded_backend(root)
    generation = generation_dir(directory / "pin_mappings.parquet")
    first = generation / read_manifest(generation).shards[0].file
    os.unlink(first)
    first.write_bytes(b"PAR1 not really")
    with pytest.raises(CorruptData, match="manifest says"):
        PinStore(get_backend(root, "big")).snapshot().lookup(cids[0])
    result = run_pinfs(root, "pin", "get", "--backend", "big", cids[0])
    assert result.returncode != 0 and "Traceback" not in result.stderr


@pytest.mark.parametrize("target", ["../elsewhere", f"{SHARD_DIR}/../../x", f"{SHARD_DIR}/g1", "/etc"])
def test_a_link_that_is_not_pinfs_own_is_refused(root: Path, target: str) -> None:
    directory = make_backend(root, "odd")
    (directory / "pin_mappings.parquet").symlink_to(target)
    with pytest.raises(CorruptData, match="symlink; refusing to follow it"):
        PinStore(get_backend(root, "odd")).snapshot()


def test_a_manifest_that_is_not_json_is_reported_not_a_traceback(root: Path) -> None:
    directory, cids = _sharded_backend(root)
    generation = generation_dir(directory / "pin_mappings.parquet")
    os.chmod(generation, 0o755)
    (generation / MANIFEST_NAME).write_text("{not json")
    result = run_pinfs(root, "pin", "get", "--backend", "big", cids[0])
    assert result.returncode == 1 and "not a valid shard manifest" in result.stderr
    assert "Traceback" not in result.stderr


# -- through the mount --


@needs_fuse
@pytest.mark.mount
def test_mount_serves_the_shards_and_pins_without_waiting_for_the_car(root: Path, tmp_path: Path) -> None:
    directory, cids = _sharded_backend(root)
    backend = get_backend(root, "big")
    with mounted(root, tmp_path / "mnt") as mount:
        served = mount.path("backends", "big", "pin_mappings.parquet")
        assert served.is_dir()
        names = sorted(os.listdir(served))
        assert MANIFEST_NAME in names and all(n.endswith(".parquet") for n in names if n != MANIFEST_NAME)
        assert pd.read_parquet(served)["cid"].tolist() == cids
        new = cid_for("through the mount")
        write_control(mount.path("backends", "big", ".control", "pin"), f"{new} status=failed\n")
        assert mount.path("backends", "big", "by-cid", new, "status").read_text() == "failed\n"
        assert new in pd.read_parquet(directory / "pin_mappings.parquet")["cid"].tolist()
        result = json.loads(mount.path("backends", "big", ".control", "pin").read_text())
        assert result["state"] == "succeeded" and result["result"]["total"] == 101
        deadline = time.monotonic() + 20
        while not car_is_current(backend):  # rebuilt once writes pause (about a second)
            assert time.monotonic() < deadline, "the deferred CAR was not rebuilt"
            time.sleep(0.1)
        assert len(read_pin_mappings_car(backend.car_path).records) == 101
        unpin = mount.path("backends", "big", ".control", "unpin")
        write_control(unpin, cids[0] + "\n")
        assert sh(f"ls {mount.path('backends', 'big', 'by-cid')} | wc -l").stdout.strip() == "100"
    # unmounting writes a CAR still waiting
    assert car_is_current(backend)
    assert car_agreement(backend, read_whole_table(backend.parquet_path)) == []


def test_a_reader_that_listed_an_old_generation_gets_enoent_never_a_mix(root: Path) -> None:
    directory, cids = _sharded_backend(root)
    parquet = directory / "pin_mappings.parquet"
    listed = sorted(p for p in parquet.iterdir() if p.suffix == ".parquet")  # paths through the link
    _pin(root, "big", [cid_for("swap the link")])
    with pytest.raises(FileNotFoundError):
        pq.read_table(listed[0])
    stable = Path(os.path.realpath(parquet))  # what a reader that wants one version reads
    _pin(root, "big", [cid_for("and again")])
    assert pq.read_table(stable).num_rows == 101


def test_status_reports_the_shards_size(root: Path) -> None:
    directory, _cids = _sharded_backend(root)
    report = run_pinfs_json(root, "status", "--detailed")
    entry = next(item for item in report["backends"] if item["backend"] == "big")
    files = entry["files"]["parquet"]
    shards = list((directory / "pin_mappings.parquet").glob("*.parquet"))
    assert files["shards"] == len(shards) and files["size"] == sum(p.stat().st_size for p in shards)


def test_windowed_columns_read_as_the_whole_table_does(root: Path) -> None:
    """What the CAR rebuild of a sharded backend reads: a few shards at a time, the same rows."""
    _directory, cids = _sharded_backend(root)
    snapshot = PinStore(get_backend(root, "big")).snapshot()
    columns = snapshot.windowed_columns(["cid", "status"])
    for start, length in [(0, 10), (5, 30), (30, 1), (90, 10), (0, 100), (99, 1), (17, 0)]:
        assert columns["cid"].slice(start, length).to_pylist() == cids[start : start + length]
        assert columns["status"].slice(start, length).to_pylist() == ["pending"] * len(cids[start : start + length])


def test_restore_from_backup_keeps_the_sharded_table_as_one_file(root: Path) -> None:
    legacy = [cid_for(f"legacy-{n}") for n in range(5)]
    directory = make_backend(root, "big", pins_json=legacy)
    assert migrate(root, MigrateOptions(backends=["big"]))["ok"]  # backs pins.json up
    cids = [cid_for(f"big-{n}") for n in range(60)]
    _pin(root, "big", cids)
    assert os.path.islink(directory / "pin_mappings.parquet")
    report = run_pinfs_json(root, "migrate", "--restore-from-backup", "--backend-filter", "big")
    kept = Path(report["backends"][0]["previous_parquet_kept_as"])
    assert sorted(pq.read_table(kept).column("cid").to_pylist()) == sorted(cids + legacy)
    assert (directory / "pin_mappings.parquet").is_file()  # five pins: one file again
    assert sorted(pd.read_parquet(directory / "pin_mappings.parquet")["cid"]) == sorted(legacy)
    assert run_pinfs_json(root, "migrate", "--verify-only", "--backend-filter", "big")["ok"]


def test_health_notes_a_car_being_rebuilt_and_flags_one_left_behind(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sharded_backend(root)
    refresher = CarRefresher(quiet=60, at_most=60)  # waits until closed: the pending state stays put
    monkeypatch.setattr(reports, "DEFERRED_CARS", refresher)
    add_pins(root, "big", [PinRequest(cid_for("deferred"))], defer_car=refresher.defer)

    def big() -> dict:
        return next(entry for entry in reports.health(root)["backends"] if entry["backend"] == "big")

    pending = big()
    assert pending["state"] == "ok" and any("being rebuilt" in note for note in pending["notes"]), pending
    monkeypatch.setattr(reports, "DEFERRED_CARS", CarRefresher())  # as another process sees it
    stale = big()
    assert stale["state"] == "degraded" and any("older than" in reason for reason in stale["reasons"]), stale
    refresher.close()  # what unmounting does
    assert big()["state"] == "ok" and car_is_current(get_backend(root, "big"))


def test_a_late_car_rebuild_of_an_older_version_never_replaces_a_newer_car(root: Path) -> None:
    """Writers of one backend rebuild its CAR without the lock, so two rebuilds can race."""
    _directory, _cids = _sharded_backend(root)
    backend = get_backend(root, "big")
    older = PinStore(backend).snapshot()  # what a slow rebuild started from
    add_pins(root, "big", [PinRequest(cid_for("newer"))], defer_car=lambda _backend: None)
    assert not car_is_current(backend)
    refresh_car(backend)  # the quick rebuild of the newer version
    newer_car = backend.car_path.read_bytes()
    with pytest.raises(carops.CarSuperseded):
        carops.write_car_of_version(backend, older)  # the slow one finishes last
    assert backend.car_path.read_bytes() == newer_car and car_is_current(backend)
    os.unlink(backend.car_path)
    carops.write_car_of_version(backend, older)  # no newer CAR in place: it goes in, dated as what it holds
    assert not car_is_current(backend)
    refresh_car(backend)
    assert car_is_current(backend) and len(read_pin_mappings_car(backend.car_path).records) == 101
