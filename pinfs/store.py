"""The pin-mapping store: ``pin_mappings.parquet`` read through a bounded cache, written atomically.

Reading goes through a ``PinSnapshot``: one version of a backend's pins, pinned to the file that was
open when it was taken (an atomic replace by another process leaves an open file intact, so a listing
in progress stays consistent). Rows are sorted by CID in small row groups; a single-CID lookup picks the
one row group whose statistics cover the CID and reads only that, through ``StoreCache`` (cachetools,
bounded in bytes). Snapshots are keyed by the file's identity (device, inode, size, mtime), checked with
one ``stat`` per access, so a file rewritten elsewhere is seen at once.

A backend with no parquet yet is served read-only from its legacy ``pins.json`` (or newest backup) as an
in-memory snapshot with the same interface.

Writes go through a ``Transaction`` (``PinStore.transaction``), which holds the backend's cross-process
lock. A backend of up to a few tens of thousands of pins is one file, rewritten whole into a temporary
file and renamed into place (``pinfs.fsutil``). A bigger one is stored as sorted shards
(``pinfs.shards``): ``Transaction.update`` rewrites only the shards holding the CIDs it changes, and
``ShardedSnapshot`` reads them through the generation's manifest.

Threading: everything here is synchronous and may block on disk; the mount calls it from worker
threads. ``StoreCache`` guards its maps with a lock, so it may be shared by threads.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import operator
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cachetools
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinfs.backends import Backend
from pinfs.errors import CorruptData, InvalidInput, NotFound, PinfsError
from pinfs.fsutil import atomic_writer, backend_lock, fsync_file, refuse_symlink
from pinfs.schema import REQUIRED_COLUMNS, STATUSES, arrow_schema, now_iso
from pinfs.shards import (
    KeptShard,
    Manifest,
    ShardInfo,
    choose_sharded,
    collect_garbage,
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
DEFAULT_CACHE_BYTES = 256 << 20
DEFAULT_CACHE_ENTRIES = 64  # snapshots hold an open file each
WORKER_THREADS = min(4, os.cpu_count() or 1)  # for the shards of one write
T = TypeVar("T")


@dataclass(frozen=True)
class FileIdentity:
    """What makes two reads of a path the same version of the file."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path, stat: os.stat_result | None = None) -> FileIdentity:
        stat = stat or os.stat(path)
        return cls(str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class RowGroup:
    """Where one row group sits in the sorted order, and which CIDs it covers."""

    index: int
    start: int
    length: int
    min_cid: str
    max_cid: str


# -- cache --


def _table_bytes(value: object) -> int:
    if isinstance(value, pa.Table):
        return max(value.nbytes, 1)
    if isinstance(value, pa.ChunkedArray | pa.Array):
        return max(value.nbytes, 1)
    return 1024


class StoreCache:
    """Bounded caches shared by every snapshot: row groups and derived columns by bytes, snapshots by count."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self.max_bytes = max_bytes
        self._data: cachetools.LRUCache = cachetools.LRUCache(maxsize=max_bytes, getsizeof=_table_bytes)
        self._snapshots: cachetools.LRUCache = cachetools.LRUCache(maxsize=max_entries)
        self._lock = threading.RLock()

    def get_data(self, key: tuple, load: Callable[[], pa.Table | pa.ChunkedArray]) -> pa.Table | pa.ChunkedArray:
        with self._lock:
            found = self._data.get(key)
        if found is not None:
            return found
        value = load()
        if _table_bytes(value) <= self.max_bytes:
            with self._lock:
                self._data[key] = value
        return value

    def get_snapshot(self, identity: FileIdentity, load: Callable[[], PinSnapshot]) -> PinSnapshot:
        with self._lock:
            found = self._snapshots.get(identity)
        if found is not None:
            return found
        snapshot = load()
        with self._lock:
            self._snapshots[identity] = snapshot
        return snapshot

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._snapshots.clear()

    @property
    def current_bytes(self) -> int:
        with self._lock:
            return int(self._data.currsize)


DEFAULT_CACHE = StoreCache()


# -- snapshots --


class PinSnapshot:
    """One immutable version of a backend's pins, sorted by CID. Subclasses supply the row groups."""

    source = "parquet"

    def __init__(self, identity: FileIdentity | None, groups: list[RowGroup], cache: StoreCache) -> None:
        self.identity = identity
        self.groups = groups
        self._cache = cache
        self._group_max = [group.max_cid for group in groups]
        self._group_start = [group.start for group in groups]
        self.count = sum(group.length for group in groups)
        self.column_names: tuple[str, ...] = REQUIRED_COLUMNS

    def _load_group(self, index: int, columns: Sequence[str] | None) -> pa.Table:
        raise NotImplementedError

    def _load_columns(self, columns: Sequence[str]) -> pa.Table:
        raise NotImplementedError

    def group(self, index: int, columns: Sequence[str] | None = None) -> pa.Table:
        key = ("group", self.identity, index, tuple(columns) if columns else None)
        return self._cache.get_data(key, lambda: self._load_group(index, columns))

    def lookup(self, cid: str) -> dict[str, str | None] | None:
        """The record for ``cid``, or None. Reads at most one row group."""
        position = bisect.bisect_left(self._group_max, cid)
        if position == len(self.groups) or self.groups[position].min_cid > cid:
            return None
        table = self.group(position)
        row = pc.index(table.column("cid"), pa.scalar(cid, pa.string())).as_py()
        if row < 0:
            return None
        return {name: table.column(name)[row].as_py() for name in table.column_names}

    def __contains__(self, cid: str) -> bool:
        return self.lookup(cid) is not None

    def cid_at(self, position: int) -> str:
        """The CID at ``position`` in sorted order (for readdir paging within this version)."""
        index = bisect.bisect_right(self._group_start, position) - 1
        group = self.groups[index]
        return self.group(index, ["cid"]).column("cid")[position - group.start].as_py()

    def cid_column(self, start: int, stop: int) -> pa.ChunkedArray:
        """CIDs at sorted positions ``start``..``stop`` (exclusive), reading only the row groups needed:
        slices of the ``cid`` columns the read cache holds, so a caller keeping them (the mount's
        listing inodes) copies nothing while the cache keeps them too."""
        chunks: list[pa.Array] = []
        stop = min(stop, self.count)
        position = max(start, 0)
        while position < stop:
            index = bisect.bisect_right(self._group_start, position) - 1
            group = self.groups[index]
            column = self.group(index, ["cid"]).column("cid")
            offset = position - group.start
            take = min(group.length - offset, stop - position)
            chunks.extend(column.slice(offset, take).chunks)
            position += take
        return pa.chunked_array(chunks, pa.string())

    def cids_range(self, start: int, stop: int) -> list[str]:
        """``cid_column`` as a list of strings."""
        return self.cid_column(start, stop).to_pylist()

    def iter_cids(self) -> Iterator[str]:
        for index in range(len(self.groups)):
            yield from self.group(index, ["cid"]).column("cid").to_pylist()

    def cids_with_status(self, status: str) -> pa.ChunkedArray:
        """Sorted CIDs whose status is ``status``; reads only the ``cid`` and ``status`` columns."""
        key = ("status", self.identity, status)

        def load() -> pa.ChunkedArray:
            chunks: list[pa.Array] = []
            for table in self.scan(["cid", "status"]):
                chunks.extend(table.filter(pc.equal(table.column("status"), status)).column("cid").chunks)
            return pa.chunked_array(chunks, pa.string())

        return self._cache.get_data(key, load)

    def count_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for table in self.scan(["status"]):
            for item in pc.value_counts(table.column("status")).to_pylist():
                counts[str(item["values"])] = counts.get(str(item["values"]), 0) + item["counts"]
        return counts

    def scan(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        """The whole version in pieces (row groups; shards for a sharded one), not through the cache:
        for callers that keep only what they derive (a million CIDs' status column is ~70 MB, the 30k
        failed ones ~2 MB)."""
        for index in range(len(self.groups)):
            yield self._load_group(index, columns)

    def iter_records(self, status: str | None = None) -> Iterator[dict[str, str | None]]:
        """Every record in CID order, one row group in memory at a time."""
        for index in range(len(self.groups)):
            table = self._load_group(index, None)  # not cached: a full scan would flush the cache
            if status is not None:
                table = table.filter(pc.equal(table.column("status"), status))
            yield from table.to_pylist()

    def table(self) -> pa.Table:
        """The whole version as one table (all columns). Not cached."""
        return self._load_columns(list(self.column_names))


class UnsortedParquet(CorruptData):
    """The parquet is readable but not sorted by CID; it can still be served from memory."""


def _open_stable(path: Path) -> tuple[FileIdentity, pa.NativeFile]:
    """Open ``path`` and return the identity of exactly the version opened.

    The open file keeps that version readable after another process renames a new file over it. The
    path is stat-ed before and after opening; if it changed in between, we open again. A plain file,
    not a memory map: pages a map touched would count in the mount's RSS for as long as the snapshot
    lives, while reads through the page cache cost the process only the Arrow buffers it keeps.
    """
    refuse_symlink(path)
    for _attempt in range(5):
        before = FileIdentity.of(path)
        opened = pa.OSFile(str(path), "r")
        if FileIdentity.of(path) == before:
            return before, opened
        opened.close()
    raise CorruptData(f"{path}: changed while being opened, five times in a row")


class ParquetSnapshot(PinSnapshot):
    """A snapshot over an open parquet file; the open handle keeps this version readable."""

    def __init__(self, path: Path, cache: StoreCache) -> None:
        try:
            identity, opened = _open_stable(path)
            self._file = _parquet_file(opened)
            _check_schema(self._file.schema_arrow, path)
            groups = _groups_from_statistics(self._file.metadata)
        except (CorruptData, FileNotFoundError):
            raise
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a bad file
            raise CorruptData(f"{path}: not a readable parquet file ({_one_line(exc)})") from None
        if groups is None or not self._rows_sorted(groups):
            raise UnsortedParquet(f"{path}: rows are not sorted by cid (or cid statistics are missing)")
        super().__init__(identity, groups, cache)
        self.path = path
        self.column_names = tuple(self._file.schema_arrow.names)
        self._read_lock = threading.Lock()  # one ParquetFile is not read from two threads at once

    def _rows_sorted(self, groups: list[RowGroup]) -> bool:
        """Whether rows are in strictly increasing CID order within each row group.

        Statistics only order the groups; a file from another tool can be unsorted inside one group, and
        listings (``iter_cids``, merged across backends) rely on the order. Files that declare the order
        in their row-group metadata (pinfs writes ``sorting_columns``) are trusted; others are checked
        once, by reading the ``cid`` column.
        """
        metadata = self._file.metadata
        cid_column = self._file.schema_arrow.get_field_index("cid")
        if all(_declares_cid_order(metadata.row_group(group.index), cid_column) for group in groups):
            return True
        cids = self._file.read(columns=["cid"]).column("cid")
        if len(cids) < 2:
            return True
        return bool(pc.all(pc.less(cids.slice(0, len(cids) - 1), cids.slice(1))).as_py())

    def _load_group(self, index: int, columns: Sequence[str] | None) -> pa.Table:
        with self._read_lock:
            return self._file.read_row_group(self.groups[index].index, columns=list(columns) if columns else None)

    def _load_columns(self, columns: Sequence[str]) -> pa.Table:
        with self._read_lock:
            return self._file.read(columns=list(columns))


class ShardedSnapshot(PinSnapshot):
    """A snapshot over one generation of a sharded backend (``pinfs.shards``).

    The row groups of every shard, in order, come from the manifest, so a lookup opens only the shard
    that holds its row group. Shards are opened when first read and kept open, which keeps them readable
    after a later writer removes the generation.
    """

    def __init__(self, directory: Path, identity: FileIdentity, cache: StoreCache) -> None:
        manifest = read_manifest(directory)
        _check_schema(pa.schema([pa.field(name, pa.string()) for name in manifest.columns]), directory)
        groups: list[RowGroup] = []
        self._where: list[tuple[int, int]] = []  # per row group: shard number, row group within the shard
        start = 0
        for shard_number, shard in enumerate(manifest.shards):
            for local, (rows, first, last) in enumerate(shard.groups):
                groups.append(RowGroup(local, start, rows, first, last))
                self._where.append((shard_number, local))
                start += rows
        super().__init__(identity, groups, cache)
        self.path = directory
        self.manifest = manifest
        self.column_names = manifest.columns
        self._files: dict[int, tuple[pq.ParquetFile, threading.Lock]] = {}
        self._open_lock = threading.Lock()

    def _shard(self, number: int) -> tuple[pq.ParquetFile, threading.Lock]:
        with self._open_lock:
            found = self._files.get(number)
            if found is None:
                found = self._files[number] = (_open_shard(self.path, self.manifest.shards[number]), threading.Lock())
            return found

    def _load_group(self, index: int, columns: Sequence[str] | None) -> pa.Table:
        number, local = self._where[index]
        shard, lock = self._shard(number)
        with lock:
            return shard.read_row_group(local, columns=list(columns) if columns else None)

    def table(self) -> pa.Table:
        return read_generation(self.path)

    def scan(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        for number in range(len(self.manifest.shards)):
            yield self._read_shard(number, columns)

    def _load_columns(self, columns: Sequence[str]) -> pa.Table:
        tables = list(self.scan(columns))
        return pa.concat_tables(tables) if tables else empty_table().select(list(columns))

    def _read_shard(self, number: int, columns: Sequence[str]) -> pa.Table:
        shard, lock = self._shard(number)
        with lock:
            return shard.read(columns=list(columns))

    def windowed_columns(self, names: Sequence[str]) -> Mapping[str, WindowedColumn]:
        """The columns ``names`` of the whole version, read a few shards at a time as they are sliced
        (``column.slice(start, length)``, in order): what the CAR encoder needs to encode a million
        pins while holding a few shards in memory instead of the whole table."""
        window = _ShardWindow(self, list(names))
        return {name: WindowedColumn(window, name) for name in names}


class _ShardWindow:
    """The shards of a ``ShardedSnapshot`` that the last requested range of rows covers."""

    def __init__(self, snapshot: ShardedSnapshot, names: list[str]) -> None:
        self._snapshot = snapshot
        self._names = names
        self._starts = list(itertools.accumulate((shard.rows for shard in snapshot.manifest.shards), initial=0))
        self._start = 0
        self._table: pa.Table | None = None

    def rows(self, start: int, length: int) -> pa.Table:
        if self._table is None or not self._start <= start <= start + length <= self._start + self._table.num_rows:
            first = bisect.bisect_right(self._starts, start) - 1
            last = bisect.bisect_right(self._starts, max(start + length - 1, start)) - 1
            shards = range(first, min(last, len(self._starts) - 2) + 1)
            self._table = pa.concat_tables([self._snapshot._read_shard(number, self._names) for number in shards])
            self._start = self._starts[first]
        return self._table.slice(start - self._start, length)


@dataclass(frozen=True)
class WindowedColumn:
    """One column of a ``_ShardWindow``: only ``slice`` is offered."""

    window: _ShardWindow
    name: str

    def slice(self, start: int, length: int) -> pa.ChunkedArray:
        return self.window.rows(start, length).column(self.name)


def _open_shard(directory: Path, info: ShardInfo) -> pq.ParquetFile:
    path = directory / info.file
    try:
        identity, opened = _open_stable(path)
    except FileNotFoundError:
        raise CorruptData(f"{path}: missing (the generation was removed or is incomplete)") from None
    if identity.size != info.bytes:
        opened.close()
        raise CorruptData(f"{path}: is {identity.size} bytes, the manifest says {info.bytes}")
    try:
        shard = _parquet_file(opened)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a bad file
        opened.close()
        raise CorruptData(f"{path}: not a readable parquet file ({_one_line(exc)})") from None
    if shard.metadata.num_rows != info.rows or shard.metadata.num_row_groups != len(info.groups):
        raise CorruptData(f"{path}: its rows or row groups differ from the manifest")
    return shard


class MemorySnapshot(PinSnapshot):
    """A snapshot over a table held in memory (legacy pins.json, or an empty backend)."""

    def __init__(self, table: pa.Table, cache: StoreCache, identity: FileIdentity | None, source: str) -> None:
        self._table = normalize_table(table)
        super().__init__(identity, _groups_from_table(self._table), cache)
        self.source = source
        self.column_names = tuple(self._table.column_names)

    def _load_group(self, index: int, columns: Sequence[str] | None) -> pa.Table:
        group = self.groups[index]
        table = self._table.slice(group.start, group.length)
        return table.select(list(columns)) if columns else table

    def _load_columns(self, columns: Sequence[str]) -> pa.Table:
        return self._table.select(list(columns))


def _parquet_file(source: pa.NativeFile) -> pq.ParquetFile:
    """A reader without pyarrow's pre-buffering: that is for high-latency stores, and each open reader
    keeps its last read's buffers alive (~1 MB per shard read whole), which a snapshot holding dozens
    of open shards turned into 150+ MB of mount RSS (issue #6, measured)."""
    return pq.ParquetFile(source, pre_buffer=False)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_schema(schema: pa.Schema, path: Path) -> None:
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


def _groups_from_statistics(metadata: pq.FileMetaData) -> list[RowGroup] | None:
    """Row groups with their CID ranges from the footer; None if unsorted or without statistics."""
    cid_column = metadata.schema.to_arrow_schema().get_field_index("cid")
    groups: list[RowGroup] = []
    start = 0
    for index in range(metadata.num_row_groups):
        row_group = metadata.row_group(index)
        if row_group.num_rows == 0:
            continue
        stats = row_group.column(cid_column).statistics
        if stats is None or not stats.has_min_max or stats.null_count:
            return None
        if groups and stats.min <= groups[-1].max_cid:  # overlap: unsorted or duplicate across groups
            return None
        groups.append(RowGroup(index, start, row_group.num_rows, stats.min, stats.max))
        start += row_group.num_rows
    return groups


def _declares_cid_order(row_group: pq.RowGroupMetaData, cid_column: int) -> bool:
    sorting = row_group.sorting_columns
    return bool(sorting) and sorting[0].column_index == cid_column and not sorting[0].descending


def _groups_from_table(table: pa.Table) -> list[RowGroup]:
    groups: list[RowGroup] = []
    cids = table.column("cid")
    for start in range(0, table.num_rows, ROW_GROUP_ROWS):
        length = min(ROW_GROUP_ROWS, table.num_rows - start)
        groups.append(RowGroup(len(groups), start, length, cids[start].as_py(), cids[start + length - 1].as_py()))
    return groups


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
            table = _parquet_file(source).read()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CorruptData(f"{path}: not a readable parquet file ({_one_line(exc)})") from None
    _check_schema(table.schema, path)
    # Required columns are non-nullable in our schema: casting a null into one raises a bare ValueError
    # (not ArrowInvalid), which escaped as a traceback from verify-only/migrate/pin. Name them instead.
    nulls = [name for name in REQUIRED_COLUMNS if table.column(name).null_count]
    if nulls:
        raise CorruptData(f"{path}: null values in required column(s) {', '.join(nulls)}")
    try:
        return normalize_table(table, sort=sort)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CorruptData(f"{path}: an extra column cannot be read as text ({_one_line(exc)})") from None


def read_generation(directory: Path, *, sort: bool = True) -> pa.Table:
    """Every shard of one generation of a sharded backend, read in parallel, as one table."""
    shards = read_manifest(directory).shards
    tables = _parallel_map(lambda shard: read_whole_table(directory / shard.file, sort=sort), shards)
    if not tables:
        return empty_table()
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise CorruptData(f"{directory}: shards differ in their columns ({_one_line(exc)})") from None


def empty_table() -> pa.Table:
    return arrow_schema().empty_table()


def write_table(path: Path, table: pa.Table) -> None:
    """Write a table as one parquet file, atomically. The caller holds the backend lock."""
    table = _checked_for_writing(table, path)
    with atomic_writer(path) as temp:
        _write_parquet(table, temp)


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
    groups = tuple((group.length, group.min_cid, group.max_cid) for group in _groups_from_table(table))
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


def write_pins(path: Path, table: pa.Table) -> None:
    """Write a backend's whole table in the form its size calls for (``pinfs.shards.choose_sharded``):
    one file, or a new generation of shards. The caller holds the backend lock."""
    table = normalize_table(table)
    if choose_sharded(table.num_rows, is_sharded(path)):
        publish(path, split_into_shards(_checked_for_writing(table, path), exact=True), table.column_names, write_shard)
    else:
        write_table(path, table)
    collect_garbage(path.parent)


# -- the store --


class NotMigrated(PinfsError):
    """A write to a backend that is still served from its legacy pins.json (exit 1; EIO in the mount)."""


class Transaction:
    """Reads and writes of one backend while its lock is held (from ``PinStore.transaction``)."""

    def __init__(self, store: PinStore) -> None:
        self.store = store
        self._table: pa.Table | None = None  # the whole table as last read or written here
        self._shards: dict[tuple[Path, str], pa.Table] = {}  # shards read (generations never change)

    @property
    def sharded(self) -> bool:
        return is_sharded(self.store.path)

    def current(self, *, allow_legacy: bool = False) -> pa.Table:
        """The table as it is on disk now, sorted (empty when there is no parquet yet).

        A backend that has only a legacy pins.json must be migrated before anything else writes to it,
        so that writing a parquet never hides the pins that are only in pins.json; ``allow_legacy`` is
        for the migration itself.
        """
        if self._table is not None:
            return self._table
        if self.store.has_parquet():
            table = read_whole_table(self.store.path)
            # A file with a CID twice (written by another tool) is corrupt: say so, naming the file,
            # rather than letting write_table refuse it later as if the user's input were bad (exit 2).
            duplicate = first_duplicate_cid(table)
            if duplicate is not None:
                raise CorruptData(f"{self.store.path}: CID {duplicate} appears more than once")
            self._table = table
            return table
        if not allow_legacy and self.store.legacy_source() is not None:
            name = self.store.backend.name
            raise NotMigrated(
                f"backend {name!r} has only a legacy pins.json; run 'pinfs migrate --backend-filter {name}' first"
            )
        return empty_table()

    def write(self, table: pa.Table) -> None:
        """Replace the whole table (``write_pins``)."""
        table = normalize_table(table)
        write_pins(self.store.path, table)
        self._table = table  # what is on disk now: a CAR written next need not read it back

    def records_for(self, cids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        """The current records of those of ``cids`` that are present. A sharded backend reads only the
        shards that would hold them."""
        wanted = pa.array(list(cids), pa.string())
        if self.sharded:
            directory, manifest = self._generation()
            numbers = sorted(set(_shard_numbers(manifest, cids).values()))
            tables = self._shard_tables(directory, [manifest.shards[number] for number in numbers])
        else:
            tables = [self.current()]
        found: dict[str, dict[str, str | None]] = {}
        for table in tables:
            for row in table.filter(pc.is_in(table.column("cid"), wanted)).to_pylist():
                found[row["cid"]] = row
        return found

    def update(self, replacements: Mapping[str, Mapping[str, str | None]], removals: Sequence[str] = ()) -> int:
        """Remove ``removals`` and add or replace ``replacements`` (by CID, ``updated_at`` stamped), in
        one write; returns the number of rows after it. A sharded backend rewrites only the shards that
        hold those CIDs (issue #6: one pin into a million must not rewrite a million rows)."""
        if not replacements and not removals:
            return self._generation()[1].count if self.sharded else self.current().num_rows
        if self.sharded:
            directory, manifest = self._generation()
            if _new_columns(replacements, manifest.columns):
                return self._update_whole(replacements, removals)  # every shard must gain the column
            return self._update_shards(directory, manifest, replacements, removals)
        return self._update_whole(replacements, removals)

    def _update_whole(self, replacements: Mapping[str, Mapping[str, str | None]], removals: Sequence[str]) -> int:
        table = self.current()
        if removals:
            table = table.filter(pc.invert(pc.is_in(table.column("cid"), pa.array(list(removals), pa.string()))))
        table = merge_records(table, replacements)
        self.write(table)
        return table.num_rows

    def _update_shards(
        self,
        directory: Path,
        manifest: Manifest,
        replacements: Mapping[str, Mapping[str, str | None]],
        removals: Sequence[str],
    ) -> int:
        by_shard: dict[int, list[str]] = {}
        for cid, number in _shard_numbers(manifest, [*removals, *replacements]).items():
            by_shard.setdefault(number, []).append(cid)
        if not by_shard:
            return manifest.count
        removal_set = set(removals)

        def rewritten(number: int, table: pa.Table) -> list[pa.Table]:
            cids = by_shard[number]
            gone = [cid for cid in cids if cid in removal_set]
            if gone:
                table = table.filter(pc.invert(pc.is_in(table.column("cid"), pa.array(gone, pa.string()))))
            table = merge_records(table, {cid: replacements[cid] for cid in cids if cid in replacements})
            return split_into_shards(table.select(list(manifest.columns)))

        touched = sorted(by_shard)
        tables = self._shard_tables(directory, [manifest.shards[number] for number in touched])
        new_parts = dict(zip(touched, _parallel_map(rewritten, touched, tables), strict=True))
        parts: list[KeptShard | pa.Table] = []
        for number, shard in enumerate(manifest.shards):
            if number in new_parts:
                parts.extend(new_parts[number])
            else:
                parts.append(KeptShard(directory / shard.file, shard))
        parts = _compact(parts, manifest.columns)
        total = sum(part.info.rows if isinstance(part, KeptShard) else part.num_rows for part in parts)
        if not choose_sharded(total, currently_sharded=True):
            self.write(pa.concat_tables([_part_table(part, manifest.columns) for part in parts]))
            return total
        publish(self.store.path, parts, manifest.columns, write_shard)
        collect_garbage(self.store.path.parent)
        self._table = None
        return total

    def _generation(self) -> tuple[Path, Manifest]:
        directory = generation_dir(self.store.path)
        return directory, read_manifest(directory)

    def _shard_tables(self, directory: Path, shards: Sequence[ShardInfo]) -> list[pa.Table]:
        """Whole shards, read on a few threads (pyarrow reads without the GIL) and kept for the rest of
        the transaction: ``records_for`` then ``update`` read each shard once."""
        missing = [shard for shard in shards if (directory, shard.file) not in self._shards]
        tables = _parallel_map(lambda shard: read_whole_table(directory / shard.file), missing)
        for shard, table in zip(missing, tables, strict=True):
            self._shards[directory, shard.file] = table
        return [self._shards[directory, shard.file] for shard in shards]


def _parallel_map(function: Callable[..., T], *iterables: Iterable[Any]) -> list[T]:
    """``list(map(function, …))`` on ``WORKER_THREADS`` threads: shard reads, merges and writes are
    mostly Arrow work, which runs without the GIL."""
    with ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="pinfs-shards") as pool:
        return list(pool.map(function, *iterables))


def _shard_numbers(manifest: Manifest, cids: Iterable[str]) -> dict[str, int]:
    """The shard each CID belongs in: shard i holds CIDs from its first one up to the next shard's
    first; the first shard also holds every CID below its own first one."""
    firsts = [shard.min_cid for shard in manifest.shards]
    return {cid: max(bisect.bisect_right(firsts, cid) - 1, 0) for cid in cids}


def _new_columns(replacements: Mapping[str, Mapping[str, str | None]], columns: Sequence[str]) -> bool:
    if not replacements:
        return False
    names = set(itertools.chain.from_iterable(replacements.values()))
    names.add("updated_at")  # merge_records stamps it
    return not names.issubset(columns)


def _part_table(part: KeptShard | pa.Table, columns: Sequence[str]) -> pa.Table:
    table = read_whole_table(part.path) if isinstance(part, KeptShard) else part
    return table.select(list(columns))


def _compact(parts: list[KeptShard | pa.Table], columns: Sequence[str]) -> list[KeptShard | pa.Table]:
    """Merge every rewritten shard smaller than a quarter of the target into a neighbour, so removals
    do not leave a trail of tiny files."""
    floor = shard_rows() // 4
    parts = list(parts)
    index = 0
    while index < len(parts):
        part = parts[index]
        if not isinstance(part, pa.Table) or part.num_rows >= floor or len(parts) == 1:
            index += 1
            continue
        low = index if index + 1 < len(parts) else index - 1
        merged = pa.concat_tables([_part_table(parts[low], columns), _part_table(parts[low + 1], columns)])
        parts[low : low + 2] = split_into_shards(merged)
        index = low
    return parts


@dataclass
class UpsertResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


class PinStore:
    """Read and write one backend's pins."""

    def __init__(self, backend: Backend, cache: StoreCache | None = None) -> None:
        self.backend = backend
        self.cache = cache or DEFAULT_CACHE

    @property
    def path(self) -> Path:
        return self.backend.parquet_path

    def has_parquet(self) -> bool:
        """Whether the backend has been migrated: a parquet file, or pinfs' link to its shards."""
        return self.path.is_file() or is_sharded(self.path)

    def snapshot(self) -> PinSnapshot:
        """The current version: the parquet, else the legacy pins.json, else an empty snapshot.

        Raises CorruptData when the file that should be read cannot be.
        """
        try:
            stat = os.lstat(self.path)
        except FileNotFoundError:
            return self._legacy_snapshot()
        if is_sharded(self.path):
            directory = generation_dir(self.path)
            generation = FileIdentity.of(directory)
            return self.cache.get_snapshot(generation, lambda: ShardedSnapshot(directory, generation, self.cache))
        identity = FileIdentity.of(self.path, stat)
        return self.cache.get_snapshot(identity, lambda: self._parquet_snapshot(identity))

    def _parquet_snapshot(self, identity: FileIdentity) -> PinSnapshot:
        try:
            return ParquetSnapshot(self.path, self.cache)
        except UnsortedParquet:
            # Written by another tool: serve it sorted from memory; verify-only reports it.
            table = read_whole_table(self.path)
            duplicate = first_duplicate_cid(table)
            if duplicate is not None:
                raise CorruptData(f"{self.path}: CID {duplicate} appears more than once") from None
            return MemorySnapshot(table, self.cache, identity, source="parquet")

    def legacy_source(self) -> Path | None:
        from pinfs.legacy import find_legacy_source

        return find_legacy_source(self.backend.directory)

    def _legacy_snapshot(self) -> PinSnapshot:
        from pinfs.legacy import read_legacy_pins

        source = self.legacy_source()
        if source is None:
            return MemorySnapshot(empty_table(), self.cache, None, source="empty")
        identity = FileIdentity.of(source)

        def load() -> PinSnapshot:
            pins = read_legacy_pins(source, self.backend.name, self.backend.type)
            table = records_to_table(pins.records) if pins.records else empty_table()
            return MemorySnapshot(table, self.cache, identity, source="legacy")

        return self.cache.get_snapshot(identity, load)

    @contextlib.contextmanager
    def transaction(self, *, lock_timeout: float | None = None) -> Iterator[Transaction]:
        """Hold the backend's lock for a read-modify-write; see ``Transaction``."""
        directory = self.backend.directory
        if not directory.is_dir():
            raise NotFound(f"backend {self.backend.name!r} has no directory {directory}")
        with backend_lock(directory, timeout=lock_timeout):
            collect_garbage(directory)  # like backend_lock's stale temp files: what dead writers left
            yield Transaction(self)

    def upsert(self, records: Sequence[Mapping[str, str | None]], *, overwrite: bool) -> UpsertResult:
        """Add records; a CID already present is replaced only when ``overwrite``. One write."""
        outcome = UpsertResult()
        incoming = {str(record["cid"]): record for record in records}
        with self.transaction() as txn:
            existing = txn.records_for(list(incoming))
            chosen = {}
            for cid, record in incoming.items():
                if cid not in existing:
                    outcome.added.append(cid)
                    chosen[cid] = record
                elif overwrite:
                    outcome.updated.append(cid)
                    chosen[cid] = record
                else:
                    outcome.unchanged.append(cid)
            txn.update(chosen)
        return outcome

    def remove(self, cids: Iterable[str]) -> list[str]:
        """Remove CIDs; returns those that were present. One write."""
        wanted = list(dict.fromkeys(cids))
        with self.transaction() as txn:
            present = txn.records_for(wanted)
            removed = [cid for cid in wanted if cid in present]
            txn.update({}, removals=removed)
        return removed


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
