"""Migration of legacy ``pins.json`` files into ``pin_mappings.parquet`` + ``pin_mappings.car``.

Per backend, under its lock: back up ``pins.json`` (never modified or deleted), merge its pins into the
parquet (a CID already there keeps its row unless ``force``), quarantine what cannot be imported in
``pins.rejected.json``, and write the CAR. Running it again changes nothing: an identical backup is not
made twice and nothing is written when nothing differs. Also here: ``restore_from_backup`` (rebuild the
parquet from the newest backup, keeping the current parquet as a backup so it is reversible) and
``verify_only`` (check everything, write nothing).

Each backend is handled on its own: a bad file in one is reported in its entry and the others go on.

A run that wrote something (migrate or restore, not a dry run, not verify-only) is recorded as the
backend's ``migrate`` section of its run state (``pinfs.ops.state``; status shows it as the last
migration), after the lock is released. A run that wrote nothing records nothing (a second run changes
no file); a failed one records its error but keeps the time of the last migration that worked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.backends import REJECTED_NAME, Backend
from pinfs.errors import CorruptData, NotFound, PinfsError
from pinfs.exports import export_state, refresh_exports
from pinfs.fsutil import atomic_write_bytes, read_regular_file
from pinfs.legacy import LegacyPins, list_backups, read_legacy_pins, write_rejected
from pinfs.oldforms import old_form_exists
from pinfs.ops.carops import car_agreement, table_records
from pinfs.ops.common import discovery_problems, error_entry, select_backends
from pinfs.ops.progress import NullProgress, Progress
from pinfs.ops.state import read_state, record_run
from pinfs.schema import REQUIRED_COLUMNS, now_iso, record_problems, utc_stamp
from pinfs.snapshots import FileIdentity
from pinfs.store import PinStore, Transaction, table_snapshot
from pinfs.tables import empty_table, first_duplicate_cid, merge_records, read_whole_table, write_table

BACKUP_PREFIX = "pins.json.backup."
PARQUET_BACKUP_PREFIX = "pin_mappings.parquet.backup."
# verify-only lists at most this many problems per backend; the count says how many there were.
MAX_LISTED_PROBLEMS = 50


@dataclass
class MigrateOptions:
    backends: list[str] = field(default_factory=list)  # empty: every backend
    dry_run: bool = False
    verbose: bool = False
    force: bool = False
    force_car_regeneration: bool = False
    restore_from_backup: bool = False
    verify_only: bool = False


def migrate(root: Path, options: MigrateOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Migrate (or restore, or verify) the chosen backends; one report entry per backend."""
    progress = progress or NullProgress()
    backends = select_backends(root, options.backends)
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


@dataclass
class _Plan:
    """What migrating one backend would change, computed before anything is written."""

    legacy: LegacyPins | None
    merged: pa.Table
    replacements: dict[str, dict[str, str]] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    backup_needed: bool = False
    car_reason: str | None = None
    source_identity: FileIdentity | None = None  # pins.json as it was parsed

    @property
    def parquet_changes(self) -> bool:
        return bool(self.added or self.updated)


def _migrate_backend(backend: Backend, options: MigrateOptions) -> dict[str, Any]:
    store = PinStore(backend)
    convert = not store.has_table() and old_form_exists(backend.parquet_path)
    if options.dry_run or not (_has_legacy_file(backend) or options.force_car_regeneration or convert):
        # Nothing will be written, so plan without the lock: creating its file would itself be a write
        # (a dry run writes nothing; a backend without pins.json is left alone).
        return _describe(backend, _plan(backend, Transaction(store), options), options)
    with store.transaction() as txn:
        converted = store.convert_old_form()  # the upgrade of issue #12: the table from the old parquet
        plan = _plan(backend, txn, options)
        entry = _describe(backend, plan, options)
        entry.update(_apply(backend, txn, plan))
    if converted:
        entry["converted"] = "the table was made from the parquet of an older release"
    if txn.changed or converted or plan.car_reason is not None:
        # After the lock: exports take their own lock, which is never taken while holding the backend's.
        exports = refresh_exports(backend, force_car=plan.car_reason is not None)
        if plan.car_reason is not None and exports.get("car"):
            entry["car"] = exports["car"]
    return entry


