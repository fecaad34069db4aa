"""Migration of legacy ``pins.json`` files into the store (the backend's Delta table, ``pinfs.store``,
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
Pins are written only through the store's ``Transaction`` and the ``ops.carops`` helpers.

A run that wrote something (migrate or restore, not a dry run, not verify-only) is recorded as the
backend's ``migrate`` section of its run state (``pinfs.ops.state``; status shows it as the last
migration), after the lock is released. A run that wrote nothing records nothing (a second run changes
no file); a failed one records its error but keeps the time of the last migration that worked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.backends import LEGACY_NAME, REJECTED_NAME, Backend, get_backend
from pinfs.cids import identity_columns, spelling_duplicates
from pinfs.datafiles import table_snapshot
from pinfs.errors import CorruptData, NotFound, PinfsError
from pinfs.exports import export_state, refresh_exports
from pinfs.fsutil import atomic_write_bytes, read_regular_file
from pinfs.legacy import mtime_iso, parse_legacy, read_legacy_bytes
from pinfs.legacy_entries import LegacyPins
from pinfs.legacy_files import (
    BACKUP_PREFIX,
    future_backups,
    is_own_backup,
    list_backups,
    new_backup_path,
    write_rejected,
)
from pinfs.oldforms import old_form_exists
from pinfs.ops.carops import car_agreement, exports_behind, table_records
from pinfs.ops.common import discovery_problems, error_entry, match_backends
from pinfs.ops.progress import NullProgress, Progress
from pinfs.ops.state import read_state, record_run, update_state_locked
from pinfs.schema import REQUIRED_COLUMNS, dump_metadata, load_metadata, now_iso, record_problems, utc_stamp
from pinfs.store import PinStore, Transaction
from pinfs.tables import empty_table, first_duplicate_cid, normalize_table, read_whole_table, write_table

PARQUET_BACKUP_PREFIX = "pin_mappings.parquet.backup."
# The run-state section naming what the last migration imported: {"backup", "sha256", "source", "at"}.
IMPORT_SECTION = "legacy_import"
# verify-only lists at most this many problems per backend; the count says how many there were.
MAX_LISTED_PROBLEMS = 50
# A restore lists at most this many of the pins it drops; the count says how many there are.
MAX_LISTED_DROPS = 10_000
# Compared to tell whether a pins.json entry changed since the last import (cid and backend are the same).
_COMPARED = ("car_file_path", "created_at", "status", "metadata")
# Keys of ``metadata`` that pinfs' sync and verify write; ``--force`` keeps them (issue #14, item 3).
_OWN_METADATA = frozenset(
    {"synced_at", "synced_from", "size", "last_error", "last_error_at", "attempts", "verify_failed_at"}
)


@dataclass
class MigrateOptions:
    backends: list[str] = field(default_factory=list)  # --backend-filter values; empty: every backend
    skip: list[str] = field(default_factory=list)  # --skip-backend: names left out (issue #16)
    dry_run: bool = False
    verbose: bool = False
    force: bool = False
    force_car_regeneration: bool = False
    restore_from_backup: bool = False
    verify_only: bool = False


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


# -- the legacy source and what was last imported --


@dataclass
class _Source:
    """The legacy file a migration reads, as the exact bytes read."""

    path: Path
    data: bytes
    mtime: float
    sha256: str = ""  # set by _secure (on a second thread, while the bytes are parsed)

    @property
    def is_backup(self) -> bool:
        return self.path.name != LEGACY_NAME

    def parse(self, backend: Backend) -> LegacyPins:
        return parse_legacy(self.data, self.path, backend.name, backend.type, default_created_at=mtime_iso(self.mtime))


def _source_path(backend: Backend) -> Path | None:
    """``pins.json`` (also a symlink, even a dangling one, so that the reader reports it), else the
    newest backup (issue #14, item 2), else None."""
    if backend.legacy_path.is_file() or backend.legacy_path.is_symlink():
        return backend.legacy_path
    backups = list_backups(backend.directory) if backend.directory.is_dir() else []
    return backups[-1] if backups else None


def _read_source(path: Path) -> _Source:
    data, mtime = read_legacy_bytes(path)
    return _Source(path, data, mtime, hashlib.sha256(data).hexdigest())


def _read_unhashed(path: Path) -> _Source:
    data, mtime = read_legacy_bytes(path)
    return _Source(path, data, mtime)


@dataclass
class _Baseline:
    """What the last migration imported: a backup holding exactly those bytes."""

    path: Path
    sha256: str | None  # None: taken from an earlier pinfs, which kept no record (not checked)


def _baseline(backend: Backend, store: PinStore) -> _Baseline | None:
    """What was last imported into the store, or None when nothing was (every pin is then new).

    A store written by an earlier pinfs has no record; that pinfs backed up every pins.json it
    imported, so its newest backup in pinfs' own stamp is what it last imported.
    """
    if not store.has_parquet():
        return None  # no store (never migrated, or deleted): everything is imported again
    record = read_state(backend).get(IMPORT_SECTION)
    if isinstance(record, dict) and isinstance(record.get("backup"), str) and isinstance(record.get("sha256"), str):
        name = Path(record["backup"]).name
        return _Baseline(backend.directory / name, record["sha256"])
    own = [path for path in list_backups(backend.directory) if is_own_backup(path)]
    return _Baseline(own[-1], None) if own else None


def _read_baseline(backend: Backend, baseline: _Baseline) -> _Source:
    """The bytes of the last import, checked against the recorded sha256. CorruptData when they are
    gone: then nobody can tell a pin removed through pinfs from one added to pins.json."""
    try:
        source = _read_source(baseline.path)
    except (NotFound, CorruptData) as exc:
        problem = str(exc)
    else:
        if baseline.sha256 is None or source.sha256 == baseline.sha256:
            return source
        got, recorded = source.sha256[:12], baseline.sha256[:12]
        problem = f"{baseline.path}: changed since it was imported (sha256 {got}…, recorded {recorded}…)"
    raise CorruptData(
        f"{problem}; it is the record of the last import, without which a pin removed through pinfs cannot "
        f"be told from a new one: run 'pinfs migrate --force --backend-filter {backend.name}' to import every "
        "entry of pins.json again"
    )


def _backup_for(backend: Backend, source: _Source, baseline: _Baseline | None) -> Path | None:
    """An existing backup holding exactly the source's bytes (the source itself when it is a backup)."""
    if source.is_backup:
        return source.path
    if baseline is not None and baseline.sha256 == source.sha256:
        return baseline.path
    size = len(source.data)
    for path in reversed(list_backups(backend.directory)):
        # A symlinked backup is not ours to read (it may point outside the root); sizes first, cheaply.
        if path.is_symlink() or not path.is_file() or path.stat().st_size != size:
            continue
        if hashlib.sha256(read_regular_file(path)).hexdigest() == source.sha256:
            return path
    return None


# -- migrate --


@dataclass
class _Plan:
    """What migrating one backend would change, computed before anything is written."""

    current: pa.Table
    merged: pa.Table
    legacy: LegacyPins | None = None
    source: _Source | None = None
    baseline: _Baseline | None = None  # what the comparison was made with (None: everything is new)
    existing_backup: Path | None = None  # a backup holding the source's bytes already
    added: Sequence[str] = field(default_factory=list)
    updated: Sequence[str] = field(default_factory=list)
    unchanged: Sequence[str] = field(default_factory=list)
    removed_in_pinfs: Sequence[str] = field(default_factory=list)  # in the last import, not in the store
    changed_in_legacy: Sequence[str] = field(default_factory=list)  # changed since, not applied (no --force)
    gone_from_legacy: Sequence[str] = field(default_factory=list)  # in the last import, not in the source now
    replacements: dict[str, dict[str, Any]] = field(default_factory=dict)  # rows --force re-imports
    added_rows: pa.Table | None = None  # the rows of ``added``
    car_reason: str | None = None
    note: str | None = None
    total: int | None = None  # pins in the store, when no table was read

    written_backup: Path | None = None  # the backup this run made of the source
    sha256: str | None = None  # of the source's bytes

    @property
    def parquet_changes(self) -> bool:
        return len(self.added) + len(self.updated) > 0

    @property
    def backup_needed(self) -> bool:
        return self.source is not None and self.existing_backup is None


def _migrate_backend(backend: Backend, options: MigrateOptions) -> dict[str, Any]:
    store = PinStore(backend)
    path = _source_path(backend)
    convert = not store.has_table() and old_form_exists(backend.parquet_path)
    if path is None and not convert and not (options.force_car_regeneration and store.has_parquet()):
        # Nothing to import and no CAR to rebuild: an empty backend, perhaps only a config. Nothing is
        # written (not even the lock file), and that is not a failure (issue #14, item 4).
        return _describe(backend, _empty_plan(store, options), options)
    if options.dry_run:
        return _describe(backend, _plan(backend, Transaction(store), path, options), options)
    with store.transaction() as txn:
        converted = txn.convert_old_form()  # the upgrade of issue #12: the table from the old parquet
        plan = _plan(backend, txn, path, options)
        entry = _describe(backend, plan, options)
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


def _empty_plan(store: PinStore, options: MigrateOptions) -> _Plan:
    table = empty_table()
    plan = _Plan(current=table, merged=table, total=store.snapshot().count if store.has_parquet() else 0)
    if options.force_car_regeneration:
        plan.note = "no pins: no pin_mappings.parquet to build a CAR from"
    else:
        plan.note = "nothing to migrate: no pins.json and no pins.json.backup.*"
    return plan


def _plan(backend: Backend, txn: Transaction, path: Path | None, options: MigrateOptions) -> _Plan:
    current = txn.current(allow_legacy=True)
    plan = _Plan(current=current, merged=current)
    if path is not None:
        plan.source = _read_unhashed(path)
        if not options.force:
            plan.baseline = _baseline(backend, txn.store)
        # Hashing and backing up the bytes (a write and an fsync of a file as big as pins.json) run on
        # a second thread while this one parses them: both release the GIL.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pinfs-backup") as pool:
            secured = pool.submit(_secure, backend, plan, write=not options.dry_run)
            try:
                plan.legacy = plan.source.parse(backend)
            except BaseException:
                # A source that cannot be parsed leaves no backup made of it: a failed run writes
                # nothing (and pins.json itself is never touched).
                with contextlib.suppress(Exception):
                    secured.result()
                if plan.written_backup is not None:
                    plan.written_backup.unlink(missing_ok=True)
                raise
            secured.result()
        plan.source.data = b""  # let a big pins.json go before the store is written
        _compare(backend, plan, force=options.force)
    plan.car_reason = _car_reason(backend, plan, options)
    return plan


def _secure(backend: Backend, plan: _Plan, *, write: bool) -> None:
    """Hash the source's bytes and, unless a backup holds them already, back them up (CONTRACT §1:
    backed up first, exactly the bytes that are parsed)."""
    assert plan.source is not None
    plan.source.sha256 = plan.sha256 = hashlib.sha256(plan.source.data).hexdigest()
    plan.existing_backup = _backup_for(backend, plan.source, plan.baseline)
    if plan.existing_backup is None and write:
        plan.written_backup = new_backup_path(backend.directory)
        atomic_write_bytes(plan.written_backup, plan.source.data)


def _compare(backend: Backend, plan: _Plan, *, force: bool) -> None:
    """Sort every entry of the source into added / updated / unchanged / not applied, and build the
    merged table."""
    assert plan.legacy is not None and plan.source is not None
    # issue #16: a CID is compared by identity, spelled as the store spells it (else as last imported)
    stored = plan.current.column("cid")
    template = plan.legacy.template
    previous = _previous_import(backend, plan)
    if previous is not None:
        previous = _respelled(previous, template, [stored])
    references = [stored] if previous is None else [stored, previous.column("cid")]
    legacy = _respelled(plan.legacy.table(), template, references)
    cids = legacy.column("cid")
    in_store = pc.is_in(cids, value_set=stored.combine_chunks())
    if previous is None:  # everything is new
        in_last, changed = _all(len(legacy), False), _all(len(legacy), False)
    else:
        in_last, changed = _against(legacy, previous)
        gone = pc.invert(pc.is_in(previous.column("cid"), value_set=cids.combine_chunks()))
        plan.gone_from_legacy = previous.column("cid").filter(gone)
    new = pc.invert(in_last)
    # New entries not yet in the store are added; with force, every entry not in the store.
    add = pc.and_(pc.invert(in_store), pa.scalar(True) if force else new)
    everything = bool(pc.all(add).as_py()) if len(add) else False  # a first migration: no copies
    plan.added = cids if everything else cids.filter(add)
    plan.added_rows = legacy if everything else legacy.filter(add)
    if force:
        _force_updates(plan, legacy.filter(in_store))
    else:
        plan.unchanged = cids.filter(pc.and_(in_store, pc.or_(new, pc.invert(changed))))
        plan.changed_in_legacy = cids.filter(pc.and_(in_store, changed))
        plan.removed_in_pinfs = cids.filter(pc.and_(in_last, pc.invert(in_store)))
    plan.merged = _merged(plan, legacy if everything else legacy.filter(add))


def _previous_import(backend: Backend, plan: _Plan) -> pa.Table | None:
    """The pins of the last import (None when there is none to compare with). The same bytes as the
    source give the same table without reading them again."""
    assert plan.source is not None and plan.legacy is not None
    if plan.baseline is None:
        return None
    if plan.baseline.sha256 == plan.source.sha256 or plan.baseline.path == plan.source.path:
        return plan.legacy.table()
    previous = _read_baseline(backend, plan.baseline)
    # The same default created_at as the source: an entry without a timestamp is not "changed" only
    # because the file was rewritten.
    default = mtime_iso(plan.source.mtime)
    return parse_legacy(previous.data, previous.path, backend.name, backend.type, default_created_at=default).table()


def _respelled(table: pa.Table, template: tuple[str, str], references: Sequence[pa.ChunkedArray]) -> pa.Table:
    """``table`` with each CID spelled as the first of ``references`` that holds the same CID spelled
    another way (issue #16); a ``car_file_path`` made from the backend's template follows the spelling."""
    cids = table.column("cid")
    for reference in references:
        if not len(reference) or not len(cids):
            continue
        keys, reference_keys = identity_columns(cids, reference)
        if keys is cids:
            continue  # no two spellings of one CID can be among them
        where = pc.index_in(keys, value_set=pa.chunked_array([reference_keys]).combine_chunks())
        spelled = pc.coalesce(pc.take(reference.combine_chunks(), where), cids)
        changed = pc.not_equal(spelled, cids)
        if not pc.any(changed).as_py():
            continue
        old_cars = pc.binary_join_element_wise(template[0], cids, template[1], "")
        new_cars = pc.binary_join_element_wise(template[0], spelled, template[1], "")
        cars = table.column("car_file_path")
        cars = pc.if_else(pc.and_(changed, pc.equal(cars, old_cars)), new_cars, cars)
        for name, column in (("cid", spelled), ("car_file_path", cars)):
            table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), column)
        cids = table.column("cid")
    return table


