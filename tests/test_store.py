"""The store (CONTRACT §1): a Delta table per backend and its one-file export, their layout on disk,
indexed lookups, freshness, and what happens with parquet files written by other tools (served as they
are until the first write, issue #12)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cid_for, make_backend

from pinfs.data import tables as tables_module
from pinfs.data.backends import get_backend
from pinfs.data.exports import refresh_exports
from pinfs.data.pieces import FilePiece, MergedPiece
from pinfs.data.schema import REQUIRED_COLUMNS, make_record
from pinfs.data.store import PinStore
from pinfs.data.tables import records_to_table, write_table
from pinfs.errors import CorruptData, InvalidInput
from pinfs.ops.pins import PinRequest, add_pins


def _records(count: int, backend: str = "b1", seed: str = "") -> list[dict[str, str]]:
    return [make_record(cid_for(f"{seed}{i}"), backend, "filesystem") for i in range(count)]


def _store_with(root: Path, count: int, name: str = "b1") -> PinStore:
    """A backend whose table holds ``count`` pins (given in random order), and its exports."""
    make_backend(root, name)
    backend = get_backend(root, name)
    records = _records(count, name)
    random.Random(7).shuffle(records)
    store = PinStore(backend)
    store.write(lambda txn: txn.write(records_to_table(records)))
    refresh_exports(backend)
    return store


def _write_foreign(path: Path, records: list[dict[str, str]], **options) -> None:
    """A parquet written by another tool: rows in the given order, not by pinfs."""
    pq.write_table(pa.Table.from_pylist(records), path, **options)


# -- layout --


def test_columns_are_strings_in_contract_order(root: Path) -> None:
    store = _store_with(root, 10)
    schema = pq.read_schema(store.path)
    assert tuple(schema.names[: len(REQUIRED_COLUMNS)]) == REQUIRED_COLUMNS
    assert all(schema.field(name).type == pa.string() for name in schema.names)


def test_rows_sorted_by_cid(root: Path) -> None:
    store = _store_with(root, 300)
    cids = pq.read_table(store.path, columns=["cid"]).column("cid").to_pylist()
    assert cids == sorted(cids)
    assert len(cids) == 300


def test_row_groups_are_small_with_cid_statistics(root: Path) -> None:
    store = _store_with(root, 5000)
    metadata = pq.ParquetFile(store.path).metadata
    assert metadata.num_row_groups > 1
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        assert group.num_rows <= tables_module.ROW_GROUP_ROWS
        assert group.column(0).statistics.has_min_max


def test_merging_a_few_rows_gives_what_sorting_all_of_them_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """``merge_sorted`` places a few rows by binary search (a lookup in a file with rows in the insert
    file); the rows, their order and the columns are those of sorting both tables' rows together, in
    one chunk per column (so the read cache's count of its buffers is its size)."""
    rng = random.Random(7)
    for few in (0, 1, 5, 64):
        base = sorted({cid_for(f"base{rng.random()}") for _ in range(200)})
        extra = sorted({cid_for(f"extra{rng.random()}") for _ in range(few)} - set(base))
        if few > 1:  # one before the first row and one after the last
            extra = ["0-first", *extra[1:-1], "z-last"]
        first = pa.table({"cid": base, "car_file_path": [f"/b/{cid}" for cid in base]})
        other = pa.table({"cid": extra, "car_file_path": [f"/e/{cid}" for cid in extra]})
        merged = tables_module.merge_sorted(first, other)
        monkeypatch.setattr(tables_module, "_SPLICE_MAX_ROWS", -1)  # the path that sorts everything
        assert merged.equals(tables_module.merge_sorted(first, other))
        monkeypatch.undo()
        assert merged.column("cid").to_pylist() == sorted([*base, *extra])
        assert all(column.num_chunks == 1 for column in merged.columns)


def test_pandas_reads_it(root: Path) -> None:
    store = _store_with(root, 50)
    frame = pd.read_parquet(store.path)
    assert list(frame.columns[:6]) == list(REQUIRED_COLUMNS)
    assert len(frame) == 50
    assert frame["cid"].is_monotonic_increasing


def test_duckdb_reads_it(root: Path) -> None:
    store = _store_with(root, 50)
    cid = cid_for(17)
    rows = duckdb.sql(f"SELECT status, backend_name FROM read_parquet('{store.path}') WHERE cid = '{cid}'").fetchall()
    assert rows == [("pending", "b1")]


# -- lookups --


def _count_group_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []
    original = FilePiece.read_group

    def counting(self, index, columns):
        calls.append((self.path.name, index))
        return original(self, index, columns)

    monkeypatch.setattr(FilePiece, "read_group", counting)
    return calls


def test_lookup_reads_exactly_one_row_group_of_one_file(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables_module, "ROW_GROUP_ROWS", 16)
    monkeypatch.setenv("PINFS_FILE_ROWS", "64")
    store = _store_with(root, 200)
    calls = _count_group_loads(monkeypatch)
    snapshot = store.snapshot()
    assert len(snapshot.pieces) > 2
    cid = cid_for(123)
    record = snapshot.lookup(cid)
    assert record is not None and record["cid"] == cid
    assert len(calls) == 1
    piece = next(p for p in snapshot.pieces if p.min_cid <= cid <= p.max_cid)
    expected = next(g.index for g in piece.row_groups() if g.min_cid <= cid <= g.max_cid)
    assert calls == [(piece.path.name, expected)]


def test_opening_a_pinfs_file_reads_no_whole_column(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables_module, "ROW_GROUP_ROWS", 16)
    store = _store_with(root, 200)
    whole_reads: list[object] = []
    original = pq.ParquetFile.read
    monkeypatch.setattr(pq.ParquetFile, "read", lambda self, *a, **k: whole_reads.append(k) or original(self, *a, **k))
    assert store.snapshot().lookup(cid_for(9)) is not None
    assert whole_reads == []


def test_lookup_of_absent_cid_reads_at_most_one_row_group(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables_module, "ROW_GROUP_ROWS", 16)
    store = _store_with(root, 200)
    calls = _count_group_loads(monkeypatch)
    assert store.snapshot().lookup(cid_for("absent")) is None
    assert len(calls) <= 1


def test_repeated_lookup_is_served_from_cache(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables_module, "ROW_GROUP_ROWS", 16)
    store = _store_with(root, 100)
    calls = _count_group_loads(monkeypatch)
    for _ in range(3):
        assert store.snapshot().lookup(cid_for(5)) is not None
    assert len(calls) == 1


def test_a_group_with_inserted_pins_is_merged_once_and_a_change_to_them_is_seen(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New CIDs live in the insert file and are merged into their range's row group when read; the
    merged group is cached (a cold lookup in the mount reads its group twice), under a key that
    changes with the inserted rows it holds."""
    monkeypatch.setattr(tables_module, "ROW_GROUP_ROWS", 16)
    monkeypatch.setenv("PINFS_FILE_ROWS", "64")
    store = _store_with(root, 200)
    new_cid = cid_for("inserted")
    add_pins(root, "b1", [PinRequest(new_cid, "pending")])
    merges: list[int] = []
    original = MergedPiece.merge_group
    monkeypatch.setattr(MergedPiece, "merge_group", lambda self, *a: merges.append(a[0]) or original(self, *a))
    snapshot = store.snapshot()
    assert any(isinstance(piece, MergedPiece) for piece in snapshot.pieces)
    for _ in range(3):
        assert (snapshot.lookup(new_cid) or {}).get("status") == "pending"
    assert snapshot.group_holding(new_cid) is not None
    assert len(merges) == 1
    add_pins(root, "b1", [PinRequest(new_cid, "failed")])
    assert (store.snapshot().lookup(new_cid) or {}).get("status") == "failed"
    assert (snapshot.lookup(new_cid) or {}).get("status") == "pending"  # the older version, as it was


def test_a_commit_by_another_process_is_seen_at_once(root: Path) -> None:
    store = _store_with(root, 20)
    new_cid = cid_for("from-elsewhere")
    assert store.snapshot().lookup(new_cid) is None
    code = (
        "import sys; from pathlib import Path; from pinfs.ops.pins import PinRequest, add_pins; "
        f"add_pins(Path(sys.argv[1]), 'b1', [PinRequest({new_cid!r}, 'stored')])"
    )
    subprocess.run([sys.executable, "-c", code, str(root)], check=True)
    record = store.snapshot().lookup(new_cid)  # no cache clearing: the log has a newer commit
    assert record is not None and record["status"] == "stored"
    assert store.snapshot().count == 21


def test_open_snapshot_keeps_its_version_after_a_commit(root: Path) -> None:
    store = _store_with(root, 20)
    before = store.snapshot()
    add_pins(root, "b1", [PinRequest(cid_for("later"))])
    assert before.count == 20
    assert before.lookup(cid_for("later")) is None
    assert len(list(before.iter_cids())) == 20


# -- files written by other tools --


def test_unsorted_file_from_another_tool_is_served_sorted(root: Path) -> None:
    directory = make_backend(root, "b1")
    records = _records(40)
    random.Random(1).shuffle(records)
    _write_foreign(directory / "pin_mappings.parquet", records)  # one row group, rows in random order
    snapshot = PinStore(get_backend(root, "b1")).snapshot()
    assert list(snapshot.iter_cids()) == sorted(r["cid"] for r in records)
    assert snapshot.cid_column(0, 5).to_pylist() == sorted(r["cid"] for r in records)[:5]
    assert all(snapshot.lookup(r["cid"])["cid"] == r["cid"] for r in records)


def test_unsorted_row_groups_from_another_tool_are_served(root: Path) -> None:
    directory = make_backend(root, "b1")
    records = _records(60)
    random.Random(2).shuffle(records)
    _write_foreign(directory / "pin_mappings.parquet", records, row_group_size=7)
    snapshot = PinStore(get_backend(root, "b1")).snapshot()
    assert snapshot.count == 60
    assert list(snapshot.iter_cids()) == sorted(r["cid"] for r in records)
    assert all(r["cid"] in snapshot for r in records)


def test_large_string_columns_from_pandas_are_served(root: Path) -> None:
    directory = make_backend(root, "b1")
    frame = pd.DataFrame(sorted(_records(30), key=lambda r: r["cid"])).astype("string[pyarrow]")
    frame.to_parquet(directory / "pin_mappings.parquet", index=False)
    snapshot = PinStore(get_backend(root, "b1")).snapshot()
    assert snapshot.lookup(cid_for(3))["cid"] == cid_for(3)


def test_unsorted_file_with_duplicate_cid_is_corrupt(root: Path) -> None:
    directory = make_backend(root, "b1")
    records = _records(5)
    _write_foreign(directory / "pin_mappings.parquet", [records[3], *records])
    with pytest.raises(CorruptData, match="appears more than once"):
        PinStore(get_backend(root, "b1")).snapshot()


def test_missing_column_is_corrupt_data_naming_the_path(root: Path) -> None:
    directory = make_backend(root, "b1")
    path = directory / "pin_mappings.parquet"
    records = [{k: v for k, v in r.items() if k != "status"} for r in _records(3)]
    _write_foreign(path, records)
    with pytest.raises(CorruptData, match="status") as caught:
        PinStore(get_backend(root, "b1")).snapshot()
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("content", [b"PAR1 this is not parquet at all PAR1", b""], ids=["garbage", "empty"])
def test_unreadable_file_is_corrupt_data_naming_the_path(root: Path, content: bytes) -> None:
    path = make_backend(root, "b1") / "pin_mappings.parquet"
    path.write_bytes(content)
    with pytest.raises(CorruptData) as caught:
        PinStore(get_backend(root, "b1")).snapshot()
    assert str(path) in str(caught.value)


def test_non_string_required_column_is_corrupt_data(root: Path) -> None:
    path = make_backend(root, "b1") / "pin_mappings.parquet"
    table = records_to_table(_records(3)).set_column(4, "status", pa.array([1, 2, 3]))
    pq.write_table(table, path)
    with pytest.raises(CorruptData, match="status"):
        PinStore(get_backend(root, "b1")).snapshot()


# -- writes --


def test_write_refuses_duplicate_cids_and_changes_nothing(root: Path) -> None:
    store = _store_with(root, 3)
    before = store.path.read_bytes()
    version = store.table_state().version
    records = _records(2)
    with pytest.raises(InvalidInput, match="duplicate"):
        store.write(lambda txn: txn.write(records_to_table([*records, records[0]])))
    with pytest.raises(InvalidInput, match="duplicate"):
        write_table(store.path, records_to_table([*records, records[0]]))
    assert store.path.read_bytes() == before
    assert store.table_state(reload=True).version == version


def test_backend_without_parquet_is_served_from_legacy_pins_json(root: Path) -> None:
    make_backend(root, "b1", pins_json=[cid_for(1), cid_for(2)])
    snapshot = PinStore(get_backend(root, "b1")).snapshot()
    assert snapshot.source == "legacy"
    assert sorted(snapshot.iter_cids()) == sorted([cid_for(1), cid_for(2)])


def test_backend_with_nothing_is_empty(root: Path) -> None:
    make_backend(root, "b1")
    snapshot = PinStore(get_backend(root, "b1")).snapshot()
    assert snapshot.count == 0
    assert snapshot.lookup(cid_for(1)) is None
