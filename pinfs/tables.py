"""Arrow tables of pins and their parquet files: building, normalizing, merging, reading and writing.

A backend's table is sorted by CID, one row per CID, every column a string (``normalize_table``). On
disk it is one parquet file (``write_table``) or, for a big backend, a generation of sorted shards
(``write_pins`` chooses; ``pinfs.shards`` keeps the layout). Row groups of ``ROW_GROUP_ROWS`` rows with
statistics and ``sorting_columns``, so a reader finds one CID's row group from the footer alone.

Everything here is a plain function over tables and paths: no cache, no lock (writers hold the
backend's lock, ``pinfs.store``), no snapshot (``pinfs.snapshots``).
"""

from __future__ import annotations

import bisect
import itertools
import operator
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinfs.errors import CorruptData, InvalidInput
from pinfs.fsutil import atomic_writer, fsync_file, refuse_symlink
from pinfs.schema import REQUIRED_COLUMNS, arrow_schema, now_iso
from pinfs.shards import (
    ShardInfo,
    choose_sharded,
    generation_dir,
    is_sharded,
    publish,
    read_manifest,
    shard_rows,
)

# Rows per row group: small enough that a lookup reads little (~200 KB), large enough that a 1M-pin
# file has few enough groups for its footer to stay small.
ROW_GROUP_ROWS = 2048

# Columns whose values repeat across rows; the others are written PLAIN.
DICTIONARY_COLUMNS: tuple[str, ...] = ("backend_name", "status")

WORKER_THREADS = min(4, os.cpu_count() or 1)  # for the shards of one write
T = TypeVar("T")


@dataclass(frozen=True)
class RowGroup:
    """Where one row group sits in the sorted order, and which CIDs it covers."""

    index: int
    start: int
    length: int
    min_cid: str
    max_cid: str


# -- helpers --


def open_parquet(source: pa.NativeFile) -> pq.ParquetFile:
    """A reader without pyarrow's pre-buffering: that is for high-latency stores, and each open reader
    keeps its last read's buffers alive (~1 MB per shard read whole), which a snapshot holding dozens
    of open shards turned into 150+ MB of mount RSS (issue #6, measured)."""
    return pq.ParquetFile(source, pre_buffer=False)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_schema(schema: pa.Schema, path: Path) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise CorruptData(f"{path}: missing required column(s) {', '.join(missing)}")
    # Only the contract's columns must be strings; extra columns of other types are cast on read.
    wrong = [
        f"{name} is {schema.field(name).type}"
        for name in REQUIRED_COLUMNS
        if not (pa.types.is_string(schema.field(name).type) or pa.types.is_large_string(schema.field(name).type))
    ]
    if wrong:
        raise CorruptData(f"{path}: columns must be strings: {', '.join(wrong)}")


def groups_from_table(table: pa.Table) -> list[RowGroup]:
    groups: list[RowGroup] = []
    cids = table.column("cid")
    for start in range(0, table.num_rows, ROW_GROUP_ROWS):
        length = min(ROW_GROUP_ROWS, table.num_rows - start)
        groups.append(RowGroup(len(groups), start, length, cids[start].as_py(), cids[start + length - 1].as_py()))
    return groups


def parallel_map(function: Callable[..., T], *iterables: Iterable[Any]) -> list[T]:
    """``list(map(function, …))`` on ``WORKER_THREADS`` threads: shard reads, merges and writes are
    mostly Arrow work, which runs without the GIL."""
    with ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="pinfs-shards") as pool:
        return list(pool.map(function, *iterables))


# -- tables --


def records_to_table(records: Iterable[Mapping[str, str | None]], extra_columns: Sequence[str] = ()) -> pa.Table:
    """Build a table in the store's schema from record dicts (missing optional values become null)."""
    rows = list(records)
    # Every key in order of first appearance, gathered at C speed (a 1M-record migration builds this).
    seen = dict.fromkeys(itertools.chain(extra_columns, itertools.chain.from_iterable(rows)))
    extras = tuple(name for name in seen if name not in REQUIRED_COLUMNS)
    schema = arrow_schema(extras)
    columns = {name: _column_values(rows, name) for name in schema.names}
    return pa.table(columns, schema=schema)


def _column_values(rows: list[Mapping[str, str | None]], name: str) -> list[str | None]:
    try:
        return list(map(operator.itemgetter(name), rows))
    except KeyError:  # an optional column some records lack
        return [row.get(name) for row in rows]


def normalize_table(table: pa.Table, *, sort: bool = True) -> pa.Table:
    """Required columns first, every column a string, rows sorted by CID (unless ``sort`` is False)."""
    extras = tuple(name for name in table.column_names if name not in REQUIRED_COLUMNS)
    schema = arrow_schema(extras)
    table = table.select(list(schema.names))
    if table.schema != schema:
        table = table.cast(schema)
    return sort_by_cid(table) if sort else table


def cids_strictly_ascending(cids: pa.ChunkedArray | pa.Array) -> bool:
    """Whether the CIDs are sorted with no CID twice (one vectorized pass, no copy of the data)."""
    if len(cids) < 2:
        return True
    return bool(pc.all(pc.less(cids.slice(0, len(cids) - 1), cids.slice(1))).as_py())