def _all(length: int, value: bool) -> pa.Array:
    return pa.array([value] * length, pa.bool_()) if length else pa.array([], pa.bool_())


def _against(legacy: pa.Table, previous: pa.Table) -> tuple[pa.Array, pa.Array]:
    """For each row of ``legacy``: whether its CID was in ``previous``, and whether its entry differs
    from the one there."""
    where = pc.index_in(legacy.column("cid"), value_set=previous.column("cid").combine_chunks())
    in_last = pc.is_valid(where)
    changed = _all(len(legacy), False)
    for column in _COMPARED:
        before = pc.take(previous.column(column), where)
        changed = pc.or_(changed, pc.fill_null(pc.not_equal(legacy.column(column), before), False))
    return in_last, changed


def _force_updates(plan: _Plan, rows: pa.Table) -> None:
    """``--force`` on entries already in the store: re-imported, keeping the pin's car_file_path and
    pinfs' own fields (issue #14, item 3)."""
    assert plan.legacy is not None
    records = rows.to_pylist()
    existing = _store_records(plan.current, [record["cid"] for record in records])
    replacements: dict[str, dict[str, Any]] = {}
    updated: list[str] = []
    unchanged: list[str] = []
    for record in records:
        old = existing[record["cid"]]
        if record["created_at"] == plan.legacy.default_created_at and old.get("created_at"):
            # No timestamp of its own (it got the file's mtime): the store's is as good, and older.
            record["created_at"] = old["created_at"]
        new = _forced(old, record)
        if any(new[column] != old.get(column) for column in REQUIRED_COLUMNS):
            replacements[record["cid"]] = new
            updated.append(record["cid"])
        else:
            unchanged.append(record["cid"])
    plan.replacements, plan.updated, plan.unchanged = replacements, updated, unchanged


