"""The files around a backend's legacy ``pins.json``: which file is its legacy source, its backups
(``pins.json.backup.<stamp>``: their order, the name of a new one, those dated ahead), and
``pins.rejected.json`` (the entries migration could not import).

What it must not do: modify, move or delete any pins.json or backup (CONTRACT §1). Writers serialize
on ``fsutil.backend_lock``: ``write_rejected`` does not take it, its caller does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pinfs.data.backends import LEGACY_NAME, REJECTED_NAME
from pinfs.data.fsutil import atomic_write_bytes
from pinfs.data.legacy_entries import Rejected
from pinfs.data.rootfs import as_path
from pinfs.data.schema import FUTURE_TOLERANCE, now_iso

BACKUP_PREFIX = "pins.json.backup."
# Backup stamps: ours (schema.utc_stamp) and ipfs_kit_py's (``%Y%m%d_%H%M%S``, local time).
_STAMP_FORMATS: tuple[tuple[str, bool], ...] = (
    ("%Y%m%dT%H%M%S.%fZ", True),
    ("%Y%m%dT%H%M%SZ", True),
    ("%Y%m%d_%H%M%S", False),
)


def find_legacy_source(backend_dir: Path) -> Path | None:
    """``backend_dir/pins.json`` if it exists, else the newest ``pins.json.backup.<stamp>``, else None.

    Backups are ordered by the time in their stamp (ours in UTC, ipfs_kit_py's in local time), then by
    modification time, then by name; a backup whose stamp is in neither form ranks below every dated one.
    """
    backend_dir = as_path(backend_dir)
    current = backend_dir / LEGACY_NAME
    if current.exists():
        return current
    backups = list_backups(backend_dir)
    return backups[-1] if backups else None


def list_backups(backend_dir: Path) -> list[Path]:
    """Every ``pins.json.backup.<stamp>`` of a backend, oldest first (ordered as in find_legacy_source)."""
    backups = [p for p in as_path(backend_dir).glob(BACKUP_PREFIX + "*") if len(p.name) > len(BACKUP_PREFIX)]
    return sorted(backups, key=_backup_sort_key)


def new_backup_path(backend_dir: Path) -> Path:
    """Where a new backup of pins.json goes: ``pins.json.backup.<UTC stamp>`` of now, or, when a backup
    is dated now or later (made while the clock ran ahead, issue #15), 1 µs after the newest one. So a
    new backup is always the newest, whatever the clock says, and the stamps keep the order in which
    the backups were made (a sequence the clock cannot reorder); ``future_backups`` reports the ones
    dated ahead."""
    backend_dir = as_path(backend_dir)
    moment = datetime.now(timezone.utc)
    backups = list_backups(backend_dir)
    if backups:
        newest = _backup_sort_key(backups[-1])[0]
        if newest >= moment:
            moment = newest + timedelta(microseconds=1)
    return backend_dir / f"{BACKUP_PREFIX}{moment.strftime('%Y%m%dT%H%M%S.%fZ')}"


def future_backups(backend_dir: Path) -> list[str]:
    """Names of the backups dated later than now (beyond another host's clock skew): made while the
    clock ran ahead, or stamped after such a one by ``new_backup_path``."""
    ahead = datetime.now(timezone.utc) + FUTURE_TOLERANCE
    return [path.name for path in list_backups(backend_dir) if _backup_sort_key(path)[0] > ahead]


def is_own_backup(path: Path) -> bool:
    """Whether a backup's stamp is pinfs' own (UTC), as opposed to ipfs_kit_py's (local time)."""
    stamp = path.name[len(BACKUP_PREFIX) :]
    return any(in_utc and _parses(stamp, pattern) for pattern, in_utc in _STAMP_FORMATS)


def _parses(stamp: str, pattern: str) -> bool:
    try:
        datetime.strptime(stamp, pattern)
    except ValueError:
        return False
    return True


def write_rejected(backend_dir: Path, rejected: list[Rejected], source: Path) -> Path | None:
    """Write ``backend_dir/pins.rejected.json`` atomically and return its path.

    Content: ``{"source", "written_at", "count", "rejected": [{"entry", "reason", "location"}]}``.
    Writes nothing and returns None when ``rejected`` is empty. The caller holds the backend lock.
    """
    if not rejected:
        return None
    target = as_path(backend_dir) / REJECTED_NAME
    document = {
        "source": str(source),
        "written_at": now_iso(),
        "count": len(rejected),
        "rejected": [asdict(item) for item in rejected],
    }
    atomic_write_bytes(target, _encode_json(document))
    return target


def _encode_json(document: Mapping[str, Any]) -> bytes:
    """Pretty UTF-8 JSON; falls back to ASCII escapes when the text holds lone surrogates."""
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(document, indent=2) + "\n").encode("ascii")


def _backup_sort_key(path: Path) -> tuple[datetime, int, str]:
    """When a backup was made: the time in its stamp (ours is UTC; ipfs_kit_py's ``%Y%m%d_%H%M%S`` is
    local time, issue #14), then its modification time for equal stamps, then its name. A stamp in
    neither form ranks below every dated one."""
    stamp = path.name[len(BACKUP_PREFIX) :]
    try:
        mtime_ns = path.lstat().st_mtime_ns
    except OSError:
        mtime_ns = 0
    for pattern, in_utc in _STAMP_FORMATS:
        try:
            moment = datetime.strptime(stamp, pattern)
        except ValueError:
            continue
        try:
            # astimezone() on a naive time reads it as local time, DST included.
            return (
                moment.replace(tzinfo=timezone.utc) if in_utc else moment.astimezone(timezone.utc),
                mtime_ns,
                path.name,
            )
        except (OverflowError, OSError, ValueError):  # year 1 in a zone east of UTC, and the like
            break
    return _UNDATED, mtime_ns, path.name


_UNDATED = datetime.min.replace(tzinfo=timezone.utc)
