"""Snapshots: one immutable version of a backend's pins, read through a bounded cache.

A ``PinSnapshot`` is a sequence of *pieces*, each a sorted, disjoint range of CIDs: the data files of
one version of the Delta table (``pinfs.data.delta``; their row counts and CID ranges come from the log),
the one file or the shards of the forms written before the table (read until the first write converts
them), or a table in memory (a legacy ``pins.json``). A single-CID lookup is two binary searches: the
piece whose range covers the CID, then the one row group of that piece whose footer statistics cover
it. Only that row group is read, through ``StoreCache`` (cachetools, bounded in bytes).

Data files never change once written (a write adds new files and removes old ones from the log), so
what is cached about a file (its open reader, its row groups, its status counts) is keyed by the file
and serves every version that still holds it: after a pin, only the one rewritten file is read again.
A file is opened when first needed and its reader is kept by ``StoreCache`` (a bounded number of open
files), which keeps that version readable even after vacuum removes the file from the directory.

The pieces themselves (data files, tables in memory) are in ``pinfs.data.pieces``.

Threading: everything here is synchronous and may block on disk; the mount calls it from worker
threads. ``StoreCache`` guards its maps with a lock, and each open parquet file has its own.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import cachetools
import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.cids import standard_forms
from pinfs.data.pieces import MemoryPiece, MergedPiece, OpenParquet, Piece, with_cid
from pinfs.data.schema import STATUSES, STORE_COLUMNS
from pinfs.data.tables import (
    empty_table,
    normalize_table,
    parallel_map,
)

DEFAULT_CACHE_BYTES = 256 << 20
DEFAULT_CACHE_ENTRIES = 64  # snapshots
DEFAULT_OPEN_FILES = 64  # open data-file readers (each holds a descriptor and its footer)


# -- cache --


# What a cached column costs beyond its buffers: each column read from parquet also holds its C++
# objects and allocator rounding, ~1.3 KB (measured: a one-row table of eight columns holds ~10.7 KB of
# RSS against 206 bytes of buffers). Counting the buffers alone let a cache of small tables (a tiny
# backend's versions, row groups of a few rows) hold tens of times its bound.
COLUMN_OVERHEAD_BYTES = 1536


def held_bytes(value: object) -> int:
    """What holding ``value`` (a table, a column) costs in memory, as the read cache counts it: the
    sizes of the buffers it keeps alive (``get_total_buffer_size``). Not ``nbytes``: that walks every
    string's offsets to count only the bytes referenced, and a cold lookup counted each row group it
    read three times (~0.25 ms of its ~4 ms, profiled at 1M pins; cold ``cat`` in a mount 5.1 -> 4.4 ms).
    For the values cached, fresh reads and never slices of bigger ones, the two figures agree."""
    if isinstance(value, pa.Table):
        return value.get_total_buffer_size() + COLUMN_OVERHEAD_BYTES * max(value.num_columns, 1)
    if isinstance(value, pa.ChunkedArray | pa.Array):
        return value.get_total_buffer_size() + COLUMN_OVERHEAD_BYTES
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
        self._lock = threading.RLock()
        self.max_bytes = max_bytes
        self._data: cachetools.LRUCache = self._data_cache(max_bytes)
        self._snapshots: cachetools.LRUCache = cachetools.LRUCache(maxsize=max_entries)
        self._files: cachetools.LRUCache = cachetools.LRUCache(maxsize=max_open_files)
        self.versions: dict[str, object] = {}  # table location -> newest state seen (pinfs.data.store)

    @staticmethod
    def _data_cache(max_bytes: int) -> cachetools.LRUCache:
        return cachetools.LRUCache(maxsize=max_bytes, getsizeof=held_bytes)

    def get_data(self, key: Hashable, load: Callable[[], object]) -> object:
        with self._lock:
            found = self._data.get(key)
        if found is not None:
            return found
        value = load()
        if held_bytes(value) <= self.max_bytes:
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

    def limit(self, max_bytes: int) -> None:
        """Bound the row groups and derived columns to ``max_bytes`` from now on (what is held is dropped)."""
        with self._lock:
            self.max_bytes = max_bytes
            self._data = self._data_cache(max_bytes)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._snapshots.clear()
            self._files.clear()
            self.versions.clear()


# The process's cache: every ``PinStore`` made without one reads through it. The mount bounds it with
# ``--cache-mb`` (``StoreCache.limit``), so that the operations its control files run count too.
DEFAULT_CACHE = StoreCache()


# -- snapshots --


class PinSnapshot:
    """One immutable version of a backend's pins, sorted by CID, as pieces in order.

    ``identity`` says which version (a ``pinfs.data.delta.TableVersion``, a ``FileIdentity``, or None for an
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
        table = self.group_holding(cid)
        if table is None:
            return None
        row = pc.index(table.column("cid"), pa.scalar(cid, pa.string())).as_py()
        if row < 0:
            return None
        return {name: table.column(name)[row].as_py() for name in table.column_names}

    def group_holding(self, cid: str) -> pa.Table | None:
        """The row group (every column, through the read cache) whose CID range holds ``cid`` spelled
        as stored, or None: the CID and its neighbours in CID order."""
        index = bisect.bisect_left(self._piece_max, cid)
        if index == len(self.pieces) or (self.pieces[index].min_cid or "") > cid:
            return None
        piece = self.pieces[index]
        groups = piece.row_groups()
        position = bisect.bisect_left([group.max_cid for group in groups], cid)
        if position == len(groups) or groups[position].min_cid > cid:
            return None
        return self._group(piece, position, None)

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
        reads ~1/5 of the bytes of the files it would hold them. One task per piece, on a few threads."""
        wanted: dict[int, dict[int, list[str]]] = {}  # piece -> row group -> CIDs
        group_max: dict[int, list[str]] = {}
        for cid in cids:
            index = bisect.bisect_left(self._piece_max, cid)
            if index == len(self.pieces) or (self.pieces[index].min_cid or "") > cid:
                continue
            if index not in group_max:
                group_max[index] = [group.max_cid for group in self.pieces[index].row_groups()]
            position = bisect.bisect_left(group_max[index], cid)
            if position < len(group_max[index]):
                wanted.setdefault(index, {}).setdefault(position, []).append(cid)

        def found(item: tuple[int, dict[int, list[str]]]) -> list[dict[str, str | None]]:
            index, groups = item
            piece, rows = self.pieces[index], []
            for position, group_cids in groups.items():
                values = pa.array(group_cids, pa.string())
                if pc.any(pc.is_in(self._group(piece, position, ["cid"]).column("cid"), values)).as_py():
                    table = self._group(piece, position, None)
                    rows.extend(table.filter(pc.is_in(table.column("cid"), values)).to_pylist())
            return rows

        found_rows = parallel_map(found, wanted.items()) if len(wanted) > 1 else map(found, wanted.items())
        return {row["cid"]: row for piece_rows in found_rows for row in piece_rows}  # type: ignore[misc]

    def _group(self, piece: Piece, index: int, columns: Sequence[str] | None) -> pa.Table:
        wanted = tuple(columns) if columns else None
        if isinstance(piece, MergedPiece):
            # The file's group from the cache, the inserted rows merged in, and kept merged too: a
            # cold lookup in the mount reads its group twice (the record, then the group kept for its
            # neighbours, ``PinTree.kept_record``), and each merge took ~1 ms after 10,000 single pins.
            def merge() -> pa.Table:
                return piece.merge_group(index, self._group(piece.base, index, with_cid(columns)), columns)

            return self._cache.get_data(("group", piece.group_key(index), wanted), merge)  # type: ignore[return-value]
        key = ("group", piece.key, index, wanted)
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
        of a new version only the pieces it does not share with one read before. The pieces are read
        side by side (``parallel_map``: decoding runs without the GIL; a first ``ls by-status/failed``
        of 1M pins read for ~0.22 s one at a time, ~0.16 s so)."""

        columns = parallel_map(lambda piece: self._status_cids(piece, status), self.pieces)
        return pa.chunked_array([chunk for column in columns for chunk in column.chunks], pa.string())

    def status_column(self, status: str) -> StatusColumn:
        """As ``cids_with_status``, by position, holding none of the CIDs: each piece's share is read
        through the read cache when asked for (``StatusColumn.slice``). Reads every piece once now, to
        count them (side by side, as ``cids_with_status``)."""
        counts = parallel_map(lambda piece: len(self._status_cids(piece, status)), self.pieces)
        return StatusColumn(self, status, counts)

    def _status_cids(self, piece: Piece, status: str) -> pa.ChunkedArray:
        def load() -> pa.ChunkedArray:
            table = piece.read(["cid", "status"])
            return table.filter(pc.equal(table.column("status"), status)).column("cid")

        return self._cache.get_data(("status", piece.key, status), load)  # type: ignore[return-value]

    def count_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for piece_counts in parallel_map(self._piece_counts, self.pieces):
            for status, count in piece_counts.items():
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


class StatusColumn:
    """The sorted CIDs of one status in one version (``PinSnapshot.status_column``), by position.

    Only the count of each piece is held; a slice reads the pieces it spans through the read cache
    (a piece's share: one file's ``cid`` and ``status`` columns, filtered). Issue #12: a listing of
    ``by-status/stored`` at 10M pins held every such CID for as long as the kernel held an entry of it
    (~6.7M names, ~420 MB); now the read cache's bound applies."""

    def __init__(self, snapshot: PinSnapshot, status: str, counts: Sequence[int]) -> None:
        self._snapshot = snapshot
        self._status = status
        self._starts = list(itertools.accumulate(counts, initial=0))
        self.count = self._starts[-1]

    def __len__(self) -> int:
        return self.count

    def slice(self, start: int, stop: int) -> pa.ChunkedArray:
        """The CIDs at positions ``start``..``stop`` (exclusive; shorter at the end). Blocking."""
        chunks: list[pa.Array] = []
        position, stop = max(start, 0), min(stop, self.count)
        while position < stop:
            # The last piece starting at or before ``position``: never an empty one, since the next
            # piece starts after ``position``.
            number = bisect.bisect_right(self._starts, position) - 1
            column = self._snapshot._status_cids(self._snapshot.pieces[number], self._status)
            offset = position - self._starts[number]
            take = min(len(column) - offset, stop - position)
            chunks.extend(column.slice(offset, take).chunks)
            position += take
        return pa.chunked_array(chunks, pa.string())