def _store_records(table: pa.Table, cids: list[str]) -> dict[str, dict[str, Any]]:
    if not cids:
        return {}
    wanted = table.filter(pc.is_in(table.column("cid"), value_set=pa.array(cids, pa.string())))
    return {row["cid"]: row for row in wanted.to_pylist()}


def _forced(old: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The row of a pin re-imported with ``--force``: pins.json's status, created_at and metadata; the
    existing car_file_path (CONTRACT §1); every other column and pinfs' own metadata keys kept;
    ``updated_at`` left to be stamped when something changed."""
    new = {**old, **{column: record[column] for column in ("created_at", "status", "metadata")}}
    if old.get("car_file_path"):
        new["car_file_path"] = old["car_file_path"]
    try:
        own = {key: value for key, value in load_metadata(old.get("metadata")).items() if key in _OWN_METADATA}
        theirs = load_metadata(record["metadata"])
    except ValueError:  # unreadable metadata in the store: pins.json's replaces it
        own, theirs = {}, load_metadata(record["metadata"])
    if own:
        new["metadata"] = dump_metadata({**theirs, **own})
    new["updated_at"] = None if any(new[c] != old.get(c) for c in REQUIRED_COLUMNS) else old.get("updated_at")
    return new


def _merged(plan: _Plan, added: pa.Table) -> pa.Table:
    """The store's table with the added rows (``updated_at`` now) and the forced replacements."""
    table = plan.current
    replacements = plan.replacements
    stamp = now_iso()
    parts = [table]
    if added.num_rows:
        parts.append(added.append_column("updated_at", pa.array([stamp] * added.num_rows, pa.string())))
    if replacements:
        table = table.filter(pc.invert(pc.is_in(table.column("cid"), value_set=pa.array(list(replacements)))))
        rows = [{**row, "updated_at": row.get("updated_at") or stamp} for row in replacements.values()]
        parts = [table, *parts[1:], pa.Table.from_pylist(rows)]
    if len(parts) == 1:
        return table
    return normalize_table(pa.concat_tables(parts, promote_options="permissive"))


def _car_reason(backend: Backend, plan: _Plan, options: MigrateOptions) -> str | None:
    """Why the CAR must be written, or None when it is already right."""
    if options.force_car_regeneration:
        return "forced"
    if plan.legacy is None:
        return None  # no legacy file: nothing to migrate, the backend is left alone
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
    parquet_written = plan.parquet_changes or (legacy is not None and not PinStore(backend).has_parquet())
    entry: dict[str, Any] = {
        "backend": backend.name,
        "type": backend.type,
        "ok": True,
        "source": str(legacy.source) if legacy else None,
        "since": plan.baseline.path.name if plan.baseline else None,
        "legacy_shape": legacy.shape if legacy else None,
        "found": legacy.count + len(legacy.rejected) if legacy else 0,
        "added": len(plan.added),
        "updated": len(plan.updated),
        "unchanged": len(plan.unchanged),
        "removed_in_pinfs": len(plan.removed_in_pinfs),
        "changed_in_legacy": len(plan.changed_in_legacy),
        "gone_from_legacy": len(plan.gone_from_legacy),
        "rejected": len(legacy.rejected) if legacy else 0,
        "total": plan.merged.num_rows if plan.total is None else plan.total,
        "backup": plan.backup_needed,
        "parquet_written": parquet_written,
        "car_written": plan.car_reason is not None,
        "car_reason": plan.car_reason,
    }
    if options.dry_run:  # issue #16: a dry run writes nothing, and says what it would write
        entry["would_write"] = {
            "backup": entry.pop("backup"),
            "parquet": parquet_written,
            "car": entry["car_written"],
            "rejected": bool(legacy is not None and legacy.rejected and _rejected_changed(backend, legacy)),
        }
        entry.update(backup=False, parquet_written=False, car_written=False)
    if plan.note:
        entry["note"] = plan.note
    if backend.config_error:
        entry["warning"] = backend.config_error
    if options.verbose:
        for key in ("added", "updated", "removed_in_pinfs", "changed_in_legacy", "gone_from_legacy"):
            cids = getattr(plan, key)
            entry[f"{key}_cids"] = cids.to_pylist() if isinstance(cids, (pa.Array, pa.ChunkedArray)) else list(cids)
        entry["rejected_entries"] = [asdict(item) for item in legacy.rejected] if legacy else []
    return entry


def _apply(backend: Backend, txn: Transaction, plan: _Plan) -> dict[str, Any]:
    """Write what the plan says: the backup first, the pins, then the record of the import (the exports
    follow once the lock is released). The caller holds the lock."""
    written: dict[str, Any] = {}
    source, legacy = plan.source, plan.legacy
    backup = plan.existing_backup or plan.written_backup  # written by _plan, before anything else
    if plan.written_backup is not None:
        written["backup_path"] = str(plan.written_backup)
    if legacy is not None and legacy.rejected and _rejected_changed(backend, legacy):
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
    backups = list_backups(backend.directory) if backend.directory.is_dir() else []
    newest = backups[-1] if backups else None
    if newest is None:
        raise NotFound(f"backend {backend.name!r}: no {BACKUP_PREFIX}* file to restore from")
    source = _read_source(newest)
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


# -- verify-only --


def verify_backend(backend: Backend) -> dict[str, Any]:
    """Check the table (data files, schema, order, values) and that its exports hold what it holds.
    Writes nothing.

    A backend with no pins at all (no store and no legacy file) has nothing to verify and is ok; one
    still served from its legacy file is reported as not migrated."""
    problems: list[str] = []
    entry: dict[str, Any] = {"backend": backend.name, "type": backend.type}
    if backend.config_error:
        problems.append(backend.config_error)
    if not PinStore(backend).has_parquet():
        source = _source_path(backend)
        if source is not None:
            problems.append(
                f"not migrated yet: served from {source} (run 'pinfs migrate --backend-filter {backend.name}')"
            )
        else:
            entry["pins"] = 0
            entry["note"] = "no pins: nothing to verify"
    elif not PinStore(backend).has_table():
        table = _verify_old_form(PinStore(backend), problems)
        if table is not None:
            entry["pins"] = table.num_rows
            problems.extend(car_agreement(backend, table))
    else:
        store = PinStore(backend)
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
    for first, second in spelling_duplicates(table.column("cid"))[:MAX_LISTED_PROBLEMS]:
        problems.append(f"{store.table.directory}: {first} and {second} are one CID spelled two ways (issue #16)")
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
