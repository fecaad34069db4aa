"""One backend's pins as a Delta Lake table: the canonical store (issue #12).

On disk (CONTRACT §1)::

    ROOT/backends/<b>/pin_mappings.delta/_delta_log/00000000000000000042.json …   the log (delta-rs)
    ROOT/backends/<b>/pin_mappings.delta/part-<32 hex>.parquet …                  the data files

The table engine is delta-rs (the ``deltalake`` package): it owns the log, the commit protocol
(an atomic create-if-absent of the next log entry: rename-no-replace on a local disk, a conditional put
on S3), conflict detection, checkpoints, log clean-up and vacuum. pinfs owns only the layout of the data
files, which Delta leaves to the writer: each file holds a disjoint range of CIDs, sorted, about
``file_rows()`` rows, in row groups of 2048 with statistics, so a lookup is the file whose log
statistics (min/max ``cid``) cover the CID, then the one row group whose footer statistics do.

One more file, the *insert file* (``ins-<32 hex>.parquet``, sorted, in the same schema), takes the CIDs
that are new to the table: a pin of a new CID rewrites it (small) instead of the 16k-row file of its
range. A write that would leave it holding more than ``small_insert_rows()`` (a batch of 10,000 new
CIDs) writes those rows as a *bulk* insert file (``ins-bulk-<32 hex>.parquet``) and an empty insert
file instead, so a pin after a batch still rewrites a small file. A bulk file is rewritten only by a
change to a CID it holds. Insert files hold only CIDs that no other file holds, so the table's rows are
unique as any Delta reader sees them; pinfs' own readers merge them into the ranges in memory
(``pinfs.data.pieces.MergedPiece``). Once they hold ``insert_rows()`` rows, the bulk files' rows are
merged into the files of their ranges (``Transaction.merge_inserts``, a few files per commit, in the
background): a merge never removes the small insert file, so pins of new CIDs never conflict with it.

Why every write conflicts where it must: Delta detects a conflict when two transactions remove the same
file; two blind appends never conflict. So every pinfs write removes the file(s) a conflicting writer
would remove too: a change to CIDs already in the table removes the file holding each of them (a range
file covers from its first CID up to the next file's first); adding new CIDs removes the insert file,
which every table made by this release has from its first version on (a table of an older release has
none, and its writers add new CIDs into the files of their ranges, as before). Two writers touching
one CID therefore always race on one file, and delta-rs refuses the second with ``CommitFailedError``;
the caller re-reads and redoes its change (``pinfs.data.store``). Writers of different ranges commit
side by side.

What it must not do: read data through ``DeltaTable.to_pyarrow_table()``/``to_pyarrow_dataset()``
(delta-rs #2184: the process may abort at exit with "terminate called without an active exception").
Data files are read with plain pyarrow from the paths in the log.

Threading: synchronous; ``DeltaPins`` guards its cached ``DeltaTable`` with a lock, so one instance may
be used from several threads.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pinfs.data.fsutil import fsync_file, local_temp_for, naming
from pinfs.data.rootfs import S3Path, forget_metadata, keep_local, put_object
from pinfs.data.s3client import S3Unreachable, delta_storage_options, unreachable
from pinfs.data.schema import arrow_schema
from pinfs.errors import CorruptData, PinfsError

log = logging.getLogger(__name__)

TABLE_DIR = "pin_mappings.delta"
LOG_DIR = "_delta_log"
DEFAULT_FILE_ROWS = 16384
DATA_FILE_PREFIX = "part-"
# The insert file: new CIDs go into it instead of into the data file of their range (see the module
# docstring); every version of a table made by this release has exactly one, possibly empty.
INSERT_FILE_PREFIX = "ins-"
# Bulk insert files: what a write of many new CIDs (or the insert file grown past
# ``small_insert_rows()``) leaves, immutable until changed or merged (see the module docstring).
BULK_FILE_PREFIX = "ins-bulk-"
# Commits that only move rows between data files and change no record (the insert file merged into
# the ranges, files split or joined): a reader that finds only these between two versions knows that
# no pin changed, without comparing the rows (``DeltaPins.records_unchanged_between``).
MERGE_OPERATION = "merge inserts"
RELAYOUT_OPERATION = "relayout"
PROPERTIES_OPERATION = "table properties"
_RECORDS_KEPT = frozenset({MERGE_OPERATION, RELAYOUT_OPERATION, PROPERTIES_OPERATION})
MAX_LOG_ENTRIES_READ = 32  # more commits than this between two versions: comparing rows is no dearer
# A data file holding CIDs spelled other than the two standard ways (``pinfs.data.cids``: ``B…``, ``z…``, a
# mixed case) says so in its name, and lists them in its footer under ALIASES_KEY as {key: text}: the
# log is the one index readers load, and delta-rs keeps no field of ours in it but the path, so a
# lookup by another spelling finds such a file without opening any other (issue #16).
ALIASED_SUFFIX = "-aliased.parquet"
ALIASES_KEY = "pinfs.aliases"

# Table properties set at creation. Checkpoints every 4 commits keep a table load at a few ms however
# many single-pin writes came before (issue #12 measured 62 ms after 89 commits without one, ~5 ms
# with; a load replays the commits after the checkpoint, ~1 ms each, and writing one takes ~3 ms at
# 1M pins, so every 4th pin pays that instead of every load paying up to 15 replays). A removed data
# file is deleted by vacuum after 2 minutes, not delta-rs' default week: a pin rewrites a 16k-row file
# every time, and every file removed within the retention is a tombstone that each checkpoint holds
# and each table load reads (~1 ms per 1,000; 10,000 single pins in 15 minutes made loads 1.84x, in
# 2 minutes 1.34x: issue #12). Readers of a version for longer (the mount's big listings, exports,
# ``pin ls``, sync) record it, and maintenance keeps its files (``pinfs.data.readers``). The log is
# cleaned up by count (``DeltaPins.cleanup_log``), not by delta-rs' age: its 30 days here are only the
# backstop (tables made before this release say one day, which is as good while exports keep up).
TABLE_PROPERTIES: dict[str, str] = {
    "delta.checkpointInterval": "4",
    "delta.deletedFileRetentionDuration": "interval 2 minutes",
    "delta.logRetentionDuration": "interval 30 days",
    "delta.enableExpiredLogCleanup": "true",
}
# What tables made by an earlier release have instead, brought to the above by maintenance
# (``DeltaPins.upgrade_properties``); a value the user set is left alone.
EARLIER_TABLE_PROPERTIES: dict[str, str] = {
    "delta.checkpointInterval": "16",
    "delta.deletedFileRetentionDuration": "interval 15 minutes",
    "delta.logRetentionDuration": "interval 1 days",
}
# The newest log entries clean-up always keeps (``DeltaPins.cleanup_log``). delta-rs lists the whole
# _delta_log to load, update and commit (a stat per entry on a local disk), so every entry kept costs
# each pin: a day of single pins left 1,295 entries and 92 ms pins (60 ms at 324). 48 versions is more
# than a reader needs while it loads (it starts at the newest checkpoint, a few versions back), than
# ``RECENT_COMMITS`` looks back, and than a mount compares (``MAX_LOG_ENTRIES_READ``).
LOG_VERSIONS_KEPT = 48
# How far back a retried request looks for the commit that did it (issue #15: a command whose commit
# went in, but whose exports failed, is run again once the disk has room).
RECENT_COMMITS = 32
REQUEST_KEY = "request"
COMMIT_TOKEN_KEY = "commit"  # a random token in each commit's info: which log entry is this process's


def insert_rows() -> int:
    """Rows the insert file may hold before it is merged into the range files: as many as one range
    file (``file_rows()``), so a pin of a new CID never rewrites more than a range file's worth."""
    return file_rows()


