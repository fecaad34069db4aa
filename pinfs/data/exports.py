"""The exports of a backend's table: ``pin_mappings.parquet`` and ``pin_mappings.car`` (CONTRACT §1).

Both are made from one version of the Delta table (``pinfs.data.store``) and say which: the parquet in its
key-value metadata (``pinfs.table_version``, ``pinfs.table_id``), and both in the export record
``ROOT/backends/<b>/.pinfs-exports.json``, with the identity (inode, size, mtime) of the file as
written. An export is *current* when its record names the table's newest version and the file is still
the one written; *pending* when the table moved on (``refresh_exports`` brings it up); *missing*; or,
for the parquet, *foreign* when the file is not the one pinfs wrote: ipfs_kit_py writes this file
itself, and a user may replace it by hand.

A foreign parquet is never overwritten unread: ``refresh_exports`` first imports it into the table
(``import_foreign``) by CID, as the changes it made to the version pinfs last exported: rows it added
or changed are written (in the columns it has), rows it dropped are removed; when that version can no
longer be read, its rows are only added or updated. A file that cannot be read is moved aside as
``pin_mappings.parquet.rejected.<stamp>`` with its reason beside it, never lost.

Writing: each export is encoded into a temporary file beside its target, then renamed over it. The
whole refresh holds the backend's export lock (``fsutil.export_lock``, not the writers' lock), so two
processes never both rebuild, and an export of an older version never replaces a newer one: inside
the lock the newest version is always what is exported. Readers see the whole previous file or the
whole new one.

Threading: synchronous, slow for big tables (a million pins: ~2 s); the mount runs it off the event
loop (the mount's export duty, ``pinfs.fs.duties.ExportDuty``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.backends import Backend
from pinfs.data.car_columns import write_pin_mappings_car_columns
from pinfs.data.datafiles import table_snapshot
from pinfs.data.delta import TableState
from pinfs.data.fsutil import (
    atomic_write_bytes,
    atomic_writer,
    export_lock,
    fsync_dir,
    fsync_file,
    local_temp_for,
    naming,
)
from pinfs.data.oldforms import read_old_form, remove_shard_dir
from pinfs.data.pieces import FileIdentity
from pinfs.data.readers import READERS
from pinfs.data.rootfs import S3Path, head, local_copy, put_object
from pinfs.data.runstate import record_run
from pinfs.data.s3client import PreconditionFailed
from pinfs.data.schema import REQUIRED_COLUMNS, STORE_COLUMNS, now_iso, utc_stamp
from pinfs.data.snapshots import PinSnapshot
from pinfs.data.store import PinStore, Transaction
from pinfs.data.tables import parquet_writer
from pinfs.errors import CorruptData, PinfsError

log = logging.getLogger(__name__)

RECORD_NAME = ".pinfs-exports.json"
PARQUET, CAR = "parquet", "car"
KINDS = (PARQUET, CAR)
REJECTED_PARQUET_PREFIX = "pin_mappings.parquet.rejected."
MAX_RECORD_BYTES = 1 << 16


# -- the record --


def record_path(backend: Backend) -> Path:
    return backend.directory / RECORD_NAME


def read_record(backend: Backend) -> dict[str, Any]:
    """What pinfs last exported, per kind: ``{"version", "table_id", "device", "inode", "size",
    "mtime_ns", "exported_at"}``; ``{}`` when nothing was (or the record is unreadable)."""
    try:
        path = record_path(backend)
        if path.stat().st_size > MAX_RECORD_BYTES:
            return {}
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_record(backend: Backend, record: dict[str, Any]) -> None:
    atomic_write_bytes(record_path(backend), json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")


def _entry(identity: FileIdentity, version: int, table_id: str | None) -> dict[str, Any]:
    return {
        "version": version,
        "table_id": table_id,
        "device": identity.device,
        "inode": identity.inode,
        "size": identity.size,
        "mtime_ns": identity.mtime_ns,
        "exported_at": now_iso(),
    }


def _same_file(entry: object, identity: FileIdentity) -> bool:
    return isinstance(entry, dict) and all(
        entry.get(key) == value
        for key, value in (
            ("device", identity.device),
            ("inode", identity.inode),
            ("size", identity.size),
            ("mtime_ns", identity.mtime_ns),
        )
    )


def record_converted(backend: Backend, identity: FileIdentity) -> None:
    """Before an old-form parquet becomes version 0 of a new table (``Transaction.convert_old_form``):
    record it as the export of version 0, which it is, so that it is not imported as a foreign file.
    The caller holds the backend's lock, not the export lock (which is never taken after it): no export
    runs on a backend that has no table yet."""
    record = read_record(backend)
    record[PARQUET] = {**_entry(identity, 0, None), "converted": True}  # to be exported again, in our schema
    _write_record(backend, record)


def _identity(path: Path) -> FileIdentity | None:
    try:
        return FileIdentity.of(path)
    except FileNotFoundError:
        return None


# -- state --


MISSING, FOREIGN = "missing", "foreign"
META_TABLE_ID, META_VERSION = "pinfs-table-id", "pinfs-table-version"


def _what_is_there(path: Path | S3Path, entry: object, table_id: str) -> str | int:
    """What ``path`` holds: ``MISSING``, ``FOREIGN`` (not an export pinfs wrote), or the table version
    an export of pinfs was made from (-1: one that is to be made again). Locally the export record
    says which file pinfs wrote; on S3, where several hosts export, the object's own metadata does."""
    return _looked_at(path, entry, table_id)[0]


