"""Health: per backend ``ok``, ``degraded`` or ``error`` with its reasons and notes, and the worst of them
overall (``pinfs.ops.reports`` describes the states). Read-only; at most one reachability probe per
backend driver.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pyarrow as pa

from pinfs.data.backends import Backend
from pinfs.data.legacy_files import future_backups
from pinfs.data.s3client import S3Error
from pinfs.data.schema import FAILED, PENDING, now_iso
from pinfs.data.store import PinStore
from pinfs.errors import PinfsError, describe
from pinfs.ops.backendview import (
    STALE_VERIFY_DAYS,
    BackendView,
    car_state,
    export_states,
    failure_reasons,
    safe_entry,
    verification_ages,
    views_of,
)
from pinfs.ops.backup import backup_health, wants_backups
from pinfs.ops.carops import DEFERRED_EXPORTS
from pinfs.ops.drivers import DriverError, driver_for, has_driver
from pinfs.ops.drivers.filesystem import FilesystemDriver
from pinfs.ops.sync import NO_CONTENT
from pinfs.ops.synccontext import STAGING_DIR

HEALTH_ORDER = {"ok": 0, "degraded": 1, "error": 2}


def _storage_problem(backend: Backend) -> str | None:
    """A cheap check of the backend's storage: local checks, and for a driver that offers one a
    reachability probe (one connection, remembered for 30 s)."""
    if not has_driver(backend) or backend.config_error:
        return None
    try:
        driver = driver_for(backend)
    except DriverError as exc:
        return describe(exc)
    except PinfsError:
        return None
    # A filesystem directory can be checked for free; an sshfs mount point might hang, so not that one.
    local = isinstance(driver, FilesystemDriver) and backend.type != "sshfs"
    if local and driver.base.exists() and not driver.base.is_dir():
        return f"storage_path {driver.base} is not a directory"
    try:
        driver.probe()  # e.g. an S3 endpoint that does not answer (issue #16): one connection at most
    except DriverError as exc:
        return f"unreachable: {exc} (sync and verify of {backend.name} fail until it answers)"
    finally:
        driver.close()
    return None


def health_of(view: BackendView, sources: list[Backend] | None = None) -> dict[str, Any]:
    backend = view.backend
    reasons: list[str] = []
    notes: list[str] = []
    entry: dict[str, Any] = {"backend": backend.name, "type": backend.type, "state": "ok"}
    if view.error:
        entry.update(state="error", reasons=[view.error], notes=notes, error=view.error)
        return entry
    if not backend.enabled:
        notes.append("disabled in its config")
    if view.source == "legacy":
        source = PinStore(backend).legacy_source()
        reasons.append(
            f"not migrated yet: served from its legacy {source.name if source else 'pins.json'} "
            f"(run 'pinfs migrate --backend-filter {backend.name}')"
        )
    elif view.source == "empty":
        notes.append("no pins")
    failed = view.by_status.get(FAILED, 0)
    storage = _storage_problem(backend)
    if failed:
        reasons.append(_failed_advice(view, failed, storage))
    try:
        verification = verification_ages(view)
    except (PinfsError, OSError, pa.ArrowException) as exc:
        entry.update(state="error", reasons=[describe(exc)], notes=notes, error=describe(exc))
        return entry
    if verification["stale"]:
        reasons.append(f"{verification['stale']} stored pins last verified more than {STALE_VERIFY_DAYS:g} days ago")
    ahead = future_backups(backend.directory) if backend.directory.is_dir() else []
    if ahead:  # a note: nothing is wrong with them, and pinfs never renames a backup
        notes.append(
            f"{len(ahead)} pins.json backup(s) dated in the future, e.g. {ahead[-1]} (the clock was ahead when "
            "they were made); new backups are stamped after them, so the newest is still the last made"
        )
    if verification["future"]:
        reasons.append(
            f"{verification['future']} stored pins were verified at a time still to come (the clock was ahead?); "
            f"run 'pinfs verify --backend {backend.name}' to check them again"
        )
    if verification["unverified"] and has_driver(backend):
        notes.append(f"{verification['unverified']} stored pins never verified")
    exports = export_states(view) if view.source == "table" else {"car": car_state(view)}
    for kind, state in exports.items():
        name = f"pin_mappings.{kind}"
        if state == "missing":
            reasons.append(f"{name} is missing (run 'pinfs car regenerate --backend {backend.name}')")
        elif state == "pending" and DEFERRED_EXPORTS.last_error(backend):
            reasons.append(
                f"export pending: {name} could not be written ({DEFERRED_EXPORTS.last_error(backend)}); "
                "tried again in the background"
            )
        elif state == "pending":
            notes.append(f"export pending: {name} is being rewritten after recent pin changes")
        elif state == "stale":
            reasons.append(
                f"export pending: {name} is behind the table (run 'pinfs car regenerate --backend {backend.name}')"
            )
        elif state == "foreign":
            notes.append(f"{name} was changed by another tool; it is imported into the table at the next write")
    car = exports.get("car", "n/a")
    if storage:
        reasons.append(f"storage: {storage}")
    backups = _backups_of(backend, sources or [])
    if backups is not None:
        entry["backups"] = backups
        reasons.extend(f"backup copy {item}" for item in backups["differ"])
        if backups["behind"]:
            shown = ", ".join(backups["behind"][:5]) + (" …" if len(backups["behind"]) > 5 else "")
            notes.append(f"backup copies behind their source until the next sync of {backend.name}: {shown}")
    if not has_driver(backend) and view.by_status.get(PENDING, 0):
        notes.append(f"no storage driver for type {backend.type!r} here: its pending pins cannot be synced")
    for section in ("sync", "verify"):
        last = view.state.get(section)
        if isinstance(last, dict) and last.get("ok") is False and last.get("error"):
            reasons.append(f"last {section} ({last.get('finished_at')}) failed: {last['error']}")
    if reasons:
        entry["state"] = "degraded"
    entry.update(reasons=reasons, notes=notes, count=view.count, by_status=view.by_status, car=car)
    if view.source == "table":
        entry["exports"] = exports
    entry["verification"] = verification
    return entry


def _failed_advice(view: BackendView, failed: int, storage: str | None) -> str:
    """What to do about a backend's failed pins: advice only where it works (issue #14, item 6). Sync
    needs a driver for the backend's type, and retrying a pin whose content CAR is nowhere changes
    nothing, so those are told where sync looks for content (issue #16, item 3)."""
    backend = view.backend
    pins = f"{failed} failed pin{'s' if failed != 1 else ''}"
    if not has_driver(backend):
        return f"{pins} (no storage driver for type {backend.type!r} here to retry them)"
    if storage:  # configured too badly to reach its storage (issue #14, item 6)
        return f"{pins} (fix its storage setting (below), then sync them)"
    retry = f"run 'pinfs sync --backend {backend.name}'"
    reasons = failure_reasons(view.snapshot, failed) if view.snapshot is not None else []
    no_content = sum(item["count"] for item in reasons if item["reason"].startswith(NO_CONTENT))
    if not no_content:
        return f"{pins} ({retry})"
    staging = backend.directory.parent.parent / STAGING_DIR
    where = (
        f"no copy of their content CAR was found: sync looks for {staging}/<cid>.car and in every other "
        "backend holding the CID as stored; put each CAR there (e.g. 'ipfs dag export <cid>'), then sync "
        f"this backend again"
    )
    if no_content >= sum(item["count"] for item in reasons):
        return f"{pins}: {where}"
    return f"{pins} ({retry}); {no_content} of them: {where}"


def _backups_of(backend: Backend, sources: list[Backend]) -> dict[str, Any] | None:
    """The backup copies a backend holds (``backup: true``) against their sources, or None."""
    if not sources or not backend.enabled or backend.config_error or not wants_backups(backend):
        return None
    local: Path | None = None
    if backend.type in ("filesystem", "local"):  # a local directory is checked for free; a remote is not
        try:
            driver = driver_for(backend)
        except PinfsError:
            return None
        local = driver.base if isinstance(driver, FilesystemDriver) else None
    return backup_health(backend, sources, local)


def _worst(states: list[str]) -> str:
    return max(states, key=lambda s: HEALTH_ORDER.get(s, 2), default="ok")


def health(root: Path) -> dict[str, Any]:
    try:
        views, problems = views_of(root)
    except S3Error as exc:  # a root on S3 that cannot be listed: that is the health to report
        return {
            "ok": False,
            "state": "error",
            "checked_at": now_iso(),
            "root": str(root),
            "counts": {state: 0 for state in HEALTH_ORDER},
            "backends": [],
            "problems": [{"location": str(root), "reason": str(exc)}],
        }
    sources = [view.backend for view in views]
    entries = [safe_entry(functools.partial(health_of, sources=sources), view) for view in views]
    states = [entry["state"] for entry in entries] + (["degraded"] if problems else [])
    overall = _worst(states)
    return {
        "ok": overall != "error",
        "state": overall,
        "checked_at": now_iso(),
        "root": str(root),
        "counts": {state: sum(1 for e in entries if e["state"] == state) for state in HEALTH_ORDER},
        "backends": entries,
        "problems": problems,
    }
