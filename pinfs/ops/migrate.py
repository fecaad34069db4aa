"""Migration of legacy ``pins.json`` files into the store (the backend's Delta table, ``pinfs.data.store``,
and its exports ``pin_mappings.parquet`` + ``pin_mappings.car``).

Per backend, under its lock (issue #14, CONTRACT §1 "Writes"):

- The source is ``pins.json``, or, when there is none, the newest ``pins.json.backup.*`` (ours or
  ipfs_kit_py's), so a backend left with only a backup can be migrated and written to.
- The source's bytes are read once. A ``pins.json`` is never modified or deleted: those exact bytes are
  backed up first (unless an identical backup exists), and the backend's run state records that backup
  and its sha256 as what was last imported (section ``legacy_import``, written under the same lock).
- Migration imports what changed in the source since what was last imported: a CID new there is
  added; a CID removed through pinfs since then is never brought back; an entry changed there is
  applied only with ``force``; a pin gone from it is kept (and counted). Without such a record (a
  first migration, or a store written without one) every CID missing from the store is added.
  ``force`` re-imports every entry: a pin that already has a ``car_file_path`` keeps it, and pinfs'
  own fields (``updated_at``, ``verified_at``, the sync and verify keys of ``metadata``) survive.
- Entries that cannot be imported are kept with their reason in ``pins.rejected.json``; the exports
  are refreshed (after the lock) when the pins changed or the CAR does not match them.
- A backend still in the parquet form of an older release is converted into its table first (issue
  #12), with or without a pins.json.

Running it again changes nothing: nothing is written when nothing differs. Also here:
``restore_from_backup`` (rebuild the store from the newest backup, keeping the current parquet as a
backup so it is reversible) and ``verify_only`` (check everything, write nothing). A backend with no
pins at all (no store, no legacy file, perhaps only a config) has nothing to migrate, verify or
regenerate, which is not a failure.

Each backend is handled on its own: a bad file in one is reported in its entry and the others go on.
Pins are written only through the store's ``Transaction`` (conversion of an old form included) and
the ``ops.carops`` helpers. The plan (what a run would change) is made by ``pinfs.ops.migrate_plan``;
verify-only is ``pinfs.ops.migrate_verify``.

A run that wrote something (migrate or restore, not a dry run, not verify-only) is recorded as the
backend's ``migrate`` section of its run state (``pinfs.data.runstate``; status shows it as the last
migration), after the lock is released. A run that wrote nothing records nothing (a second run changes
no file); a failed one records its error but keeps the time of the last migration that worked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.backends import Backend, get_backend
from pinfs.data.cids import identity_columns
from pinfs.data.exports import export_state, refresh_exports
from pinfs.data.fsutil import atomic_write_bytes, read_regular_file
from pinfs.data.legacy_entries import LegacyPins
from pinfs.data.legacy_files import (
    BACKUP_PREFIX,
    future_backups,
    list_backups,
    write_rejected,
)
from pinfs.data.oldforms import old_form_exists
from pinfs.data.runstate import read_state, record_run, update_state_locked
from pinfs.data.schema import now_iso, utc_stamp
from pinfs.data.store import PinStore, Transaction
from pinfs.data.tables import normalize_table, write_table
from pinfs.errors import NotFound, PinfsError
from pinfs.ops.carops import exports_behind
from pinfs.ops.common import discovery_problems, error_entry, match_backends
from pinfs.ops.migrate_plan import (
    IMPORT_SECTION,
    MAX_LISTED_DROPS,
    PARQUET_BACKUP_PREFIX,
    MigrateOptions,
    Plan,
    describe_plan,
    empty_plan,
    make_plan,
    read_source,
    rejected_changed,
    source_path,
)
from pinfs.ops.migrate_verify import verify_backend
from pinfs.ops.progress import NullProgress, Progress


def migrate(root: Path, options: MigrateOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Migrate (or restore, or verify) the chosen backends; one report entry per backend."""
    progress = progress or NullProgress()
    skipped = {get_backend(root, name).name for name in options.skip}  # UnknownBackend for a typo
    backends = [backend for backend in match_backends(root, options.backends) if backend.name not in skipped]
    mode = "verify-only" if options.verify_only else "restore" if options.restore_from_backup else "migrate"
    entries: list[dict[str, Any]] = []
    progress.start(mode, len(backends))
    for backend in backends:
        entries.append(_run_one(backend, options))
        progress.advance()
    progress.finish()
    return {
        "ok": all(entry["ok"] for entry in entries),
        "mode": mode,
        "dry_run": options.dry_run,
        "backends": entries,
        "skipped": sorted(skipped),
        "problems": discovery_problems(root),
    }


