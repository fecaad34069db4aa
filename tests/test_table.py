"""The Delta table of each backend (issue #12): its layout, commits that never lose a pin, the one-file
exports made from it, parquet files written by other tools, the upgrade from older releases, and
maintenance. Run with small data files (``PINFS_FILE_ROWS``), so a few hundred pins span many files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from helpers import cid_for, make_backend, run_pinfs, run_pinfs_json

from pinfs.data import delta as delta_module
from pinfs.data.backends import get_backend
from pinfs.data.car import read_pin_mappings_car
from pinfs.data.delta import TABLE_DIR
from pinfs.data.exports import export_state, read_record, refresh_exports
from pinfs.data.fsutil import SHARD_DIR
from pinfs.data.schema import STORE_COLUMNS, make_record
from pinfs.data.snapshots import StoreCache
from pinfs.data.store import ConcurrentChange, PinStore, Transaction, checkpoint_written
from pinfs.data.tables import records_to_table, write_table
from pinfs.ops.maintain import MaintainOptions, maintain, maintain_backend
from pinfs.ops.pins import PinRequest, add_pins, remove_pins

FILE_ROWS = 64


@pytest.fixture(autouse=True)
def _small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINFS_FILE_ROWS", str(FILE_ROWS))


def _records(count: int, name: str = "b1", seed: str = "") -> list[dict[str, str]]:
    return [make_record(cid_for(f"{seed}{i}"), name, "filesystem") for i in range(count)]


def _backend(root: Path, count: int, name: str = "b1"):
    make_backend(root, name)
    add_pins(root, name, [PinRequest(record["cid"], "stored") for record in _records(count, name)])
    return get_backend(root, name)


def _fresh(backend) -> PinStore:
    """The store as a new process sees it (no cache shared with the writes above)."""
    return PinStore(backend, StoreCache())


def _data_files(backend) -> list[str]:
    return DeltaTable(str(backend.directory / TABLE_DIR)).file_uris()


# -- layout --


def _actions(backend) -> pa.Table:
    table = DeltaTable(str(backend.directory / TABLE_DIR))
    return pa.table(table.get_add_actions(flatten=True))


def _insert_files(backend, *, bulk: bool = False) -> list[str]:
    """The small insert file (a list of one), or with ``bulk`` the bulk insert files."""
    names = [Path(uri).name for uri in _data_files(backend)]
    return [name for name in names if name.startswith("ins-") and name.startswith("ins-bulk-") == bulk]


def test_the_table_is_a_delta_table_of_sorted_disjoint_files_and_an_insert_file(root: Path) -> None:
    backend = _backend(root, 300)
    actions = _actions(backend)
    ranges = actions.filter(pc.starts_with(actions.column("path"), "part-")).sort_by("min.cid")
    assert ranges.num_rows >= 300 // (2 * FILE_ROWS)
    assert sum(ranges.column("num_records").to_pylist()) == 300
    mins, maxes = ranges.column("min.cid").to_pylist(), ranges.column("max.cid").to_pylist()
    assert all(high < low for high, low in zip(maxes, mins[1:], strict=False))  # disjoint, in order
    assert len(_insert_files(backend)) == 1 and actions.num_rows == ranges.num_rows + 1  # empty so far
    add_pins(root, "b1", [PinRequest(cid_for(f"new{i}")) for i in range(5)])
    (insert,) = _insert_files(backend)
    assert pq.read_table(backend.directory / TABLE_DIR / insert).num_rows == 5
    for uri in DeltaTable(str(backend.directory / TABLE_DIR)).file_uris():
        metadata = pq.ParquetFile(uri).metadata
        cids = pq.read_table(uri, columns=["cid"]).column("cid").to_pylist()
        assert cids == sorted(cids) and metadata.row_group(0).sorting_columns
        assert pq.read_schema(uri).names == list(STORE_COLUMNS)
    # every CID once, as any reader of the table sees it (here DuckDB over the files in the log)
    uris = DeltaTable(str(backend.directory / TABLE_DIR)).file_uris()
    rows = duckdb.sql(f"SELECT count(*), count(DISTINCT cid) FROM read_parquet({uris!r})").fetchall()
    assert rows == [(305, 305)]


def test_one_new_pin_rewrites_the_insert_file_and_a_change_the_file_of_its_range(root: Path) -> None:
    backend = _backend(root, 300)
    before = set(_data_files(backend))
    add_pins(root, "b1", [PinRequest(cid_for("one more"))])
    after = set(_data_files(backend))
    assert len(before - after) == 1 and len(after - before) == 1
    assert [Path(uri).name.startswith("ins-") for uri in after - before] == [True]
    add_pins(root, "b1", [PinRequest(cid_for("7"), "failed")])  # a pin already in a range file
    changed = set(_data_files(backend)) - after
    assert len(changed) == 1 and not Path(changed.pop()).name.startswith("ins-")
    snapshot = _fresh(backend).snapshot()
    assert snapshot.count == 301 and snapshot.lookup(cid_for("7"))["status"] == "failed"


def test_pins_in_the_insert_file_are_served_in_order_changed_and_removed(root: Path) -> None:
    backend = _backend(root, 300)
    extra = [cid_for(f"late{i}") for i in range(40)]
    add_pins(root, "b1", [PinRequest(cid) for cid in extra])
    snapshot = _fresh(backend).snapshot()
    cids = sorted([*(record["cid"] for record in _records(300)), *extra])
    assert list(snapshot.iter_cids()) == cids and snapshot.count == 340
    assert snapshot.cid_column(150, 260).to_pylist() == cids[150:260]
    assert all(snapshot.lookup(cid)["cid"] == cid for cid in extra)
    assert snapshot.records(extra[:30]).keys() == set(extra[:30])
    assert snapshot.table().column("cid").to_pylist() == cids
    assert snapshot.cids_with_status("pending").to_pylist() == sorted(extra)
    # By position, holding no CID (issue #12): pieces with none of the status included, read again
    # through the cache once it let them go.
    column = snapshot.status_column("pending")
    assert len(column) == 40 and column.slice(0, 40).to_pylist() == sorted(extra)
    snapshot._cache.clear()
    assert (
        column.slice(7, 33).to_pylist() == sorted(extra)[7:33]
        and column.slice(38, 99).to_pylist() == sorted(extra)[38:]
    )
    assert snapshot.status_column("failed").slice(0, 10).to_pylist() == []
    add_pins(root, "b1", [PinRequest(extra[3], "stored")])
    remove_pins(root, "b1", [extra[4]])
    snapshot = _fresh(backend).snapshot()
    assert snapshot.lookup(extra[3])["status"] == "stored" and snapshot.lookup(extra[4]) is None
    assert snapshot.count == 339 and len(_insert_files(backend)) == 1
    # 40 new pins at once outgrew the small insert file: they went into a bulk file, changed in place
    (bulk,) = _insert_files(backend, bulk=True)
    assert pq.read_table(backend.directory / TABLE_DIR / bulk).num_rows == 39


def test_a_pin_after_a_batch_rewrites_only_the_small_insert_file(root: Path) -> None:
    backend = _backend(root, 300)
    add_pins(root, "b1", [PinRequest(cid_for(f"batch{i}")) for i in range(40)])
    before = set(_data_files(backend))
    (bulk,) = _insert_files(backend, bulk=True)
    add_pins(root, "b1", [PinRequest(cid_for("single"))])
    after = set(_data_files(backend))
    small_before = [Path(uri).name for uri in before if "ins-" in uri and "bulk" not in uri]
    assert [Path(uri).name for uri in before - after] == small_before
    assert _insert_files(backend, bulk=True) == [bulk]
    (small,) = _insert_files(backend)
    assert pq.read_table(backend.directory / TABLE_DIR / small).column("cid").to_pylist() == [cid_for("single")]
    assert _fresh(backend).snapshot().count == 341


def test_the_insert_file_is_merged_into_the_ranges_once_full_and_by_maintain(root: Path) -> None:
    backend = _backend(root, 300)
    add_pins(root, "b1", [PinRequest(cid_for(f"wave{i}")) for i in range(FILE_ROWS - 1)])
    assert [data_file.rows for data_file in _fresh(backend).table_state().bulk_files] == [FILE_ROWS - 1]  # not due
    add_pins(root, "b1", [PinRequest(cid_for("the last straw"))])  # now they hold insert_rows(): merged
    state = _fresh(backend).table_state()
    assert state.bulk_files == [] and state.count == 300 + FILE_ROWS
    assert [data_file.rows for data_file in state.small_insert_files] == [1]  # never merged in the background
    add_pins(root, "b1", [PinRequest(cid_for(f"after{i}")) for i in range(3)])
    report = maintain(root, MaintainOptions())
    assert report["backends"][0]["inserts_merged"] == 4
    state = _fresh(backend).table_state()
    assert [data_file.rows for data_file in state.insert_files] == [0] and state.count == 303 + FILE_ROWS
    ranged = [data_file for data_file in state.range_files if data_file.rows]
    assert all(left.max_cid < right.min_cid for left, right in zip(ranged, ranged[1:], strict=False))
    assert len(list(_fresh(backend).snapshot().iter_cids())) == 303 + FILE_ROWS


def test_two_writers_adding_the_same_new_pin_from_one_version_leave_it_once(root: Path) -> None:
    backend = _backend(root, 300)
    store = PinStore(backend)
    first, second = Transaction(store), Transaction(store)
    first.state(), second.state()  # both read the same version, where the CID is new
    new = cid_for("contested")
    first.update({new: make_record(new, "b1", "filesystem")})
    with pytest.raises(ConcurrentChange):  # its file changed and the pin is there now: start again
        second.update({new: {**make_record(new, "b1", "filesystem"), "status": "stored"}})
    table = _fresh(backend).snapshot().table()
    assert table.num_rows == 301 and table.column("cid").to_pylist().count(new) == 1


def test_a_merge_and_a_pin_of_a_new_cid_from_one_version_both_commit(root: Path) -> None:
    """The background merge never removes the small insert file, so a pin of a new CID made meanwhile
    never makes it start again; a change to a pin the merge moved is redone on the file it moved to."""
    backend = _backend(root, 300)
    batch = [cid_for(f"batch{i}") for i in range(40)]
    add_pins(root, "b1", [PinRequest(cid) for cid in batch])
    store = PinStore(backend)
    merging, pinning, changing = Transaction(store), Transaction(store), Transaction(store)
    merging.state(), pinning.state(), changing.state()  # all three read the same version
    new = cid_for("meanwhile")
    pinning.update({new: make_record(new, "b1", "filesystem")})
    assert merging.merge_inserts() == 40  # committed on top of the pin
    changing.update({batch[0]: {**make_record(batch[0], "b1", "filesystem"), "status": "failed"}})
    state = _fresh(backend).table_state()
    assert state.bulk_files == [] and [data_file.rows for data_file in state.small_insert_files] == [1]
    table = _fresh(backend).snapshot().table()
    cids = table.column("cid").to_pylist()
    assert table.num_rows == 341 and len(set(cids)) == 341 and new in cids
    assert _fresh(backend).snapshot().lookup(batch[0])["status"] == "failed"


def test_a_table_without_an_insert_file_takes_new_pins_into_their_ranges(root: Path) -> None:
    """A table made before the insert file (this release's first tables) keeps working as it did."""
    backend = _backend(root, 300)
    store = PinStore(backend)
    state = store.table_state()
    store.table.commit(state, state.insert_files, [], {"operation": "test: as an older release made it"})
    add_pins(root, "b1", [PinRequest(cid_for(f"old{i}")) for i in range(3)])
    assert _insert_files(backend) == []
    snapshot = _fresh(backend).snapshot()
    assert snapshot.count == 303 and all(cid_for(f"old{i}") in snapshot for i in range(3))


def test_every_pin_is_served_by_lookup_and_listing(root: Path) -> None:
    backend = _backend(root, 300)
    snapshot = _fresh(backend).snapshot()
    cids = sorted(record["cid"] for record in _records(300))
    assert list(snapshot.iter_cids()) == cids
    assert snapshot.cid_column(100, 180).to_pylist() == cids[100:180]
    assert all(snapshot.lookup(cid)["cid"] == cid for cid in cids[::7])
    assert snapshot.lookup(cid_for("absent")) is None


# -- exports --


def test_the_export_is_one_file_at_every_size_and_duckdb_reads_all_backends(root: Path) -> None:
    _backend(root, 300, "b1")
    _backend(root, 5, "b2")
    make_backend(root, "empty")
    add_pins(root, "empty", [PinRequest(cid_for("x"))])
    remove_pins(root, "empty", [cid_for("x")])
    paths = sorted(root.glob("backends/*/pin_mappings.parquet"))
    assert len(paths) == 3 and all(path.is_file() and not path.is_symlink() for path in paths)
    assert {tuple(pq.read_schema(path).names) for path in paths} == {STORE_COLUMNS}  # one schema everywhere
    pattern = str(root / "backends" / "*" / "pin_mappings.parquet")
    rows = duckdb.sql(f"SELECT backend_name, count(*) FROM read_parquet('{pattern}') GROUP BY ALL ORDER BY 1")
    assert rows.fetchall() == [("b1", 300), ("b2", 5)]
    frame = pd.concat([pd.read_parquet(path) for path in paths])
    assert len(frame) == 305 and list(frame.columns) == list(STORE_COLUMNS)


def test_the_export_is_sorted_in_small_row_groups_and_says_its_version(root: Path) -> None:
    backend = _backend(root, 300)
    state = _fresh(backend).table_state()
    parquet = pq.ParquetFile(backend.parquet_path)
    assert parquet.metadata.num_row_groups >= 1
    assert all(parquet.metadata.row_group(i).num_rows <= 2048 for i in range(parquet.metadata.num_row_groups))
    cids = parquet.read(columns=["cid"]).column("cid").to_pylist()
    assert cids == sorted(cids) and len(cids) == 300
    metadata = parquet.schema_arrow.metadata
    assert int(metadata[b"pinfs.table_version"]) == state.version
    assert read_record(backend)["car"]["version"] == state.version
    assert len(read_pin_mappings_car(backend.car_path).records) == 300
    assert export_state(backend, state) == {"parquet": "current", "car": "current"}


def test_health_says_export_pending_while_the_export_is_behind(root: Path) -> None:
    backend = _backend(root, 10)
    with PinStore(backend).transaction() as txn:  # committed, exports not yet refreshed
        txn.update({cid_for("late"): make_record(cid_for("late"), "b1", "filesystem")})
    health = run_pinfs_json(root, "health")
    entry = health["backends"][0]
    assert entry["exports"] == {"parquet": "stale", "car": "stale"}
    assert any(reason.startswith("export pending") for reason in entry["reasons"])
    run_pinfs(root, "car", "regenerate", check=True)
    assert run_pinfs_json(root, "health")["backends"][0]["exports"] == {"parquet": "current", "car": "current"}


# -- writers --


def test_two_writers_of_one_file_from_one_version_both_land(root: Path) -> None:
    backend = _backend(root, 30)  # one data file: every CID is in the same range
    store = PinStore(backend)
    first, second = Transaction(store), Transaction(store)
    first.state(), second.state()  # both read the same version
    first.update({cid_for("a"): make_record(cid_for("a"), "b1", "filesystem")})
    second.update({cid_for("b"): make_record(cid_for("b"), "b1", "filesystem")})  # conflicts, then rebases
    snapshot = _fresh(backend).snapshot()
    assert snapshot.count == 32 and cid_for("a") in snapshot and cid_for("b") in snapshot


def test_a_writer_whose_pins_changed_meanwhile_starts_again(root: Path) -> None:
    backend = _backend(root, 30)
    store = PinStore(backend)
    stale = Transaction(store)
    stale.records_for([cid_for("0")])
    remove_pins(root, "b1", [cid_for("0")])  # another writer removes the pin the stale one is about
    record = {**make_record(cid_for("0"), "b1", "filesystem"), "status": "stored"}
    with pytest.raises(ConcurrentChange):
        stale.update({cid_for("0"): record})
    assert cid_for("0") not in _fresh(backend).snapshot()  # never brought back by the stale write
    attempts: list[int] = []

    def body(txn: Transaction) -> None:
        attempts.append(1)
        present = txn.records_for([cid_for("1")])
        if len(attempts) == 1:  # another writer (no lock of ours needed) changes the same pin meanwhile
            other = Transaction(store)
            other.update({cid_for("1"): {**other.records_for([cid_for("1")])[cid_for("1")], "status": "failed"}})
        txn.update({cid_for("1"): {**present[cid_for("1")], "metadata": '{"checked":"yes"}'}})

    store.write(body)
    assert len(attempts) == 2
    record = _fresh(backend).snapshot().lookup(cid_for("1"))
    assert (record["status"], record["metadata"]) == ("failed", '{"checked":"yes"}')  # both changes kept


def test_processes_pinning_at_once_lose_nothing(root: Path) -> None:
    make_backend(root, "b1")
    code = (
        "import sys; from pathlib import Path; from pinfs.ops.pins import PinRequest, add_pins; "
        "from helpers import cid_for; "
        "[add_pins(Path(sys.argv[1]), 'b1', [PinRequest(cid_for(f'{sys.argv[2]}-{i}'))]) for i in range(15)]"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "PINFS_FILE_ROWS": str(FILE_ROWS)}
    writers = [subprocess.Popen([sys.executable, "-c", code, str(root), name], env=env) for name in "pqr"]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0]
    snapshot = _fresh(get_backend(root, "b1")).snapshot()
    expected = {cid_for(f"{name}-{i}") for name in "pqr" for i in range(15)}
    assert set(snapshot.iter_cids()) == expected and snapshot.count == 45


