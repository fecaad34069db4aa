"""Long readers of old table versions (``pinfs.data.readers``): maintenance keeps the files of every
version a reader recorded, on this host or another, past the table's 2-minute vacuum retention; so a
listing in the mount that stays open for minutes reads its whole version while pins and maintenance go
on (issue #12: the short retention keeps table loads within target after bursts of single pins)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from helpers import cid_for, make_backend, run_pinfs
from mounting import mounted, needs_fuse

from pinfs.data import exports
from pinfs.data.backends import get_backend
from pinfs.data.delta import TABLE_DIR, TableVersion
from pinfs.data.readers import (
    FORGET_SECONDS,
    READERS_DIR,
    ReaderRecords,
    versions_read,
)
from pinfs.data.schema import make_record
from pinfs.data.snapshots import StoreCache
from pinfs.data.store import PinStore
from pinfs.errors import CorruptData
from pinfs.ops.maintain import MaintainOptions, maintain
from pinfs.ops.pins import PinRequest, add_pins, iter_pins
from pinfs.ops.synccontext import SyncContext

READDIR_BLOCK = 4096  # the mount reads a big listing in blocks of this many names (adapter.READDIR_BATCH)


def _table_with_pins(root: Path, count: int, name: str = "b1"):
    make_backend(root, name)
    add_pins(root, name, [PinRequest(cid_for(f"{name}-{index}"), "stored") for index in range(count)])
    return get_backend(root, name)


def _pins_without_export(backend, seeds: list[str]) -> None:
    """New pins in commits of their own, not exported: the exported version is then not the newest."""
    store = PinStore(backend)
    for seed in seeds:
        record = make_record(cid_for(seed), backend.name, backend.type, status="stored")
        store.write(lambda txn, record=record: txn.update({record["cid"]: record}))


def _data_files(backend) -> set[Path]:
    return set((backend.directory / TABLE_DIR).glob("*.parquet"))


def test_maintenance_keeps_the_files_of_a_recorded_version_until_its_reader_ends(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINFS_FILE_ROWS", "16")  # several data files, each rewritten by the merges below
    backend = _table_with_pins(root, 100)
    _pins_without_export(backend, ["after-export"])
    read = PinStore(backend).table_state()
    old_files = set(_current_files(backend))
    records = ReaderRecords("test-reader")
    records.write(records.hold([read.identity]))
    _pins_without_export(backend, [f"later-{index}" for index in range(30)])
    report = maintain(root, MaintainOptions(retention_hours=0))  # every unreferenced file, now
    assert report["ok"] and report["backends"][0]["inserts_merged"] > 0
    assert report["backends"][0]["versions_read"] == [read.version]
    assert old_files <= _data_files(backend)  # the read version's files are all there...
    assert PinStore(backend, StoreCache()).table.load(read.version).count == 101
    record = backend.directory / TABLE_DIR / READERS_DIR / "test-reader.json"
    written = json.loads(record.read_text())
    assert written["versions"] == [read.version]  # ...and vacuum left the record alone
    records.renew()
    assert json.loads(record.read_text())["expires"] > written["expires"]  # renewed while held
    records.release([read.identity])
    records.renew()  # the first renewal after the reader ended drops the version, and the record with it
    assert not record.exists()
    maintain(root, MaintainOptions(retention_hours=0))
    assert not (old_files - set(_current_files(backend))) & _data_files(backend)  # now they are gone
    assert PinStore(backend, StoreCache()).snapshot().count == 131


def _current_files(backend) -> list[Path]:
    state = PinStore(backend, StoreCache()).table_state()
    return [backend.directory / TABLE_DIR / data_file.path for data_file in state.files]


def test_a_record_not_renewed_keeps_nothing_and_a_long_lapsed_one_is_deleted(root: Path) -> None:
    backend = _table_with_pins(root, 3)
    directory = backend.directory / TABLE_DIR / READERS_DIR
    directory.mkdir(exist_ok=True)  # exports made it (their records ended with them)
    now = time.time()
    (directory / "alive.json").write_text(json.dumps({"versions": [2, 5], "expires": now + 60}))
    (directory / "lapsed.json").write_text(json.dumps({"versions": [3], "expires": now - 60}))
    (directory / "forgotten.json").write_text(json.dumps({"versions": [4], "expires": now - FORGET_SECONDS - 1}))
    (directory / "garbage.json").write_text("{not json")
    assert versions_read(backend.directory / TABLE_DIR, now) == [2, 5]
    assert sorted(path.name for path in directory.iterdir()) == ["alive.json", "garbage.json", "lapsed.json"]


def test_a_reader_recording_a_version_whose_log_is_gone_does_not_stop_vacuum(root: Path) -> None:
    backend = _table_with_pins(root, 10)
    _pins_without_export(backend, [f"more-{index}" for index in range(60)])  # past the log versions kept
    maintain(root, MaintainOptions())  # checkpoint and log clean-up: version 0 cannot be loaded any more
    with pytest.raises(CorruptData):
        PinStore(backend, StoreCache()).table.load(0)
    directory = backend.directory / TABLE_DIR / READERS_DIR
    directory.mkdir(exist_ok=True)  # exports made it (their records ended with them)
    (directory / "late.json").write_text(json.dumps({"versions": [0], "expires": time.time() + 60}))
    _pins_without_export(backend, ["one-more"])
    report = maintain(root, MaintainOptions(retention_hours=0))
    assert report["backends"][0]["versions_read"] == [0]
    assert report["ok"], report
    assert report["backends"][0]["vacuumed"] > 0
    assert PinStore(backend, StoreCache()).snapshot().count == 71


def test_an_export_is_a_recorded_reader_of_its_version_while_it_runs(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _table_with_pins(root, 5)
    _pins_without_export(backend, ["pending"])
    newest = PinStore(backend).table_state().version
    seen: list[list[int]] = []
    build = exports._build_parquet

    def watched(*args):
        seen.append(versions_read(backend.directory / TABLE_DIR))
        return build(*args)

    monkeypatch.setattr(exports, "_build_parquet", watched)
    exports.refresh_exports(backend)
    assert seen == [[newest]]
    assert versions_read(backend.directory / TABLE_DIR) == []  # ended with the export


def _partly_listed(directory: Path, count: int):
    """An open listing of ``directory`` with its first ``count`` names taken (more are fetched only as
    the listing goes on: the mount reads a big directory in blocks)."""
    listing = os.scandir(directory)
    return listing, [next(listing).name for _ in range(count)]


@needs_fuse
@pytest.mark.mount
def test_a_listing_open_in_the_mount_reads_its_whole_version_through_pins_and_maintenance(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``find`` over a big backend takes minutes; pins and a maintenance meanwhile replace every data
    file the listing's version has, and vacuum deletes them at once (``--retention-hours 0``)."""
    monkeypatch.setenv("PINFS_FILE_ROWS", "64")  # this process, the mount and the commands it starts
    count = READDIR_BLOCK + 900  # the last names are in files the first block did not read
    backend = _table_with_pins(root, count)
    _pins_without_export(backend, ["not-exported"])  # the listed version is not the exported one
    listed = PinStore(backend, StoreCache()).table_state().version
    expected = sorted([cid_for(f"b1-{index}") for index in range(count)] + [cid_for("not-exported")])
    with mounted(root, tmp_path / "mnt") as mount:
        listing, first = _partly_listed(mount.path("backends", "b1", "by-cid"), 100)
        with listing:
            new = [cid_for(f"new-{index}") for index in range(200)]
            run_pinfs(root, "pin", "add", *new, "--backend", "b1", check=True)
            maintained = run_pinfs(root, "maintain", "--retention-hours", "0", check=True).stdout
            assert f"kept the files of version {listed} for readers" in maintained
            rest = [entry.name for entry in listing]  # no EIO: its files were kept
        assert first + rest == expected
        assert sorted(os.listdir(mount.path("backends", "b1", "by-cid"))) == sorted(expected + new)


