"""Pin changes and the exports that follow them; regenerating ``pin_mappings.car``; checking it.

Every change to a backend's pins (pin, unpin, sync and verify outcomes, migration) is a commit to its
table (``pinfs.store``), after which the exports (``pin_mappings.parquet`` and ``pin_mappings.car``,
``pinfs.exports``) are brought up to the new version: at once for a backend of up to
``EXPORT_AT_ONCE_ROWS`` pins (a few tens of ms), and for a bigger one either before the command returns
(the command line) or, in the mount, by ``ExportRefresher`` once writes to the backend pause, so that a
pin through a control file returns as soon as it is committed. ``health`` says "export pending" meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pyarrow as pa

from pinfs.backends import Backend
from pinfs.car import read_pin_mappings_car
from pinfs.errors import CorruptData, PinfsError, describe
from pinfs.exports import export_state, refresh_exports
from pinfs.ops.common import error_entry, select_backends
from pinfs.ops.maintain import maybe_maintain
from pinfs.ops.progress import NullProgress, Progress
from pinfs.schema import REQUIRED_COLUMNS
from pinfs.store import PinStore, Transaction
from pinfs.tables import sort_by_cid

log = logging.getLogger(__name__)
T = TypeVar("T")


class DeferExport(Protocol):
    """Takes over a backend's export refresh (the mount's ``ExportRefresher.defer``); ``failed`` says
    why the refresh just tried failed."""

    def __call__(self, backend: Backend, failed: str | None = None) -> None: ...


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
            with store.transaction() as txn:
                txn.convert_old_form()
        report = refresh_exports(backend, force_car=True)
    except (PinfsError, OSError) as exc:
        return error_entry(backend, exc)
    car = report.get("car") or {}
    return {"backend": backend.name, "type": backend.type, "ok": True, **car, "version": report.get("version")}


# -- after a pin change --


def change_pins(backend: Backend, body: Callable[[Transaction], T], defer: DeferExport | None = None) -> T:
    """Run ``body`` as a write of ``backend``'s pins (again, on a newer version, if another writer
    changed the same pins meanwhile: ``PinStore.write``), then bring the exports along (module
    docstring). An exception in the body leaves everything as it was.

    When the commit went in but the exports could not be written (a full disk, a read-only root), a
    dict result says so (``exports_behind``): ``ok`` False, ``committed`` True and an ``error`` saying
    what to run; any other result raises ``ExportsBehind`` saying the same. A body that committed
    nothing (a retry) brings exports left behind up to date."""
    changed = False

    def tracked(txn: Transaction) -> T:
        nonlocal changed
        result = body(txn)
        changed = txn.changed
        return result

    result = PinStore(backend).write(tracked)
    behind = follow_change(backend, defer) if changed or _left_behind(backend) else None
    if behind is not None:
        if not isinstance(result, dict):  # a result that cannot say it (sync's count): an error saying it
            raise ExportsBehind(behind["error"])
        result.update(behind)
    return result


class ExportsBehind(PinfsError):
    """The pins are committed, but the exports could not be brought up to them (exit 1, EIO): the
    message says why and what to run once that is fixed."""


def follow_change(backend: Backend, defer: DeferExport | None = None) -> dict[str, Any] | None:
    """Refresh the exports after a commit: now for a small table or without ``defer``, else later.
    Returns None, or ``exports_behind(...)`` when they could not be written; in the mount (``defer``)
    they are then tried again in the background, so that they catch up once the disk has room."""
    state = PinStore(backend).table_state()
    if defer is not None and state is not None and state.count > EXPORT_AT_ONCE_ROWS:
        defer(backend)
        return None
    try:
        refresh_exports(backend)
    except (PinfsError, OSError) as exc:
        if defer is not None:
            defer(backend, describe(exc))
        return exports_behind(backend, exc, state.version if state is not None else None)
    maybe_maintain(backend)
    return None


def exports_behind(backend: Backend, error: BaseException, version: int | None = None) -> dict[str, Any]:
    """What a report says when a commit went in but the exports were not written (issue #15, item 4)."""
    at = f" (table version {version})" if version is not None else ""
    return {
        "ok": False,
        "committed": True,
        "exports": "behind",
        "error": (
            f"pins committed{at}, but pin_mappings.parquet/.car of {backend.name} are behind: {describe(error)}; "
            f"run 'pinfs car regenerate --backend {backend.name}' once that is fixed"
        ),
    }


def _left_behind(backend: Backend) -> bool:
    """Whether a table's exports are behind it with nobody refreshing them (an earlier command's
    exports failed): then a command that commits nothing, e.g. its retry, brings them up."""
    if DEFERRED_EXPORTS.is_pending(backend):
        return False
    try:
        states = export_state(backend, PinStore(backend).table_state())
    except (PinfsError, OSError):
        return False
    return any(value in ("pending", "missing") for value in states.values())


class ExportRefresher:
    """Export refreshes deferred by a long-running process: each backend's is done ``quiet`` seconds
    after its last change, and at most ``at_most`` seconds after the first one still waiting, on one
    background thread, so the pin commands themselves return as soon as they are committed.

    A refresh that fails with an OSError or PinfsError (a full disk, a read-only root: issue #15) is
    tried again ``retry`` seconds later, then twice as long after each failure up to ``retry_at_most``,
    until it succeeds; ``last_error`` says why meanwhile (health shows it)."""

    def __init__(
        self, quiet: float = 1.0, at_most: float = 10.0, retry: float = 2.0, retry_at_most: float = 60.0
    ) -> None:
        self.quiet, self.at_most = quiet, at_most
        self.retry, self.retry_at_most = retry, retry_at_most
        # directory -> (backend, first change waiting, last change, not before)
        self._waiting: dict[Path, tuple[Backend, float, float, float]] = {}
        self._running: set[Path] = set()
        self._failures: dict[Path, tuple[int, str]] = {}  # directory -> (failures in a row, last error)
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    def defer(self, backend: Backend, failed: str | None = None) -> None:
        """Refresh ``backend``'s exports once its changes pause; ``failed``: a refresh just failed
        (with that error), so the next one waits as a retry does."""
        now = time.monotonic()
        with self._condition:
            _old, first, _last, not_before = self._waiting.get(backend.directory, (backend, now, now, now))
            if failed is not None:
                not_before = max(not_before, now + self._note_failure(backend, failed))
            self._waiting[backend.directory] = (backend, first, now, not_before)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="pinfs-export-refresh", daemon=True)
                self._thread.start()
            self._condition.notify()

    def is_pending(self, backend: Backend) -> bool:
        with self._condition:
            return backend.directory in self._waiting or backend.directory in self._running

    def last_error(self, backend: Backend) -> str | None:
        """Why the last refresh of ``backend`` failed, while it is waiting to be tried again."""
        with self._condition:
            found = self._failures.get(backend.directory)
            return found[1] if found is not None else None

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

    def _due(self, first: float, last: float, not_before: float) -> float:
        return max(min(last + self.quiet, first + self.at_most), not_before)

    def _next(self) -> Backend | None:
        """Wait for the next refresh that is due; None when closing with nothing left."""
        with self._condition:
            while True:
                if not self._waiting:
                    if self._closing:
                        return None
                    self._condition.wait()
                    continue
                directory, (backend, *times) = min(self._waiting.items(), key=lambda item: self._due(*item[1][1:]))
                delay = self._due(*times) - time.monotonic()
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
            except (PinfsError, OSError) as exc:  # a full disk: tried again a while later (issue #15)
                self._failed(backend, describe(exc))
            except Exception:  # logged; the next change, sync or regenerate-car tries again
                log.exception("refreshing the exports of %s failed", backend.directory)
            else:
                with self._condition:
                    if self._failures.pop(backend.directory, None) is not None:
                        log.info("the exports of %s are up to date again", backend.directory)
            finally:
                with self._condition:
                    self._running.discard(backend.directory)

    def _note_failure(self, backend: Backend, error: str) -> float:
        """Count a failed refresh (call with the condition held); returns how long to wait before the next."""
        failures = self._failures.get(backend.directory, (0, ""))[0] + 1
        self._failures[backend.directory] = (failures, error)
        return min(self.retry * 2 ** (failures - 1), self.retry_at_most)

    def _failed(self, backend: Backend, error: str) -> None:
        with self._condition:
            delay = self._note_failure(backend, error)
            if self._closing:  # unmounting: the next command (or car regenerate) catches them up
                log.warning("the exports of %s are behind: %s", backend.directory, error)
                return
            now = time.monotonic()
            if backend.directory not in self._waiting:
                self._waiting[backend.directory] = (backend, now, now, now + delay)
            self._condition.notify()
        log.warning("refreshing the exports of %s failed: %s; trying again in %g s", backend.directory, error, delay)


DEFERRED_EXPORTS = ExportRefresher()