# -- files written by other tools --


def _ipfs_kit_rewrites(backend, add: list[str], drop: list[str]) -> None:
    """What ipfs_kit_py does: read pin_mappings.parquet with pandas, change it, write it back (six columns)."""
    frame = pd.read_parquet(backend.parquet_path, columns=list(STORE_COLUMNS[:6]))
    frame = frame[~frame["cid"].isin(drop)]
    new = pd.DataFrame([make_record(cid, backend.name, "filesystem", status="stored") for cid in add])
    pd.concat([frame, new]).to_parquet(backend.parquet_path, index=False)


def test_a_parquet_changed_by_another_tool_is_imported_never_overwritten(root: Path) -> None:
    backend = _backend(root, 40)
    stamp = "2026-11-01T00:00:00.000000+00:00"
    with PinStore(backend).transaction() as txn:  # pinfs' own column, which ipfs_kit_py does not write
        txn.update({cid_for("2"): {**txn.records_for([cid_for("2")])[cid_for("2")], "verified_at": stamp}})
    refresh_exports(backend)
    _ipfs_kit_rewrites(backend, add=[cid_for("from ipfs_kit")], drop=[cid_for("1")])
    assert export_state(backend, _fresh(backend).table_state())["parquet"] == "foreign"
    add_pins(root, "b1", [PinRequest(cid_for("from pinfs"))])  # the next write imports it first
    snapshot = _fresh(backend).snapshot()
    assert cid_for("from ipfs_kit") in snapshot and cid_for("from pinfs") in snapshot
    assert cid_for("1") not in snapshot  # removed by the other tool: removed here too
    assert snapshot.lookup(cid_for("2"))["verified_at"] == stamp  # kept
    exported = pq.read_table(backend.parquet_path, columns=["cid"]).column("cid").to_pylist()
    assert cid_for("from ipfs_kit") in exported and cid_for("from pinfs") in exported
    state = json.loads((backend.directory / ".pinfs-state.json").read_text())["import"]
    assert state["updated"] == 1 and state["removed"] == 1


