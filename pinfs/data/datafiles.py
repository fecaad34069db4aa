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
import math
import os
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cachetools
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinfs.data.delta import DataFile, DeltaPins, TableState, file_rows, small_insert_rows
from pinfs.data.pieces import FilePiece, MemoryPiece, MergedPiece, Piece, fingerprint
from pinfs.data.rootfs import S3Path, as_location
from pinfs.data.snapshots import PinSnapshot, StoreCache
from pinfs.data.tables import (
    empty_table,
    merge_records,
    merge_sorted,
    one_line,
    parallel_map,
    range_bounds,
    sort_by_cid,
    split_into_files,
)
from pinfs.errors import CorruptData

if TYPE_CHECKING:
    from pinfs.data.store import PinStore


def table_snapshot(state: TableState, cache: StoreCache) -> PinSnapshot:
    """Version ``state`` as a snapshot (made once per version, then kept by ``cache``): its range files
    in order, with the insert file's rows merged into the ranges they belong to (``MergedPiece``), so
    readers see one sorted sequence of pieces."""
    return cache.get_snapshot(state.identity, lambda: _new_snapshot(state, cache))


def _new_snapshot(state: TableState, cache: StoreCache) -> PinSnapshot:
    directory = as_location(state.identity.location)
    pieces: list[Piece] = [file_piece(directory, data_file, cache) for data_file in state.range_files]
    inserts = insert_table(directory, state, cache)
    if inserts.num_rows:
        pieces = with_inserts(pieces, inserts, aliased=any(data_file.aliased for data_file in state.insert_files))
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


def insert_table(directory: Path, state: TableState, cache: StoreCache) -> pa.Table:
    """The rows of version ``state``'s insert files, sorted (empty when it has none)."""
    return rows_of_files(directory, state.insert_files, cache)


def rows_of_files(directory: Path, files: Sequence[DataFile], cache: StoreCache) -> pa.Table:
    """The rows of ``files`` (of disjoint CIDs), sorted."""
    tables = [whole_file(directory, data_file, cache) for data_file in files if data_file.rows]
    if len(tables) == 1:
        return tables[0]
    return sort_by_cid(pa.concat_tables(tables)) if tables else empty_table()


def with_inserts(pieces: Sequence[Piece], inserts: pa.Table, *, aliased: bool = True) -> list[Piece]:
    """``pieces`` (range files in order) with the rows of ``inserts`` merged into the ranges that hold
    them (``file_for``), or the inserts alone when no range file has rows. ``aliased`` False: no row of
    ``inserts`` spells its CID other than the standard ways."""
    ranged = [piece for piece in pieces if piece.rows]
    if not ranged:
        return [MemoryPiece(inserts, ("inserts", fingerprint(inserts)))]
    bounds = range_bounds(inserts, [piece.min_cid or "" for piece in ranged])
    merged: list[Piece] = []
    for number, piece in enumerate(ranged):
        low, high = bounds[number], bounds[number + 1]
        merged.append(MergedPiece(piece, inserts.slice(low, high - low), aliased=aliased) if high > low else piece)
    return merged


# -- the files a commit keeps --

# Data files found sound, by identity (path, device, inode, size, mtime): a file that changes in place
# (damage, a tool writing over it) gets a new identity and is checked again.
_SOUND_FILES: cachetools.LRUCache = cachetools.LRUCache(maxsize=1 << 16)
_SOUND_FILES_LOCK = threading.Lock()
# A file found sound is not looked at again (even a stat) for this long: a table of 10M pins has 612
# files, whose stats took ~4 ms of each pin. A writer thus refuses to build on a file damaged more than
# this long ago, which is what issue #15 asks (nothing new depends on a file known to be damaged).
RECHECK_SECONDS = 1.0
_CHECKED_AT: dict[str, float] = {}  # path -> time.monotonic() of its last check (dict operations: atomic)
CHECKED_AT_ENTRIES = 1 << 16


def check_kept_files(store: PinStore, state: TableState, removed: Sequence[DataFile]) -> None:
    """CorruptData naming the first data file of ``state`` that a commit removing ``removed`` would
    carry into the new version but that is damaged (missing, another size than the log says, or no
    readable parquet footer with the logged row count): a writer refuses to build on it, so nothing
    new depends on it (issue #15, item 6). Each file is read once per identity; after that, a stat at
    most every ``RECHECK_SECONDS``. Not on S3, where data files are immutable objects and a stat is a request."""
    directory = store.table.directory
    if isinstance(directory, S3Path):
        return
    gone = {data_file.path for data_file in removed}
    prefix = f"{directory}{os.sep}"  # joined as text: this runs at every commit, for every file kept
    now = time.monotonic()
    if len(_CHECKED_AT) > CHECKED_AT_ENTRIES:  # a long-running mount's files come and go
        _CHECKED_AT.clear()
    for data_file in state.files:
        path = prefix + data_file.path
        if data_file.path in gone or now - _CHECKED_AT.get(path, -math.inf) < RECHECK_SECONDS:
            continue
        _check_data_file(path, data_file)
        _CHECKED_AT[path] = now


