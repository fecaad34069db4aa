"""Snapshots: one immutable version of a backend's pins, read through a bounded cache.

A ``PinSnapshot`` is a sequence of *pieces*, each a sorted, disjoint range of CIDs: the data files of
one version of the Delta table (``pinfs.delta``; their row counts and CID ranges come from the log),
the one file or the shards of the forms written before the table (read until the first write converts
them), or a table in memory (a legacy ``pins.json``). A single-CID lookup is two binary searches: the
piece whose range covers the CID, then the one row group of that piece whose footer statistics cover
it. Only that row group is read, through ``StoreCache`` (cachetools, bounded in bytes).

Data files never change once written (a write adds new files and removes old ones from the log), so
what is cached about a file (its open reader, its row groups, its status counts) is keyed by the file
and serves every version that still holds it: after a pin, only the one rewritten file is read again.
A file is opened when first needed and its reader is kept by ``StoreCache`` (a bounded number of open
files), which keeps that version readable even after vacuum removes the file from the directory.

Threading: everything here is synchronous and may block on disk; the mount calls it from worker
threads. ``StoreCache`` guards its maps with a lock, and each open parquet file has its own.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import os
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cachetools
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinfs.cids import aliases_of, standard_forms
from pinfs.errors import CorruptData
from pinfs.fsutil import refuse_symlink
from pinfs.rootfs import S3Path, S3Stat, local_copy
from pinfs.schema import STATUSES, STORE_COLUMNS
from pinfs.tables import (
    RowGroup,
    check_schema,
    checked_table,
    empty_table,
    groups_from_table,
    normalize_table,
    one_line,
    open_parquet,
    parallel_map,
)

DEFAULT_CACHE_BYTES = 256 << 20
DEFAULT_CACHE_ENTRIES = 64  # snapshots
DEFAULT_OPEN_FILES = 64  # open data-file readers (each holds a descriptor and its footer)


@dataclass(frozen=True)
class FileIdentity:
    """What makes two reads of a path the same version of the file."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path | S3Path, stat: os.stat_result | S3Stat | None = None) -> FileIdentity:
        """The identity of ``path`` as it is now (following a link; on S3, from the object's ETag)."""
        stat = stat or path.stat()
        return cls(str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


# -- cache --


def _table_bytes(value: object) -> int:
    if isinstance(value, pa.Table | pa.ChunkedArray | pa.Array):
        return max(value.nbytes, 1)
    return 1024


class StoreCache:
    """Bounded caches shared by every snapshot: row groups and derived columns by bytes, snapshots and
    open files by count, and the newest known version of each table."""

    def __init__(
        self,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
        max_open_files: int = DEFAULT_OPEN_FILES,
    ) -> None:
        self.max_bytes = max_bytes
        self._data: cachetools.LRUCache = cachetools.LRUCache(maxsize=max_bytes, getsizeof=_table_bytes)
        self._snapshots: cachetools.LRUCache = cachetools.LRUCache(maxsize=max_entries)
        self._files: cachetools.LRUCache = cachetools.LRUCache(maxsize=max_open_files)
        self.versions: dict[str, object] = {}  # table location -> newest state seen (pinfs.store)
        self._lock = threading.RLock()

    def get_data(self, key: Hashable, load: Callable[[], object]) -> object:
        with self._lock:
            found = self._data.get(key)
        if found is not None:
            return found
        value = load()
        if _table_bytes(value) <= self.max_bytes:
            with self._lock:
                self._data[key] = value
        return value

    def get_snapshot(self, identity: Hashable, load: Callable[[], PinSnapshot]) -> PinSnapshot:
        with self._lock:
            found = self._snapshots.get(identity)
        if found is not None:
            return found
        snapshot = load()
        with self._lock:
            self._snapshots[identity] = snapshot
        return snapshot

    def open_file(self, key: Hashable, opener: Callable[[], OpenParquet]) -> OpenParquet:
        with self._lock:
            found = self._files.get(key)
            if found is None:
                found = self._files[key] = opener()
            return found

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._snapshots.clear()
            self._files.clear()
            self.versions.clear()


DEFAULT_CACHE = StoreCache()


# -- pieces --


class OpenParquet:
    """An open parquet file of pins: its reader, row groups (from footer statistics) and a lock (one
    ``ParquetFile`` is not read from two threads at once)."""

    def __init__(self, path: Path, expected_size: int | None = None, expected_rows: int | None = None) -> None:
        try:
            identity, opened = _open_stable(path)
        except FileNotFoundError:
            raise CorruptData(f"{path}: missing (removed while this version was in use?)") from None
        if expected_size is not None and identity.size != expected_size:
            opened.close()
            raise CorruptData(f"{path}: is {identity.size} bytes, the table's log says {expected_size}")
        try:
            self.file = open_parquet(opened)
            check_schema(self.file.schema_arrow, path)
            groups = _groups_from_statistics(self.file.metadata)
        except CorruptData:
            opened.close()
            raise
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a bad file
            opened.close()
            raise CorruptData(f"{path}: not a readable parquet file ({one_line(exc)})") from None
        if expected_rows is not None and self.file.metadata.num_rows != expected_rows:
            raise CorruptData(f"{path}: holds {self.file.metadata.num_rows} rows, the table's log says {expected_rows}")
        self.path = path
        self.identity = identity
        self.groups = groups  # None when unsorted or without statistics
        self.lock = threading.Lock()

    def sorted_within_groups(self) -> bool:
        """Whether rows are in strictly increasing CID order (statistics only order the groups).

        Files that declare the order (pinfs writes ``sorting_columns``) are trusted; others are checked
        once, by reading the ``cid`` column."""
        if self.groups is None:
            return False
        metadata = self.file.metadata
        cid_column = self.file.schema_arrow.get_field_index("cid")
        if all(_declares_cid_order(metadata.row_group(group.index), cid_column) for group in self.groups):
            return True
        with self.lock:
            cids = self.file.read(columns=["cid"]).column("cid")
        return len(cids) < 2 or bool(pc.all(pc.less(cids.slice(0, len(cids) - 1), cids.slice(1))).as_py())

    def read_group(self, index: int, columns: Sequence[str] | None) -> pa.Table:
        assert self.groups is not None
        with self.lock, self._reading():
            table = self.file.read_row_group(self.groups[index].index, columns=list(columns) if columns else None)
        return _checked_columns(table, self.path)

    def read(self, columns: Sequence[str] | None) -> pa.Table:
        with self.lock, self._reading():
            table = self.file.read(columns=list(columns) if columns else None)
        return _checked_columns(table, self.path)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A page that cannot be decoded (the file was damaged after its footer was read) is CorruptData
        naming the file, like a file that cannot be opened."""
        try:
            yield
        except (OSError, pa.ArrowException) as exc:
            raise CorruptData(f"{self.path}: not a readable parquet file ({one_line(exc)})") from None


def _checked_columns(table: pa.Table, path: Path) -> pa.Table:
    """A table read from a pins file, in the store's types (a file of another tool may hold
    ``large_string`` or an extra column)."""
    if set(table.column_names) <= set(STORE_COLUMNS) and all(pa.types.is_string(t) for t in table.schema.types):
        return table
    if set(STORE_COLUMNS) <= set(table.column_names):
        return checked_table(table, path, sort=False)
    return table.cast(pa.schema([pa.field(name, pa.string()) for name in table.column_names]))


class Piece:
    """A sorted, disjoint range of CIDs of a snapshot. ``key`` names it in the cache."""

    key: Hashable
    rows: int
    min_cid: str | None
    max_cid: str | None

    def aliases(self) -> Mapping[str, str]:
        """``{key: text}`` of the CIDs here spelled other than the standard ways (``pinfs.cids``)."""
        raise NotImplementedError

    def may_hold_aliases(self) -> bool:
        """False when ``aliases`` is known to be empty without reading anything."""
        return True

    def row_groups(self) -> list[RowGroup]:
        raise NotImplementedError

    def read_group(self, index: int, columns: Sequence[str] | None) -> pa.Table:
        raise NotImplementedError

    def read(self, columns: Sequence[str] | None) -> pa.Table:
        raise NotImplementedError


class FilePiece(Piece):
    """A parquet file of pins, opened (through the cache) when first read."""

    def __init__(
        self,
        path: Path,
        cache: StoreCache,
        rows: int,
        min_cid: str | None,
        max_cid: str | None,
        size: int | None = None,
        aliased: bool | None = None,
    ) -> None:
        self.path = path
        self.key = ("file", str(path), size)
        self.rows, self.min_cid, self.max_cid = rows, min_cid, max_cid
        self._size = size
        self._cache = cache
        self._aliased = aliased  # from a data file's name (pinfs.delta); None: not known (older forms)

    def may_hold_aliases(self) -> bool:
        return self._aliased is not False

    def aliases(self) -> Mapping[str, str]:
        """A table's data file lists them in its footer (``pinfs.delta``); a file of an older form is
        read once for them (its ``cid`` column), through the cache."""
        if self._aliased is False:
            return {}
        if self._aliased:
            return _footer_aliases(self.opened(), self.path)

        def load() -> pa.Table:
            found = aliases_of(self.read(["cid"]).column("cid"))
            return pa.table({"key": pa.array(list(found), pa.string()), "text": pa.array(list(found.values()))})

        table = self._cache.get_data(("aliases", self.key), load)
        return dict(zip(table.column("key").to_pylist(), table.column("text").to_pylist(), strict=True))  # type: ignore[union-attr]

    def opened(self) -> OpenParquet:
        def open_it() -> OpenParquet:
            opened = OpenParquet(self.path, self._size, self.rows)
            if opened.groups is None or not opened.sorted_within_groups():
                raise CorruptData(f"{self.path}: rows are not sorted by cid (run 'pinfs maintain')")
            return opened

        return self._cache.open_file(self.key, open_it)

    def row_groups(self) -> list[RowGroup]:
        groups = self.opened().groups
        assert groups is not None
        return groups

    def read_group(self, index: int, columns: Sequence[str] | None) -> pa.Table:
        return self.opened().read_group(index, columns)

    def read(self, columns: Sequence[str] | None) -> pa.Table:
        return self.opened().read(columns)


class MemoryPiece(Piece):
    """A sorted table held in memory."""

    def __init__(self, table: pa.Table, key: Hashable) -> None:
        self.table = table
        self.key = key
        self.rows = table.num_rows
        cids = table.column("cid")
        self.min_cid = cids[0].as_py() if self.rows else None
        self.max_cid = cids[-1].as_py() if self.rows else None
        self._groups = groups_from_table(table)
        self._aliases: dict[str, str] | None = None

    def aliases(self) -> Mapping[str, str]:
        if self._aliases is None:
            self._aliases = aliases_of(self.table.column("cid"))
        return self._aliases

    def row_groups(self) -> list[RowGroup]:
        return self._groups

    def read_group(self, index: int, columns: Sequence[str] | None) -> pa.Table:
        group = self._groups[index]
        table = self.table.slice(group.start, group.length)
        return table.select(list(columns)) if columns else table

    def read(self, columns: Sequence[str] | None) -> pa.Table:
        return self.table.select(list(columns)) if columns else self.table


# -- snapshots --


class PinSnapshot:
    """One immutable version of a backend's pins, sorted by CID, as pieces in order.

    ``identity`` says which version (a ``pinfs.delta.TableVersion``, a ``FileIdentity``, or None for an
    empty backend); ``source`` is ``table``, ``parquet`` (a form written before the table), ``legacy``
    (pins.json) or ``empty``."""

    def __init__(self, identity: Hashable | None, pieces: Sequence[Piece], cache: StoreCache, source: str) -> None:
        self.identity = identity
        self.pieces = [piece for piece in pieces if piece.rows]
        self.source = source
        self._cache = cache
        self._piece_max = [piece.max_cid for piece in self.pieces]
        self._piece_start = list(itertools.accumulate((piece.rows for piece in self.pieces), initial=0))
        self.count = self._piece_start[-1]
        self.column_names: tuple[str, ...] = STORE_COLUMNS

    # -- one CID --

    def lookup(self, cid: str) -> dict[str, str | None] | None:
        """The record for ``cid``, or None. Reads at most one row group."""
        index = bisect.bisect_left(self._piece_max, cid)
        if index == len(self.pieces) or (self.pieces[index].min_cid or "") > cid:
            return None
        piece = self.pieces[index]
        groups = piece.row_groups()
        position = bisect.bisect_left([group.max_cid for group in groups], cid)
        if position == len(groups) or groups[position].min_cid > cid:
            return None
        table = self._group(piece, position, None)
        row = pc.index(table.column("cid"), pa.scalar(cid, pa.string())).as_py()
        if row < 0:
            return None
        return {name: table.column(name)[row].as_py() for name in table.column_names}

    def __contains__(self, cid: str) -> bool:
        return self.lookup(cid) is not None

    def find(self, cid: str) -> dict[str, str | None] | None:
        """The record of the CID ``cid`` spells, whichever way this version spells it (issue #16), or
        None. ``cid`` itself first (one row-group read when it is spelled as stored), then the stored
        alias of its key, then its other standard spelling. Raises InvalidInput for a text that is not
        a CID."""
        forms = standard_forms(cid)
        if cid in forms:
            record = self.lookup(cid)
            if record is not None:
                return record
        alias = self.aliases().get(forms[-1])
        for form in ([alias] if alias is not None else []) + [form for form in forms if form != cid]:
            record = self.lookup(form)
            if record is not None:
                return record
        return None

    def aliases(self) -> Mapping[str, str]:
        """``{key: text}`` of the CIDs this version spells other than the standard ways: from the
        footers of the few data files that hold any (their names say so), usually none."""
        found: dict[str, str] = {}
        for piece in self.pieces:
            if piece.may_hold_aliases():
                found.update(piece.aliases())
        return found

    def records(self, cids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        """The records of those of ``cids`` present. Reads the ``cid`` column of each row group that
        could hold one of them, and every column only of the groups that do: a batch of new pins
        reads ~1/5 of the bytes of the files it touches, and the writer reads those files once more,
        whole, to rewrite them."""
        wanted: dict[tuple[int, int], list[str]] = {}
        group_max: dict[int, list[str]] = {}
        for cid in cids:
            index = bisect.bisect_left(self._piece_max, cid)
            if index == len(self.pieces) or (self.pieces[index].min_cid or "") > cid:
                continue
            if index not in group_max:
                group_max[index] = [group.max_cid for group in self.pieces[index].row_groups()]
            position = bisect.bisect_left(group_max[index], cid)
            if position < len(group_max[index]):
                wanted.setdefault((index, position), []).append(cid)

        def found(item: tuple[tuple[int, int], list[str]]) -> list[dict[str, str | None]]:
            (index, position), group_cids = item
            piece, values = self.pieces[index], pa.array(group_cids, pa.string())
            if not pc.any(pc.is_in(self._group(piece, position, ["cid"]).column("cid"), values)).as_py():
                return []
            table = self._group(piece, position, None)
            return table.filter(pc.is_in(table.column("cid"), values)).to_pylist()

        rows = parallel_map(found, wanted.items()) if len(wanted) > 1 else map(found, wanted.items())
        return {row["cid"]: row for group_rows in rows for row in group_rows}  # type: ignore[misc]

    def _group(self, piece: Piece, index: int, columns: Sequence[str] | None) -> pa.Table:
        key = ("group", piece.key, index, tuple(columns) if columns else None)
        return self._cache.get_data(key, lambda: piece.read_group(index, columns))  # type: ignore[return-value]

    # -- in order --

    def cid_column(self, start: int, stop: int) -> pa.ChunkedArray:
        """CIDs at sorted positions ``start``..``stop`` (exclusive), reading only the row groups needed:
        slices of the ``cid`` columns the read cache holds, so a caller keeping them (the mount's
        listing inodes) copies nothing while the cache keeps them too."""
        chunks: list[pa.Array] = []
        stop = min(stop, self.count)
        position = max(start, 0)
        while position < stop:
            number = bisect.bisect_right(self._piece_start, position) - 1
            piece = self.pieces[number]
            offset = position - self._piece_start[number]
            for index, group in enumerate(piece.row_groups()):
                if group.start + group.length <= offset:
                    continue
                column = self._group(piece, index, ["cid"]).column("cid")
                skip = max(offset - group.start, 0)
                take = min(group.length - skip, stop - position)
                chunks.extend(column.slice(skip, take).chunks)
                position += take
                offset += take
                if position >= stop:
                    break
        return pa.chunked_array(chunks, pa.string())

    def iter_cids(self) -> Iterator[str]:
        for piece in self.pieces:
            for index in range(len(piece.row_groups())):
                yield from self._group(piece, index, ["cid"]).column("cid").to_pylist()

    def cids_with_status(self, status: str) -> pa.ChunkedArray:
        """Sorted CIDs whose status is ``status``; reads only the ``cid`` and ``status`` columns, and
        of a new version only the pieces it does not share with one read before."""
        chunks: list[pa.Array] = []
        for piece in self.pieces:

            def load(piece: Piece = piece) -> pa.ChunkedArray:
                table = piece.read(["cid", "status"])
                return table.filter(pc.equal(table.column("status"), status)).column("cid")

            chunks.extend(self._cache.get_data(("status", piece.key, status), load).chunks)  # type: ignore[union-attr]
        return pa.chunked_array(chunks, pa.string())

    def count_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for piece in self.pieces:
            for status, count in self._piece_counts(piece).items():
                counts[status] = counts.get(status, 0) + count
        return counts

    def _piece_counts(self, piece: Piece) -> dict[str, int]:
        def load() -> pa.Table:
            values = pc.value_counts(piece.read(["status"]).column("status"))
            return pa.table({"status": values.field("values"), "count": values.field("counts")})

        table = self._cache.get_data(("counts", piece.key), load)
        return dict(zip(table.column("status").to_pylist(), table.column("count").to_pylist(), strict=True))  # type: ignore[union-attr]

    def scan(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        """The whole version a piece at a time, not through the cache: for callers that keep only what
        they derive (a million CIDs' status column is ~70 MB, the 30k failed ones ~2 MB)."""
        for piece in self.pieces:
            yield piece.read(columns)

    def iter_records(self, status: str | None = None) -> Iterator[dict[str, str | None]]:
        """Every record in CID order, one row group in memory at a time."""
        for piece in self.pieces:
            for index in range(len(piece.row_groups())):
                table = piece.read_group(index, None)  # not cached: a full scan would flush the cache
                if status is not None:
                    table = table.filter(pc.equal(table.column("status"), status))
                yield from table.to_pylist()

    def table(self) -> pa.Table:
        """The whole version as one table (all columns). Not cached."""
        tables = list(self.scan(list(self.column_names)))
        return pa.concat_tables(tables) if tables else empty_table()

    def windowed_columns(self, names: Sequence[str]) -> Mapping[str, WindowedColumn]:
        """The columns ``names`` of the whole version, read a few pieces at a time as they are sliced
        (``column.slice(start, length)``, in order): what the CAR encoder needs to encode a million
        pins while holding a few files in memory instead of the whole table."""
        window = _PieceWindow(self, list(names))
        return {name: WindowedColumn(window, name) for name in names}


class _PieceWindow:
    """The pieces of a snapshot that the last requested range of rows covers."""

    def __init__(self, snapshot: PinSnapshot, names: list[str]) -> None:
        self._snapshot = snapshot
        self._names = names
        self._starts = snapshot._piece_start
        self._start = 0
        self._table: pa.Table | None = None

    def rows(self, start: int, length: int) -> pa.Table:
        if self._table is None or not self._start <= start <= start + length <= self._start + self._table.num_rows:
            first = bisect.bisect_right(self._starts, start) - 1
            last = bisect.bisect_right(self._starts, max(start + length - 1, start)) - 1
            numbers = range(first, min(last, len(self._starts) - 2) + 1)
            pieces = self._snapshot.pieces
            self._table = pa.concat_tables([pieces[number].read(self._names) for number in numbers])
            self._start = self._starts[first]
        return self._table.slice(start - self._start, length)


@dataclass(frozen=True)
class WindowedColumn:
    """One column of a ``_PieceWindow``: only ``slice`` is offered."""

    window: _PieceWindow
    name: str

    def slice(self, start: int, length: int) -> pa.ChunkedArray:
        return self.window.rows(start, length).column(self.name)


def memory_snapshot(table: pa.Table, cache: StoreCache, identity: Hashable | None, source: str) -> PinSnapshot:
    """A snapshot over a table held in memory (legacy pins.json, an empty backend, a file of another
    tool that is not in CID order)."""
    table = normalize_table(table)
    return PinSnapshot(identity, [MemoryPiece(table, ("memory", identity, source))], cache, source)


def _open_stable(path: Path) -> tuple[FileIdentity, pa.NativeFile]:
    """Open ``path`` and return the identity of exactly the version opened.

    The open file keeps that version readable after another process renames a new file over it. The
    path is stat-ed before and after opening; if it changed in between, we open again. A plain file,
    not a memory map: pages a map touched would count in the mount's RSS for as long as the reader
    lives, while reads through the page cache cost the process only the Arrow buffers it keeps.
    """
    refuse_symlink(path)
    if isinstance(path, S3Path):  # read from the local copy of exactly this version of the object
        info = path.stat()
        return FileIdentity.of(path, info), pa.OSFile(str(local_copy(path, info.etag)), "r")
    for _attempt in range(5):
        before = FileIdentity.of(path)
        opened = pa.OSFile(str(path), "r")
        if FileIdentity.of(path) == before:
            return before, opened
        opened.close()
    raise CorruptData(f"{path}: changed while being opened, five times in a row")


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


def _footer_aliases(opened: OpenParquet, path: Path) -> dict[str, str]:
    """The aliases a data file lists in its footer (``pinfs.delta.ALIASES_KEY``)."""
    from pinfs.delta import ALIASES_KEY

    raw = (opened.file.metadata.metadata or {}).get(ALIASES_KEY.encode())
    try:
        found = json.loads(raw) if raw else {}
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise CorruptData(f"{path}: its name says it lists CIDs spelled other ways, but its footer does not")
    return found


def _declares_cid_order(row_group: pq.RowGroupMetaData, cid_column: int) -> bool:
    sorting = row_group.sorting_columns
    return bool(sorting) and sorting[0].column_index == cid_column and not sorting[0].descending