def _plan(backend: Backend, txn: Transaction, options: MigrateOptions) -> _Plan:
    # A pins.json that is a symlink (even a dangling one) is read so that the reader reports it.
    source = backend.legacy_path if _has_legacy_file(backend) else None
    identity = FileIdentity.of(source) if source and source.is_file() else None
    legacy = read_legacy_pins(source, backend.name, backend.type) if source else None
    current = txn.current(allow_legacy=True)
    plan = _Plan(legacy=legacy, merged=current, source_identity=identity)
    if legacy is not None:
        _merge_legacy(plan, current, legacy, force=options.force)
        plan.backup_needed = not _has_identical_backup(backend, source)
    plan.car_reason = _car_reason(backend, plan, options)
    return plan


def _merge_legacy(plan: _Plan, current: pa.Table, legacy: LegacyPins, *, force: bool) -> None:
    existing = {row["cid"]: row for row in current.select(list(REQUIRED_COLUMNS)).to_pylist()}
    replacements: dict[str, dict[str, str]] = {}
    for record in legacy.records:
        cid = record["cid"]
        old = existing.get(cid)
        if old is None:
            plan.added.append(cid)
            replacements[cid] = record
        elif force and any(old[column] != record[column] for column in REQUIRED_COLUMNS):
            plan.updated.append(cid)
            replacements[cid] = record
        else:
            plan.unchanged.append(cid)
    plan.replacements = replacements
    plan.merged = merge_records(current, replacements)


def _unchanged_bytes(path: Path, identity: FileIdentity | None) -> bytes:
    """The bytes of ``path`` for its backup, refusing if it changed since it was parsed (so the backup
    is exactly what was imported)."""
    data = path.read_bytes()
    if identity is None or FileIdentity.of(path) != identity:
        raise CorruptData(f"{path}: changed while being migrated; nothing was written, run migrate again")
    return data


def _has_legacy_file(backend: Backend) -> bool:
    return backend.legacy_path.is_file() or backend.legacy_path.is_symlink()


def _has_identical_backup(backend: Backend, source: Path) -> bool:
    # A symlinked backup is not ours to read (it may point outside the root).
    backups = list_backups(backend.directory)
    if not backups:
        return False
    digest = _sha256(source)
    return any(_sha256(path) == digest for path in backups if path.is_file() and not path.is_symlink())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _car_reason(backend: Backend, plan: _Plan, options: MigrateOptions) -> str | None:
    """Why the CAR must be written, or None when it is already right."""
    if options.force_car_regeneration:
        return "forced"
    if plan.legacy is None:
        return None  # no pins.json: nothing to migrate, the backend is left alone
    if plan.parquet_changes:
        return "pins changed"
    states = export_state(backend, PinStore(backend).table_state())
    if states.get("car") == "missing" or not backend.car_path.is_file():
        return "missing"
    if states.get("car") != "current" and car_agreement(backend, plan.merged):
        return "out of date"
    return None


def _describe(backend: Backend, plan: _Plan, options: MigrateOptions) -> dict[str, Any]:
    legacy = plan.legacy
    entry: dict[str, Any] = {
        "backend": backend.name,
        "type": backend.type,
        "ok": True,
        "source": str(legacy.source) if legacy else None,
        "legacy_shape": legacy.shape if legacy else None,
        "found": len(legacy.records) + len(legacy.rejected) if legacy else 0,
        "added": len(plan.added),
        "updated": len(plan.updated),
        "unchanged": len(plan.unchanged),
        "rejected": len(legacy.rejected) if legacy else 0,
        "total": plan.merged.num_rows,
        "backup": plan.backup_needed,
        "parquet_written": plan.parquet_changes or (legacy is not None and not PinStore(backend).has_parquet()),
        "car_written": plan.car_reason is not None,
        "car_reason": plan.car_reason,
    }
    if backend.config_error:
        entry["warning"] = backend.config_error
    if options.verbose:
        entry["added_cids"] = plan.added
        entry["updated_cids"] = plan.updated
        entry["rejected_entries"] = [asdict(item) for item in legacy.rejected] if legacy else []
    return entry


