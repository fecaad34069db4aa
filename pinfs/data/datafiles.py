"""The data files of one version of a backend's table: read as a snapshot (``table_snapshot``), checked
before a commit carries them into a new version (``check_kept_files``), and which of them a change
rewrites and how (``plan_update``, ``compact``, ``write_files``): the write planning behind
``pinfs.data.store.Transaction``.

What it must not do: commit. It writes new data files only (``DeltaPins.write_file``); the caller
commits them or discards them. Threading: synchronous; the lock of the sound-files cache is its only
shared state.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cachetools
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinfs.data.delta import DataFile, DeltaPins, TableState, file_rows
from pinfs.data.pieces import FilePiece
from pinfs.data.rootfs import S3Path, as_location
from pinfs.data.snapshots import PinSnapshot, StoreCache
from pinfs.data.tables import (
    empty_table,
    merge_records,
    one_line,
    parallel_map,
    split_into_files,
)
from pinfs.errors import CorruptData

if TYPE_CHECKING:
    from pinfs.data.store import PinStore


def table_snapshot(state: TableState, cache: StoreCache) -> PinSnapshot:
    directory = as_location(state.identity.location)
    pieces = [file_piece(directory, data_file, cache) for data_file in state.files]
    return PinSnapshot(state.identity, pieces, cache, "table")


def file_piece(directory: Path, data_file: DataFile, cache: StoreCache) -> FilePiece:
    return FilePiece(
        directory / data_file.path,
        cache,
        data_file.rows,
        data_file.min_cid,
        data_file.max_cid,
        data_file.size,
        aliased=data_file.aliased,
    )


# -- the files a commit keeps --

# Data files found sound, by identity (path, device, inode, size, mtime): a file that changes in place
# (damage, a tool writing over it) gets a new identity and is checked again.
_SOUND_FILES: cachetools.LRUCache = cachetools.LRUCache(maxsize=1 << 16)
_SOUND_FILES_LOCK = threading.Lock()


def check_kept_files(store: PinStore, state: TableState, removed: Sequence[DataFile]) -> None:
    """CorruptData naming the first data file of ``state`` that a commit removing ``removed`` would
    carry into the new version but that is damaged (missing, another size than the log says, or no
    readable parquet footer with the logged row count): a writer refuses to build on it, so nothing
    new depends on it (issue #15, item 6). Each file is read once per identity; after that, a stat.
    Not on S3, where data files are immutable objects and a stat is a request."""
    directory = store.table.directory
    if isinstance(directory, S3Path):
        return
    gone = {data_file.path for data_file in removed}
    for data_file in state.files:
        if data_file.path not in gone:
            _check_data_file(directory / data_file.path, data_file)


def _check_data_file(path: Path, data_file: DataFile) -> None:
    advice = "nothing was written; restore the file, or see 'pinfs migrate --verify-only'"
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise CorruptData(f"{path}: missing, but the table's log names it; {advice}") from None
    if info.st_size != data_file.size:
        raise CorruptData(f"{path}: is {info.st_size} bytes, the table's log says {data_file.size}; {advice}")
    key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    with _SOUND_FILES_LOCK:
        if key in _SOUND_FILES:
            return
    try:
        with pa.OSFile(str(path), "r") as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a bad footer
        raise CorruptData(f"{path}: not a readable parquet file ({one_line(exc)}); {advice}") from None
    if rows != data_file.rows:
        raise CorruptData(f"{path}: holds {rows} rows, the table's log says {data_file.rows}; {advice}")
    with _SOUND_FILES_LOCK:
        _SOUND_FILES[key] = True


@dataclass
class UpdatePlan:
    removed: list[DataFile] = field(default_factory=list)
    added: list[DataFile] = field(default_factory=list)
    delta: int = 0  # change in the number of rows


def layout_is_sound(state: TableState) -> bool:
    """Whether the files' CID ranges are disjoint and in order (always, unless another tool wrote)."""
    ranged = [data_file for data_file in state.files if data_file.rows]
    return all(left.max_cid < right.min_cid for left, right in zip(ranged, ranged[1:], strict=False))  # type: ignore[operator]


def file_for(ranged: Sequence[DataFile], mins: Sequence[str], cid: str) -> int:
    """Which file a CID belongs in: file i holds CIDs from its first one up to the next file's first;
    the first file also holds every CID below its own first one."""
    return max(bisect.bisect_right(mins, cid) - 1, 0) if ranged else 0


def plan_update(
    store: PinStore,
    state: TableState,
    replacements: Mapping[str, Mapping[str, str | None]],
    removals: Sequence[str],
) -> UpdatePlan:
    ranged = [data_file for data_file in state.files if data_file.rows]
    mins = [data_file.min_cid for data_file in ranged if data_file.min_cid is not None]
    by_file: dict[int, list[str]] = {}
    for cid in dict.fromkeys([*removals, *replacements]):
        by_file.setdefault(file_for(ranged, mins, cid), []).append(cid)
    plan = UpdatePlan()
    if not ranged:  # an empty table: its empty file(s) go, whatever is added replaces them
        plan.removed = list(state.files)
        table = patched(empty_table(), replacements, removals)
        plan.added = write_files(store.table, files_of(table))
        plan.delta = table.num_rows
        return plan
    removal_set = set(removals)
    touched = sorted(by_file)

    def rewritten(number: int) -> pa.Table:
        cids = by_file[number]
        table = file_table(store, ranged[number])
        return patched(
            table,
            {cid: replacements[cid] for cid in cids if cid in replacements},
            [cid for cid in cids if cid in removal_set],
        )

    new_tables = dict(zip(touched, parallel_map(rewritten, touched), strict=True))
    parts: list[DataFile | pa.Table] = []
    for number, data_file in enumerate(ranged):
        if number in new_tables:
            parts.extend(split_into_files(new_tables[number], file_rows()))
            plan.removed.append(data_file)
        else:
            parts.append(data_file)
    parts = compact(store, parts, plan.removed)
    new = [part for part in parts if isinstance(part, pa.Table)]
    if not parts:
        new = [empty_table()]  # the table stays with one empty file, which every later write removes
    plan.added = write_files(store.table, new)
    plan.delta = sum(table.num_rows for table in new) - sum(data_file.rows for data_file in plan.removed)
    return plan


def compact(store: PinStore, parts: list[DataFile | pa.Table], removed: list[DataFile]) -> list[DataFile | pa.Table]:
    """Merge every rewritten piece smaller than a quarter of the target into a neighbour (which is then
    rewritten too), so removals do not leave a trail of tiny files."""
    floor = file_rows() // 4
    index = 0
    while index < len(parts):
        part = parts[index]
        if not isinstance(part, pa.Table) or part.num_rows >= floor or len(parts) == 1:
            index += 1
            continue
        low = index if index + 1 < len(parts) else index - 1
        tables = []
        for neighbour in parts[low : low + 2]:
            if isinstance(neighbour, DataFile):
                removed.append(neighbour)
                tables.append(file_table(store, neighbour))
            else:
                tables.append(neighbour)
        parts[low : low + 2] = split_into_files(pa.concat_tables(tables), file_rows())
        index = low
    return parts


def patched(table: pa.Table, replacements: Mapping[str, Mapping[str, str | None]], removals: Sequence[str]) -> pa.Table:
    if removals:
        table = table.filter(pc.invert(pc.is_in(table.column("cid"), pa.array(list(removals), pa.string()))))
    return merge_records(table, replacements)


def file_table(store: PinStore, data_file: DataFile) -> pa.Table:
    """A data file read whole, through the cache: files never change, so a writer that rewrites the
    same range again (one pin after another) reads nothing from disk."""
    piece = file_piece(store.table.directory, data_file, store.cache)
    return store.cache.get_data(("whole", piece.key), lambda: piece.read(None))  # type: ignore[return-value]


def files_of(table: pa.Table) -> list[pa.Table]:
    """A whole table cut into data files; an empty table is one empty file (see ``pinfs.data.delta``: every
    write must remove a file, so that two first writers of an empty table conflict)."""
    return split_into_files(table, file_rows(), exact=True) or [empty_table()]


def write_files(table: DeltaPins, tables: Sequence[pa.Table]) -> list[DataFile]:
    """New data files for ``tables`` (written on a few threads; Arrow works without the GIL)."""
    written: list[DataFile] = []
    try:
        for data_file in parallel_map(table.write_file, tables):
            written.append(data_file)
    except BaseException:
        table.discard(written)
        raise
    return written


# Up to this many CIDs, a write looks its records up in the files it will rewrite (read whole).
_WHOLE_FILES_MAX_CIDS = 64


def rows_at(store: PinStore, state: TableState, cids: Sequence[str]) -> dict[str, dict[str, str | None]]:
    """The records of ``cids`` present in version ``state``. A few CIDs: their files are read whole
    (through the cache), as the rewrite that follows needs them anyway. A batch: only the row groups
    that would hold them (``PinSnapshot.records``), since its files, read whole, would not all stay in
    the read cache until the rewrite reads them again (62 files of 5.5 MB in a 1M-pin backend)."""
    if not cids:
        return {}
    ranged = [data_file for data_file in state.files if data_file.rows]
    if not ranged:
        return {}
    if not layout_is_sound(state):
        table = table_snapshot(state, store.cache).table()
    elif len(cids) > _WHOLE_FILES_MAX_CIDS:
        return table_snapshot(state, store.cache).records(cids)
    else:
        mins = [data_file.min_cid for data_file in ranged if data_file.min_cid is not None]
        numbers = sorted({file_for(ranged, mins, cid) for cid in cids})
        tables = [file_table(store, ranged[number]) for number in numbers]
        table = pa.concat_tables(tables)
    wanted = pa.array(list(cids), pa.string())
    return {row["cid"]: row for row in table.filter(pc.is_in(table.column("cid"), wanted)).to_pylist()}
