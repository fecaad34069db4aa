"""Backups of every backend's pin mappings onto writable backends, done as part of sync.

Syncing a backend whose config says ``backup: true`` (filesystem backends: unless it says ``false``)
copies each backend's ``pin_mappings.parquet`` and ``pin_mappings.car`` to ``pin_mappings/<backend>/``
on its storage (the exports of each backend's table) -- only the files whose content changed since
their last copy there. A backend still in the sharded form of an older release is copied as one
file. What was copied is remembered by content hash (sha256) in ``pin_mappings/manifest.json`` on
the target, and in the target's state file (``backups``) so that
health can tell, without the network, which copies are behind their source. Every file, the manifest
included, is written through the driver (atomically, or in the one commit of the run on git and the
Hub); a file above the service's size limit is refused before anything is sent. A backend type that
keeps no named files (IPFS, Storacha) cannot hold backups. A dry run lists what would be copied and
writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cachetools

from pinfs.data.backends import CAR_NAME, PARQUET_NAME, Backend
from pinfs.data.fsutil import read_regular_file
from pinfs.data.oldforms import data_files, is_sharded, read_old_form
from pinfs.data.runstate import read_state, record_run
from pinfs.data.schema import now_iso
from pinfs.data.tables import parquet_bytes
from pinfs.errors import CorruptData, NotFound, PinfsError, Unsupported
from pinfs.ops.drivers import FILESYSTEM_DRIVER_TYPES
from pinfs.ops.drivers.base import flag_setting
from pinfs.ops.synccontext import SyncContext

BACKUP_DIR = "pin_mappings"
MANIFEST_KEY = f"{BACKUP_DIR}/manifest.json"
BACKUP_STATE = "backups"  # the section of the target's state file


def wants_backups(backend: Backend) -> bool:
    """Whether syncing ``backend`` copies every backend's pin mappings onto it (config ``backup``)."""
    return flag_setting(backend, "backup", backend.type in FILESYSTEM_DRIVER_TYPES - {"sshfs"})


def _load_manifest(driver: Any) -> dict[str, Any]:
    try:
        value = json.loads(driver.get(MANIFEST_KEY))
    except NotFound:
        return {}
    except ValueError:
        return {}  # unreadable: copy everything again, then write a good one
    files = value.get("files") if isinstance(value, dict) else None
    return files if isinstance(files, dict) else {}


def _content(source: Path) -> tuple[str, Callable[[], bytes]]:
    """The content hash of a pin-mapping file and a way to get its bytes. A backend still in the sharded
    form of an older release (``pinfs.data.oldforms``) is copied as one parquet file of the whole table."""
    if not is_sharded(source):
        data = read_regular_file(source)
        return hashlib.sha256(data).hexdigest(), lambda: data
    data = parquet_bytes(read_old_form(source))
    return hashlib.sha256(data).hexdigest(), lambda: data


def backup_to(context: SyncContext, target: Backend) -> dict[str, Any]:
    """Copy changed pin-mapping files of every backend onto ``target`` (a backend holding files)."""
    report: dict[str, Any] = {"target": target.name, "ok": True, "copied": [], "unchanged": 0}
    try:
        driver = context.driver(target)
    except Unsupported as exc:
        report["skipped"] = str(exc)
        return report
    except PinfsError as exc:
        report.update(ok=False, error=f"backups to {target.name}: {exc}")
        return report
    if not driver.holds_files:
        report.update(ok=False, error=f"backups to {target.name}: {target.type} storage keeps no named files")
        return report
    try:
        manifest = _load_manifest(driver)
    except PinfsError as exc:
        report.update(ok=False, error=f"backups to {target.name}: {exc}")
        return report
    report["location"] = f"{driver.describe()}/{BACKUP_DIR}"
    changed = False
    errors: list[str] = []
    for backend in context.backends:
        for name in (PARQUET_NAME, CAR_NAME):
            source = backend.directory / name
            try:
                digest, data = _content(source)
            except FileNotFoundError:
                continue
            except CorruptData as exc:
                errors.append(str(exc))
                continue
            except OSError as exc:
                errors.append(f"{source}: {exc.strerror or exc}")
                continue
            key = f"{BACKUP_DIR}/{backend.name}/{name}"
            previous = manifest.get(key)
            try:
                if isinstance(previous, dict) and previous.get("sha256") == digest and driver.exists(key):
                    report["unchanged"] += 1
                    continue
                if context.dry_run:
                    report["copied"].append({"backend": backend.name, "file": name, "key": key, "dry_run": True})
                    continue
                payload = data()
                item = {"backend": backend.name, "file": name, "key": key, "size": len(payload)}
                driver.limit_check(f"{key} (a backup copy)", len(payload))
                driver.put(key, payload)
            except PinfsError as exc:
                errors.append(str(exc))
                continue
            copied = hashlib.sha256(payload).hexdigest()
            manifest[key] = {"sha256": digest, "copy_sha256": copied, "size": len(payload), "copied_at": now_iso()}
            report["copied"].append(item)
            changed = True
    if changed:
        document = {"format": "pinfs_backup_manifest", "version": 1, "updated_at": now_iso(), "files": manifest}
        try:
            driver.put(MANIFEST_KEY, json.dumps(document, indent=2, sort_keys=True).encode() + b"\n")
        except PinfsError as exc:
            errors.append(f"writing {MANIFEST_KEY}: {exc}")
    if errors:
        report.update(ok=False, error="; ".join(errors))
    if not context.dry_run:
        copies = {"updated_at": now_iso(), "files": manifest}
        context.after_flush(
            target, lambda: record_run(target, BACKUP_STATE, copies), lambda reason: _flush_failed(report, reason)
        )
    return report


