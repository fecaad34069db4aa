"""The pin-mapping store of one backend: its current snapshot, and writes as Delta commits.

``PinStore.snapshot()`` is the version to read now (``pinfs.data.snapshots``): the newest version of the
backend's Delta table (``pinfs.data.delta``), else the form written before the table (``pinfs.data.oldforms``),
else the legacy pins.json, else nothing. Which version is newest costs one ``stat`` when nothing
changed (is there a commit after the one we know?).

Writes go through a ``Transaction`` (``PinStore.transaction``). ``Transaction.update`` rewrites only
the data files whose CID ranges hold the CIDs it changes and commits ``remove(old) + add(new)`` as
one Delta version; ``Transaction.write`` replaces every file. The first write to a backend still in an
old form converts it first (version 0 holds exactly its pins). When another writer's commit removed a
file this one replaces, the commit is refused (``CommitConflict``): if the records this write is about
are unchanged in the newer version, the same change is applied to it; if not, ``ConcurrentChange``
asks the caller to start again, which ``PinStore.write`` does by itself. So no writer ever loses
another's pin, across processes and hosts, with no lock of ours in the argument. Local writers of one
backend still take ``fsutil.backend_lock`` around a transaction, which only saves them from retrying.

Which data files a change rewrites, and the reading of a version's files, are in ``pinfs.data.datafiles``.

Threading: synchronous, may block on disk; the mount calls it from worker threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.backends import Backend
from pinfs.data.cids import aliases_of, candidate_forms
from pinfs.data.datafiles import (
    check_kept_files,
    compact,
    file_table,
    layout_is_sound,
    merged_sources,
    patched,
    plan_merge,
    plan_update,
    rows_at,
    table_snapshot,
    write_files,
    write_new_table,
)
from pinfs.data.delta import (
    MERGE_OPERATION,
    RELAYOUT_OPERATION,
    REQUEST_KEY,
    TABLE_DIR,
    CommitConflict,
    DataFile,
    DeltaPins,
    TableState,
    file_rows,
)
from pinfs.data.fsutil import backend_lock
from pinfs.data.legacy import read_legacy_pins
from pinfs.data.legacy_files import find_legacy_source
from pinfs.data.oldforms import old_form_exists, old_form_snapshot, read_old_form
from pinfs.data.pieces import FileIdentity
from pinfs.data.rootfs import S3Path, require_writable
from pinfs.data.snapshots import DEFAULT_CACHE, PinSnapshot, StoreCache, memory_snapshot
from pinfs.data.tables import (
    checked_for_writing,
    empty_table,
    records_to_table,
    split_into_files,
)
from pinfs.errors import Busy, CorruptData, NotFound, PinfsError

T = TypeVar("T")
# How often a write whose commit lost a race is tried again on the newer version before giving up.
COMMIT_ATTEMPTS = 8

_TABLES: dict[str, DeltaPins] = {}
_TABLES_LOCK = threading.Lock()


class NotMigrated(PinfsError):
    """A write to a backend that is still served from its legacy pins.json (exit 1; EIO in the mount)."""


class ConcurrentChange(Busy):
    """Another writer changed the same pins while this write was being made; nothing was written."""


def delta_pins(backend: Backend) -> DeltaPins:
    """The process-wide ``DeltaPins`` of a backend's table (it caches the loaded log)."""
    directory = backend.directory / TABLE_DIR
    with _TABLES_LOCK:
        found = _TABLES.get(str(directory))
        if found is None:
            found = _TABLES[str(directory)] = DeltaPins(directory)
        return found


def checkpoint_written(table: DeltaPins, cache: StoreCache | None = None) -> None:
    """After this process wrote a checkpoint of ``table`` (its log directory changed, no version did):
    the version ``cache`` knows as the newest stays so, and the next ``PinStore.table_state`` does not
    load the log for it. A commit meanwhile is seen by the next one's log entry, as always."""
    cache = cache or DEFAULT_CACHE
    known = cache.versions.get(str(table.directory))
    if isinstance(known, tuple):
        _keep_as_newest(cache, table, known[0])


def _keep_as_newest(cache: StoreCache, table: DeltaPins, state: TableState) -> None:
    """Keep ``state`` as ``table``'s newest version in ``cache``, with the log's stamp as it is now,
    unless a newer version exists already (the stamp is taken first: a commit after it is then seen)."""
    stamp = table.log_stamp()
    if not table.has_version(state.version + 1):
        cache.versions[str(table.directory)] = (state, stamp)