def _run_one(backend: Backend, options: MigrateOptions) -> dict[str, Any]:
    if options.verify_only:
        try:
            return verify_backend(backend)
        except (PinfsError, OSError) as exc:
            return error_entry(backend, exc)
    mode = "restore" if options.restore_from_backup else "migrate"
    try:
        if options.restore_from_backup:
            entry = _restore_backend(backend, options)
        else:
            entry = _migrate_backend(backend, options)
    except (PinfsError, OSError) as exc:  # one backend's failure (EACCES, ENOSPC…) never stops the others
        entry = error_entry(backend, exc)
    if not options.dry_run:
        _record(backend, mode, entry)  # the lock is released by now (record_run takes it)
    return entry


def _wrote(mode: str, entry: dict[str, Any]) -> bool:
    if mode == "restore":
        return "car" in entry
    return bool(entry.get("backup") or entry.get("parquet_written") or entry.get("car_written"))


def _record(backend: Backend, mode: str, entry: dict[str, Any]) -> None:
    """Record a run that wrote something, or failed, as the backend's ``migrate`` run state."""
    if entry.get("ok") and not _wrote(mode, entry):
        return
    info: dict[str, Any] = {"mode": mode, "ok": bool(entry.get("ok")), "error": entry.get("error")}
    if entry.get("ok"):
        info["finished_at"] = now_iso()
        info["counts"] = {
            key: entry[key] for key in ("added", "updated", "unchanged", "rejected", "total", "pins") if key in entry
        }
        for key in ("backup_path", "restored_from"):
            if entry.get(key):
                info[key] = entry[key]
    else:
        previous = read_state(backend).get("migrate")
        # finished_at stays the time of the last migration that worked (kept through failures).
        info["finished_at"] = previous.get("finished_at") if isinstance(previous, dict) else None
        info["failed_at"] = now_iso()
    record_run(backend, "migrate", info)


# -- migrate --


def _migrate_backend(backend: Backend, options: MigrateOptions) -> dict[str, Any]:
    store = PinStore(backend)
    path = source_path(backend)
    convert = not store.has_table() and old_form_exists(backend.parquet_path)
    if path is None and not convert and not (options.force_car_regeneration and store.has_parquet()):
        # Nothing to import and no CAR to rebuild: an empty backend, perhaps only a config. Nothing is
        # written (not even the lock file), and that is not a failure (issue #14, item 4).
        return describe_plan(backend, empty_plan(store, options), options)
    if options.dry_run:
        return describe_plan(backend, make_plan(backend, Transaction(store), path, options), options)
    with store.transaction() as txn:
        converted = txn.convert_old_form()  # the upgrade of issue #12: the table from the old parquet
        plan = make_plan(backend, txn, path, options)
        entry = describe_plan(backend, plan, options)
        entry.update(_apply(backend, txn, plan))
    if converted:
        entry["converted"] = "the table was made from the parquet of an older release"
    if txn.changed or converted or plan.car_reason is not None:
        # After the lock: exports take their own lock, which is never taken while holding the backend's.
        try:
            exports = refresh_exports(backend, force_car=plan.car_reason is not None)
        except (PinfsError, OSError) as exc:  # committed, but the disk is full (issue #15)
            entry.update(exports_behind(backend, exc))
            return entry
        if plan.car_reason is not None and exports.get("car"):
            entry["car"] = exports["car"]
    entry["future_backups"] = future_backups(backend.directory)
    return entry


def _apply(backend: Backend, txn: Transaction, plan: Plan) -> dict[str, Any]:
    """Write what the plan says: the backup first, the pins, then the record of the import (the exports
    follow once the lock is released). The caller holds the lock."""
    written: dict[str, Any] = {}
    source, legacy = plan.source, plan.legacy
    backup = plan.existing_backup or plan.written_backup  # written by make_plan, before anything else
    if plan.written_backup is not None:
        written["backup_path"] = str(plan.written_backup)
    if legacy is not None and legacy.rejected and rejected_changed(backend, legacy):
        written["rejected_path"] = str(write_rejected(backend.directory, legacy.rejected, legacy.source))
    first = not txn.store.has_parquet()
    if source is not None and backup is not None and first:
        # A first import: no record is read without a store, so recording it first is safe, and a
        # record left by a store since deleted can never outlive the pins it describes.
        _remember_import(backend, backup, source.sha256)
    if legacy is not None and first:
        txn.write(plan.merged)  # the first commit creates the table
    elif plan.parquet_changes:  # one commit rewriting only the files that hold the changed CIDs
        added = {row["cid"]: row for row in plan.added_rows.to_pylist()} if plan.added_rows is not None else {}
        txn.update({**added, **plan.replacements})
    if source is not None and backup is not None and not first:
        _remember_import(backend, backup, source.sha256)
    return written