def _looked_at(path: Path | S3Path, entry: object, table_id: str) -> tuple[str | int, str | None]:
    """``_what_is_there``, and on S3 the ETag of the very object judged (one HEAD): a put over it is
    conditional on exactly that object, so an export another host put after the look is never
    replaced unseen."""
    etag = None
    if isinstance(path, S3Path):
        found = head(path)
        if found is None:
            return MISSING, None
        etag, metadata = found
        if metadata.get(META_TABLE_ID) == table_id and metadata.get(META_VERSION, "").isdigit():
            return int(metadata[META_VERSION]), etag
    identity = _identity(path)  # on S3, what the HEAD above answered
    if identity is None:
        return MISSING, None
    if not _same_file(entry, identity):
        return FOREIGN, etag
    assert isinstance(entry, dict)
    if entry.get("converted") or entry.get("table_id") not in (None, table_id):
        return -1, etag
    version = entry.get("version")
    return (version if isinstance(version, int) else -1), etag


def export_state(backend: Backend, state: TableState | None) -> dict[str, str]:
    """Per export: ``current``, ``pending`` (behind the table), ``missing`` or ``foreign`` (the parquet
    is not the one pinfs wrote; it is imported before the next export). Empty without a table."""
    if state is None:
        return {}
    record = read_record(backend)
    states: dict[str, str] = {}
    for kind, path in ((PARQUET, backend.parquet_path), (CAR, backend.car_path)):
        there = _what_is_there(path, record.get(kind), state.identity.table_id)
        if there == MISSING:
            states[kind] = "missing"
        elif there == FOREIGN:
            states[kind] = "foreign" if kind == PARQUET else "pending"
        else:
            states[kind] = "current" if there == state.version else "pending"
    return states


# -- refreshing --


def refresh_exports(backend: Backend, *, force_car: bool = False, timeout: float | None = None) -> dict[str, Any]:
    """Bring both exports up to the table's newest version (after importing a foreign parquet), and
    return what was done: ``{"version", "parquet": {...}|None, "car": {...}|None, "imported": {...}}``.
    Nothing is done for a backend without a table."""
    store = PinStore(backend)
    if not store.has_table():
        return {"skipped": "no table yet"}
    report: dict[str, Any] = {}
    with export_lock(backend.directory, timeout):
        for attempt in range(EXPORT_ATTEMPTS):
            record = read_record(backend)
            imported = import_foreign(store, record)
            if imported is not None:
                report.setdefault("imported", imported)
            state = store.table_state()
            assert state is not None
            snapshot = store.snapshot()
            todo = [kind for kind in KINDS if _needs_export(backend, record, kind, state, force_car)]
            report["version"] = state.version
            try:
                with READERS.reading(state.identity):  # seconds to a minute: maintenance keeps its files
                    report.update(_export(backend, snapshot, state, todo, record))
                break
            except (PreconditionFailed, _ForeignAppeared):
                # On S3, another host put an export (or another tool a parquet) meanwhile: look again.
                if attempt == EXPORT_ATTEMPTS - 1:
                    raise
    remove_shard_dir(backend.directory)  # the sharded form is gone once the export replaced its link
    return report


EXPORT_ATTEMPTS = 4


class _ForeignAppeared(Exception):
    """Internal: the file to replace is no longer the one recorded (someone else wrote it)."""