def sort_by_cid(table: pa.Table) -> pa.Table:
    """``table`` sorted by CID (stable). A table already in strict CID order (what pinfs writes, and
    every merge of sorted tables) is returned as is, so the common case copies nothing."""
    if cids_strictly_ascending(table.column("cid")):
        return table
    return take_rows(table, pc.sort_indices(table.column("cid")))


def take_rows(table: pa.Table, indices: pa.Array) -> pa.Table:
    """The rows at ``indices``, gathered column by column (``Table.take`` is many times slower)."""
    columns = [pc.take(column, indices) for column in table.columns]
    return pa.Table.from_arrays(columns, schema=table.schema)


def first_duplicate_cid(table: pa.Table) -> str | None:
    cids = table.column("cid")
    if cids_strictly_ascending(cids):  # sorted without repeats: no duplicate by construction
        return None
    counts = pc.value_counts(cids)
    repeated = counts.filter(pc.greater(pc.struct_field(counts, "counts"), 1))
    return repeated[0]["values"].as_py() if len(repeated) else None


def empty_table() -> pa.Table:
    return arrow_schema().empty_table()


# -- reading and writing --


def read_whole_table(path: Path, *, sort: bool = True) -> pa.Table:
    """Read a backend's parquet entirely, sorted (or in file order with ``sort=False``, for checking it);
    CorruptData if it cannot be read or lacks columns. A sharded backend's shards are read in order."""
    if is_sharded(path):
        return read_generation(generation_dir(path), sort=sort)
    refuse_symlink(path)
    try:
        # Read through one open file: pq.read_table(path) opens the path twice (footer, then data), so a
        # writer renaming a new version in between (verify-only and unsorted snapshots read without the
        # lock) would mix two versions and fail with "Page was smaller than expected".
        with pa.OSFile(str(path), "r") as source:
            table = open_parquet(source).read()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CorruptData(f"{path}: not a readable parquet file ({one_line(exc)})") from None
    check_schema(table.schema, path)
    # Required columns are non-nullable in our schema: casting a null into one raises a bare ValueError
    # (not ArrowInvalid), which escaped as a traceback from verify-only/migrate/pin. Name them instead.
    nulls = [name for name in REQUIRED_COLUMNS if table.column(name).null_count]
    if nulls:
        raise CorruptData(f"{path}: null values in required column(s) {', '.join(nulls)}")
    try:
        return normalize_table(table, sort=sort)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CorruptData(f"{path}: an extra column cannot be read as text ({one_line(exc)})") from None


def read_generation(directory: Path, *, sort: bool = True) -> pa.Table:
    """Every shard of one generation of a sharded backend, read in parallel, as one table."""
    shards = read_manifest(directory).shards
    tables = parallel_map(lambda shard: read_whole_table(directory / shard.file, sort=sort), shards)
    if not tables:
        return empty_table()
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise CorruptData(f"{directory}: shards differ in their columns ({one_line(exc)})") from None


def write_table(path: Path, table: pa.Table) -> pa.Table:
    """Write a table as one parquet file, atomically; returns it as written (normalized). The caller
    holds the backend lock."""
    table = _checked_for_writing(table, path)
    with atomic_writer(path) as temp:
        _write_parquet(table, temp)
    return table


def _checked_for_writing(table: pa.Table, path: Path) -> pa.Table:
    table = normalize_table(table)
    duplicate = first_duplicate_cid(table)
    if duplicate is not None:
        raise InvalidInput(f"{path}: refusing to write duplicate CID {duplicate}")
    return table