def _check_data_file(path: str, data_file: DataFile) -> None:
    advice = "nothing was written; restore the file, or see 'pinfs migrate --verify-only'"
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise CorruptData(f"{path}: missing, but the table's log names it; {advice}") from None
    if info.st_size != data_file.size:
        raise CorruptData(f"{path}: is {info.st_size} bytes, the table's log says {data_file.size}; {advice}")
    key = (path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    with _SOUND_FILES_LOCK:
        if key in _SOUND_FILES:
            return
    try:
        with pa.OSFile(path, "r") as handle:
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
    """Whether the range files' CID ranges are disjoint and in order (always, unless another tool wrote)."""
    ranged = [data_file for data_file in state.range_files if data_file.rows]
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
    present: Collection[str],
) -> UpdatePlan:
    """New files for a change of version ``state`` (``present``: which of its CIDs the table holds).
    CIDs held by a range file are changed there; new CIDs, and those the insert file holds, in the
    insert file, if the table has one (see ``pinfs.data.delta``)."""
    plan = UpdatePlan()
    changed = list(dict.fromkeys([*removals, *replacements]))
    try:
        if state.insert_files:
            holders = _insert_holders(store, state, changed)
            inserted = set().union(*holders.values())
            to_inserts = [cid for cid in changed if cid in inserted or (cid not in present and cid in replacements)]
            if to_inserts:
                _plan_inserts(store, state, holders, to_inserts, replacements, removals, plan)
            changed = [cid for cid in changed if cid in present and cid not in inserted]
            if not changed:
                return plan
        _plan_ranges(store, state, changed, replacements, removals, plan)
    except BaseException:
        store.table.discard(plan.added)
        raise
    return plan


def held_by(table: pa.Table, cids: Sequence[str]) -> set[str]:
    """Which of ``cids`` ``table`` holds."""
    column = table.column("cid")
    return set(column.filter(pc.is_in(column, pa.array(list(cids), pa.string()))).to_pylist()) if cids else set()


def _insert_holders(store: PinStore, state: TableState, cids: Sequence[str]) -> dict[DataFile, set[str]]:
    """Which of ``cids`` each insert file of ``state`` holds (those holding any)."""
    holders: dict[DataFile, set[str]] = {}
    for data_file in state.insert_files:
        if data_file.rows and (held := held_by(file_table(store, data_file), cids)):
            holders[data_file] = held
    return holders


def _plan_inserts(
    store: PinStore,
    state: TableState,
    holders: Mapping[DataFile, set[str]],
    cids: Sequence[str],
    replacements: Mapping[str, Mapping[str, str | None]],
    removals: Sequence[str],
    plan: UpdatePlan,
) -> None:
    """The insert files changed for ``cids`` (new CIDs, or CIDs they hold): each bulk file holding some
    of them rewritten, and the small insert file with the rest, which becomes a bulk file when it grows
    past ``small_insert_rows()`` (an empty insert file then takes its place)."""
    chosen = set(cids)
    for data_file, held in holders.items():
        if data_file.is_bulk:
            _rewrite_insert_file(store, [data_file], held, replacements, removals, plan)
            chosen -= held
    if chosen:
        _rewrite_insert_file(store, state.small_insert_files, chosen, replacements, removals, plan)


def _rewrite_insert_file(
    store: PinStore,
    files: Sequence[DataFile],
    cids: set[str],
    replacements: Mapping[str, Mapping[str, str | None]],
    removals: Sequence[str],
    plan: UpdatePlan,
) -> None:
    """``files`` (one bulk file, or the small insert file) replaced by their rows with the change to
    ``cids``. Removing the small insert file is what makes two writers of one new CID conflict."""
    before = rows_of_files(store.table.directory, files, store.cache)
    table = patched(
        before,
        {cid: record for cid, record in replacements.items() if cid in cids},
        [cid for cid in removals if cid in cids],
    )
    plan.removed.extend(files)
    plan.delta += table.num_rows - before.num_rows
    bulk = any(data_file.is_bulk for data_file in files)
    if not bulk and table.num_rows > small_insert_rows():
        plan.added.append(kept_as_written(store, store.table.write_file(table, bulk=True), table))
        table = empty_table()
    if table.num_rows or not bulk:
        plan.added.append(kept_as_written(store, store.table.write_file(table, insert=True, bulk=bulk), table))


