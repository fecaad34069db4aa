"""Which data version the mount serves for each backend, the records it keeps, and what changed from
one version to the next (issue #19: let the kernel cache what does not change, and tell it when it does).

What it is for: a pin record is immutable within one version of a backend's Delta table, so a node
made from it may be kept (by this process and by the kernel) for as long as that version is current,
and beyond it when the next version did not change that record. ``VersionWatch.check`` notices new
versions (it is called by the mount's kernel-cache duty: on inotify events, on a poll, and after every
control command) and diffs them: a commit removes and adds whole data files, so the records that may
have changed are those of the removed and added files, and comparing their rows gives the exact CIDs.
``RecordCache`` keeps records with the version they came from and a *lease*: how long the kernel may
keep a node made from it. ``check`` drops exactly the changed CIDs; their leases end at once. It also
keeps the row group a leased record was read from (``keep_group``), and makes the records of its other
CIDs from it when they are asked for, as if each had been kept when the group was read (a walk of
``by-cid`` goes in CID order: issue #19, item 4); a change drops every group whose range it touches.

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
held only for dictionary operations (records are made from a row group outside it, then kept only if
the group was not dropped meanwhile). ``VersionWatch.check`` blocks (it stats the log and reads data
files) and runs on a worker thread; a lock makes each transition diffed exactly once.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cachetools
import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.backends import Backend, discover_backends
from pinfs.data.cids import cid_key, is_own_key
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
# Row groups kept to make their records from (``RecordCache.keep_group``), by Arrow bytes; the least
# recently used goes first. The tables are those the read cache holds, so they cost little more.
GROUP_BYTES = 64 << 20
# Records made from a kept row group at a time, in CID order: the ones a walk asks for next.
MAKE_ROWS = 32
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
    # What the tree made from this record (its directory's listing and files, by path: issue #19, a
    # walk opens every CID directory). It goes with the record: a change replaces the Kept.
    made: dict[Hashable, Any] = field(default_factory=dict, repr=False)


def records_for(cache_mb: int) -> RecordCache:
    """The mount's record cache, sized from its ``--cache-mb`` like the read cache: a kept record with
    the nodes made from it holds ~5 KB, so 16 records a MB (4096 at the default 256) are ~8 % of the
    bound; its row groups, a 32nd of it (8 MB, ~10 groups, at the default 256: a walk reads one group
    at a time, and a group kept here after the read cache let it go counts beyond the read cache's bound:
    a quarter of it put the mount 30 MB higher after a full ``ls by-cid`` of 10M pins)."""
    return RecordCache(maxsize=max(RECORD_ENTRIES, cache_mb * 16), group_bytes=(cache_mb << 20) // 32)


@dataclass(frozen=True, eq=False)
class RowGroup:
    """One row group of ``version``, sorted by CID (``cids``: the stored spellings), whose records are
    made as they are asked for: ``make(start, stop)`` gives the records of rows ``start``..``stop``
    with the time their files carry. Kept until ``expires``, as a record read with it would be."""

    backend: str
    version: Hashable
    cids: pa.Array
    make: Callable[[int, int], list[tuple[dict[str, Any], int]]]
    expires: float
    nbytes: int
    first: str
    last: str

    def row_of(self, cid: str) -> int | None:
        """The row of ``cid`` spelled as stored, else None (a binary search: ~10 Arrow scalars)."""
        if not self.first <= cid <= self.last:
            return None
        row = bisect.bisect_left(self.cids, cid, key=lambda scalar: scalar.as_py())
        return row if row < len(self.cids) and self.cids[row].as_py() == cid else None


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
    if is_own_key(cid):
        return cid  # the common case, asked on the event loop at every request: no decoding
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
        group_bytes: int = GROUP_BYTES,
    ) -> None:
        self.clock = clock
        self.long_seconds = long_seconds
        self.fresh_seconds = fresh_seconds
        self.group_bytes = group_bytes
        self._records: cachetools.LRUCache = cachetools.LRUCache(maxsize=maxsize)
        self._current: dict[str, Hashable] = {}
        # Row groups by backend, disjoint and sorted by their first CID; and all of them, least recently
        # used first, with the bytes they hold (issue #19, item 4: a walk goes in CID order).
        self._groups: dict[str, list[RowGroup]] = {}
        self._group_order: OrderedDict[RowGroup, None] = OrderedDict()
        self._group_held = 0
        # The newest version a record was read from while the watch had not seen it yet, by backend: no
        # group of an older one serves a record from then on (never older after newer).
        self._ahead: dict[str, Hashable] = {}
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
            if not _newer(self._ahead.get(backend), version):
                self._ahead.pop(backend, None)
            if changed is None:
                for key in [key for key in self._records if key[0] == backend]:
                    del self._records[key]
                for group in list(self._groups.get(backend, ())):
                    self._drop_group(group)
                return
            for cid in changed:
                self._records.pop((backend, _cid_identity(cid)), None)
            if changed:
                ordered = sorted(changed)
                for group in [group for group in self._groups.get(backend, ()) if _holds_any(group, ordered)]:
                    self._drop_group(group)

    # -- records --

    def get(self, backend: str, cid: str, *, leased_only: bool = False) -> Kept | None:
        """The kept record of ``cid`` (``Kept.record`` None: known not to be pinned), unless it expired;
        else made from a kept row group that holds ``cid`` as stored. Never touches disk."""
        key = (backend, _cid_identity(cid))
        with self._lock:
            kept = self._records.get(key)
        if kept is None or kept.until <= self.clock():
            return self._from_group(backend, cid, key)
        if leased_only and kept.lease is None:
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
                if _newer(version, current) and not _newer(self._ahead.get(backend), version):
                    self._ahead[backend] = version
                if _newer(current, version) or not unleased_ok:
                    return kept  # read just before a newer version was seen, or before a command ran
            self._records[key] = kept
            return kept

    # -- row groups: records made as they are asked for --

    def keep_group(
        self,
        backend: str,
        version: Hashable | None,
        cids: pa.Array,
        make: Callable[[int, int], list[tuple[dict[str, Any], int]]],
        nbytes: int,
    ) -> None:
        """Keep a row group read from ``version`` (``cids`` its stored CIDs, sorted), so that ``get``
        makes its records when they are asked for, as if each had been kept now with ``keep``: only
        when ``version`` is current (a change drops the groups holding any changed CID, as it drops
        records). Replaces the backend's groups it overlaps (this one is at least as new)."""
        if not len(cids) or nbytes > self.group_bytes:
            return
        first, last = cids[0].as_py(), cids[-1].as_py()
        with self._lock:
            if version is None or self._current.get(backend) != version or _newer(self._ahead.get(backend), version):
                return
            expires = self.clock() + self.long_seconds
            group = RowGroup(backend, version, cids, make, expires, nbytes, first, last)
            groups = self._groups.setdefault(backend, [])
            for other in [other for other in groups if other.first <= last and first <= other.last]:
                self._drop_group(other)
            bisect.insort(groups, group, key=lambda kept: kept.first)
            self._group_order[group] = None
            self._group_held += nbytes
            while self._group_held > self.group_bytes:
                self._drop_group(next(iter(self._group_order)))

    def holds_group(self, backend: str, cid: str) -> bool:
        """Whether a kept row group's range holds ``cid`` (then reading it again would add nothing)."""
        with self._lock:
            return self._group_holding(backend, cid) is not None

    def _from_group(self, backend: str, cid: str, key: tuple[str, str]) -> Kept | None:
        """The record of ``cid`` made from the kept row group holding it, with the next ``MAKE_ROWS``
        (a walk asks for them next), each kept under its own CID; None when no group holds it."""
        with self._lock:
            group = self._group_holding(backend, cid)
            if group is not None:
                self._group_order.move_to_end(group)
        row = None if group is None else group.row_of(cid)
        if group is None or row is None:
            return None
        made = group.make(row, min(row + MAKE_ROWS, len(group.cids)))  # outside the lock: ~5 us a row
        now = self.clock()
        with self._lock:
            if not self._serves(group, now):
                return None  # a change dropped it meanwhile, or a newer version was read: its records may be old
            for record, mtime_ns in made[:0:-1]:  # the asked one last: the most recently used
                self._keep_made(group, (backend, _cid_identity(str(record["cid"]))), record, mtime_ns, now)
            kept = self._keep_made(group, key, made[0][0], made[0][1], now)
        return kept if kept.lease is not None else None

    def _keep_made(
        self, group: RowGroup, key: tuple[str, str], record: dict[str, Any], mtime_ns: int, now: float
    ) -> Kept:
        """Keep a record made from ``group`` under ``key``, unless a record is kept there (read
        otherwise: it is at least as new); returns what is kept."""
        found = self._records.get(key)
        if found is not None and found.until > now:
            return found
        lease = Lease(group.backend, group.version, group.expires, key)
        kept = self._records[key] = Kept(record, group.version, group.expires, lease, mtime_ns)
        return kept

    def _serves(self, group: RowGroup, now: float) -> bool:
        """Whether ``group`` may still make records: kept, not expired, and no newer version was read."""
        ahead = self._ahead.get(group.backend)
        return group in self._group_order and group.expires > now and not _newer(ahead, group.version)

    def _group_holding(self, backend: str, cid: str) -> RowGroup | None:
        groups = self._groups.get(backend)
        if not groups:
            return None
        index = bisect.bisect_right(groups, cid, key=lambda group: group.first) - 1
        if index < 0 or groups[index].last < cid or groups[index].expires <= self.clock():
            return None
        return groups[index]

    def _drop_group(self, group: RowGroup) -> None:
        self._groups[group.backend].remove(group)
        del self._group_order[group]
        self._group_held -= group.nbytes

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
            self._groups.clear()
            self._group_order.clear()
            self._group_held = 0

    def __len__(self) -> int:
        return len(self._records)


def _holds_any(group: RowGroup, ordered: Sequence[str]) -> bool:
    """Whether ``group``'s CID range holds any of the sorted CIDs ``ordered``."""
    index = bisect.bisect_left(ordered, group.first)
    return index < len(ordered) and ordered[index] <= group.last


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
