"""Status: per backend its pins by status, table and export files, storage used, last runs and
configuration (secrets redacted). Read-only.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.backends import Backend
from pinfs.data.legacy_files import list_backups
from pinfs.data.schema import FAILED, PENDING, STATUSES, now_iso
from pinfs.data.snapshots import PinSnapshot
from pinfs.errors import PinfsError, describe
from pinfs.ops.backendview import (
    BackendView,
    car_state,
    failure_reasons,
    iso,
    storage_used,
    table_state_of,
    verification_ages,
    views_of,
)
from pinfs.ops.drivers import driver_for, has_driver

_SECRET_WORDS = ("secret", "password", "token", "access_key", "key_id", "credential", "private")


def _file_info(path: Path) -> dict[str, Any] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    modified = datetime.fromtimestamp(info.st_mtime, timezone.utc)
    return {"path": str(path), "size": info.st_size, "modified_at": iso(modified)}


def _table_info(view: BackendView) -> dict[str, Any] | None:
    """The Delta table behind the exports: its version, data files and their bytes."""
    state = table_state_of(view)
    if state is None:
        return None
    return {
        "path": state.identity.location,
        "version": state.version,
        "files": sum(1 for data_file in state.files if data_file.rows),
        "size": sum(data_file.size for data_file in state.files),
        "committed_at": iso(datetime.fromtimestamp(state.identity.mtime_ns / 1e9, timezone.utc)),
    }


def _last_migration(view: BackendView) -> str | None:
    recorded = view.state.get("migrate")
    if isinstance(recorded, dict) and recorded.get("finished_at"):
        return str(recorded["finished_at"])
    backups = list_backups(view.backend.directory) if view.backend.directory.is_dir() else []
    if backups:
        info = _file_info(backups[-1])
        return info["modified_at"] if info else None
    return None


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: "***" if any(word in str(key).lower() for word in _SECRET_WORDS) else _redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact(item) for item in value]
    return value


def _status_of(view: BackendView, detailed: bool) -> dict[str, Any]:
    backend = view.backend
    sync_state = view.state.get("sync") if isinstance(view.state.get("sync"), dict) else {}
    verify_state = view.state.get("verify") if isinstance(view.state.get("verify"), dict) else {}
    entry: dict[str, Any] = {
        "backend": backend.name,
        "type": backend.type,
        "enabled": backend.enabled,
        "source": view.source,
        "count": view.count,
        "by_status": view.by_status,
        "files": {
            "table": _table_info(view),
            "parquet": _file_info(backend.parquet_path),
            "car": _file_info(backend.car_path),
            "pins_json": _file_info(backend.legacy_path),
        },
        "last_sync": sync_state.get("finished_at"),
        "last_sync_ok": sync_state.get("ok"),
        "last_verify": verify_state.get("finished_at"),
        "last_migration": _last_migration(view),
    }
    if view.error:
        entry["error"] = view.error
    if not detailed:
        return entry
    entry["config_path"] = str(backend.config_path) if backend.config_path else None
    entry["config"] = _redact(backend.config)
    entry["driver"] = _driver_description(backend)
    entry["car"] = car_state(view) if view.snapshot is not None else "n/a"
    if view.snapshot is not None:
        entry["verification"] = verification_ages(view)
        entry["storage"] = storage_used(view.snapshot)
        entry["failure_reasons"] = failure_reasons(view.snapshot, view.by_status.get(FAILED, 0))[:5]
        entry["oldest_pending_created_at"] = _oldest(view.snapshot, PENDING) if view.by_status.get(PENDING) else None
    entry["state"] = view.state
    return entry


def _driver_description(backend: Backend) -> dict[str, Any]:
    if not has_driver(backend):
        return {"available": False, "reason": f"no storage driver for type {backend.type!r}"}
    try:
        return {"available": True, "location": driver_for(backend).describe()}
    except PinfsError as exc:
        return {"available": False, "reason": describe(exc)}


def _oldest(snapshot: PinSnapshot, status: str) -> str | None:
    oldest: str | None = None
    for piece in snapshot.scan(["status", "created_at"]):
        created = piece.filter(pc.equal(piece.column("status"), status)).column("created_at")
        low = pc.min(created).as_py() if len(created) else None
        if low is not None and (oldest is None or low < oldest):
            oldest = low
    return oldest


def status(root: Path, detailed: bool = False) -> dict[str, Any]:
    views, problems = views_of(root)
    entries = []
    for view in views:
        try:
            entries.append(_status_of(view, detailed))
        except (PinfsError, OSError, ValueError, pa.ArrowException) as exc:
            entries.append({"backend": view.backend.name, "type": view.backend.type, "error": describe(exc)})
    by_type: dict[str, dict[str, Any]] = {}
    for view in views:
        group = by_type.setdefault(
            view.backend.type, {"backends": [], "count": 0, "by_status": dict.fromkeys(STATUSES, 0)}
        )
        group["backends"].append(view.backend.name)
        group["count"] += view.count
        for name in STATUSES:
            group["by_status"][name] += view.by_status.get(name, 0)
    totals = {name: sum(v.by_status.get(name, 0) for v in views) for name in STATUSES}
    return {
        "ok": not any(entry.get("error") for entry in entries),
        "generated_at": now_iso(),
        "root": str(root),
        "total": sum(v.count for v in views),
        "by_status": totals,
        "by_type": by_type,
        "backends": entries,
        "problems": problems,
    }