def test_a_pin_listing_and_a_sync_run_are_recorded_readers_while_they_last(root: Path) -> None:
    """``pinfs pin ls`` into a pager that waits, and a sync looking up other backends for hours."""
    backend = _table_with_pins(root, 20)
    newest = PinStore(backend).table_state().version
    table_dir = backend.directory / TABLE_DIR
    listing = iter_pins(root, "b1")
    next(listing)
    assert versions_read(table_dir) == [newest]
    listing.close()
    assert versions_read(table_dir) == []
    context = SyncContext(root, [backend], dry_run=True)
    assert context.snapshot(backend) is not None
    assert versions_read(table_dir) == [newest]
    context.close()
    assert versions_read(table_dir) == []


def test_a_record_that_cannot_be_written_is_said_once_and_the_reader_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A root this process cannot write (here a table "directory" that is a file): one warning."""
    blocked = tmp_path / "pin_mappings.delta"
    blocked.write_text("not a directory")
    records = ReaderRecords("test-reader")
    first, second = (TableVersion(str(blocked), "table-id", version, 0) for version in (3, 4))
    with caplog.at_level(logging.DEBUG, logger="pinfs.data.readers"):
        records.write(records.hold([first]))
        records.write(records.hold([second]))
    said = [record for record in caplog.records if "could not record this reader" in record.getMessage()]
    assert [record.levelno for record in said] == [logging.WARNING, logging.DEBUG]
    assert str(blocked) in said[0].getMessage() and "\n" not in said[0].getMessage()
    records.release([first, second])
    records.close()