def test_an_unreadable_parquet_from_another_tool_is_quarantined_with_its_reason(root: Path) -> None:
    backend = _backend(root, 10)
    backend.parquet_path.write_bytes(b"not a parquet file")
    add_pins(root, "b1", [PinRequest(cid_for("next"))])
    quarantined = list(backend.directory.glob("pin_mappings.parquet.rejected.*"))
    assert len([path for path in quarantined if not path.name.endswith(".reason")]) == 1
    reason = next(path for path in quarantined if path.name.endswith(".reason")).read_text()
    assert "not a readable parquet file" in reason
    assert pq.read_table(backend.parquet_path).num_rows == 11


# -- the upgrade from older releases --


def test_a_one_file_root_of_an_older_release_is_served_then_converted(root: Path) -> None:
    directory = make_backend(root, "b1")
    records = _records(100)
    write_table(directory / "pin_mappings.parquet", records_to_table(records))
    backend = get_backend(root, "b1")
    assert PinStore(backend).snapshot().source == "parquet" and not (directory / TABLE_DIR).exists()
    remove_pins(root, "b1", [cid_for("5")])  # the first write converts, then removes
    snapshot = _fresh(backend).snapshot()
    assert snapshot.source == "table" and snapshot.count == 99 and cid_for("5") not in snapshot
    assert pq.read_table(backend.parquet_path).num_rows == 99  # the old file, replaced by the export
    state = directory / ".pinfs-state.json"
    assert not state.exists() or "import" not in json.loads(state.read_text())  # not taken for a foreign file