def _flush_failed(report: dict[str, Any], reason: str) -> None:
    report["ok"] = False
    report["error"] = "; ".join(filter(None, [report.get("error"), f"backups to {report['target']}: {reason}"]))


# -- health: backup copies that differ from their source --

_DIGESTS: cachetools.LRUCache = cachetools.LRUCache(maxsize=512)
_DIGESTS_LOCK = threading.Lock()


def _signature(path: Path) -> tuple[Any, ...] | None:
    """What changes when the file (or, in the sharded form of an older release, any shard) changes."""
    try:
        files = data_files(path) if is_sharded(path) else [path]
        return tuple((str(f), s.st_ino, s.st_size, s.st_mtime_ns) for f in files for s in [f.stat()])
    except (OSError, PinfsError):
        return None


def content_digest(path: Path, as_copied: bool = False) -> str | None:
    """The digest ``backup_to`` records for a pin-mapping file (``as_copied``: plain sha256 of the file,
    as a copy on the target is hashed); None when it is missing or unreadable. Cached by the files'
    stats, so a health report hashes a file again only after it changed."""
    signature = _signature(path)
    if signature is None:
        return None
    key = (signature, as_copied)
    with _DIGESTS_LOCK:
        found = _DIGESTS.get(key)
    if found is None:
        try:
            found = hashlib.sha256(read_regular_file(path)).hexdigest() if as_copied else _content(path)[0]
        except (OSError, PinfsError):
            return None
        with _DIGESTS_LOCK:
            _DIGESTS[key] = found
    return found


def backup_health(target: Backend, sources: list[Backend], local_base: Path | None) -> dict[str, Any]:
    """How the backup copies on ``target`` compare with their sources, from what the last syncs recorded
    (no network): ``behind`` -- the source changed since its copy (the next sync copies it), and
    ``differ`` -- on a local target (``local_base``), a copy that is missing or is not what was copied."""
    recorded = read_state(target).get(BACKUP_STATE)
    files = recorded.get("files") if isinstance(recorded, dict) else None
    files = files if isinstance(files, dict) else {}
    result: dict[str, Any] = {"copies": 0, "behind": [], "differ": []}
    for backend in sources:
        for name in (PARQUET_NAME, CAR_NAME):
            current = content_digest(backend.directory / name)
            if current is None:
                continue
            key = f"{BACKUP_DIR}/{backend.name}/{name}"
            record = files.get(key)
            if not isinstance(record, dict):
                result["behind"].append(f"{backend.name}/{name} (never copied)")
                continue
            result["copies"] += 1
            if local_base is not None:
                copy = content_digest(local_base / key, as_copied=True)
                if copy is None:
                    result["differ"].append(f"{key} is missing")
                    continue
                if record.get("copy_sha256") and copy != record["copy_sha256"]:
                    result["differ"].append(f"{key} is not what sync copied there (changed on the target)")
                    continue
            if record.get("sha256") != current:
                result["behind"].append(f"{backend.name}/{name} (copied {record.get('copied_at')})")
    return result