def small_insert_rows() -> int:
    """Rows the small insert file may hold: a write that would leave more makes it a bulk file, so a
    pin of a new CID rewrites at most this many rows (one row group at the default ``file_rows()``)."""
    return max(8, file_rows() // 8)


def file_rows() -> int:
    """Target rows per data file: ``PINFS_FILE_ROWS`` (at least 8) or 16384. A file of 16k rows is read
    and rewritten in ~25 ms, and a 1M-pin backend has ~61 of them. (``PINFS_SHARD_ROWS``, the name of
    the sharded form this replaced, is still read.)"""
    raw = os.environ.get("PINFS_FILE_ROWS") or os.environ.get("PINFS_SHARD_ROWS", "")
    return max(int(raw), 8) if raw.isdigit() else DEFAULT_FILE_ROWS


class CommitConflict(Exception):
    """Another writer committed a change to a file this commit replaces (or created the table first)."""


@dataclass(frozen=True)
class DataFile:
    """One data file of a version, as the log describes it. ``min_cid``/``max_cid`` are None for the
    empty file of a table without pins."""

    path: str  # relative to the table directory, as in the log
    size: int
    rows: int
    min_cid: str | None
    max_cid: str | None

    @property
    def aliased(self) -> bool:
        """Whether the file holds CIDs spelled other than the standard ways (see ALIASED_SUFFIX)."""
        return self.path.endswith(ALIASED_SUFFIX)

    @property
    def is_insert(self) -> bool:
        """Whether this is an insert file (see INSERT_FILE_PREFIX), not a data file of a CID range."""
        return self.path.startswith(INSERT_FILE_PREFIX)

    @property
    def is_bulk(self) -> bool:
        """Whether this is a bulk insert file (see BULK_FILE_PREFIX), not the small one."""
        return self.path.startswith(BULK_FILE_PREFIX)


@dataclass(frozen=True)
class TableVersion:
    """What identifies one version of one table (a snapshot's ``identity``). ``mtime_ns`` is when the
    version was committed, for the mount's timestamps."""

    location: str
    table_id: str
    version: int
    mtime_ns: int


@dataclass(frozen=True)
class TableState:
    """One version of a table: its data files in CID order (the empty file, if any, first)."""

    identity: TableVersion
    files: tuple[DataFile, ...]

    @property
    def version(self) -> int:
        return self.identity.version

    @property
    def count(self) -> int:
        return sum(data_file.rows for data_file in self.files)

    @property
    def range_files(self) -> list[DataFile]:
        """The data files of CID ranges (disjoint, in order; the empty file, if any, first)."""
        return [data_file for data_file in self.files if not data_file.is_insert]

    @property
    def insert_files(self) -> list[DataFile]:
        """The insert files: one in every version of a table made by this release, none in a table
        made before it (which takes new CIDs into the files of their ranges, as it always did)."""
        return [data_file for data_file in self.files if data_file.is_insert]

    @property
    def small_insert_files(self) -> list[DataFile]:
        """The small insert file (one; none in a table made before it), which every write of a new CID
        removes."""
        return [data_file for data_file in self.files if data_file.is_insert and not data_file.is_bulk]

    @property
    def bulk_files(self) -> list[DataFile]:
        """The bulk insert files, merged into the ranges in the background."""
        return [data_file for data_file in self.files if data_file.is_bulk]


def _deltalake() -> Any:
    import deltalake  # imported when first needed: the mount must be ready before it pays for it

    return deltalake


class DeltaPins:
    """The Delta table at ``directory``: a local directory, or a prefix on S3 (``pinfs.data.rootfs``), where
    delta-rs commits with conditional puts and pinfs puts its data files as whole objects."""

    def __init__(self, directory: Path | S3Path) -> None:
        self.directory = directory
        self.log_dir = self.directory / LOG_DIR
        self._lock = threading.Lock()
        self._table: Any = None  # a cached deltalake.DeltaTable, brought up to date on each load
        self._table_directory: tuple[object, ...] = ()  # which table it was loaded from (``_birth``)

    # -- reading --

    def exists(self) -> bool:
        """Whether the table has been created: its first commit is in the log."""
        return self._entry(0).is_file() or (self.log_dir / "_last_checkpoint").is_file()

    def _entry(self, version: int) -> Path | S3Path:
        """The log entry of commit ``version``."""
        return self.log_dir / f"{version:020d}.json"

    def has_version(self, version: int) -> bool:
        """Whether commit ``version`` exists (one ``stat``): how a reader learns that its version is
        no longer the newest without loading the log."""
        return self._entry(version).is_file()

    def records_unchanged_between(self, old: int, new: int) -> bool:
        """Whether every commit after version ``old`` up to ``new`` only moved rows between files (its
        commit info names an operation of ``_RECORDS_KEPT``). False when one cannot be read (cleaned up
        after a checkpoint, another writer's commit): then the caller compares the rows."""
        if new - old > MAX_LOG_ENTRIES_READ:
            return False
        for version in range(old + 1, new + 1):
            try:
                entry = self._entry(version).read_bytes()
            except (OSError, PinfsError):
                return False
            if _operation_of(entry) not in _RECORDS_KEPT:
                return False
        return True

    def log_stamp(self) -> tuple[int, int, int]:
        """The log directory's identity and modification time: changes with every commit and clean-up,
        and when the table is deleted and made again (a new directory). S3 has no such thing: there,
        only the next commit's appearance says that a version is superseded."""
        if isinstance(self.log_dir, S3Path):
            return (0, 0, 0)
        try:
            info = os.stat(self.log_dir)
        except FileNotFoundError:
            return (0, 0, 0)
        return (info.st_dev, info.st_ino, info.st_mtime_ns)

    def load(self, version: int | None = None) -> TableState:
        """The newest version (or ``version``); CorruptData if the log cannot be read."""
        with self._lock:
            try:
                table = self._load_table(version)
                # from_stream, not pa.table(): that first imports pandas (~0.7 s) to ask whether this is a frame
                actions = pa.RecordBatchReader.from_stream(table.get_add_actions(flatten=True)).read_all()
                identity = TableVersion(
                    str(self.directory), table.metadata().id, table.version(), self._commit_time(table.version())
                )
            except (CorruptData, S3Unreachable):
                raise
            except Exception as exc:  # delta-rs raises several exception types for a broken log
                self._raise_if_unreachable(exc)
                raise CorruptData(f"{self.directory}: not a readable Delta table ({_one_line(exc)})") from None
        return TableState(identity, _files_from_actions(actions, self.directory))

    def _load_table(self, version: int | None) -> Any:
        deltalake = _deltalake()
        if version is not None:
            return deltalake.DeltaTable(str(self.directory), version=version, storage_options=self._options())
        directory = self._birth()
        if self._table is None or directory != self._table_directory:  # none yet, or the table was made again
            self._table = deltalake.DeltaTable(str(self.directory), storage_options=self._options())
            self._table_directory = directory
        else:
            self._table.update_incremental()
        return self._table

    def _options(self) -> dict[str, str] | None:
        """delta-rs' storage options: on S3 the request bounds of ``pinfs.data.rootfs`` (a stopped server is
        an error in seconds); the endpoint and credentials come from the same AWS_* variables."""
        return delta_storage_options() if isinstance(self.directory, S3Path) else None

    @contextlib.contextmanager
    def _talking(self) -> Iterator[None]:
        """Around a call of delta-rs: an error that says the store did not answer is S3Unreachable."""
        try:
            yield
        except Exception as exc:
            self._raise_if_unreachable(exc)
            raise

    def _raise_if_unreachable(self, exc: BaseException) -> None:
        """S3Unreachable for a delta-rs error that says the store did not answer (object_store's
        "Error performing GET … HTTP error"), so that it reads as what it is, not as a broken table."""
        text = str(exc)
        if isinstance(self.directory, S3Path) and ("HTTP error" in text or "error sending request" in text):
            raise unreachable(str(self.directory), _one_line(exc).split("->")[-1].strip()) from None

    def _commit_time(self, version: int) -> int:
        try:
            return self._entry(version).stat().st_mtime_ns
        except FileNotFoundError:  # cleaned up after a checkpoint: the log directory's time will do
            return self.log_stamp()[2]

    # -- writing data files --

    def write_file(self, table: pa.Table, *, insert: bool = False, bulk: bool = False) -> DataFile:
        """Write ``table`` (sorted by CID, in the store's schema) as a new data file, or as the (small or
        bulk) insert file, durably. It is part of no version until a commit adds it."""
        from pinfs.data.cids import aliases_of
        from pinfs.data.tables import write_parquet

        self._ensure_directory()
        aliases = aliases_of(table.column("cid"))
        prefix = BULK_FILE_PREFIX if bulk else INSERT_FILE_PREFIX if insert else DATA_FILE_PREFIX
        name = f"{prefix}{secrets.token_hex(16)}" + (ALIASED_SUFFIX if aliases else ".parquet")
        metadata = {ALIASES_KEY: json.dumps(aliases, sort_keys=True)} if aliases else None
        path = self.directory / name
        if isinstance(path, S3Path):
            size = _put_data_file(table, path, metadata)
        else:
            try:
                with naming(path):
                    write_parquet(table, path, metadata)
                    fsync_file(path)
            except BaseException:  # a half-written file (a full disk) is no use to anyone: not left
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            size = os.path.getsize(path)
        if table.num_rows == 0:
            return DataFile(name, size, 0, None, None)
        cids = table.column("cid")
        return DataFile(name, size, table.num_rows, cids[0].as_py(), cids[-1].as_py())

    def _ensure_directory(self) -> None:
        """The table's directory, made if missing; one that is a symlink is refused, never followed
        (it could lead outside the data root)."""
        if isinstance(self.directory, S3Path):
            return  # a prefix: it exists once something is put under it
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.directory, 0o755)
        if not stat.S_ISDIR(os.lstat(self.directory).st_mode):
            raise CorruptData(f"{self.directory}: is not a directory; refusing to write through it")

    def discard(self, files: Sequence[DataFile]) -> None:
        """Delete data files this process wrote for a commit that did not happen."""
        for data_file in files:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / data_file.path).unlink()

    # -- commits --

    def create(self, files: Sequence[DataFile], info: dict[str, Any]) -> None:
        """Create the table with ``files`` as version 0. CommitConflict if it exists already."""
        deltalake = _deltalake()
        from deltalake.transaction import CommitProperties, create_table_with_add_actions

        with self._lock, naming(self._entry(0)):
            try:
                create_table_with_add_actions(
                    str(self.directory),
                    deltalake.Schema.from_arrow(arrow_schema()),
                    [_add_action(data_file) for data_file in files],
                    mode="error",
                    configuration=TABLE_PROPERTIES,
                    commit_properties=CommitProperties(custom_metadata=_commit_info(info)),
                    storage_options=self._options(),
                )
            except Exception as exc:
                self._forget_log()
                self._raise_if_unreachable(exc)
                if self.exists():  # another writer created it first
                    raise CommitConflict(str(exc)) from None
                raise
            self._table = None
            self._forget_log()

    def commit(
        self, base: TableState, removed: Sequence[DataFile], added: Sequence[DataFile], info: dict[str, Any]
    ) -> TableState | None:
        """Commit ``removed`` and ``added`` as one version after ``base``. CommitConflict when another
        writer removed one of ``removed`` first (delta-rs checks that against every commit since
        ``base``); otherwise delta-rs commits on top of whatever else landed meanwhile. Returns the
        version made when it came right after ``base`` (else None): the caller knows it without loading
        the log again (``PinStore.remember``)."""
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import CommitProperties, PostCommitHookProperties

        now_ms = int(time.time() * 1000)
        actions = [_remove_action(data_file, now_ms) for data_file in removed]
        actions += [_add_action(data_file) for data_file in added]
        token = secrets.token_hex(8)  # tells this commit's log entry from any other writer's
        metadata = _commit_info({**info, COMMIT_TOKEN_KEY: token})
        # delta-rs' post-commit hook writes the checkpoint a commit makes due, unless this process has
        # a background writer for them (``deferred_checkpoints``); its clean-up of the log by age is
        # never wanted (``cleanup_log``, at maintenance, does it by count).
        deferred = _deferred_checkpoints
        hooks = PostCommitHookProperties(create_checkpoint=deferred is None, cleanup_expired_logs=False)
        with self._lock, naming(self.log_dir), self._talking():
            table = self._table_at(base.version)
            try:
                table.create_write_transaction(
                    actions,
                    mode="append",
                    schema=arrow_schema(),
                    commit_properties=CommitProperties(custom_metadata=metadata, max_commit_retries=20),
                    post_commithook_properties=hooks,
                )
            except CommitFailedError as exc:
                raise CommitConflict(_one_line(exc)) from None
            finally:
                self._forget_log()
            made = self._version_made(base, removed, added, token)
            if deferred is not None and (made is None or _checkpoint_due(table, made.version)):
                deferred.submit(self)
            return made

    def _version_made(
        self, base: TableState, removed: Sequence[DataFile], added: Sequence[DataFile], token: str
    ) -> TableState | None:
        """The version right after ``base``, if it is the commit of ``token`` (one read of its log entry):
        ``base``'s files less ``removed``, with ``added``."""
        version = base.version + 1
        try:
            if token.encode() not in self._entry(version).read_bytes():
                return None
            identity = TableVersion(base.identity.location, base.identity.table_id, version, self._commit_time(version))
        except (OSError, PinfsError):
            return None
        gone = {data_file.path for data_file in removed}
        files = [data_file for data_file in base.files if data_file.path not in gone] + list(added)
        return TableState(identity, _in_cid_order(files))

    def _birth(self) -> tuple[object, ...]:
        """What tells this table from one deleted and made again at the same place: the log directory's
        identity and that of its first commit (a new directory may reuse the old one's inode number).
        Once log clean-up removed the first commit, this changes once more, which costs one reload."""
        if isinstance(self.log_dir, S3Path):
            return ()
        try:
            first = os.stat(self._entry(0))
            first_identity: tuple[int, int] | None = (first.st_ino, first.st_mtime_ns)
        except FileNotFoundError:
            first_identity = None
        return (*self.log_stamp()[:2], first_identity)

    def _forget_log(self) -> None:
        """delta-rs writes the log itself: on S3, what pinfs remembered of it is out of date now."""
        if isinstance(self.log_dir, S3Path):
            forget_metadata(self.log_dir, below=True)

    def _table_at(self, version: int) -> Any:
        """A ``DeltaTable`` loaded at ``version``: the cached one when it is there (the usual case: the
        writer loaded the newest version just before), so a commit does not load the log again."""
        cached = self._table is not None and self._birth() == self._table_directory
        if cached and self._table.version() < version:  # behind this process's own last commit
            self._table.update_incremental()
        if cached and self._table.version() == version:
            return self._table
        return _deltalake().DeltaTable(str(self.directory), version=version, storage_options=self._options())

    def version_of_request(self, request: str, within: int = RECENT_COMMITS) -> int | None:
        """The version, among the last ``within`` commits, whose info names ``request`` (see
        ``Transaction.update``); None when none does."""
        with self._lock:
            history = self._load_table(None).history(within)
        for commit in history:
            if commit.get(f"pinfs.{REQUEST_KEY}") == request and isinstance(commit.get("version"), int):
                return int(commit["version"])
        return None

    # -- maintenance --

    def checkpoint(self, keep_versions: Sequence[int] = ()) -> int:
        """Write a log checkpoint of the newest version, then clean the log up (``cleanup_log``).
        Returns how many log files were deleted."""
        with self._lock, self._unreadable_log(), self._talking():
            self._load_table(None).create_checkpoint()
            return self.cleanup_log(keep_versions)

    def write_checkpoint(self) -> None:
        """A checkpoint of the newest version, from a table loaded for it (not the cached one, whose
        lock a writer may want meanwhile); for ``CheckpointWriter``."""
        with self._unreadable_log(), self._talking():
            _deltalake().DeltaTable(str(self.directory), storage_options=self._options()).create_checkpoint()

    def cleanup_log(self, keep_versions: Sequence[int] = ()) -> int:
        """Delete the log files no reader needs: those older than the newest checkpoint at least
        ``LOG_VERSIONS_KEPT`` versions back, except what loading each of ``keep_versions`` takes (its
        newest checkpoint at or before it and the commits after that up to it: the version a parquet
        export was made from, which importing a foreign parquet diffs against, and vacuum keeps).
        delta-rs' own clean-up goes by age only, so a steady stream of pins kept a day of entries; it
        and every Delta reader start from a checkpoint, so the gap left before a kept version's
        entries is never read (checked: tests/test_table.py). Returns how many files were deleted."""
        versions: dict[int, list[Path | S3Path]] = {}
        for entry in self.log_dir.iterdir():
            if entry.name[:20].isdigit():
                versions.setdefault(int(entry.name[:20]), []).append(entry)
        checkpoints = sorted(
            version for version, entries in versions.items() if any(".checkpoint." in entry.name for entry in entries)
        )
        newest = max(versions, default=-1)
        # never past the checkpoint readers are pointed to (only ever older if its writer died midway)
        floor = _newest_at_or_before(checkpoints, min(newest - LOG_VERSIONS_KEPT, self._hinted_checkpoint()))
        if floor is None:
            return 0
        kept: set[int] = set()
        for version in keep_versions:
            if version < floor:
                start = _newest_at_or_before(checkpoints, version)
                kept.update(range(0 if start is None else start, version + 1))
        deleted = 0
        for version in sorted(versions):
            if version >= floor:
                break
            if version in kept:
                continue
            for entry in versions[version]:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    deleted += 1
        self._forget_log()
        return deleted

    def _hinted_checkpoint(self) -> int:
        """The version ``_last_checkpoint`` names (where delta-rs starts a load); -1 when it names none."""
        try:
            version = json.loads((self.log_dir / "_last_checkpoint").read_bytes()).get("version")
        except (OSError, PinfsError, ValueError, AttributeError):
            return -1
        return version if isinstance(version, int) else -1

    def upgrade_properties(self) -> bool:
        """Give a table made by an earlier release today's properties (``EARLIER_TABLE_PROPERTIES``),
        in one commit that changes no record. False when there is nothing to change, or another
        writer committed first (the next maintenance tries again)."""
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import CommitProperties, PostCommitHookProperties

        with self._lock, self._unreadable_log(), self._talking():
            table = self._load_table(None)
            have = table.metadata().configuration
            wanted = {
                key: TABLE_PROPERTIES[key]
                for key, old in EARLIER_TABLE_PROPERTIES.items()
                if have.get(key) == old != TABLE_PROPERTIES[key]
            }
            if not wanted:
                return False
            info = _commit_info({"operation": PROPERTIES_OPERATION})
            try:
                table.alter.set_table_properties(
                    wanted,
                    commit_properties=CommitProperties(custom_metadata=info),
                    # not delta-rs' clean-up by the old one-day age: it could take the exported version
                    post_commithook_properties=PostCommitHookProperties(cleanup_expired_logs=False),
                )
            except CommitFailedError:
                return False
            finally:
                self._forget_log()
            return True

    @contextlib.contextmanager
    def _unreadable_log(self) -> Any:
        """delta-rs' errors for a log it cannot read (several types, multi-line) as one CorruptData line."""
        try:
            yield
        except CorruptData:
            raise
        except Exception as exc:
            raise CorruptData(f"{self.directory}: not a readable Delta table ({_one_line(exc)})") from None

    def vacuum(self, keep_versions: Sequence[int] = (), hours: int | None = None) -> list[str]:
        """Delete data files no version younger than the retention needs, and files no commit names
        that are older than it (left by writers that died before committing; delta-rs judges those by
        their modification time, so a file being written for a commit is never taken). ``hours``
        overrides the table's retention (``delta.deletedFileRetentionDuration``)."""
        with self._lock, self._unreadable_log(), self._talking():
            table = self._load_table(None)
            return list(
                table.vacuum(
                    retention_hours=hours,
                    dry_run=False,
                    enforce_retention_duration=hours is None,
                    full=True,
                    keep_versions=list(keep_versions) or None,
                )
            )