def test_a_sharded_root_of_an_older_release_converts_at_migrate(root: Path) -> None:
    directory = make_backend(root, "b1")
    generation = directory / SHARD_DIR / "g0000000001"
    generation.mkdir(parents=True)
    records = sorted(_records(90), key=lambda record: record["cid"])
    shards = []
    for index, start in enumerate(range(0, 90, 30)):
        name = f"part-{index:05d}-g0000000001.parquet"
        chunk = records[start : start + 30]
        write_table(generation / name, records_to_table(chunk))
        size = (generation / name).stat().st_size
        shards.append({"file": name, "rows": 30, "bytes": size, "groups": [[30, chunk[0]["cid"], chunk[-1]["cid"]]]})
    manifest = {"format": "pinfs_shards", "version": 1, "columns": list(records[0]), "count": 90, "shards": shards}
    (generation / "_pinfs_shards.json").write_text(json.dumps(manifest))
    (directory / "pin_mappings.parquet").symlink_to(f"{SHARD_DIR}/g0000000001")
    backend = get_backend(root, "b1")
    assert PinStore(backend).snapshot().count == 90  # served as it is
    report = run_pinfs_json(root, "migrate")
    assert "converted" in report["backends"][0]
    assert backend.parquet_path.is_file() and not backend.parquet_path.is_symlink()
    assert not (directory / SHARD_DIR).exists()
    assert sorted(pq.read_table(backend.parquet_path).column("cid").to_pylist()) == [r["cid"] for r in records]
    assert run_pinfs(root, "migrate", "--verify-only").returncode == 0