def _put_in_place(temp: Path, target: Path | S3Path, entry: object, state: TableState) -> bool:
    """Replace ``target`` with ``temp``. Locally a rename (the export lock serializes this host's
    exporters). On S3 a conditional put: only over the object the record names (``If-Match``), or where
    there is none (``If-None-Match``), and never over an export of a newer version; another host's
    export or another tool's file in between raises, and the caller looks again. False when a newer
    export was left in place."""
    if not isinstance(target, S3Path):
        os.replace(temp, target)
        return True
    metadata = {META_TABLE_ID: state.identity.table_id, META_VERSION: str(state.version)}
    there, etag = _looked_at(target, entry, state.identity.table_id)
    if there == MISSING:
        put_object(target, temp, if_absent=True, metadata=metadata)
        return True
    if there == FOREIGN:
        raise _ForeignAppeared
    if isinstance(there, int) and there >= state.version:
        return False  # another host's export of this version or a newer one is in place: it stays
    put_object(target, temp, if_match=etag, metadata=metadata)
    return True


def _needs_export(backend: Backend, record: dict[str, Any], kind: str, state: TableState, force_car: bool) -> bool:
    if kind == CAR and force_car:
        return True
    path = backend.parquet_path if kind == PARQUET else backend.car_path
    there = _what_is_there(path, record.get(kind), state.identity.table_id)
    return not isinstance(there, int) or there < state.version