def _checkpoint_due(table: Any, version: int) -> bool:
    """Whether delta-rs' rule asks for a checkpoint at ``version`` (every ``delta.checkpointInterval``th)."""
    interval = table.metadata().configuration.get("delta.checkpointInterval", "100")
    every = int(interval) if interval.isdigit() and int(interval) > 0 else 100
    return (version + 1) % every == 0


class CheckpointWriter:
    """Writes the log checkpoints the commits of this process make due, on a thread of its own, instead
    of in the commit (delta-rs' post-commit hook): a long-running writer, the mount, then does not make
    every fourth pin wait for a fresh load of the log and a checkpoint (~15 ms at 10M pins, ~40 ms in
    the mount's pin). A table waits in the queue once however many commits made it due; what is queued
    when the process ends is left to the next checkpoint (a reader replays a few more log entries)."""

    def __init__(self, after: Callable[[DeltaPins], None] | None = None) -> None:
        self._after = after  # called with each table once its checkpoint is written
        self._queued: dict[str, DeltaPins] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pinfs-checkpoints", daemon=True)
        self._thread.start()

    def submit(self, table: DeltaPins) -> None:
        with self._lock:
            self._queued.setdefault(str(table.directory), table)
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                queued, self._queued = list(self._queued.values()), {}
            for table in queued:
                try:
                    table.write_checkpoint()
                    if self._after is not None:
                        self._after(table)
                except Exception as exc:  # the next commit that makes one due tries again
                    log.info("writing a checkpoint of %s: %s", table.directory, _one_line(exc))
            if self._closed:
                return