class Transaction:
    """Reads and writes of one backend from one version (from ``PinStore.transaction``)."""

    def __init__(self, store: PinStore) -> None:
        self.store = store
        self.changed = False  # whether this transaction committed anything
        self._state: TableState | None = None
        self._loaded = False
        # Records looked up in the version read (cid -> record, or None: not there), so that the update
        # after a lookup of the same CIDs (every pin) does not read them again.
        self._looked_up: dict[str, dict[str, str | None] | None] = {}

    # -- reading --

    def state(self) -> TableState | None:
        """The version this transaction reads and writes on (None: there is no table yet)."""
        if not self._loaded:
            self._state = self.store.table_state()
            self._loaded = True
            self._looked_up.clear()
        return self._state

    def current(self, *, allow_legacy: bool = False) -> pa.Table:
        """The whole table as it is now, sorted (empty when there is nothing yet).

        A backend that has only a legacy pins.json must be migrated before anything else writes to it,
        so that writing a table never hides the pins that are only in pins.json; ``allow_legacy`` is
        for the migration itself."""
        state = self.state()
        if state is not None:
            return table_snapshot(state, self.store.cache).table()
        if old_form_exists(self.store.backend.parquet_path):
            return read_old_form(self.store.backend.parquet_path)
        if not allow_legacy:
            self._refuse_legacy()
        return empty_table()

    def records_for(self, cids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        """The current records of those of ``cids`` that are present, reading only the files that
        would hold them."""
        state = self.state()
        if state is None:
            table = self.current()
            wanted = pa.array(list(cids), pa.string())
            return {row["cid"]: row for row in table.filter(pc.is_in(table.column("cid"), wanted)).to_pylist()}
        return self._rows(state, cids)

    def _rows(self, state: TableState, cids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        """``rows_at`` of the version read, remembering what was looked up (``_looked_up``)."""
        missing = [cid for cid in dict.fromkeys(cids) if cid not in self._looked_up]
        if missing:
            found = rows_at(self.store, state, missing)
            self._looked_up.update({cid: found.get(cid) for cid in missing})
        return {cid: record for cid in cids if (record := self._looked_up[cid]) is not None}

    def records_by_identity(self, cids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        """For each of ``cids`` whose CID is here, spelled in any way (issue #16), its record (whose
        ``cid`` is the spelling stored), keyed by the spelling asked for. One read of the files
        that would hold any of the candidate spellings, as ``records_for``."""
        aliases = self._aliases()
        candidates = {cid: candidate_forms(cid, aliases) for cid in dict.fromkeys(cids)}
        found = self.records_for(list(dict.fromkeys(form for forms in candidates.values() for form in forms)))
        result = {}
        for cid, forms in candidates.items():
            record = next((found[form] for form in forms if form in found), None)
            if record is not None:
                result[cid] = record
        return result

    def _aliases(self) -> Mapping[str, str]:
        state = self.state()
        if state is not None:
            if not any(data_file.aliased for data_file in state.files):
                return {}  # no file says it holds another spelling: no snapshot to build for that
            return table_snapshot(state, self.store.cache).aliases()
        return aliases_of(self.current().column("cid"))

    def _refuse_legacy(self) -> None:
        if self.store.legacy_source() is not None:
            name = self.store.backend.name
            raise NotMigrated(
                f"backend {name!r} has only a legacy pins.json; run 'pinfs migrate --backend-filter {name}' first"
            )

    # -- writing --

    def update(
        self,
        replacements: Mapping[str, Mapping[str, str | None]],
        removals: Sequence[str] = (),
        *,
        request: str | None = None,
    ) -> int:
        """Remove ``removals`` and add or replace ``replacements`` (by CID, ``updated_at`` stamped) in one
        commit; returns the number of pins after it. Only the files holding those CIDs are rewritten
        (issue #12: one pin into a million rewrites ~16k rows). ``request`` (a digest of what was asked)
        goes into the commit's info, so that a retry of the same request can tell it was done
        (``DeltaPins.version_of_request``)."""
        info: dict[str, object] = {"operation": "update", "cids": 0}
        if request is not None:
            info[REQUEST_KEY] = request
        if not replacements and not removals:
            state = self.state()
            return state.count if state is not None else self.current().num_rows
        cids = list(dict.fromkeys([*removals, *replacements]))
        info["cids"] = len(cids)
        state = self._table_for_writing()
        if state is None:  # a backend's first pins: the table is created holding them
            table = patched(empty_table(), replacements, removals)
            if self._create(table, {"operation": "create"}):
                return self._committed(table.num_rows)
            state = self.store.table_state(reload=True)  # another writer created it first
            assert state is not None
        base = self._rows(state, cids) if state is self._state else rows_at(self.store, state, cids)
        for _attempt in range(COMMIT_ATTEMPTS):
            if not layout_is_sound(state):
                return self.write(patched(table_snapshot(state, self.store.cache).table(), replacements, removals))
            plan = plan_update(self.store, state, replacements, removals, base.keys())
            if not plan.removed and not plan.added:  # only removals of CIDs that are not there
                return state.count
            try:
                check_kept_files(self.store, state, plan.removed)
            except BaseException:
                self.store.table.discard(plan.added)
                raise
            try:
                self._commit(state, plan.removed, plan.added, info)
            except CommitConflict:
                self.store.table.discard(plan.added)
                state = self._rebase(cids, base)
                continue
            return self._committed(state.count + plan.delta)
        raise ConcurrentChange(f"backend {self.store.backend.name!r}: too many concurrent writers; nothing was written")

    def write(self, table: pa.Table) -> pa.Table:
        """Replace the whole table with ``table`` in one commit; returns it as written (normalized)."""
        table = checked_for_writing(table, self.store.table.directory)
        state = self.state()
        if state is None and old_form_exists(self.store.backend.parquet_path):
            state = self._table_for_writing()  # converted first: the old file is then an export of version 0
        added = write_new_table(self.store.table, table)
        try:
            if state is None:
                self.store.table.create(added, {"operation": "create"})
            else:
                self._commit(state, state.files, added, {"operation": "replace"})
        except CommitConflict:
            self.store.table.discard(added)
            raise ConcurrentChange(
                f"backend {self.store.backend.name!r} was changed by another writer meanwhile; nothing was written, "
                "run the command again"
            ) from None
        except BaseException:
            self.store.table.discard(added)
            raise
        self._committed(table.num_rows)
        return table

    def relayout(self) -> int:
        """Split the data files that grew past twice the target, merge those under a quarter of it into a
        neighbour, and rewrite a table whose files overlap (another tool wrote them); one commit.
        Returns how many files were rewritten (0: nothing to do, nothing committed)."""
        state = self.state()
        if state is None:
            return 0
        ranged = [data_file for data_file in state.range_files if data_file.rows]
        empties = [data_file for data_file in state.range_files if not data_file.rows]
        if not layout_is_sound(state):
            self.write(table_snapshot(state, self.store.cache).table())
            return len(state.files)
        target = file_rows()
        removed = [*empties] if ranged else []
        parts: list[DataFile | pa.Table] = []
        for data_file in ranged:
            if data_file.rows > 2 * target or (data_file.rows < target // 4 and len(ranged) > 1):
                removed.append(data_file)
                parts.extend(split_into_files(file_table(self.store, data_file), target))
            else:
                parts.append(data_file)
        if not removed:
            return 0
        parts = compact(self.store, parts, removed)
        check_kept_files(self.store, state, removed)
        added = write_files(self.store.table, [part for part in parts if isinstance(part, pa.Table)])
        try:
            self._commit(state, removed, added, {"operation": RELAYOUT_OPERATION})
        except CommitConflict:
            self.store.table.discard(added)
            raise ConcurrentChange(f"backend {self.store.backend.name!r} changed while being laid out again") from None
        self._committed(state.count)
        return len(removed)

    def merge_inserts(
        self,
        max_files: int | None = None,
        *,
        include_small: bool = False,
        committing: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> int:
        """Move the bulk insert files' rows (and with ``include_small`` the small insert file's) into the
        range files of their ranges, at most ``max_files`` of them (all when None), in one commit
        (``pinfs.data.delta``); returns how many rows moved (0: nothing to do, nothing committed).
        ConcurrentChange when another writer changed those files. ``committing``, when given, is held
        around the commit only (``PinStore.merge_inserts``)."""
        state = self.state()
        sources = [] if state is None else merged_sources(state, include_small=include_small)
        if state is None or not any(data_file.rows for data_file in sources):
            return 0
        plan = plan_merge(self.store, state, max_files, include_small=include_small)
        before = sum(data_file.rows for data_file in sources)
        moved = before - sum(data_file.rows for data_file in plan.added if data_file.is_insert)
        info = {"operation": MERGE_OPERATION, "pins": moved}
        try:
            for _attempt in range(COMMIT_ATTEMPTS):
                try:
                    with committing() if committing is not None else contextlib.nullcontext():
                        check_kept_files(self.store, state, plan.removed)
                        self._commit(state, plan.removed, plan.added, info)
                    break
                except CommitConflict:
                    state = self._rebase_files(plan.removed)
            else:
                raise CommitConflict("the table kept changing")
        except (CommitConflict, ConcurrentChange):
            self.store.table.discard(plan.added)
            raise ConcurrentChange(
                f"backend {self.store.backend.name!r} changed while its inserts were merged"
            ) from None
        except BaseException:
            self.store.table.discard(plan.added)
            raise
        self._committed(state.count)
        return moved

    def convert_old_form(self) -> bool:
        """Make the table from the old-form parquet, as version 0 holding exactly its pins; False when
        there is a table already or nothing to convert. The old file stays where it is until the
        first export replaces it, and is recorded as an export of version 0 first (``pinfs.data.exports``),
        so that it is never taken for a file another tool wrote. Killed at any instant, the old form
        stays readable and the conversion starts again (data files without a commit are removed by
        vacuum). The next read of this transaction sees the new table."""
        from pinfs.data.exports import record_converted

        store = self.store
        if store.has_table() or not old_form_exists(store.path):
            return False
        table = read_old_form(store.path)
        record_converted(store.backend, FileIdentity.of(store.path))
        converted = self._create(table, {"operation": "convert", "from": store.path.name, "pins": table.num_rows})
        self._loaded = False
        return converted

    def _create(self, table: pa.Table, info: dict[str, object]) -> bool:
        """Create the table holding ``table`` (sorted, checked); False when another writer created it
        first (theirs stands)."""
        delta = self.store.table
        added = write_new_table(delta, table)
        try:
            delta.create(added, info)
        except CommitConflict:
            delta.discard(added)
            return False
        except BaseException:
            delta.discard(added)
            raise
        return True

    def _table_for_writing(self) -> TableState | None:
        """The table to change; an old form is converted first. None when there is nothing yet (the
        write creates the table); NotMigrated for a backend that has only a legacy pins.json."""
        state = self.state()
        if state is not None:
            return state
        if not old_form_exists(self.store.backend.parquet_path):
            self._refuse_legacy()
            return None
        self.convert_old_form()
        return self.state()

    def _rebase(self, cids: Sequence[str], base: Mapping[str, Mapping[str, str | None]]) -> TableState:
        """The newest version, if the records of ``cids`` in it are still ``base``; else ConcurrentChange."""
        state = self.store.table_state(reload=True)
        assert state is not None
        if rows_at(self.store, state, cids) != base:
            raise ConcurrentChange(
                f"backend {self.store.backend.name!r}: another writer changed the same pins meanwhile; "
                "nothing was written"
            )
        self._state = state
        self._looked_up.clear()
        return state

    def _commit(
        self, state: TableState, removed: Sequence[DataFile], added: Sequence[DataFile], info: dict[str, object]
    ) -> None:
        """Commit on top of ``state`` (``DeltaPins.commit``); the version made is kept as the newest."""
        made = self.store.table.commit(state, removed, added, info)
        if made is not None:
            self.store.remember(made)

    def _rebase_files(self, files: Sequence[DataFile]) -> TableState:
        """The newest version, if it still has all of ``files`` (a commit that removes them and adds files
        made from them alone, as a merge does, is as good on it); else ConcurrentChange."""
        state = self.store.table_state(reload=True)
        assert state is not None
        if not {data_file.path for data_file in files} <= {data_file.path for data_file in state.files}:
            raise ConcurrentChange(f"backend {self.store.backend.name!r}: another writer changed the same files")
        return state

    def _committed(self, count: int) -> int:
        self.changed = True
        self._loaded = False  # the next read sees the version just committed (and any newer)
        self._looked_up.clear()
        return count


class PinStore:
    """Read and write one backend's pins."""

    def __init__(self, backend: Backend, cache: StoreCache | None = None) -> None:
        self.backend = backend
        self.cache = cache or DEFAULT_CACHE

    @property
    def path(self) -> Path:
        """The export (``pin_mappings.parquet``), which is also the store of the old forms."""
        return self.backend.parquet_path

    @property
    def table(self) -> DeltaPins:
        return delta_pins(self.backend)

    def has_table(self) -> bool:
        return self.table.exists()

    def served_files(self) -> dict[str, Path]:
        """The files of this backend a reader may open as they are (the exports), by name; whether
        each exists is for the caller to find out (the mount's tree serves them, issue #18)."""
        return {path.name: path for path in (self.backend.parquet_path, self.backend.car_path)}

    def has_parquet(self) -> bool:
        """Whether the backend has been migrated: it has a table, or a parquet of an older form."""
        return self.has_table() or old_form_exists(self.path)

    def table_state(self, *, reload: bool = False) -> TableState | None:
        """The newest version of the table (None without one). Known versions are reused while no
        newer commit exists: one ``stat`` of the next log entry, and one of the log directory, which
        also changes when old entries are cleaned up."""
        table = self.table
        known = self.cache.versions.get(str(table.directory))
        if isinstance(known, tuple) and not reload:
            state, stamp = known
            if not table.has_version(state.version + 1) and table.log_stamp() == stamp:
                return state
        if not table.exists():
            return None
        stamp = table.log_stamp()
        state = table.load()
        self.cache.versions[str(table.directory)] = (state, stamp)
        return state

    def remember(self, state: TableState) -> None:
        """Keep ``state``, a version this process has just committed, as the newest one unless a newer
        one exists already, as ``table_state`` would after loading the log (which it then need not)."""
        _keep_as_newest(self.cache, self.table, state)

    def snapshot(self) -> PinSnapshot:
        """The current version: the table, else an old-form parquet, else the legacy pins.json, else an
        empty snapshot. Raises CorruptData when what should be read cannot be."""
        state = self.table_state()
        if state is not None:
            return table_snapshot(state, self.cache)
        old = old_form_snapshot(self.path, self.cache)
        if old is not None:
            return old
        return self._legacy_snapshot()

    def legacy_source(self) -> Path | None:
        return find_legacy_source(self.backend.directory)

    def _legacy_snapshot(self) -> PinSnapshot:
        source = self.legacy_source()
        if source is None:
            return memory_snapshot(empty_table(), self.cache, None, source="empty")
        identity = FileIdentity.of(source)

        def load() -> PinSnapshot:
            pins = read_legacy_pins(source, self.backend.name, self.backend.type)
            table = records_to_table(pins.records) if pins.records else empty_table()
            return memory_snapshot(table, self.cache, identity, source="legacy")

        return self.cache.get_snapshot(identity, load)

    @contextlib.contextmanager
    def transaction(self, *, lock_timeout: float | None = None) -> Iterator[Transaction]:
        """A read-modify-write of this backend (see ``Transaction``), with local writers serialized."""
        self._check_writable()
        with backend_lock(self.backend.directory, timeout=lock_timeout):
            yield Transaction(self)

    def _check_writable(self) -> None:
        directory = self.backend.directory
        if isinstance(directory, S3Path):
            require_writable(directory)  # a store that ignores conditional puts could lose commits
        elif not directory.is_dir():
            raise NotFound(f"backend {self.backend.name!r} has no directory {directory}")

    def merge_inserts(self, max_files: int | None = None, *, include_small: bool = False) -> int:
        """One step of moving insert files into the range files (``Transaction.merge_inserts``), read
        and written without the backend's lock and committed under it: the seconds of rewriting never
        hold up a pin, which then waits at most for one commit. ConcurrentChange when a writer removed
        one of its files first (a change to a pin in a bulk file, or with ``include_small`` any pin of
        a new CID): the caller tries again, or takes the lock for the whole step (``pinfs.ops.maintain``)."""
        self._check_writable()
        return Transaction(self).merge_inserts(
            max_files, include_small=include_small, committing=lambda: backend_lock(self.backend.directory)
        )

    def write(self, body: Callable[[Transaction], T], *, attempts: int = COMMIT_ATTEMPTS) -> T:
        """Run ``body`` in a transaction; when another writer changed the same pins meanwhile
        (``ConcurrentChange``), run it again on the newer version."""
        for attempt in range(attempts):
            try:
                with self.transaction() as txn:
                    return body(txn)
            except ConcurrentChange:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")


__all__ = ["ConcurrentChange", "NotMigrated", "PinStore", "Transaction", "CorruptData"]