def _export(
    backend: Backend, snapshot: PinSnapshot, state: TableState, kinds: Sequence[str], record: dict[str, Any]
) -> dict[str, Any]:
    """Encode ``kinds`` of ``snapshot`` (on two threads: Arrow and the CAR encoder drop the GIL), then
    put each in place and record it. Called with the export lock held."""
    builders = {PARQUET: _build_parquet, CAR: _build_car}
    temps: dict[str, Path] = {}
    try:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pinfs-export") as pool:
            futures = {kind: pool.submit(builders[kind], backend, snapshot, state) for kind in kinds}
            for kind, future in futures.items():
                temps[kind] = future.result()
        done: dict[str, Any] = {}
        for kind in kinds:
            target = backend.parquet_path if kind == PARQUET else backend.car_path
            if not _put_in_place(temps[kind], target, record.get(kind), state):
                continue
            identity = FileIdentity.of(target)
            record[kind] = _entry(identity, state.version, state.identity.table_id)
            done[kind] = {"path": str(target), "bytes": identity.size, "records": snapshot.count}
        if kinds:
            fsync_dir(backend.directory)
            _write_record(backend, record)
        return done
    finally:
        for temp in temps.values():
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def _build_parquet(backend: Backend, snapshot: PinSnapshot, state: TableState) -> Path:
    """The whole version as one parquet file (one data file in memory at a time), in a temporary file."""
    temp = local_temp_for(backend.parquet_path)
    metadata = {"pinfs.table_version": str(state.version), "pinfs.table_id": state.identity.table_id}
    try:
        with naming(backend.parquet_path), parquet_writer(temp, metadata) as writer:
            for piece in snapshot.scan(list(STORE_COLUMNS)):
                writer.write_table(piece, row_group_size=2048)
        with naming(backend.parquet_path):
            fsync_file(temp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    return temp


def _build_car(backend: Backend, snapshot: PinSnapshot, state: TableState) -> Path:
    """The whole version as a CARv1 file, in a temporary file (written atomically at its own name)."""
    temp = local_temp_for(backend.car_path)
    columns = snapshot.windowed_columns(REQUIRED_COLUMNS)
    with naming(backend.car_path):
        write_pin_mappings_car_columns(temp, columns, snapshot.count, backend.name, now_iso())
    return temp


# -- importing a parquet that someone else wrote --


def import_foreign(store: PinStore, record: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Import ``pin_mappings.parquet`` into the table when it is not the file pinfs last exported
    (module docstring); None when it is (or there is none). Call with the export lock held."""
    backend = store.backend
    record = read_record(backend) if record is None else record
    state = store.table_state()
    table_id = state.identity.table_id if state is not None else ""
    if _what_is_there(backend.parquet_path, record.get(PARQUET), table_id) != FOREIGN:
        return None
    identity = _identity(backend.parquet_path)
    if identity is None:  # gone meanwhile
        return None
    try:
        foreign = read_old_form(backend.parquet_path)
    except CorruptData as exc:
        return _quarantine(backend, str(exc))
    columns = _foreign_columns(backend.parquet_path, foreign)
    base = _base_rows(store, record.get(PARQUET))
    report: dict[str, Any] = {"file": str(backend.parquet_path), "base_version": None if base is None else base[0]}

    def body(txn: Transaction) -> None:
        replacements, removals = _foreign_changes(txn, foreign, columns, None if base is None else base[1])
        txn.update(replacements, removals)
        report.update(updated=len(replacements), removed=len(removals))

    store.write(body)
    # The file is imported: it stands as an export of nothing newer, so it is replaced next.
    record[PARQUET] = _entry(identity, -1, None)
    _write_record(backend, record)
    log.warning(
        "%s was changed by another tool: imported %d new or changed pins, removed %d",
        backend.parquet_path,
        report["updated"],
        report["removed"],
    )
    _note_import(backend, report)
    return report


def _foreign_columns(path: Path, table: pa.Table) -> list[str]:
    """The store's columns the foreign file really has (a file of ipfs_kit_py has only the six
    required ones: the others must not be overwritten with nulls)."""
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(local_copy(path)).names) if path.is_file() else set(STORE_COLUMNS)
    except Exception:  # pyarrow raises several types; the table was readable, so assume all columns
        names = set(STORE_COLUMNS)
    return [name for name in STORE_COLUMNS if name in names or name in REQUIRED_COLUMNS]


def _base_rows(store: PinStore, entry: object) -> tuple[int, pa.Table] | None:
    """The version pinfs last exported (what the foreign writer started from), if it can still be read."""
    if not isinstance(entry, dict) or not isinstance(entry.get("version"), int) or entry["version"] < 0:
        return None
    try:
        state = store.table.load(entry["version"])
        if entry.get("table_id") not in (None, state.identity.table_id):
            return None
        return entry["version"], table_snapshot(state, store.cache).table()
    except (PinfsError, OSError):
        return None  # cleaned up or vacuumed: only additions and changes can be imported


def _foreign_changes(
    txn: Transaction, foreign: pa.Table, columns: list[str], base: pa.Table | None
) -> tuple[dict[str, dict[str, str | None]], list[str]]:
    """What the foreign file changed: replacements (current records with the foreign file's columns
    laid over them) and removals (CIDs of the base the file no longer has, if a base is known)."""
    reference = base if base is not None else None
    changed_cids = _changed_cids(foreign, columns, reference)
    removed: list[str] = []
    if base is not None:
        gone = pc.invert(pc.is_in(base.column("cid"), foreign.column("cid")))
        removed = base.filter(gone).column("cid").to_pylist()
    wanted = list(dict.fromkeys([*changed_cids, *removed]))
    current = txn.records_for(wanted)
    rows = {
        row["cid"]: row
        for row in foreign.filter(pc.is_in(foreign.column("cid"), pa.array(changed_cids, pa.string())))
        .select(columns)
        .to_pylist()
    }
    replacements: dict[str, dict[str, str | None]] = {}
    for cid, row in rows.items():
        merged = {**current.get(cid, {}), **row}
        if current.get(cid) != merged:
            merged["updated_at"] = None  # stamped by the write
            replacements[cid] = merged
    return replacements, [cid for cid in removed if cid in current]


def _changed_cids(foreign: pa.Table, columns: list[str], reference: pa.Table | None) -> list[str]:
    """CIDs whose row in ``foreign`` differs from ``reference`` in ``columns`` (all, without one)."""
    if reference is None or reference.num_rows == 0:
        return foreign.column("cid").to_pylist()
    joined = foreign.select(columns).join(
        reference.select(columns), keys="cid", join_type="left outer", right_suffix="__base"
    )
    differs = pc.is_null(joined.column(f"{columns[1]}__base"))
    for name in columns[1:]:
        left, right = joined.column(name), joined.column(f"{name}__base")
        same = pc.fill_null(pc.equal(left, right), False)
        both_null = pc.and_(pc.is_null(left), pc.is_null(right))
        differs = pc.or_(differs, pc.invert(pc.or_(same, both_null)))
    return joined.filter(differs).column("cid").to_pylist()


def _quarantine(backend: Backend, reason: str) -> dict[str, Any]:
    """Move an unreadable foreign parquet aside, with its reason, so that the export can take its place."""
    target = backend.directory / f"{REJECTED_PARQUET_PREFIX}{utc_stamp()}"
    if isinstance(target, S3Path):
        put_object(target, backend.parquet_path.read_bytes(), if_absent=True)
        backend.parquet_path.unlink()
    else:
        os.replace(backend.parquet_path, target)
    with atomic_writer(target.with_name(target.name + ".reason")) as temp:
        temp.write_text(f"{reason}\n", encoding="utf-8")
    fsync_dir(backend.directory)
    log.warning("%s could not be read and was moved to %s: %s", backend.parquet_path, target.name, reason)
    report = {"file": str(backend.parquet_path), "quarantined_as": str(target), "reason": reason}
    _note_import(backend, report)
    return report


def _note_import(backend: Backend, report: dict[str, Any]) -> None:
    record_run(backend, "import", {**report, "finished_at": now_iso()})
