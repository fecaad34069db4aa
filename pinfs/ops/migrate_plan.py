"""Planning a migration (``pinfs.ops.migrate``): the legacy source and what was last imported from it,
the comparison of the source with the store (what is added, updated, unchanged, dropped), whether the
CAR must be rebuilt, and the report entry describing the plan. Backing up the source's bytes is
the only thing it writes (``_secure``, before anything else; never the pins).
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

from pinfs.data.backends import LEGACY_NAME, REJECTED_NAME, Backend
from pinfs.data.cids import identity_columns
from pinfs.data.exports import export_state
from pinfs.data.fsutil import atomic_write_bytes, read_regular_file
from pinfs.data.legacy import mtime_iso, parse_legacy, read_legacy_bytes
from pinfs.data.legacy_entries import LegacyPins
from pinfs.data.legacy_files import (
    is_own_backup,
    list_backups,
    new_backup_path,
)
from pinfs.data.runstate import read_state
from pinfs.data.schema import REQUIRED_COLUMNS, dump_metadata, load_metadata, now_iso
from pinfs.data.store import PinStore, Transaction
from pinfs.data.tables import empty_table, normalize_table
from pinfs.errors import CorruptData, NotFound
from pinfs.ops.carops import car_agreement

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


def source_path(backend: Backend) -> Path | None:
    """``pins.json`` (also a symlink, even a dangling one, so that the reader reports it), else the
    newest backup (issue #14, item 2), else None."""
    if backend.legacy_path.is_file() or backend.legacy_path.is_symlink():
        return backend.legacy_path
    backups = list_backups(backend.directory) if backend.directory.is_dir() else []
    return backups[-1] if backups else None


def read_source(path: Path) -> _Source:
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
        source = read_source(baseline.path)
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


@dataclass
class Plan:
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


def empty_plan(store: PinStore, options: MigrateOptions) -> Plan:
    table = empty_table()
    plan = Plan(current=table, merged=table, total=store.snapshot().count if store.has_parquet() else 0)
    if options.force_car_regeneration:
        plan.note = "no pins: no pin_mappings.parquet to build a CAR from"
    else:
        plan.note = "nothing to migrate: no pins.json and no pins.json.backup.*"
    return plan


def make_plan(backend: Backend, txn: Transaction, path: Path | None, options: MigrateOptions) -> Plan:
    current = txn.current(allow_legacy=True)
    plan = Plan(current=current, merged=current)
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


def _secure(backend: Backend, plan: Plan, *, write: bool) -> None:
    """Hash the source's bytes and, unless a backup holds them already, back them up (CONTRACT §1:
    backed up first, exactly the bytes that are parsed)."""
    assert plan.source is not None
    plan.source.sha256 = plan.sha256 = hashlib.sha256(plan.source.data).hexdigest()
    plan.existing_backup = _backup_for(backend, plan.source, plan.baseline)
    if plan.existing_backup is None and write:
        plan.written_backup = new_backup_path(backend.directory)
        atomic_write_bytes(plan.written_backup, plan.source.data)


def _compare(backend: Backend, plan: Plan, *, force: bool) -> None:
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


def _previous_import(backend: Backend, plan: Plan) -> pa.Table | None:
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


def _force_updates(plan: Plan, rows: pa.Table) -> None:
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


def _merged(plan: Plan, added: pa.Table) -> pa.Table:
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


def _car_reason(backend: Backend, plan: Plan, options: MigrateOptions) -> str | None:
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


def describe_plan(backend: Backend, plan: Plan, options: MigrateOptions) -> dict[str, Any]:
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
            "rejected": bool(legacy is not None and legacy.rejected and rejected_changed(backend, legacy)),
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


def rejected_changed(backend: Backend, legacy: LegacyPins) -> bool:
    """Whether pins.rejected.json would say something new (so a second run rewrites nothing)."""
    path = backend.directory / REJECTED_NAME
    try:
        previous = json.loads(path.read_text(encoding="utf-8")).get("rejected")
    except (OSError, ValueError, AttributeError):
        return True
    current = json.loads(json.dumps([asdict(item) for item in legacy.rejected]))
    return previous != current