def kept_as_written(store: PinStore, data_file: DataFile, table: pa.Table) -> DataFile:
    """``data_file``, just written from ``table``, which the read cache keeps as the file read whole: the
    next write of the same file (the insert file, at every pin of a new CID) and the mount's diff of the
    version read nothing from disk. A file whose commit does not happen is never asked for again."""
    piece = file_piece(store.table.directory, data_file, store.cache)
    # In one chunk per column, as read from the file: the cache sizes what it keeps by ``nbytes``, which
    # walks a table made of many slices (~0.5 ms for a pin's insert file).
    store.cache.get_data(_whole_key(piece), table.combine_chunks)
    return data_file


def _plan_ranges(
    store: PinStore,
    state: TableState,
    cids: Sequence[str],
    replacements: Mapping[str, Mapping[str, str | None]],
    removals: Sequence[str],
    plan: UpdatePlan,
) -> None:
    """The range files holding ``cids`` rewritten with their change (split or merged as they grew or
    shrank); in a table without an insert file, new CIDs go into the file of their range too."""
    files = state.range_files
    ranged = [data_file for data_file in files if data_file.rows]
    if not ranged:  # an empty table of an older release: its empty file(s) go, whatever is added replaces them
        table = patched(empty_table(), replacements, removals)
        plan.removed.extend(files)
        plan.added.extend(write_files(store.table, files_of(table)))
        plan.delta += table.num_rows
        return
    mins = [data_file.min_cid for data_file in ranged if data_file.min_cid is not None]
    by_file: dict[int, list[str]] = {}
    for cid in cids:
        by_file.setdefault(file_for(ranged, mins, cid), []).append(cid)
    removal_set = set(removals)
    touched = sorted(by_file)

    def rewritten(number: int) -> pa.Table:
        chosen = by_file[number]
        return patched(
            file_table(store, ranged[number]),
            {cid: replacements[cid] for cid in chosen if cid in replacements},
            [cid for cid in chosen if cid in removal_set],
        )

    new_tables = dict(zip(touched, parallel_map(rewritten, touched), strict=True))
    removed: list[DataFile] = []
    parts: list[DataFile | pa.Table] = []
    for number, data_file in enumerate(ranged):
        if number in new_tables:
            parts.extend(split_into_files(new_tables[number], file_rows()))
            removed.append(data_file)
        else:
            parts.append(data_file)
    parts = compact(store, parts, removed)
    new = [part for part in parts if isinstance(part, pa.Table)]
    if not parts and not state.insert_files:
        new = [empty_table()]  # an older table stays with one empty file, which every later write removes
    plan.removed.extend(removed)
    written = write_files(store.table, new)
    plan.added.extend(kept_as_written(store, data_file, table) for data_file, table in zip(written, new, strict=True))
    plan.delta += sum(table.num_rows for table in new) - sum(data_file.rows for data_file in removed)


def merged_sources(state: TableState, *, include_small: bool) -> list[DataFile]:
    """The insert files a merge moves into the ranges: the bulk files, and with ``include_small`` (or
    in a table whose ranges hold nothing yet) the small insert file too."""
    ranged = any(data_file.rows for data_file in state.range_files)
    return state.insert_files if include_small or not ranged else state.bulk_files


def plan_merge(store: PinStore, state: TableState, max_files: int | None, *, include_small: bool = False) -> UpdatePlan:
    """New files for moving the rows of the insert files (``merged_sources``) into the range files of
    their ranges: into at most ``max_files`` of them (those that take the most rows first; all when
    None). The rows of the other ranges stay in a new bulk file. Without ``include_small`` the small
    insert file is left alone, so that pins of new CIDs (which rewrite it) never conflict with a merge."""
    sources = merged_sources(state, include_small=include_small)
    inserts = rows_of_files(store.table.directory, sources, store.cache)
    plan = UpdatePlan(removed=[*sources])
    ranged = [data_file for data_file in state.range_files if data_file.rows]
    small_removed = any(not data_file.is_bulk for data_file in sources)
    try:
        if not ranged:
            plan.removed.extend(state.range_files)
            plan.added = write_new_table(store.table, inserts)
            return plan
        bounds = range_bounds(inserts, [data_file.min_cid or "" for data_file in ranged])
        takes = {number: bounds[number + 1] - bounds[number] for number in range(len(ranged))}
        chosen = sorted(number for number in takes if takes[number])
        if max_files is not None:
            chosen = sorted(sorted(chosen, key=lambda number: -takes[number])[:max_files])
        parts: list[DataFile | pa.Table] = []
        left: list[pa.Table] = []
        for number, data_file in enumerate(ranged):
            rows = inserts.slice(bounds[number], takes[number])
            if number in chosen:
                parts.extend(split_into_files(merge_sorted(file_table(store, data_file), rows), file_rows()))
                plan.removed.append(data_file)
            else:
                parts.append(data_file)
                left.append(rows)
        parts = compact(store, parts, plan.removed)
        plan.added = write_files(store.table, [part for part in parts if isinstance(part, pa.Table)])
        remaining = pa.concat_tables(left) if left else empty_table()
        if remaining.num_rows:
            plan.added.append(store.table.write_file(remaining, insert=True, bulk=True))
        if small_removed:
            plan.added.append(store.table.write_file(empty_table(), insert=True))
    except BaseException:
        store.table.discard(plan.added)
        raise
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
    return whole_file(store.table.directory, data_file, store.cache)


