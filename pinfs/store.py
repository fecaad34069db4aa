"""The pin-mapping store of one backend: its current snapshot, and writes under its lock.

``PinStore.snapshot()`` is the version to read now (``pinfs.snapshots``). Writes go through a
``Transaction`` (``PinStore.transaction``), which holds the backend's cross-process lock. A backend of
up to a few tens of thousands of pins is one file, rewritten whole into a temporary file and renamed
into place (``pinfs.fsutil``). A bigger one is stored as sorted shards (``pinfs.shards``):
``Transaction.update`` rewrites only the shards holding the CIDs it changes.

Threading: synchronous, may block on disk; the mount calls it from worker threads.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.backends import Backend
from pinfs.errors import CorruptData, NotFound, PinfsError
from pinfs.fsutil import backend_lock
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
from pinfs.snapshots import (
    DEFAULT_CACHE,
    FileIdentity,
    MemorySnapshot,
    ParquetSnapshot,
    PinSnapshot,
    ShardedSnapshot,
    StoreCache,
    UnsortedParquet,
)
from pinfs.tables import (
    empty_table,
    first_duplicate_cid,
    merge_records,
    parallel_map,
    read_whole_table,
    records_to_table,
    split_into_shards,
    write_pins,
    write_shard,
)


class NotMigrated(PinfsError):
    """A write to a backend that is still served from its legacy pins.json (exit 1; EIO in the mount)."""


class Transaction:
    """Reads and writes of one backend while its lock is held (from ``PinStore.transaction``)."""

    def __init__(self, store: PinStore) -> None:
        self.store = store
        self._table: pa.Table | None = None  # the whole table as last read or written here
        self.changed = False  # whether this transaction wrote anything
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
        self._table = write_pins(self.store.path, table)  # what is on disk now: a CAR need not read it back
        self.changed = True

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
        new_parts = dict(zip(touched, parallel_map(rewritten, touched, tables), strict=True))
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
        self.changed = True
        self._table = None
        return total

    def _generation(self) -> tuple[Path, Manifest]:
        directory = generation_dir(self.store.path)
        return directory, read_manifest(directory)

    def _shard_tables(self, directory: Path, shards: Sequence[ShardInfo]) -> list[pa.Table]:
        """Whole shards, read on a few threads (pyarrow reads without the GIL) and kept for the rest of
        the transaction: ``records_for`` then ``update`` read each shard once."""
        missing = [shard for shard in shards if (directory, shard.file) not in self._shards]
        tables = parallel_map(lambda shard: read_whole_table(directory / shard.file), missing)
        for shard, table in zip(missing, tables, strict=True):
            self._shards[directory, shard.file] = table
        return [self._shards[directory, shard.file] for shard in shards]


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
            collect_garbage(directory)  # the one place: every write of the backend is in a transaction
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
