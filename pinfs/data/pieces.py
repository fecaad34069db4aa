"""The pieces a snapshot (``pinfs.data.snapshots``) is made of, each a sorted, disjoint range of CIDs: a
parquet data file read by row group through the ``StoreCache`` (``FilePiece``, over an ``OpenParquet``
reader checked against what the table's log says of it), such a file with the insert file's rows of
its range merged in (``MergedPiece``), or a table in memory (``MemoryPiece``); and
``FileIdentity``, what makes two reads of a path the same version of a file.

Threading: synchronous, may block on disk; each open parquet file has its own lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinfs.data.cids import aliases_of
from pinfs.data.fsutil import refuse_symlink
from pinfs.data.rootfs import S3Path, S3Stat, local_copy, never_rewritten, open_object
from pinfs.data.schema import STORE_COLUMNS
from pinfs.data.tables import (
    RowGroup,
    check_schema,
    checked_table,
    groups_from_table,
    merge_sorted,
    one_line,
    open_parquet,
    range_bounds,
)
from pinfs.errors import CorruptData

if TYPE_CHECKING:
    from pinfs.data.snapshots import StoreCache


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
            self.file = open_parquet(opened, ranged=not isinstance(opened, pa.OSFile))
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
        """``{key: text}`` of the CIDs here spelled other than the standard ways (``pinfs.data.cids``)."""
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
        self._aliased = aliased  # from a data file's name (pinfs.data.delta); None: not known (older forms)

    def may_hold_aliases(self) -> bool:
        return self._aliased is not False

    def aliases(self) -> Mapping[str, str]:
        """A table's data file lists them in its footer (``pinfs.data.delta``); a file of an older form is
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


class MergedPiece(Piece):
    """A range file with the insert file's rows of its range merged in, in CID order (issue #12: the
    insert file, ``pinfs.data.delta``). ``extra`` is sorted and holds none of the file's CIDs; each row
    group of the file takes the extra rows from its first CID up to the next group's first (the first
    group also those below it), so groups stay disjoint and in order. ``key`` names the file and the
    extra rows' content: a write to the insert file changes the key of the pieces whose rows it changed,
    and only theirs. Row groups are cached under the file's own keys and merged when read
    (``PinSnapshot._group``), so the cache serves them whatever the insert file does."""

    def __init__(self, base: Piece, extra: pa.Table, *, aliased: bool = True) -> None:
        self.base = base
        self.extra = extra
        self._aliased = aliased  # False: the insert file's name says it holds no alias (``pinfs.data.delta``)
        self._key: Hashable | None = None
        self.rows = base.rows + extra.num_rows
        cids = extra.column("cid")
        first, last = cids[0].as_py(), cids[-1].as_py()
        self.min_cid = min(base.min_cid, first) if base.min_cid is not None else first
        self.max_cid = max(base.max_cid, last) if base.max_cid is not None else last
        self._groups: list[RowGroup] | None = None
        self._bounds: list[int] = []
        self._group_keys: dict[int, Hashable] = {}

    def may_hold_aliases(self) -> bool:
        return self.base.may_hold_aliases() or bool(self._extra_aliases())

    def aliases(self) -> Mapping[str, str]:
        return {**self.base.aliases(), **self._extra_aliases()}

    def _extra_aliases(self) -> dict[str, str]:
        return aliases_of(self.extra.column("cid")) if self._aliased else {}

    def row_groups(self) -> list[RowGroup]:
        if self._groups is None:
            base_groups = self.base.row_groups()
            cids = self.extra.column("cid")
            bounds = range_bounds(self.extra, [group.min_cid for group in base_groups])
            groups, start = [], 0
            for index, group in enumerate(base_groups):
                low, high = bounds[index], bounds[index + 1]
                length = group.length + high - low
                first = min(group.min_cid, cids[low].as_py()) if high > low else group.min_cid
                last = max(group.max_cid, cids[high - 1].as_py()) if high > low else group.max_cid
                groups.append(RowGroup(index, start, length, first, last))
                start += length
            self._bounds, self._groups = bounds, groups
        return self._groups

    @property
    def key(self) -> Hashable:  # type: ignore[override]
        """Made when first asked (a digest of the extra rows): most snapshots never need it."""
        if self._key is None:
            self._key = ("merged", self.base.key, fingerprint(self.extra))
        return self._key

    def group_key(self, index: int) -> Hashable:
        """The read cache's key for row group ``index`` as merged: the file's group and a digest of the
        extra rows it takes, so that a write to the insert file changes the keys of only the groups
        whose rows it changed. Kept per group: a lookup asks for it at every read."""
        key = self._group_keys.get(index)
        if key is None:
            key = self._group_keys[index] = ("merged", self.base.key, index, fingerprint(self._extra_of(index)))
        return key

    def merge_group(self, index: int, base_rows: pa.Table, columns: Sequence[str] | None) -> pa.Table:
        """Row group ``index`` from the file's own rows of it (``base_rows``, read with ``cid``, e.g.
        through the cache under the file's key, which no write to the insert file changes)."""
        return _merged(base_rows, self._extra_of(index), columns)

    def _extra_of(self, index: int) -> pa.Table:
        """The extra rows row group ``index`` takes."""
        self.row_groups()
        low, high = self._bounds[index], self._bounds[index + 1]
        return self.extra.slice(low, high - low)

    def read_group(self, index: int, columns: Sequence[str] | None) -> pa.Table:
        return self.merge_group(index, self.base.read_group(index, with_cid(columns)), columns)

    def read(self, columns: Sequence[str] | None) -> pa.Table:
        return _merged(self.base.read(with_cid(columns)), self.extra, columns)


def with_cid(columns: Sequence[str] | None) -> list[str] | None:
    """The columns to read for a merge, which orders rows by ``cid``."""
    return None if columns is None else list(dict.fromkeys(["cid", *columns]))


def _merged(table: pa.Table, extra: pa.Table, columns: Sequence[str] | None) -> pa.Table:
    """Rows of ``table`` and ``extra`` (two sorted tables without a CID in common) in CID order, with
    ``columns`` (all when None)."""
    table = merge_sorted(table, extra.select(table.column_names))
    return table.select(list(columns)) if columns is not None else table


def fingerprint(table: pa.Table) -> bytes:
    """A digest of a table's content (its Arrow IPC bytes): equal digests mean equal rows."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.blake2b(sink.getvalue(), digest_size=16).digest()


def _open_stable(path: Path) -> tuple[FileIdentity, pa.NativeFile]:
    """Open ``path`` and return the identity of exactly the version opened.

    The open file keeps that version readable after another process renames a new file over it. The
    path is stat-ed before and after opening; if it changed in between, we open again. A plain file,
    not a memory map: pages a map touched would count in the mount's RSS for as long as the reader
    lives, while reads through the page cache cost the process only the Arrow buffers it keeps.
    """
    refuse_symlink(path)
    if isinstance(path, S3Path):  # read exactly this version of the object
        info = path.stat()
        if never_rewritten(path):  # by ranges until the read cache has it (a cold lookup reads ~100 KB)
            return FileIdentity.of(path, info), open_object(path, info)
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
    """The aliases a data file lists in its footer (``pinfs.data.delta.ALIASES_KEY``)."""
    from pinfs.data.delta import ALIASES_KEY

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
