"""Regenerating a backend's ``pin_mappings.car`` from its parquet, and checking the two agree.

The CAR is a derived copy: it is rebuilt from the parquet whenever pins change through pinfs, and on
demand (``regenerate-car``, ``migrate --force-car-regeneration``). Callers that already hold the
backend's lock call ``write_car_locked``; ``regenerate_car`` takes the lock itself.

A sharded backend (``pinfs.shards``, a million pins) is too big to re-encode on every pin: after a pin
change its CAR is rebuilt by ``refresh_car`` without the lock, from the immutable version just written,
and the CAR file gets that version's modification time, so ``car_is_current`` stays true to what the CAR
holds even when a newer version lands meanwhile. The mount defers that work to ``DEFERRED_CARS``, which
does it once writes to the backend pause; the command line does it before it returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pinfs.backends import Backend
from pinfs.car import read_pin_mappings_car, write_pin_mappings_car_columns
from pinfs.errors import CorruptData, PinfsError
from pinfs.fsutil import fsync_file
from pinfs.ops.common import error_entry, select_backends
from pinfs.ops.progress import NullProgress, Progress
from pinfs.schema import REQUIRED_COLUMNS, now_iso
from pinfs.snapshots import PinSnapshot, ShardedSnapshot
from pinfs.store import PinStore, Transaction
from pinfs.tables import sort_by_cid

log = logging.getLogger(__name__)


@dataclass
class RegenerateOptions:
    backends: list[str] = field(default_factory=list)  # empty: every backend


def table_records(table: pa.Table) -> list[dict[str, str]]:
    """The six contract fields of every row, in CID order, as the CAR stores them."""
    table = sort_by_cid(table.select(list(REQUIRED_COLUMNS)))
    columns = [table.column(name).to_pylist() for name in REQUIRED_COLUMNS]
    return [dict(zip(REQUIRED_COLUMNS, row, strict=True)) for row in zip(*columns, strict=True)]


def write_car_locked(
    backend: Backend,
    table: pa.Table,
    created_at: str | None = None,
    before_replace: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Write ``pin_mappings.car`` for ``table``. The caller holds the backend's lock (but see
    ``refresh_car``).

    Encoded straight from the table's columns (no Python object per pin); a table already in CID
    order, as every table pinfs reads and merges is, is not sorted again."""
    table = sort_by_cid(table.select(list(REQUIRED_COLUMNS)))
    columns = {name: table.column(name) for name in REQUIRED_COLUMNS}
    return _write_car(backend, columns, table.num_rows, created_at, before_replace)


