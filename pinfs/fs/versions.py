"""Which data version the mount serves for each backend, the records it keeps, and what changed from
one version to the next (issue #19: let the kernel cache what does not change, and tell it when it does).

What it is for: a pin record is immutable within one version of a backend's Delta table, so a node
made from it may be kept (by this process and by the kernel) for as long as that version is current,
and beyond it when the next version did not change that record. ``VersionWatch.check`` notices new
versions (it is called by the mount's kernel-cache duty: on inotify events, on a poll, and after every
control command) and diffs them: a commit removes and adds whole data files, so the records that may
have changed are those of the removed and added files, and comparing their rows gives the exact CIDs.
``RecordCache`` keeps records with the version they came from and a *lease*: how long the kernel may
keep a node made from it. ``check`` drops exactly the changed CIDs; their leases end at once.

The rules (gcsfuse's, mountpoint-s3's):
- A lease is long (``LONG_SECONDS``, the backstop) only for a record read from the version the watch
  says is current; anything else (a version the watch has not seen yet, a legacy pins.json, a parquet
  of the form written before the table) gets ``SHORT_SECONDS``, as every node had before.
- A cache never replaces a newer record with an older one, and never keeps a record read from a version
  older than the current one (it may have changed since).
- A lease is checked again when the kernel is answered (``RecordCache.remaining``): one that ``check``
  ended meanwhile gives the kernel no lifetime at all.
- The clock is injected, so tests move it instead of sleeping.

What it must not do: import pyfuse3 or know about inodes (the kernel side is ``pinfs.fs.kernel``).

Threading: ``RecordCache`` is used from worker threads and from the event loop; one lock guards it,
held only for dictionary operations. ``VersionWatch.check`` blocks (it stats the log and reads data
files) and runs on a worker thread; a lock makes each transition diffed exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cachetools
import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.backends import Backend, discover_backends
from pinfs.data.cids import cid_key
from pinfs.data.datafiles import whole_file
from pinfs.data.delta import DataFile, DeltaPins, TableState, TableVersion
from pinfs.data.rootfs import S3Path, as_location
from pinfs.data.snapshots import StoreCache
from pinfs.data.store import PinStore
from pinfs.data.tables import sort_by_cid
from pinfs.errors import InvalidInput, PinfsError

log = logging.getLogger(__name__)

# The backstop: however sure the mount is that a node did not change, the kernel asks again after this
# long. Changes are told to the kernel as they are seen, so this bounds only a change that was missed.
LONG_SECONDS = 60.0
# Kernel entry/attribute lifetime of nodes whose version is not tracked (CONTRACT §2: outside changes
# show within 2 s), and of reports, whose inputs are more than the data version.
SHORT_SECONDS = 1.0
# How long this process reuses a record it could not lease for long (with the kernel's SHORT_SECONDS,
# an outside change shows within 1.5 s).
FRESH_SECONDS = 0.5
RECORD_ENTRIES = 4096  # records kept (present or absent); the least recently used goes first
# A change bigger than this many rows is not diffed: everything of the backend is dropped instead.
DIFF_ROWS = 200_000


@dataclass(frozen=True, eq=False)
class Lease:
    """How long the kernel may keep a node: until ``expires`` (the cache's clock), while it stays valid.
    ``key`` is the (backend, CID) of the record the node was made from (valid while the cache holds
    that very record); without one, the lease is on the whole ``version`` (valid while it is current)."""

    backend: str
    version: Hashable
    expires: float
    key: tuple[str, str] | None = None


@dataclass(frozen=True, eq=False)
class Kept:
    """A record (None: not pinned) as of ``version``; ``lease`` None: kept only for ``FRESH_SECONDS``."""

    record: dict[str, Any] | None
    version: Hashable | None
    until: float
    lease: Lease | None
    mtime_ns: int = 0  # the time files made from it carry (``pinfs.fs.tree.record_mtime``)


def _newer(version: Hashable | None, than: Hashable | None) -> bool:
    """Whether ``version`` is known to come after ``than`` (same table, higher version number)."""
    return (
        isinstance(version, TableVersion)
        and isinstance(than, TableVersion)
        and version.table_id == than.table_id
        and version.version > than.version
    )


def _cid_identity(cid: str) -> str:
    """The key a record is kept under: the CID's identity, so that every spelling of one CID shares
    one entry and a change to it (named as stored) drops them all (issue #16)."""
    try:
        return cid_key(cid)
    except InvalidInput:
        return cid


class RecordCache:
    """Records by (backend, CID), with their versions and leases, and the current version of each
    tracked backend. See the module docstring for the rules."""

    def __init__(
        self,
        maxsize: int = RECORD_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        long_seconds: float = LONG_SECONDS,
        fresh_seconds: float = FRESH_SECONDS,
    ) -> None:
        self.clock = clock
        self.long_seconds = long_seconds
        self.fresh_seconds = fresh_seconds
        self._records: cachetools.LRUCache = cachetools.LRUCache(maxsize=maxsize)
        self._current: dict[str, Hashable] = {}
        self._lock = threading.Lock()

    # -- versions --

    def current(self, backend: str) -> Hashable | None:
        return self._current.get(backend)

    def lease(self, backend: str, version: Hashable | None) -> Lease | None:
        """A lease on the whole of ``version`` (for listing entries), if it is the current one."""
        if version is None or self._current.get(backend) != version:
            return None
        return Lease(backend, version, self.clock() + self.long_seconds)

    def advance(self, backend: str, version: Hashable | None, changed: Collection[str] | None) -> None:
        """``version`` is current for ``backend`` now (None: not tracked); the records of ``changed``
        (None: every record of the backend) may differ from what is kept, so they are dropped."""
        with self._lock:
            if version is None:
                self._current.pop(backend, None)
            else:
                self._current[backend] = version
            if changed is None:
                for key in [key for key in self._records if key[0] == backend]:
                    del self._records[key]
                return
            for cid in changed:
                self._records.pop((backend, _cid_identity(cid)), None)

    # -- records --

    def get(self, backend: str, cid: str, *, leased_only: bool = False) -> Kept | None:
        """The kept record of ``cid`` (``Kept.record`` None: known not to be pinned), unless it expired."""
        with self._lock:
            kept = self._records.get((backend, _cid_identity(cid)))
        if kept is None or kept.until <= self.clock() or (leased_only and kept.lease is None):
            return None
        return kept

    def keep(
        self,
        backend: str,
        cid: str,
        record: dict[str, Any] | None,
        version: Hashable | None,
        mtime_ns: int = 0,
        *,
        unleased_ok: bool = True,
    ) -> Kept:
        """Keep ``record`` as read from ``version``; returns what the cache holds now (a newer record
        kept meanwhile wins). A record of a version older than the current one is not kept, nor one
        without a lease when ``unleased_ok`` is False (it was read before a control command ran)."""
        now = self.clock()
        key = (backend, _cid_identity(cid))
        with self._lock:
            current = self._current.get(backend)
            found = self._records.get(key)
            if found is not None and found.until > now and (_newer(found.version, version) or found.version == version):
                return found
            if current is not None and version == current:
                lease = Lease(backend, version, now + self.long_seconds, key)
                kept = Kept(record, version, lease.expires, lease, mtime_ns)
            else:
                kept = Kept(record, version, now + self.fresh_seconds, None, mtime_ns)
                if _newer(current, version) or not unleased_ok:
                    return kept  # read just before a newer version was seen, or before a command ran
            self._records[key] = kept
            return kept

    def remaining(self, lease: Lease | None) -> float | None:
        """Seconds the kernel may keep a node under ``lease``: 0 once the lease was ended by a change,
        None without a lease (the caller's short default applies)."""
        if lease is None:
            return None
        if lease.key is not None:
            with self._lock:
                kept = self._records.get(lease.key)
            valid = kept is not None and kept.lease is lease
        else:
            valid = self._current.get(lease.backend) == lease.version
        return max(lease.expires - self.clock(), 0.0) if valid else 0.0

    def forget_unleased(self) -> None:
        """Drop the records kept without a lease (after a control command: it may have changed them)."""
        with self._lock:
            for key in [key for key, kept in self._records.items() if kept.lease is None]:
                del self._records[key]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._current.clear()

    def __len__(self) -> int:
        return len(self._records)


# -- what changed between two versions --


def changed_cids(directory: Path | S3Path, cache: StoreCache, old: TableState, new: TableState) -> set[str] | None:
    """The CIDs whose records differ between ``old`` and ``new`` of one table (added, removed or
    changed); None when that cannot be told cheaply (another table, a change of more than ``DIFF_ROWS``
    rows, a data file that cannot be read): then everything may have changed."""
    if old.identity.table_id != new.identity.table_id or old.identity.location != new.identity.location:
        return None
    if new.version > old.version and DeltaPins(directory).records_unchanged_between(old.version, new.version):
        return set()  # only the insert file merged or files split: the same records in other files
    old_paths = {data_file.path for data_file in old.files}
    new_paths = {data_file.path for data_file in new.files}
    removed = [data_file for data_file in old.files if data_file.path not in new_paths]
    added = [data_file for data_file in new.files if data_file.path not in old_paths]
    if sum(data_file.rows for data_file in (*removed, *added)) > DIFF_ROWS:
        return None
    try:
        before = _rows_of(directory, cache, removed)
        after = _rows_of(directory, cache, added)
    except (PinfsError, OSError, pa.ArrowException) as exc:
        log.info("%s: could not diff version %s and %s (%s)", directory, old.version, new.version, exc)
        return None
    return differing_cids(before, after)


def _rows_of(directory: Path | S3Path, cache: StoreCache, files: Sequence[DataFile]) -> pa.Table | None:
    """The rows of ``files`` (whole, through the read cache: a file never changes once written)."""
    tables = [whole_file(directory, data_file, cache) for data_file in files if data_file.rows]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def differing_cids(before: pa.Table | None, after: pa.Table | None) -> set[str]:
    """CIDs present in only one of the tables, or in both with a row that differs in any column (a
    column missing on one side counts as all null)."""
    if before is None or after is None:
        table = before if before is not None else after
        return set() if table is None else set(table.column("cid").to_pylist())
    old_cids, new_cids = before.column("cid"), after.column("cid")
    in_new, in_old = pc.is_in(old_cids, value_set=new_cids), pc.is_in(new_cids, value_set=old_cids)
    changed = set(before.filter(pc.invert(in_new)).column("cid").to_pylist())
    changed.update(after.filter(pc.invert(in_old)).column("cid").to_pylist())
    # As they are when sorted (one data file each, e.g. the insert file before and after a pin).
    common_old = sort_by_cid(before.filter(in_new))
    common_new = sort_by_cid(after.filter(in_old))
    if not common_old.num_rows:
        return changed
    differs = pa.array([False] * common_old.num_rows)
    for name in dict.fromkeys([*common_old.column_names, *common_new.column_names]):
        left, right = _column(common_old, name), _column(common_new, name)
        same = pc.or_(pc.fill_null(pc.equal(left, right), False), pc.and_(pc.is_null(left), pc.is_null(right)))
        differs = pc.or_(differs, pc.invert(same))
    changed.update(common_old.filter(differs).column("cid").to_pylist())
    return changed


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name in table.column_names:
        column = table.column(name)
        return column if pa.types.is_string(column.type) else column.cast(pa.string())
    return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])