def whole_file(directory: Path, data_file: DataFile, cache: StoreCache) -> pa.Table:
    piece = file_piece(directory, data_file, cache)
    return cache.get_data(_whole_key(piece), lambda: piece.read(None))  # type: ignore[return-value]


def _whole_key(piece: FilePiece) -> tuple[str, object]:
    """Where the read cache keeps a data file read whole (``whole_file``, ``kept_as_written``)."""
    return ("whole", piece.key)


def files_of(table: pa.Table) -> list[pa.Table]:
    """A whole table cut into range files; an empty table is one empty file (what a table of an older
    release without an insert file keeps, see ``pinfs.data.delta``)."""
    return split_into_files(table, file_rows(), exact=True) or [empty_table()]


def write_new_table(table: DeltaPins, rows: pa.Table) -> list[DataFile]:
    """The files of a version holding exactly ``rows``: range files, and an empty insert file."""
    added = write_files(table, split_into_files(rows, file_rows(), exact=True))
    try:
        added.append(table.write_file(empty_table(), insert=True))
    except BaseException:
        table.discard(added)
        raise
    return added


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
    """The records of ``cids`` present in version ``state``: only the row groups that would hold them
    (``PinSnapshot.records``). In a table without an insert file, a few CIDs' range files are read
    whole instead (through the cache), as the rewrite that follows needs them anyway (a batch's files,
    read whole, would not all stay in the read cache: 62 files of 5.5 MB in a 1M-pin backend)."""
    if not cids or not any(data_file.rows for data_file in state.files):
        return {}
    if not layout_is_sound(state):
        table = table_snapshot(state, store.cache).table()
    elif state.insert_files:  # new CIDs go to the insert file: the range files are not rewritten
        return _records_in_files(store, state, cids)
    elif len(cids) > _WHOLE_FILES_MAX_CIDS:
        return table_snapshot(state, store.cache).records(cids)
    else:
        ranged = [data_file for data_file in state.range_files if data_file.rows]
        mins = [data_file.min_cid for data_file in ranged if data_file.min_cid is not None]
        numbers = sorted({file_for(ranged, mins, cid) for cid in cids}) if ranged else []
        tables = [file_table(store, ranged[number]) for number in numbers]
        table = pa.concat_tables(tables) if tables else empty_table()
    wanted = pa.array(list(cids), pa.string())
    return {row["cid"]: row for row in table.filter(pc.is_in(table.column("cid"), wanted)).to_pylist()}


def _records_in_files(store: PinStore, state: TableState, cids: Sequence[str]) -> dict[str, dict[str, str | None]]:
    """The records of ``cids`` in version ``state``: from its insert files (read whole, through the
    cache) and the row groups of the range files that would hold the rest. Not through the version's
    snapshot: making it lays out every file of the table (~5 ms at 1M pins, at every pin), and its
    row groups have the insert files' rows merged in (~0.15 s for a batch of 10,000 new pins)."""
    wanted = pa.array(list(cids), pa.string())
    found: dict[str, dict[str, str | None]] = {}
    for data_file in state.insert_files:
        if data_file.rows:
            table = file_table(store, data_file)
            found.update({row["cid"]: row for row in table.filter(pc.is_in(table.column("cid"), wanted)).to_pylist()})
    rest = [cid for cid in cids if cid not in found]
    ranged = [data_file for data_file in state.range_files if data_file.rows]
    if rest and ranged:
        mins = [data_file.min_cid for data_file in ranged if data_file.min_cid is not None]
        numbers = sorted({file_for(ranged, mins, cid) for cid in rest})
        pieces = [file_piece(store.table.directory, ranged[number], store.cache) for number in numbers]
        found.update(PinSnapshot(state.identity, pieces, store.cache, "table").records(rest))
    return found