def _write_car(
    backend: Backend,
    columns: Mapping[str, Any],
    rows: int,
    created_at: str | None = None,
    before_replace: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    size = write_pin_mappings_car_columns(
        backend.car_path, columns, rows, backend.name, created_at or now_iso(), before_replace
    )
    return {"path": str(backend.car_path), "records": rows, "bytes": size}


def write_table_and_car_locked(backend: Backend, txn: Transaction, table: pa.Table) -> dict[str, Any]:
    """``txn.write(table)`` then ``write_car_locked(backend, table)``, with the CAR encoded on a second
    thread while the parquet is written. The order on disk is unchanged: the CAR's temporary file
    replaces ``pin_mappings.car`` only after the parquet has been renamed into place, and not at all
    if writing the parquet failed. The caller holds the backend's lock."""
    parquet_done = threading.Event()
    parquet_ok = False

    def after_parquet(temp: Path) -> None:
        fsync_file(temp)  # now, so that after the parquet's rename only the CAR's own rename is left
        parquet_done.wait()
        if not parquet_ok:
            raise _ParquetFailed

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pinfs-car") as pool:
        car = pool.submit(write_car_locked, backend, table, None, after_parquet)
        try:
            txn.write(table)
            parquet_ok = True
        finally:
            parquet_done.set()
        return car.result()


class _ParquetFailed(Exception):
    """Internal: the parquet was not written, so the CAR must not replace the old one."""


def car_agreement(backend: Backend, table: pa.Table) -> list[str]:
    """Why the CAR does not match the parquet's table (empty when it does). Reads the whole CAR."""
    if not backend.car_path.is_file():
        return [f"{backend.car_path}: missing"]
    try:
        car = read_pin_mappings_car(backend.car_path)
    except CorruptData as exc:
        return [str(exc)]
    problems: list[str] = []
    if car.backend_name and car.backend_name != backend.name:
        problems.append(f"{backend.car_path}: backend_name is {car.backend_name!r}, not {backend.name!r}")
    expected = table_records(table)
    if sorted(car.records, key=lambda r: r["cid"]) != expected:
        problems.append(
            f"{backend.car_path}: holds {len(car.records)} records that do not match the parquet's "
            f"{len(expected)}; run 'pinfs migrate --force-car-regeneration --backend-filter {backend.name}'"
        )
    return problems


def car_is_current(backend: Backend) -> bool:
    """Cheap check for reports: the CAR exists and is not older than the parquet (for a sharded backend,
    than its current generation's directory)."""
    try:
        car_mtime = backend.car_path.stat().st_mtime_ns
        parquet_mtime = backend.parquet_path.stat().st_mtime_ns
    except FileNotFoundError:
        return not backend.parquet_path.exists()
    return car_mtime >= parquet_mtime


def regenerate_car(root: Path, options: RegenerateOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Rebuild ``pin_mappings.car`` of the chosen backends from their parquet files."""
    progress = progress or NullProgress()
    backends = select_backends(root, options.backends)
    entries: list[dict[str, Any]] = []
    progress.start("regenerate-car", len(backends))
    for backend in backends:
        entries.append(_regenerate_one(backend))
        progress.advance()
    progress.finish()
    return {"ok": all(entry["ok"] for entry in entries), "backends": entries}


def _regenerate_one(backend: Backend) -> dict[str, Any]:
    store = PinStore(backend)
    if not store.has_parquet():
        # Advice only where migrate would write something (issue #14, item 6).
        reason = (
            f"not migrated yet (run 'pinfs migrate --backend-filter {backend.name}')"
            if store.legacy_source() is not None
            else "no pins: no pin_mappings.parquet to build a CAR from"
        )
        return {"backend": backend.name, "type": backend.type, "ok": True, "skipped": reason}
    try:
        with store.transaction() as txn:
            written = write_car_locked(backend, txn.current())
    except PinfsError as exc:
        return error_entry(backend, exc)
    return {"backend": backend.name, "type": backend.type, "ok": True, **written}


# -- after a pin change --


@contextlib.contextmanager
def changing_pins(backend: Backend, defer: Callable[[Backend], None] | None = None) -> Iterator[Transaction]:
    """A transaction on ``backend``'s pins after which, if it wrote, the CAR follows: a one-file backend
    is small, so its CAR is written at once, under the lock; a sharded one's is handed to ``defer`` (the
    mount's ``DEFERRED_CARS.defer``) or, without one, rebuilt by ``refresh_car`` once the lock is
    released. An exception in the body leaves the CAR alone."""
    refresh = False
    with PinStore(backend).transaction() as txn:
        yield txn
        if txn.changed and not txn.sharded:
            write_car_locked(backend, txn.current())
        elif txn.changed and defer is not None:
            defer(backend)
        else:
            refresh = txn.changed
    if refresh:
        refresh_car(backend)


def refresh_car(backend: Backend, attempts: int = 3) -> dict[str, Any]:
    """Rebuild the CAR from the backend's current version, without holding the lock (see the module
    docstring). Skipped when the CAR is already current. Writers of one backend may refresh at once:
    a CAR is not put in place over one of a newer version, and when a newer version of the parquet
    landed meanwhile the rebuild starts again (``attempts`` times at most), so the last refresh to
    finish leaves a current CAR."""
    written: dict[str, Any] = {"path": str(backend.car_path), "current": True}
    for _attempt in range(attempts):
        if car_is_current(backend):
            break
        snapshot = PinStore(backend).snapshot()
        if snapshot.source != "parquet" or snapshot.identity is None:
            return {"path": str(backend.car_path), "skipped": "no pin_mappings.parquet"}
        try:
            written = write_car_of_version(backend, snapshot)
        except CarSuperseded:
            continue
    return written


def write_car_of_version(backend: Backend, snapshot: PinSnapshot) -> dict[str, Any]:
    """The CAR of ``snapshot``, dated with its version's time; CarSuperseded if a CAR of a newer version
    was put in place meanwhile."""
    version_ns = snapshot.identity.mtime_ns if snapshot.identity else 0

    def date_it(temp: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            if backend.car_path.stat().st_mtime_ns > version_ns:
                raise CarSuperseded
        os.utime(temp, ns=(version_ns, version_ns))

    if isinstance(snapshot, ShardedSnapshot):  # a few shards in memory at a time, not a million rows
        columns = snapshot.windowed_columns(REQUIRED_COLUMNS)
        return _write_car(backend, columns, snapshot.count, before_replace=date_it)
    return write_car_locked(backend, snapshot.table(), before_replace=date_it)


class CarSuperseded(Exception):
    """A CAR of a newer version is already in place (``write_car_of_version``)."""


class CarRefresher:
    """CAR rebuilds deferred by a long-running process: each backend's is rebuilt ``quiet`` seconds after
    its last pin change, and at most ``at_most`` seconds after the first one still waiting, on one
    background thread, so the pin commands themselves return as soon as the parquet is written."""

    def __init__(self, quiet: float = 1.0, at_most: float = 10.0) -> None:
        self.quiet, self.at_most = quiet, at_most
        self._waiting: dict[Path, tuple[Backend, float, float]] = {}  # directory -> backend, first, last
        self._running: set[Path] = set()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    def defer(self, backend: Backend) -> None:
        now = time.monotonic()
        with self._condition:
            _old, first, _last = self._waiting.get(backend.directory, (backend, now, now))
            self._waiting[backend.directory] = (backend, first, now)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="pinfs-car-refresh", daemon=True)
                self._thread.start()
            self._condition.notify()

    def is_pending(self, backend: Backend) -> bool:
        with self._condition:
            return backend.directory in self._waiting or backend.directory in self._running

    def close(self, timeout: float | None = None) -> None:
        """Rebuild every CAR still waiting, now, and stop the thread (at unmount)."""
        with self._condition:
            self._closing = True
            self._condition.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._condition:
            self._thread, self._closing = None, False

    def _due(self, first: float, last: float) -> float:
        return min(last + self.quiet, first + self.at_most)

    def _next(self) -> Backend | None:
        """Wait for the next CAR that is due; None when closing with nothing left."""
        with self._condition:
            while True:
                if not self._waiting:
                    if self._closing:
                        return None
                    self._condition.wait()
                    continue
                directory, (backend, first, last) = min(self._waiting.items(), key=lambda item: self._due(*item[1][1:]))
                delay = self._due(first, last) - time.monotonic()
                if delay <= 0 or self._closing:
                    del self._waiting[directory]
                    self._running.add(directory)
                    return backend
                self._condition.wait(delay)

    def _loop(self) -> None:
        while (backend := self._next()) is not None:
            try:
                refresh_car(backend)
            except Exception:  # logged; the next pin change, sync or regenerate-car tries again
                log.exception("rebuilding %s failed", backend.car_path)
            finally:
                with self._condition:
                    self._running.discard(backend.directory)


DEFERRED_CARS = CarRefresher()