_deferred_checkpoints: CheckpointWriter | None = None


@contextlib.contextmanager
def deferred_checkpoints(after: Callable[[DeltaPins], None] | None = None) -> Iterator[CheckpointWriter]:
    """While inside, this process's commits leave their checkpoints to a ``CheckpointWriter`` (which
    calls ``after`` with each table it wrote one for)."""
    global _deferred_checkpoints
    writer = CheckpointWriter(after)
    _deferred_checkpoints = writer
    try:
        yield writer
    finally:
        _deferred_checkpoints = None
        writer.close()


def _newest_at_or_before(versions: Sequence[int], limit: int) -> int | None:
    """The largest of ``versions`` (sorted) not above ``limit``; None when there is none."""
    index = bisect.bisect_right(versions, limit)
    return versions[index - 1] if index else None


def _put_data_file(table: pa.Table, path: S3Path, metadata: dict[str, str] | None) -> int:
    """Write a data file to S3: encoded into a local temporary file, put in one PUT that must create the
    object (its name is new), and kept in the local read cache, so this host never downloads it."""
    from pinfs.data.tables import write_parquet

    temp = local_temp_for(path)
    try:
        write_parquet(table, temp, metadata)
        etag = put_object(path, temp, if_absent=True)
        keep_local(path, temp, etag)
        return os.path.getsize(temp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _files_from_actions(actions: pa.Table, directory: Path | S3Path) -> tuple[DataFile, ...]:
    files = []
    names = set(actions.column_names)
    if "min.cid" not in names and actions.num_rows:
        raise CorruptData(f"{directory}: the log has no per-file cid statistics")
    columns = {name: actions.column(name).to_pylist() for name in ("path", "size_bytes", "num_records")}
    mins = actions.column("min.cid").to_pylist() if "min.cid" in names else [None] * actions.num_rows
    maxes = actions.column("max.cid").to_pylist() if "max.cid" in names else [None] * actions.num_rows
    for path, size, rows, low, high in zip(
        columns["path"], columns["size_bytes"], columns["num_records"], mins, maxes, strict=True
    ):
        if rows is None:
            raise CorruptData(f"{directory}: the log gives no row count for {path}")
        if rows and (low is None or high is None):
            raise CorruptData(f"{directory}: the log gives no cid range for {path}")
        files.append(DataFile(str(path), int(size), int(rows), low, high))
    return _in_cid_order(files)


def _in_cid_order(files: Sequence[DataFile]) -> tuple[DataFile, ...]:
    """``files`` in the order of ``TableState.files``: by first CID, empty files first."""
    return tuple(sorted(files, key=lambda data_file: (data_file.min_cid is not None, data_file.min_cid or "")))


def _add_action(data_file: DataFile) -> Any:
    from deltalake.transaction import AddAction

    stats: dict[str, Any] = {"numRecords": data_file.rows}
    if data_file.rows:
        stats.update(minValues={"cid": data_file.min_cid}, maxValues={"cid": data_file.max_cid}, nullCount={"cid": 0})
    return AddAction(data_file.path, data_file.size, {}, int(time.time() * 1000), True, json.dumps(stats))


def _remove_action(data_file: DataFile, now_ms: int) -> Any:
    from deltalake.transaction import RemoveAction

    return RemoveAction(data_file.path, True, now_ms, data_file.size)


def _operation_of(entry: bytes) -> str | None:
    """The pinfs operation a commit's log entry names in its commit info (``_commit_info``), if any."""
    for line in entry.splitlines():
        if b'"commitInfo"' not in line:
            continue
        try:
            info = json.loads(line).get("commitInfo")
        except ValueError:
            return None
        operation = info.get("pinfs.operation") if isinstance(info, dict) else None
        return operation if isinstance(operation, str) else None
    return None


def _commit_info(info: dict[str, Any]) -> dict[str, str]:
    """Commit metadata under ``pinfs.`` keys (what did it, for ``history``), as strings."""
    return {f"pinfs.{key}": value if isinstance(value, str) else json.dumps(value) for key, value in info.items()}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