def test_a_conversion_killed_before_its_commit_leaves_the_old_form_and_starts_again(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = make_backend(root, "b1")
    write_table(directory / "pin_mappings.parquet", records_to_table(_records(50)))
    before = (directory / "pin_mappings.parquet").read_bytes()
    backend = get_backend(root, "b1")

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as if killed after the data files were written, before the commit

    monkeypatch.setattr(delta_module.DeltaPins, "create", killed)
    with pytest.raises(KeyboardInterrupt):
        add_pins(root, "b1", [PinRequest(cid_for("new"))])
    monkeypatch.undo()
    assert (directory / "pin_mappings.parquet").read_bytes() == before
    assert _fresh(backend).snapshot().count == 50 and not PinStore(backend).has_table()
    add_pins(root, "b1", [PinRequest(cid_for("new"))])
    assert _fresh(backend).snapshot().count == 51


# -- maintenance --


def test_maintain_checkpoints_vacuums_and_lays_out(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(root, 200)
    for index in range(20):
        add_pins(root, "b1", [PinRequest(cid_for(f"extra{index}"))])
    monkeypatch.setenv("PINFS_FILE_ROWS", str(FILE_ROWS * 4))  # every file is now small: they get merged
    files_before = len(_data_files(backend))
    report = maintain(root, MaintainOptions(retention_hours=0))
    entry = report["backends"][0]
    assert report["ok"] and entry["files_rewritten"] > 0 and entry["files"] < files_before
    assert entry["vacuumed"] > 0 and entry["pins"] == 220
    on_disk = {path.name for path in (backend.directory / TABLE_DIR).glob("*.parquet")}
    exported = DeltaTable(str(backend.directory / TABLE_DIR), version=read_record(backend)["parquet"]["version"])
    assert on_disk == {Path(uri).name for uri in [*_data_files(backend), *exported.file_uris()]}
    # the checkpoint is of the newest version, vacuum's own two commits included: a load replays nothing
    last = json.loads((backend.directory / TABLE_DIR / "_delta_log" / "_last_checkpoint").read_bytes())
    assert last["version"] == entry["version"] == max(_log_versions(backend))
    assert _fresh(backend).snapshot().count == 220


def _log_versions(backend) -> set[int]:
    log = backend.directory / TABLE_DIR / "_delta_log"
    return {int(entry.name[:20]) for entry in log.iterdir() if entry.name[:20].isdigit()}


def _single_pins(backend, count: int, seed: str) -> None:
    """``count`` commits of one new pin each, through the store (no export after them)."""
    store = PinStore(backend)
    for index in range(count):
        record = make_record(cid_for(f"{seed}{index}"), backend.name, "filesystem", status="stored")
        store.write(lambda txn, record=record: txn.update({record["cid"]: record}))


def test_maintain_keeps_the_last_log_versions_and_the_exported_one(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A steady stream of pins leaves a bounded log (delta-rs' own clean-up goes by age: a day's worth),
    and the exported version stays loadable, so an edit of the export is still imported as an edit."""
    monkeypatch.setattr(delta_module, "LOG_VERSIONS_KEPT", 8)
    backend = _backend(root, 100)
    refresh_exports(backend)
    exported = read_record(backend)["parquet"]["version"]
    _single_pins(backend, 60, "stream")
    newest = _fresh(backend).table_state().version
    assert len(_log_versions(backend)) > 60
    assert maintain_backend(backend, all_inserts=False)["log_entries_removed"] > 40
    assert read_record(backend)["parquet"]["version"] == exported  # nothing moved: no export made
    versions = _log_versions(backend)
    assert exported in versions and len(versions) < 30  # the exported version's few, and the newest
    assert max(versions) - min(version for version in versions if version > exported) < 8 + 8
    old = DeltaTable(str(backend.directory / TABLE_DIR), version=exported)
    assert sorted(pq.read_table(old.file_uris(), columns=["cid"]).column("cid").to_pylist()) == sorted(
        pq.read_table(backend.parquet_path, columns=["cid"]).column("cid").to_pylist()
    )
    assert DeltaTable(str(backend.directory / TABLE_DIR)).version() == newest
    _ipfs_kit_rewrites(backend, add=[], drop=[cid_for("3")])  # still an edit of the exported version
    add_pins(root, "b1", [PinRequest(cid_for("after the clean-up"))])
    snapshot = _fresh(backend).snapshot()
    assert cid_for("3") not in snapshot and cid_for("stream59") in snapshot and snapshot.count == 100 + 60
    _single_pins(backend, 20, "more")  # commits, loads and maintenance go on over the gap in the log
    assert maintain(root, MaintainOptions(retention_hours=0))["ok"]
    assert _fresh(backend).snapshot().count == 180


def test_a_process_that_defers_checkpoints_writes_them_on_a_thread_not_in_its_commits(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount's pins do not wait for the checkpoint their commit makes due."""
    backend = _backend(root, 20)
    log = backend.directory / TABLE_DIR / "_delta_log"
    released = threading.Event()
    write_checkpoint = delta_module.DeltaPins.write_checkpoint

    def held(self: delta_module.DeltaPins) -> None:
        assert released.wait(30)
        write_checkpoint(self)

    monkeypatch.setattr(delta_module.DeltaPins, "write_checkpoint", held)
    before = {entry.name for entry in log.iterdir() if ".checkpoint." in entry.name}
    with delta_module.deferred_checkpoints(after=checkpoint_written) as writer:
        _single_pins(backend, 8, "deferred")  # two checkpoints due (every 4th version)
        assert {entry.name for entry in log.iterdir() if ".checkpoint." in entry.name} == before
        released.set()
        writer.close()
    newest = _fresh(backend).table_state().version
    written = {int(entry.name[:20]) for entry in log.iterdir() if ".checkpoint." in entry.name}
    assert max(written) >= newest - 3 and _fresh(backend).snapshot().count == 28
    monkeypatch.setattr(delta_module.DeltaPins, "load", None)  # the version this process made stays known
    assert PinStore(backend).table_state().version == newest


def test_maintain_gives_a_table_of_an_earlier_release_todays_properties(root: Path) -> None:
    backend = _backend(root, 20)
    directory = str(backend.directory / TABLE_DIR)
    earlier = {**delta_module.EARLIER_TABLE_PROPERTIES, "delta.logRetentionDuration": "interval 3 days"}
    DeltaTable(directory).alter.set_table_properties(earlier)  # a user chose three days: theirs to keep
    assert maintain(root, MaintainOptions())["backends"][0]["properties_upgraded"]
    configuration = DeltaTable(directory).metadata().configuration
    assert configuration["delta.checkpointInterval"] == delta_module.TABLE_PROPERTIES["delta.checkpointInterval"]
    assert configuration["delta.logRetentionDuration"] == "interval 3 days"
    assert configuration["delta.deletedFileRetentionDuration"] == "interval 2 minutes"  # readers record theirs
    assert not maintain(root, MaintainOptions())["backends"][0]["properties_upgraded"]
    assert _fresh(backend).snapshot().count == 20


def test_maintain_vacuums_when_the_exported_version_is_gone_from_the_log(root: Path) -> None:
    """A table of an earlier release: delta-rs cleaned its log up by age, exported version and all."""
    backend = _backend(root, 40)
    refresh_exports(backend)
    exported = read_record(backend)["parquet"]["version"]
    _single_pins(backend, 12, "later")
    DeltaTable(str(backend.directory / TABLE_DIR)).create_checkpoint()
    log = backend.directory / TABLE_DIR / "_delta_log"
    for entry in log.iterdir():
        if entry.name[:20].isdigit() and int(entry.name[:20]) <= exported:
            entry.unlink()
    report = maintain(root, MaintainOptions(retention_hours=0))
    assert report["ok"] and report["backends"][0]["vacuumed"] > 0
    assert _fresh(backend).snapshot().count == 52


def test_every_command_exits_with_its_code_never_an_abort(root: Path) -> None:
    """delta-rs #2184: a process that read through deltalake could abort at exit (134)."""
    _backend(root, 100)
    commands = [
        (["pin", "ls"], 0),
        (["pin", "get", cid_for("3")], 0),
        (["find", cid_for("3")], 0),
        (["status", "--detailed"], 0),
        (["health"], 0),
        (["insights"], 0),
        (["migrate", "--verify-only"], 0),
        (["maintain"], 0),
        (["car", "regenerate"], 0),
        (["pin", "rm", cid_for("3"), "--backend", "b1"], 0),
        (["pin", "get", cid_for("3")], 1),
        (["migrate"], 0),
        (["sync"], 0),
        (["verify"], 0),
    ]
    for args, code in commands:
        result = run_pinfs(root, *args)
        assert result.returncode == code, (args, result.returncode, result.stderr)
