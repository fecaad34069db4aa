"""Long readers of a table's versions, recorded beside its log so that maintenance keeps their files.

What it is for: vacuum deletes a data file once the version that stopped naming it is older than the
table's retention (``delta.deletedFileRetentionDuration``, 2 minutes: ``pinfs.data.delta``). Lookups
and commands read one version for milliseconds, but a big listing in the mount reads its version for as
long as it is open (a ``find`` over 100k pins takes minutes: docs/caching.md) and an export for
seconds to a minute. Such a reader says so here; every host's maintenance reads the records and
passes their versions to vacuum's ``keep_versions`` and to the log's clean-up (``pinfs.ops.maintain``),
as it does for the exported version. So the retention can be short, which keeps the checkpoints small
(issue #12: every file removed within the retention is a tombstone each table load reads).

Where: ``<table>/_pinfs_readers/<reader>.json``, one object per process and table,
``{"reader", "host", "pid", "versions": [...], "expires": <unix seconds>}``. Delta readers and
vacuum pass over names starting with ``_`` (checked: tests/test_readers.py). A process renews its
records every ``RENEW_SECONDS``; a record not renewed for ``RECORD_SECONDS`` is over (its process
died), and maintenance deletes one over for ``FORGET_SECONDS``. The hosts sharing a root must agree
on the time within a minute, as Delta's retention already asks of them.

Threading: ``ReaderRecords`` is used from any thread; ``hold``/``release`` never touch disk, so the
mount calls them on its event loop. A daemon thread renews the records of a process holding any.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator
from pathlib import Path

from pinfs.data.delta import TableVersion
from pinfs.data.fsutil import atomic_write_bytes
from pinfs.data.rootfs import S3Path, as_location, forget_metadata
from pinfs.errors import PinfsError, describe

log = logging.getLogger(__name__)

READERS_DIR = "_pinfs_readers"
RENEW_SECONDS = 60.0
RECORD_SECONDS = 300.0  # five renewals missed: the process is gone (or hung that long)
FORGET_SECONDS = 3600.0
MAX_RECORD_BYTES = 1 << 16


def readers_dir(table_dir: Path | S3Path) -> Path | S3Path:
    return table_dir / READERS_DIR


def versions_read(table_dir: Path | S3Path, now: float | None = None) -> list[int]:
    """The versions of the table at ``table_dir`` that a live record names, sorted. Records over for
    ``FORGET_SECONDS`` are deleted; one that cannot be read is left alone and logged (a half-written
    record cannot exist: each is replaced whole)."""
    now = time.time() if now is None else now
    directory = readers_dir(table_dir)
    if isinstance(directory, S3Path):
        forget_metadata(directory, below=True)  # another host's record may be a second old
    try:
        entries = [entry for entry in directory.iterdir() if entry.name.endswith(".json")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    versions: set[int] = set()
    for entry in entries:
        record = _read_record(entry)
        if record is None:
            continue
        expires, named = record
        if expires > now:
            versions.update(named)
        elif now - expires > FORGET_SECONDS:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    return sorted(versions)


def _read_record(path: Path | S3Path) -> tuple[float, list[int]] | None:
    try:
        data = path.read_bytes()
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(f"over {MAX_RECORD_BYTES} bytes")
        value = json.loads(data)
        expires, versions = value["expires"], value["versions"]
        if not isinstance(expires, (int, float)) or not all(isinstance(v, int) for v in versions):
            raise ValueError("'expires' must be a number and 'versions' a list of integers")
    except FileNotFoundError:
        return None  # ended meanwhile
    except (OSError, PinfsError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: not a reader record, left alone (%s)", path, describe(exc))
        return None
    return float(expires), list(versions)


def table_versions(identities: Iterable[Hashable | None]) -> list[TableVersion]:
    """The table versions among snapshot identities (the others are files, read whole at once)."""
    return [identity for identity in identities if isinstance(identity, TableVersion)]


class ReaderRecords:
    """The versions this process reads for long, per table, and their records on the root.

    ``hold`` counts a reader of versions and returns the tables whose record lacks one of them, for
    ``write`` (the caller chooses the thread); ``release`` only counts. A released version stays in
    its record until the next renewal, so a listing opened again and again (``ls`` in a loop) writes
    its record once per version, not once per listing."""

    def __init__(self, reader: str | None = None, renew_seconds: float = RENEW_SECONDS) -> None:
        self.reader = reader or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.renew_seconds = renew_seconds
        self._held: Counter[tuple[str, int]] = Counter()  # (table location, version) -> readers
        self._lingering: set[tuple[str, int]] = set()  # released since the last renewal
        self._written: dict[str, frozenset[int]] = {}  # table location -> versions its record names
        self._unwritable: set[str] = set()  # tables whose record could not be written (said once)
        self._lock = threading.Lock()  # the counts
        self._write_lock = threading.Lock()  # the records: one writer at a time, the newest set last
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    def hold(self, versions: Iterable[TableVersion]) -> list[str]:
        """Count a reader of each of ``versions``; the table locations whose record must be written."""
        stale = set()
        with self._lock:
            for version in versions:
                key = (version.location, version.version)
                self._held[key] += 1
                self._lingering.discard(key)
                if version.version not in self._written.get(version.location, ()):
                    stale.add(version.location)
        return sorted(stale)

    def release(self, versions: Iterable[TableVersion], *, linger: bool = True) -> None:
        """Count a reader of each of ``versions`` less; ``linger`` False: a version no one holds any more
        leaves the records at their next ``write``, not at the next renewal."""
        with self._lock:
            for version in versions:
                key = (version.location, version.version)
                self._held[key] -= 1
                if self._held[key] <= 0:
                    del self._held[key]
                    if linger:
                        self._lingering.add(key)

    def write(self, locations: Iterable[str]) -> None:
        """Write the records of these tables now. A failure (a read-only root, a full disk) is logged:
        the reader goes on, only unrecorded. Blocking."""
        self._start_renewer()
        with self._write_lock:
            for location in locations:
                self._write_one(location)

    def renew(self) -> None:
        """Write every record again with a later expiry; drop versions released since the last renewal,
        and the records left naming none. Blocking."""
        with self._write_lock:
            with self._lock:
                self._lingering.clear()
                locations = set(self._written) | {location for location, _version in self._held}
            for location in sorted(locations):
                self._write_one(location)

    def close(self) -> None:
        """Delete this process's records (it reads no more). Blocking."""
        self._stop.set()
        with self._write_lock:
            with self._lock:
                self._held.clear()
                self._lingering.clear()
            for location in list(self._written):
                self._write_one(location)

    def start_reading(self, identities: Iterable[Hashable | None]) -> None:
        """Record this process as a reader of the table versions among snapshot ``identities`` now (until
        ``stop_reading`` of the same). Blocking."""
        self.write(self.hold(table_versions(identities)))

    def stop_reading(self, identities: Iterable[Hashable | None]) -> None:
        """End what ``start_reading`` of the same ``identities`` began, in the records too. Blocking."""
        versions = table_versions(identities)
        self.release(versions, linger=False)
        self.write({version.location for version in versions})

    @contextlib.contextmanager
    def reading(self, identity: Hashable | None) -> Iterator[None]:
        """Record this process as a reader of the version ``identity`` names while the body runs."""
        self.start_reading([identity])
        try:
            yield
        finally:
            self.stop_reading([identity])

    def _wanted(self, location: str) -> frozenset[int]:
        with self._lock:
            keys = (*self._held, *self._lingering)
        return frozenset(version for table, version in keys if table == location)

    def _write_one(self, location: str) -> None:
        wanted = self._wanted(location)
        path = readers_dir(as_location(location)) / f"{self.reader}.json"
        try:
            if wanted:
                _write_record(path, self.reader, sorted(wanted))
            elif location in self._written:
                path.unlink(missing_ok=True)
        except (OSError, PinfsError) as exc:
            # once per table as a warning: a read-only root would say it at every listing
            level = logging.DEBUG if location in self._unwritable else logging.WARNING
            self._unwritable.add(location)
            log.log(level, "%s: could not record this reader, which goes on unrecorded (%s)", path, describe(exc))
            return
        if wanted:
            self._written[location] = wanted
        else:
            self._written.pop(location, None)

    def _start_renewer(self) -> None:
        with self._lock:
            if self._renewer is not None or self._stop.is_set():
                return
            self._renewer = threading.Thread(target=self._renew_until_stopped, name="pinfs-readers", daemon=True)
        self._renewer.start()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            try:
                self.renew()
            except Exception:  # never end the thread: the records would lapse
                log.exception("renewing the reader records failed")


def _write_record(path: Path | S3Path, reader: str, versions: list[int]) -> None:
    """Replace the record at ``path`` whole. Not made durable with fsync: a record outlives nothing a
    crash would keep (the process it speaks for is gone then, and its record lapses)."""
    record = {
        "reader": reader,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "versions": versions,
        "expires": time.time() + RECORD_SECONDS,
    }
    if not isinstance(path, S3Path):
        path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(path, json.dumps(record).encode(), durable=False)


# The process's records: the mount's listings and every export hold their versions here.
READERS = ReaderRecords()


def _fresh_in_child() -> None:
    """A forked child (an export run by the mount) is a reader of its own: none of the parent's holds,
    records, locks or renewing thread."""
    READERS.__init__()  # type: ignore[misc]


os.register_at_fork(after_in_child=_fresh_in_child)
atexit.register(READERS.close)  # a command's records end with it, not RECORD_SECONDS later