def _apply(backend: Backend, txn: Transaction, plan: _Plan) -> dict[str, Any]:
    """Write what the plan says, backup first. The caller holds the lock."""
    written: dict[str, Any] = {}
    legacy = plan.legacy
    if legacy is not None and plan.backup_needed:
        backup = backend.directory / f"{BACKUP_PREFIX}{utc_stamp()}"
        atomic_write_bytes(backup, _unchanged_bytes(legacy.source, plan.source_identity))
        written["backup_path"] = str(backup)
    if legacy is not None and legacy.rejected and _rejected_changed(backend, legacy):
        written["rejected_path"] = str(write_rejected(backend.directory, legacy.rejected, legacy.source))
    if txn.state() is None and legacy is not None:
        txn.write(plan.merged)  # the first commit creates the table
    elif plan.parquet_changes:
        txn.update(plan.replacements)  # only the files holding the changed CIDs are rewritten
    return written


def _rejected_changed(backend: Backend, legacy: LegacyPins) -> bool:
    """Whether pins.rejected.json would say something new (so a second run rewrites nothing)."""
    path = backend.directory / REJECTED_NAME
    try:
        previous = json.loads(path.read_text(encoding="utf-8")).get("rejected")
    except (OSError, ValueError, AttributeError):
        return True
    current = json.loads(json.dumps([asdict(item) for item in legacy.rejected]))
    return previous != current


# -- restore --


def _restore_backend(backend: Backend, options: MigrateOptions) -> dict[str, Any]:
    backups = list_backups(backend.directory)
    newest = backups[-1] if backups else None
    if newest is None:
        raise NotFound(f"backend {backend.name!r}: no {BACKUP_PREFIX}* file to restore from")
    legacy = read_legacy_pins(newest, backend.name, backend.type)
    store = PinStore(backend)
    entry: dict[str, Any] = {
        "backend": backend.name,
        "type": backend.type,
        "ok": True,
        "restored_from": str(newest),
        "backups_available": len(backups),
        "pins": len(legacy.records),
        "rejected": len(legacy.rejected),
    }
    if options.dry_run:
        entry["would_keep_current_as"] = PARQUET_BACKUP_PREFIX + "<stamp>" if store.has_parquet() else None
        return entry
    with store.transaction() as txn:
        entry.update(_replace_from(backend, txn, legacy))
    exports = refresh_exports(backend, force_car=True)
    entry["car"] = exports.get("car") or {"path": str(backend.car_path)}
    return entry


def _replace_from(backend: Backend, txn: Transaction, legacy: LegacyPins) -> dict[str, Any]:
    """Keep the current pins as one parquet file, then make the backup's pins the table. Lock held."""
    written: dict[str, Any] = {}
    store = PinStore(backend)
    if store.has_parquet():
        kept = backend.directory / f"{PARQUET_BACKUP_PREFIX}{utc_stamp()}"
        if export_state(backend, txn.state()).get("parquet") == "current":
            atomic_write_bytes(kept, read_regular_file(backend.parquet_path))  # the export, as it is
        else:
            write_table(kept, txn.current())
        written["previous_parquet_kept_as"] = str(kept)
    table = merge_records(empty_table(), {record["cid"]: record for record in legacy.records})
    txn.write(table)
    return written


# -- verify-only --