def _write_parquet(table: pa.Table, target: Path | pa.NativeFile) -> None:
    # sorting_columns declares the CID order, so readers need not check it (ParquetSnapshot._rows_sorted)
    pq.write_table(
        table,
        target,
        row_group_size=ROW_GROUP_ROWS,
        write_statistics=True,
        # Dictionary encoding only where values repeat: CIDs, paths, times and metadata are (nearly)
        # unique per row, so a dictionary there costs write time and bytes and saves nothing.
        use_dictionary=[name for name in DICTIONARY_COLUMNS if name in table.column_names],
        sorting_columns=[pq.SortingColumn(table.schema.get_field_index("cid"))],
    )


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as the bytes of one parquet file, written as ``write_table`` writes it."""
    sink = pa.BufferOutputStream()
    _write_parquet(_checked_for_writing(table, Path("<memory>")), sink)
    return sink.getvalue().to_pybytes()


def write_shard(path: Path, table: pa.Table) -> ShardInfo:
    """Write one shard of a new generation (its directory is private until published), durably."""
    table = _checked_for_writing(table, path)
    _write_parquet(table, path)
    fsync_file(path)
    groups = tuple((group.length, group.min_cid, group.max_cid) for group in groups_from_table(table))
    return ShardInfo(path.name, table.num_rows, os.path.getsize(path), groups)


def split_into_shards(table: pa.Table, *, exact: bool = False) -> list[pa.Table]:
    """``table`` cut into shards of about ``shard_rows()`` rows: into equal pieces when it is above
    twice that (or always, with ``exact``), else left whole; none when it is empty."""
    target = shard_rows()
    rows = table.num_rows
    if rows == 0:
        return []
    if rows <= 2 * target and not exact:
        return [table]
    pieces = -(-rows // target)
    size = -(-rows // pieces)
    return [table.slice(start, size) for start in range(0, rows, size)]


def write_pins(path: Path, table: pa.Table) -> pa.Table:
    """Write a backend's whole table in the form its size calls for (``pinfs.shards.choose_sharded``):
    one file, or a new generation of shards; returns it as written (normalized). The caller holds the
    backend lock (``PinStore.transaction``, which also removes generations no reader needs)."""
    if not choose_sharded(table.num_rows, is_sharded(path)):
        return write_table(path, table)
    table = _checked_for_writing(table, path)
    publish(path, split_into_shards(table, exact=True), table.column_names, write_shard)
    return table


# -- merging --


def merge_records(current: pa.Table, replacements: Mapping[str, Mapping[str, str | None]]) -> pa.Table:
    """``current`` with the rows of ``replacements`` (by CID) replaced or added, ``updated_at`` set.

    When ``current`` is in strict CID order (every table pinfs reads from its own files), so is the
    result: the new rows are merged in at their places instead of sorting the whole table again.
    """
    if not replacements:
        return current
    extras = [name for name in current.column_names if name not in REQUIRED_COLUMNS]
    new_table = _stamp_updated_at(records_to_table(replacements.values(), extras), now_iso())
    new_table = sort_by_cid(new_table)
    if current.num_rows == 0:
        return _align_columns(current, new_table)[1]
    if not cids_strictly_ascending(current.column("cid")):
        keep = current.filter(pc.invert(pc.is_in(current.column("cid"), new_table.column("cid"))))
        keep, new_table = _align_columns(keep, new_table)
        return pa.concat_tables([keep, new_table])
    if new_table.num_rows <= _SPLICE_MAX_ROWS:
        return _splice_sorted(current, new_table)
    replaced = pc.is_in(current.column("cid"), new_table.column("cid"))
    keep = current.filter(pc.invert(replaced)) if pc.any(replaced).as_py() else current
    keep, new_table = _align_columns(keep, new_table)
    both = pa.concat_tables([keep, new_table])
    return take_rows(both, pc.sort_indices(both.column("cid")))


# A batch of at most this many rows is spliced into the sorted table by binary search (no copy of the
# table); a bigger one is merged by one sort of the CID column and one gather of every column.
_SPLICE_MAX_ROWS = 64


def _stamp_updated_at(table: pa.Table, stamp: str) -> pa.Table:
    """``updated_at`` set to ``stamp`` where it is null or empty."""
    if "updated_at" not in table.column_names:
        return table.append_column(pa.field("updated_at", pa.string()), pa.array([stamp] * table.num_rows, pa.string()))
    column = table.column("updated_at")
    missing = pc.fill_null(pc.equal(column, ""), True)
    filled = pc.if_else(missing, pa.scalar(stamp, pa.string()), column)
    return table.set_column(table.schema.get_field_index("updated_at"), pa.field("updated_at", pa.string()), filled)


class _CidSequence(Sequence[str]):
    """A sorted CID column indexed lazily, for ``bisect`` without converting the whole column."""

    def __init__(self, cids: pa.ChunkedArray) -> None:
        self._cids = cids

    def __len__(self) -> int:
        return len(self._cids)

    def __getitem__(self, index):  # type: ignore[override]
        return self._cids[index].as_py()


def _splice_sorted(current: pa.Table, new_table: pa.Table) -> pa.Table:
    """Sorted ``current`` with the sorted rows of ``new_table`` put in place (replacing equal CIDs)."""
    cids = _CidSequence(current.column("cid"))
    current, new_table = _align_columns(current, new_table)
    pieces: list[pa.Table] = []
    start = 0
    for index, cid in enumerate(new_table.column("cid").to_pylist()):
        position = bisect.bisect_left(cids, cid, lo=start)
        if position > start:
            pieces.append(current.slice(start, position - start))
        pieces.append(new_table.slice(index, 1))
        start = position + 1 if position < len(cids) and cids[position] == cid else position
    if start < current.num_rows:
        pieces.append(current.slice(start))
    return pa.concat_tables(pieces)


def _align_columns(left: pa.Table, right: pa.Table) -> tuple[pa.Table, pa.Table]:
    names = list(dict.fromkeys(list(left.column_names) + list(right.column_names)))
    return _with_columns(left, names), _with_columns(right, names)


def _with_columns(table: pa.Table, names: list[str]) -> pa.Table:
    for name in names:
        if name not in table.column_names:
            table = table.append_column(pa.field(name, pa.string()), pa.nulls(table.num_rows, pa.string()))
    return table.select(names).cast(pa.schema([pa.field(name, pa.string()) for name in names]))
