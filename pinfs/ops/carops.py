"""Pin changes and the exports that follow them; regenerating ``pin_mappings.car``; checking it.

Every change to a backend's pins (pin, unpin, sync and verify outcomes, migration) is a commit to its
table (``pinfs.data.store``), after which the exports (``pin_mappings.parquet`` and ``pin_mappings.car``,
``pinfs.data.exports``) are brought up to the new version: at once for a backend of up to
``EXPORT_AT_ONCE_ROWS`` pins (a few tens of ms), and for a bigger one either before the command returns
(the command line) or, in the mount, by its export duty (``pinfs.fs.duties``, calling ``refresh_deferred``)
once writes to the backend pause, so that a pin through a control file returns as soon as it is committed.
``DEFERRED_EXPORTS`` records those pending refreshes: ``health`` says "export pending" meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pyarrow as pa

from pinfs.data.backends import Backend
from pinfs.data.car import read_pin_mappings_car
from pinfs.data.exports import export_state, refresh_exports
from pinfs.data.schema import REQUIRED_COLUMNS
from pinfs.data.store import PinStore, Transaction
from pinfs.data.tables import sort_by_cid
from pinfs.errors import CorruptData, PinfsError, describe
from pinfs.ops.common import error_entry, select_backends
from pinfs.ops.maintain import maybe_maintain, merge_inserts_if_due
from pinfs.ops.progress import NullProgress, Progress

log = logging.getLogger(__name__)
T = TypeVar("T")


class DeferExport(Protocol):
    """Takes over a backend's export refresh (the mount's ``ExportDuty.defer``); ``failed`` says
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
    merge_inserts_if_due(backend)
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


def refresh_deferred(backend: Backend) -> None:
    """Bring ``backend``'s exports up to its table now, then maintain it if due: what a long-running
    process does for a refresh it deferred (the mount's export duty, ``pinfs.fs.duties``). Blocking.
    Raises PinfsError or OSError (a full disk, a read-only root: issue #15) for the caller to retry.
    The insert file is merged first when due, so the export is made from the version after it."""
    merge_inserts_if_due(backend)
    refresh_exports(backend)
    maybe_maintain(backend)


class PendingExports:
    """Which backends' export refreshes this process has deferred and not yet done, and why the last
    try of each failed: what ``health`` says about them ("export pending"). Written by whoever does the
    deferred refreshes (the mount's export duty), read by the reports; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: set[Path] = set()
        self._errors: dict[Path, str] = {}

    def add(self, backend: Backend) -> None:
        with self._lock:
            self._pending.add(backend.directory)

    def done(self, backend: Backend, error: str | None = None) -> None:
        """A refresh ended: with ``error`` it failed (still pending: it is tried again), else it worked."""
        with self._lock:
            if error is None:
                self._pending.discard(backend.directory)
                self._errors.pop(backend.directory, None)
            else:
                self._errors[backend.directory] = error

    def is_pending(self, backend: Backend) -> bool:
        with self._lock:
            return backend.directory in self._pending

    def last_error(self, backend: Backend) -> str | None:
        """Why the last refresh of ``backend`` failed, while it is waiting to be tried again."""
        with self._lock:
            return self._errors.get(backend.directory)


DEFERRED_EXPORTS = PendingExports()