def verify_backend(backend: Backend) -> dict[str, Any]:
    """Check parquet schema and values, CAR validity, and that they agree. Writes nothing."""
    problems: list[str] = []
    entry: dict[str, Any] = {"backend": backend.name, "type": backend.type}
    if backend.config_error:
        problems.append(backend.config_error)
    store = PinStore(backend)
    if not store.has_parquet():
        problems.append(f"{backend.parquet_path}: missing (backend not migrated)")
    elif not store.has_table():
        table = _verify_old_form(store, problems)
        if table is not None:
            entry["pins"] = table.num_rows
            problems.extend(car_agreement(backend, table))
    else:
        table = _verify_table(store, problems)
        if table is not None:
            entry["pins"] = table.num_rows
            entry["version"] = store.table_state().version  # type: ignore[union-attr]
            problems.extend(_export_problems(backend, table))
    entry["ok"] = not problems
    entry["problem_count"] = len(problems)
    entry["problems"] = problems[:MAX_LISTED_PROBLEMS]
    return entry


def _verify_old_form(store: PinStore, problems: list[str]) -> pa.Table | None:
    """An old-form parquet (a file or the sharded form), checked as the table will be made from it."""
    if store.path.is_file():
        return _verify_parquet(store.path, problems)
    try:
        table = store.snapshot().table()
    except PinfsError as exc:
        problems.append(str(exc))
        return None
    _verify_rows(store.path, table, problems)
    return table


def _verify_table(store: PinStore, problems: list[str]) -> pa.Table | None:
    """The table's newest version: every data file readable, sorted, of the size and rows the log says,
    in disjoint CID ranges, and every row sound."""
    try:
        state = store.table_state(reload=True)
        assert state is not None
        table = table_snapshot(state, store.cache).table()
    except PinfsError as exc:
        problems.append(str(exc))
        return None
    ranged = [data_file for data_file in state.files if data_file.rows]
    for left, right in zip(ranged, ranged[1:], strict=False):
        if left.max_cid >= right.min_cid:  # type: ignore[operator]
            problems.append(
                f"{store.table.directory}: files {left.path} and {right.path} overlap (run 'pinfs maintain')"
            )
    duplicate = first_duplicate_cid(table)
    if duplicate is not None:
        problems.append(f"{store.table.directory}: CID {duplicate} appears more than once")
    _verify_rows(store.table.directory, table, problems)
    return table


def _export_problems(backend: Backend, table: pa.Table) -> list[str]:
    """Whether the exports hold what the table holds (an export being refreshed is not a problem)."""
    problems: list[str] = []
    if not backend.parquet_path.is_file():
        problems.append(f"{backend.parquet_path}: missing (run 'pinfs car regenerate --backend {backend.name}')")
    else:
        exported = _verify_parquet(backend.parquet_path, problems)
        if exported is not None and not exported.equals(table):
            problems.append(
                f"{backend.parquet_path}: does not hold what the table holds; it was changed by another tool "
                "(it is imported at the next write) or is behind (run 'pinfs car regenerate')"
            )
    problems.extend(car_agreement(backend, table))
    return problems


def _verify_parquet(path: Path, problems: list[str]) -> pa.Table | None:
    try:
        # One read, in file order: raises for missing columns, non-string types and nulls.
        as_stored = read_whole_table(path, sort=False)
    except PinfsError as exc:
        problems.append(str(exc))
        return None
    if not _strictly_ascending(as_stored.column("cid")):
        problems.append(f"{path}: rows are not sorted by cid")
    table = as_stored.sort_by("cid")
    duplicate = first_duplicate_cid(table)
    if duplicate is not None:
        problems.append(f"{path}: CID {duplicate} appears more than once")
    _verify_rows(path, table, problems)
    return table


def _strictly_ascending(cids: pa.ChunkedArray) -> bool:
    if len(cids) < 2:
        return True
    return bool(pc.all(pc.less(cids.slice(0, len(cids) - 1), cids.slice(1))).as_py())


def _verify_rows(path: Path, table: pa.Table, problems: list[str]) -> None:
    for index, row in enumerate(table.select(list(REQUIRED_COLUMNS)).to_pylist()):
        for problem in record_problems(row):
            problems.append(f"{path}: row {index}: {problem}")
            if len(problems) > MAX_LISTED_PROBLEMS * 4:
                return


__all__ = ["MigrateOptions", "migrate", "verify_backend", "table_records"]
