"""Pin changes and the exports that follow them; regenerating ``pin_mappings.car``; checking it.

Every change to a backend's pins (pin, unpin, sync and verify outcomes, migration) is a commit to its
table (``pinfs.store``), after which the exports (``pin_mappings.parquet`` and ``pin_mappings.car``,
``pinfs.exports``) are brought up to the new version: at once for a backend of up to
``EXPORT_AT_ONCE_ROWS`` pins (a few tens of ms), and for a bigger one either before the command returns
(the command line) or, in the mount, by ``ExportRefresher`` once writes to the backend pause, so that a
pin through a control file returns as soon as it is committed. ``health`` says "export pending" meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from pinfs.backends import Backend
from pinfs.car import read_pin_mappings_car
from pinfs.errors import CorruptData, PinfsError
from pinfs.exports import refresh_exports
from pinfs.ops.common import error_entry, select_backends
from pinfs.ops.maintain import maybe_maintain
from pinfs.ops.progress import NullProgress, Progress
from pinfs.schema import REQUIRED_COLUMNS
from pinfs.store import PinStore, Transaction
from pinfs.tables import sort_by_cid

log = logging.getLogger(__name__)
T = TypeVar("T")
DeferExport = Callable[[Backend], None]

# A backend of at most this many pins has its exports rewritten right after each change, even in the
# mount (the CAR of 64k pins takes ~60 ms); a bigger one's wait for writes to pause.
EXPORT_AT_ONCE_ROWS = 65536


@dataclass
class RegenerateOptions:
    backends: list[str] = field(default_factory=list)  # empty: every backend


def table_records(table: pa.Table) -> list[dict[str, str]]:
    """The six contract fields of every row, in CID order, as the CAR stores them."""
    table = sort_by_cid(table.select(list(REQUIRED_COLUMNS)))
    columns = [table.column(name).to_pylist() for name in REQUIRED_COLUMNS]
    return [dict(zip(REQUIRED_COLUMNS, row, strict=True)) for row in zip(*columns, strict=True)]


def car_agreement(backend: Backend, table: pa.Table) -> list[str]:
    """Why the CAR does not match ``table`` (empty when it does). Reads the whole CAR."""
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
            f"{backend.car_path}: holds {len(car.records)} records that do not match the table's "
            f"{len(expected)}; run 'pinfs car regenerate --backend {backend.name}'"
        )
    return problems


def regenerate_car(root: Path, options: RegenerateOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Rebuild ``pin_mappings.car`` (and bring ``pin_mappings.parquet`` up to date) of the chosen backends."""
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
            else "no pins yet: nothing to build a CAR from"
        )
        return {"backend": backend.name, "type": backend.type, "ok": True, "skipped": reason}
    try:
        if not store.has_table():
            with store.transaction():
                store.convert_old_form()
        report = refresh_exports(backend, force_car=True)
    except (PinfsError, OSError) as exc:
        return error_entry(backend, exc)
    car = report.get("car") or {}
    return {"backend": backend.name, "type": backend.type, "ok": True, **car, "version": report.get("version")}


# -- after a pin change --


def change_pins(backend: Backend, body: Callable[[Transaction], T], defer: DeferExport | None = None) -> T:
    """Run ``body`` as a write of ``backend``'s pins (again, on a newer version, if another writer
    changed the same pins meanwhile: ``PinStore.write``), then bring the exports along (module
    docstring). An exception in the body leaves everything as it was."""
    changed = False

    def tracked(txn: Transaction) -> T:
        nonlocal changed
        result = body(txn)
        changed = txn.changed
        return result

    result = PinStore(backend).write(tracked)
    if changed:
        follow_change(backend, defer)
    return result


@contextlib.contextmanager
def changing_pins(backend: Backend, defer: DeferExport | None = None) -> Iterator[Transaction]:
    """``change_pins`` as a ``with`` block, for a body that need not run again: a write that meets a
    concurrent change of the same pins fails with ``ConcurrentChange`` instead."""
    with PinStore(backend).transaction() as txn:
        yield txn
    if txn.changed:
        follow_change(backend, defer)


def follow_change(backend: Backend, defer: DeferExport | None = None) -> None:
    """Refresh the exports after a commit: now for a small table or without ``defer``, else later."""
    state = PinStore(backend).table_state()
    if defer is not None and state is not None and state.count > EXPORT_AT_ONCE_ROWS:
        defer(backend)
        return
    refresh_exports(backend)
    maybe_maintain(backend)


class ExportRefresher:
    """Export refreshes deferred by a long-running process: each backend's is done ``quiet`` seconds
    after its last change, and at most ``at_most`` seconds after the first one still waiting, on one
    background thread, so the pin commands themselves return as soon as they are committed."""

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
                self._thread = threading.Thread(target=self._loop, name="pinfs-export-refresh", daemon=True)
                self._thread.start()
            self._condition.notify()

    def is_pending(self, backend: Backend) -> bool:
        with self._condition:
            return backend.directory in self._waiting or backend.directory in self._running

    def close(self, timeout: float | None = None) -> None:
        """Do every refresh still waiting, now, and stop the thread (at unmount)."""
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
        """Wait for the next refresh that is due; None when closing with nothing left."""
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
                refresh_exports(backend)
                maybe_maintain(backend)
            except Exception:  # logged; the next change, sync or regenerate-car tries again
                log.exception("refreshing the exports of %s failed", backend.directory)
            finally:
                with self._condition:
                    self._running.discard(backend.directory)


DEFERRED_EXPORTS = ExportRefresher()