# -- the watch --


@dataclass(frozen=True)
class Change:
    """One backend went from one version to another. ``cids`` None: every record may have changed."""

    backend: str
    before: Hashable | None
    after: Hashable | None
    cids: frozenset[str] | None


_UNSEEN = object()  # a backend the watch has not looked at yet


class VersionWatch:
    """The versions the mount serves, and the changes ``check`` finds from one call to the next."""

    def __init__(self, root: Path, cache: StoreCache, records: RecordCache) -> None:
        self.root = root
        self.cache = cache
        self.records = records
        self._states: dict[str, object] = {}  # backend -> TableState, None (no table) or _UNSEEN
        self._lock = threading.Lock()
        self.checks = 0

    def table_directories(self) -> list[Path]:
        """The log directories of the tables seen by the last check (for inotify)."""
        directories = []
        for state in list(self._states.values()):
            if isinstance(state, TableState):
                location = as_location(state.identity.location)
                if not isinstance(location, S3Path):
                    directories.append(location / "_delta_log")
        return directories

    def check(self) -> list[Change]:
        """Look at every backend's newest version; advance the record cache and return what changed
        since the last check. A backend seen for the first time is a change with no CIDs (nothing was
        leased from it before)."""
        with self._lock:
            self.checks += 1
            backends, _problems = discover_backends(self.root)
            changes = [change for backend in backends if (change := self._check_one(backend)) is not None]
            seen = {backend.name for backend in backends}
            for name in [name for name in self._states if name not in seen]:
                before = self._states.pop(name)
                self.records.advance(name, None, None)
                changes.append(Change(name, _version_of(before), None, None))
            return changes

    def _check_one(self, backend: Backend) -> Change | None:
        try:
            state: TableState | None = PinStore(backend, self.cache).table_state()
        except (PinfsError, OSError) as exc:
            log.debug("backend %s: no version to watch (%s)", backend.name, exc)
            state = None
        before = self._states.get(backend.name, _UNSEEN)
        if _version_of(before) == _version_of(state) and before is not _UNSEEN:
            return None
        self._states[backend.name] = state
        if before is _UNSEEN:
            cids: set[str] | None = set()  # nothing could be leased from a version never current
        elif isinstance(before, TableState) and state is not None:
            cids = changed_cids(as_location(state.identity.location), self.cache, before, state)
        else:
            cids = None  # to or from a form without versions: anything may have changed
        self.records.advance(backend.name, None if state is None else state.identity, cids)
        return Change(backend.name, _version_of(before), _version_of(state), None if cids is None else frozenset(cids))


def _version_of(state: object) -> Hashable | None:
    return state.identity if isinstance(state, TableState) else None


def describe(changes: Iterable[Change]) -> str:
    """A short text of ``changes`` for the log."""
    parts = []
    for change in changes:
        version = getattr(change.after, "version", None)
        count = "all" if change.cids is None else len(change.cids)
        parts.append(f"{change.backend}@{version}: {count}")
    return ", ".join(parts)
