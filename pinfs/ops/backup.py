"""Backups of every backend's pin mappings onto a filesystem backend, done as part of sync.

Syncing a filesystem backend copies each backend's ``pin_mappings.parquet`` and ``pin_mappings.car`` to
``<storage_path>/pin_mappings/<backend>/`` -- only the files whose content changed since their last copy
there (the exports of each backend's table). What was copied is remembered by content hash (sha256)
in ``<storage_path>/pin_mappings/manifest.json``. Every file, the manifest included, is written
atomically through the driver (temp + rename). A dry run lists what would be copied and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pinfs.backends import CAR_NAME, PARQUET_NAME, Backend
from pinfs.errors import CorruptData, NotFound, PinfsError, Unsupported
from pinfs.fsutil import read_regular_file
from pinfs.oldforms import is_sharded, read_old_form
from pinfs.ops.sync import SyncContext
from pinfs.schema import now_iso
from pinfs.tables import parquet_bytes

BACKUP_DIR = "pin_mappings"
MANIFEST_KEY = f"{BACKUP_DIR}/manifest.json"


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
    form of an older release (``pinfs.oldforms``) is copied as one parquet file of the whole table."""
    if not is_sharded(source):
        data = read_regular_file(source)
        return hashlib.sha256(data).hexdigest(), lambda: data
    data = parquet_bytes(read_old_form(source))
    return hashlib.sha256(data).hexdigest(), lambda: data


def backup_to(context: SyncContext, target: Backend) -> dict[str, Any]:
    """Copy changed pin-mapping files of every backend onto ``target`` (a filesystem backend)."""
    report: dict[str, Any] = {"target": target.name, "ok": True, "copied": [], "unchanged": 0}
    try:
        driver = context.driver(target)
    except Unsupported as exc:
        report["skipped"] = str(exc)
        return report
    except PinfsError as exc:
        report.update(ok=False, error=f"backups to {target.name}: {exc}")
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
                driver.put(key, payload)
            except PinfsError as exc:
                errors.append(str(exc))
                continue
            manifest[key] = {"sha256": digest, "size": len(payload), "copied_at": now_iso()}
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
    return report
