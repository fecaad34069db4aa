"""Snapshots: one immutable version of a backend's pins, read through a bounded cache.

A ``PinSnapshot`` is pinned to the file that was open when it was taken (an atomic replace by another
process leaves an open file intact, so a listing in progress stays consistent), or for a sharded
backend to one generation directory, which never changes. Rows are sorted by CID in small row groups;
a single-CID lookup picks the one row group whose statistics cover the CID and reads only that, through
``StoreCache`` (cachetools, bounded in bytes). Snapshots are keyed by the identity of their file or
generation (device, inode, size, mtime), checked with one ``stat`` per access, so a version written
elsewhere is seen at once. A backend with no parquet yet is served from its legacy ``pins.json`` as a
``MemorySnapshot`` with the same interface.

Threading: everything here is synchronous and may block on disk; the mount calls it from worker
threads. ``StoreCache`` guards its maps with a lock, and each open parquet file has its own.
"""

from __future__ import annotations

import bisect
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cachetools
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinfs.errors import CorruptData
from pinfs.fsutil import refuse_symlink
from pinfs.schema import REQUIRED_COLUMNS, STATUSES
from pinfs.shards import ShardInfo, read_manifest
from pinfs.tables import (
    RowGroup,
    check_schema,
    empty_table,
    groups_from_table,
    normalize_table,
    one_line,
    open_parquet,
)

DEFAULT_CACHE_BYTES = 256 << 20

DEFAULT_CACHE_ENTRIES = 64  # snapshots hold an open file each


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
            self._file = open_parquet(opened)
            check_schema(self._file.schema_arrow, path)
            groups = _groups_from_statistics(self._file.metadata)
        except (CorruptData, FileNotFoundError):
            raise
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a bad file
            raise CorruptData(f"{path}: not a readable parquet file ({one_line(exc)})") from None
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
        check_schema(pa.schema([pa.field(name, pa.string()) for name in manifest.columns]), directory)
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
        shard = open_parquet(opened)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a bad file
        opened.close()
        raise CorruptData(f"{path}: not a readable parquet file ({one_line(exc)})") from None
    if shard.metadata.num_rows != info.rows or shard.metadata.num_row_groups != len(info.groups):
        raise CorruptData(f"{path}: its rows or row groups differ from the manifest")
    return shard


class MemorySnapshot(PinSnapshot):
    """A snapshot over a table held in memory (legacy pins.json, or an empty backend)."""

    def __init__(self, table: pa.Table, cache: StoreCache, identity: FileIdentity | None, source: str) -> None:
        self._table = normalize_table(table)
        super().__init__(identity, groups_from_table(self._table), cache)
        self.source = source
        self.column_names = tuple(self._table.column_names)

    def _load_group(self, index: int, columns: Sequence[str] | None) -> pa.Table:
        group = self.groups[index]
        table = self._table.slice(group.start, group.length)
        return table.select(list(columns)) if columns else table

    def _load_columns(self, columns: Sequence[str]) -> pa.Table:
        return self._table.select(list(columns))


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