def _remember_import(backend: Backend, backup: Path, sha256: str) -> None:
    """Record ``backup`` as what was last imported. Into an existing store, after the pins are written:
    a crash in between leaves the previous record, and the next run compares with that older import,
    which brings back nothing removed since (what was added since is in the store already). The caller
    holds the lock."""
    record = read_state(backend).get(IMPORT_SECTION)
    if isinstance(record, dict) and record.get("backup") == backup.name and record.get("sha256") == sha256:
        return  # a second run changes no file
    update_state_locked(backend, IMPORT_SECTION, {"backup": backup.name, "sha256": sha256, "at": now_iso()})


# -- restore --


def _restore_backend(backend: Backend, options: MigrateOptions) -> dict[str, Any]:
    backups = list_backups(backend.directory) if backend.directory.is_dir() else []
    newest = backups[-1] if backups else None
    if newest is None:
        raise NotFound(f"backend {backend.name!r}: no {BACKUP_PREFIX}* file to restore from")
    source = read_source(newest)
    legacy = source.parse(backend)
    store = PinStore(backend)
    entry: dict[str, Any] = {
        "backend": backend.name,
        "type": backend.type,
        "ok": True,
        "restored_from": str(newest),
        "backups_available": len(backups),
        "future_backups": future_backups(backend.directory),
        "pins": legacy.count,
        "rejected": len(legacy.rejected),
    }
    if options.dry_run:
        entry["would_keep_current_as"] = PARQUET_BACKUP_PREFIX + "<stamp>" if store.has_parquet() else None
        entry.update(_restore_changes(store, legacy, "would_"))
        return entry
    with store.transaction() as txn:
        entry.update(_restore_changes(store, legacy, ""))
        entry.update(_replace_from(backend, txn, legacy))
        _remember_import(backend, newest, source.sha256)
    try:
        exports = refresh_exports(backend, force_car=True)
    except (PinfsError, OSError) as exc:  # committed, but the disk is full (issue #15)
        entry.update(exports_behind(backend, exc))
        return entry
    entry["car"] = exports.get("car") or {"path": str(backend.car_path)}
    return entry


def _restore_changes(store: PinStore, legacy: LegacyPins, prefix: str) -> dict[str, Any]:
    """Which pins a restore drops (in the store, not in the backup) and how many it adds, by identity
    (issue #16: a dry run says which pins it would drop)."""
    if not store.has_parquet():
        return {f"{prefix}drop": [], f"{prefix}drop_count": 0, f"{prefix}add_count": legacy.count}
    current = pa.chunked_array(
        [piece.column("cid") for piece in store.snapshot().scan(["cid"])] or [pa.array([], pa.string())]
    )
    restored = legacy.table().column("cid")
    current_keys, restored_keys = identity_columns(current, restored)
    restored_set = pa.chunked_array([restored_keys]).combine_chunks()
    dropped = current.filter(pc.invert(pc.is_in(current_keys, value_set=restored_set)))
    added = pc.sum(pc.invert(pc.is_in(restored_keys, value_set=pa.chunked_array([current_keys]).combine_chunks())))
    return {
        f"{prefix}drop": dropped.slice(0, MAX_LISTED_DROPS).to_pylist(),
        f"{prefix}drop_count": len(dropped),
        f"{prefix}add_count": added.as_py() or 0,
    }


def _replace_from(backend: Backend, txn: Transaction, legacy: LegacyPins) -> dict[str, Any]:
    """Keep the current pins as one parquet file, then make the backup's pins the table. Lock held."""
    written: dict[str, Any] = {}
    if PinStore(backend).has_parquet():
        kept = backend.directory / f"{PARQUET_BACKUP_PREFIX}{utc_stamp()}"
        if export_state(backend, txn.state()).get("parquet") == "current":
            atomic_write_bytes(kept, read_regular_file(backend.parquet_path))  # the export, as it is
        else:
            write_table(kept, txn.current())
        written["previous_parquet_kept_as"] = str(kept)
    txn.write(normalize_table(legacy.table()))
    return written


__all__ = ["MigrateOptions", "migrate", "verify_backend"]
