"""Sync: put the content CAR of every pin that is not ``stored`` yet on its backend.

For each chosen backend (all by default) whose pins are not all ``stored``: take its ``failed`` pins
first, then its ``pending`` ones, oldest first; for each, find the pin's content CAR -- the local
staging directory ``ROOT/cars/<cid>.car``, then any other backend that holds the CID ``stored`` and has
a driver, then the pin's own place on the target (already there) -- check that its root is the pin's
CID and every block's hash is right (``carv1.verify_content_car``), put it at the pin's
``car_file_path`` through the backend's driver, and mark it ``stored`` (metadata ``synced_at``,
``size``, ``synced_from``). A pin whose content cannot be found or is corrupt everywhere is marked
``failed`` (metadata ``last_error``, ``attempts``) and the run goes on. All of a backend's status
changes are one store write at the end (with its ``pin_mappings.car`` regenerated under the same
lock), never a rewrite per pin.

A backend whose pins are all stored is skipped without reading any CAR. A backend type without a
driver is reported ``unsupported`` and nothing changes. An unreachable or misconfigured backend (a
refused login, a missing credential) is an error for that backend (recorded in its state file, so
health shows it degraded) and each of its pins to move becomes ``failed`` with the reason; the others
still sync. A CAR above the driver's file limit fails its pin before anything is sent. Drivers that
make one commit per run (git, the Hub) publish the run's CARs in ``flush`` before any pin is marked
``stored``; if that fails, those pins are ``failed`` instead.

After the pins, each backend's ``pin_mappings.car`` is put on the backend itself (key
``pin_mappings.car``) when its content changed since the last push, and syncing a backend with
``backup: true`` (a filesystem backend by default) copies every backend's parquet and CAR into its
``pin_mappings/<backend>/`` (``pinfs.ops.backup``); those are published by one more flush at the end.

``dry_run`` reads only: it lists what would move (existence checks, no content read) and writes
nothing, not even the state file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinfs.data.backends import Backend, discover_backends
from pinfs.data.carv1 import verify_content_car
from pinfs.data.exports import export_state, refresh_exports
from pinfs.data.fsutil import read_regular_file
from pinfs.data.runstate import read_state, record_run
from pinfs.data.schema import FAILED, PENDING, STORED, dump_metadata, load_metadata, now_iso
from pinfs.data.store import PinStore
from pinfs.errors import CorruptData, NotFound, PinfsError, Unsupported, describe
from pinfs.ops.backup import backup_to, wants_backups
from pinfs.ops.carops import change_pins
from pinfs.ops.common import select_backends, usable_snapshot
from pinfs.ops.drivers import Driver, DriverError, TooLarge, has_driver, key_for
from pinfs.ops.progress import NullProgress, Progress
from pinfs.ops.synccontext import STAGING_DIR, SyncContext, bind_exists, bind_get

CAR_KEY = "pin_mappings.car"
# Per-pin details kept in a report per backend and kind; counts are always complete. The text output
# shows fewer (``pinfs.cli.sync_cmd``) and says how many more --json has (issue #16).
MAX_DETAILS = 10_000
# What a pin whose content CAR is nowhere to be found fails with; health recognises it (issue #16).
NO_CONTENT = "no copy of its content CAR found"


@dataclass
class SyncOptions:
    backends: list[str] = field(default_factory=list)  # empty: every backend
    dry_run: bool = False


def sync(root: Path, options: SyncOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Sync the chosen backends; see the module docstring. Raises InvalidInput/NotFound for bad names."""
    progress = progress or NullProgress()
    chosen = select_backends(root, options.backends)
    context = SyncContext(root, discover_backends(root)[0], options.dry_run)
    try:
        entries = [_sync_backend(context, backend, progress) for backend in chosen]
        return _finish(context, chosen, entries, options)
    finally:
        context.close()


def _finish(
    context: SyncContext, chosen: list[Backend], entries: list[dict[str, Any]], options: SyncOptions
) -> dict[str, Any]:
    """Backups, then publishing what is staged, then the state records and the report."""
    backups = []
    for backend in chosen:
        if backend.enabled and not backend.config_error and wants_backups(backend):
            backups.append(backup_to(context, backend))
    if not options.dry_run:
        context.finish()  # publishes pin_mappings.car and the backup copies
        for backend, entry in zip(chosen, entries, strict=True):
            _record_sync(backend, entry)
    totals = {
        name: sum(entry["counts"][name] for entry in entries) for name in ("moved", "failed", "skipped", "unsupported")
    }
    totals["errors"] = sum(1 for entry in entries if entry.get("error")) + sum(1 for b in backups if not b["ok"])
    ok = all(entry["ok"] for entry in entries) and all(backup["ok"] for backup in backups)
    return {"ok": ok, "dry_run": options.dry_run, "backends": entries, "backups": backups, "totals": totals}


# -- one backend --


@dataclass
class PinOutcome:
    """What happened to one pin; ``changes`` is applied to its row in the one store write."""

    cid: str
    moved: bool
    detail: dict[str, Any]
    status: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    drop_metadata: tuple[str, ...] = ()
    verified_at: str | None = None
    # Apply only when the pin's status is still one of these when written (None: whatever it is).
    require: tuple[str, ...] | None = None
    # The CAR was put by this run (so it is only there once the driver's flush succeeded).
    put: bool = False


def _new_entry(backend: Backend) -> dict[str, Any]:
    return {
        "backend": backend.name,
        "type": backend.type,
        "ok": True,
        "state": "synced",
        "reason": None,
        "counts": {"moved": 0, "failed": 0, "skipped": 0, "unsupported": 0},
        "moved": [],
        "failed": [],
    }


def _sync_backend(context: SyncContext, backend: Backend, progress: Progress) -> dict[str, Any]:
    entry = _new_entry(backend)
    try:
        _sync_into(context, backend, entry, progress)
    except PinfsError as exc:
        _set_error(entry, str(exc))
    except OSError as exc:
        _set_error(entry, f"{backend.name}: {describe(exc)}")
    return entry


def _record_sync(backend: Backend, entry: dict[str, Any]) -> None:
    info = {
        "finished_at": now_iso(),
        "ok": entry["ok"],
        "state": entry["state"],
        "error": entry.get("error"),
        "counts": entry["counts"],
    }
    record_run(backend, "sync", info)


def _set_error(entry: dict[str, Any], message: str) -> None:
    entry.update(ok=False, state="error", error=message, reason=entry.get("reason") or message)


def _sync_into(context: SyncContext, backend: Backend, entry: dict[str, Any], progress: Progress) -> None:
    snapshot = usable_snapshot(backend, entry)
    if snapshot is None:
        return
    counts = snapshot.count_by_status()
    todo = counts[PENDING] + counts[FAILED]
    entry["counts"]["skipped"] = counts[STORED]
    if todo == 0:
        entry.update(state="skipped", reason=f"all {counts[STORED]} pins stored" if counts[STORED] else "no pins")
        _push_car(context, backend, entry)
        return
    unreachable: DriverError | None = None
    try:
        driver = context.driver(backend)
    except Unsupported as exc:
        entry["counts"]["unsupported"] = todo
        entry.update(state="unsupported", reason=str(exc))
        return
    except DriverError as exc:
        unreachable = exc
    if snapshot.source == "legacy":
        raise PinfsError(
            f"backend {backend.name!r} is served from its legacy pins.json; "
            f"run 'pinfs migrate --backend-filter {backend.name}' before syncing it"
        )
    records = list(snapshot.iter_records(FAILED)) + list(snapshot.iter_records(PENDING))
    records.sort(key=lambda r: (r.get("status") != FAILED, r.get("created_at") or "", r.get("cid") or ""))
    if unreachable is not None:
        _fail_all(context, backend, entry, records, f"storage unreachable: {unreachable}")
        return
    outcomes: list[PinOutcome] = []
    progress.start(f"sync {backend.name}", len(records))
    try:
        for record in records:
            outcome = _sync_pin(context, backend, driver, record)
            outcomes.append(outcome)
            kind = "moved" if outcome.moved else "failed"
            entry["counts"][kind] += 1
            if len(entry[kind]) < MAX_DETAILS:
                entry[kind].append(outcome.detail)
            progress.advance()
            if outcome.detail.get("abort"):
                _set_error(entry, outcome.detail["error"])
                break
    finally:
        progress.finish()
    if entry["counts"]["failed"] and not context.dry_run:  # a dry run only predicts failures
        entry["ok"] = False
    if len(records) > len(outcomes):
        entry["reason"] = f"stopped after {len(outcomes)} of {len(records)} pins: {entry.get('error')}"
    if context.dry_run:
        entry["state"] = "dry-run"
        entry["would_move"] = entry.pop("moved")
        entry["would_fail"] = entry.pop("failed")
        _push_car(context, backend, entry)
        return
    if any(outcome.put for outcome in outcomes):
        outcomes = _publish(backend, driver, entry, outcomes, {str(r.get("cid")): r for r in records})
    if outcomes:
        written = write_outcomes(backend, outcomes)
        entry["written"] = written
    _push_car(context, backend, entry)


def _fail_all(
    context: SyncContext, backend: Backend, entry: dict[str, Any], records: list[dict[str, Any]], reason: str
) -> None:
    """The backend cannot be used (unreachable, misconfigured, login refused): every pin to move becomes
    ``failed`` with the reason, so each says why it did not move; a dry run only reports it."""
    _set_error(entry, f"{backend.name}: {reason}")
    entry["counts"]["failed"] = len(records)
    outcomes = [_failed(record, reason) for record in records]
    entry["failed"] = [outcome.detail for outcome in outcomes[:MAX_DETAILS]]
    if context.dry_run:
        entry["would_move"], entry["would_fail"] = entry.pop("moved"), entry.pop("failed")
    else:
        entry["written"] = write_outcomes(backend, outcomes)


def _publish(
    backend: Backend,
    driver: Driver,
    entry: dict[str, Any],
    outcomes: list[PinOutcome],
    records: Mapping[str, dict[str, Any]],
) -> list[PinOutcome]:
    """Flush the CARs this run put (one commit on git and the Hub). When that fails, none of them is
    there: their pins become ``failed`` with the reason, and the backend's entry an error."""
    put = [outcome for outcome in outcomes if outcome.put]
    try:
        driver.flush(f"pinfs sync {backend.name}: {len(put)} CAR{'s' if len(put) != 1 else ''}")
    except DriverError as exc:
        reason = f"publishing the CARs failed: {exc}"
        _set_error(entry, f"{backend.name}: {reason}")
        entry["ok"] = False
        failed_cids = {outcome.cid for outcome in put}
        entry["moved"] = [item for item in entry["moved"] if item.get("cid") not in failed_cids]
        entry["counts"]["moved"] -= len(put)
        entry["counts"]["failed"] += len(put)
        replaced: list[PinOutcome] = []
        for outcome in outcomes:
            if outcome.put:
                outcome = _failed(records[outcome.cid], reason)
                if len(entry["failed"]) < MAX_DETAILS:
                    entry["failed"].append(outcome.detail)
            replaced.append(outcome)
        return replaced
    return outcomes


def _sync_pin(context: SyncContext, backend: Backend, driver: Driver, record: dict[str, Any]) -> PinOutcome:
    cid = str(record.get("cid"))
    try:
        key = key_for(str(record.get("car_file_path")))
    except CorruptData as exc:
        return _failed(record, f"cannot place its CAR: {exc}")
    reasons: list[str] = []
    candidates = list(context.sources(backend, cid))
    candidates.append(
        (f"backend {backend.name} itself ({key})", bind_get(driver, cid, key), bind_exists(driver, cid, key))
    )
    for label, fetch, exists in candidates:
        if context.dry_run:
            try:
                if exists():
                    return PinOutcome(cid, True, {"cid": cid, "from": label, "to": key})
            except PinfsError as exc:
                reasons.append(f"{label}: {exc}")
            continue
        try:
            data = fetch()
            blocks = verify_content_car(data, cid, label)
        except NotFound:
            continue
        except PinfsError as exc:
            reasons.append(str(exc))
            continue
        already_there = label.startswith(f"backend {backend.name} itself")
        if not already_there:
            try:
                driver.put_car(cid, key, data)
            except TooLarge as exc:
                return _failed(record, f"not put on {backend.name}: {exc}")
            except DriverError as exc:
                outcome = _failed(record, f"putting {key} failed: {exc}")
                outcome.detail["abort"] = True  # the target stopped answering: stop this backend
                return outcome
        stamp = now_iso()
        return PinOutcome(
            cid,
            True,
            {"cid": cid, "from": label, "to": key, "size": len(data), "blocks": blocks},
            put=not already_there,
            status=STORED,
            metadata={"synced_at": stamp, "size": len(data), "synced_from": label},
            drop_metadata=("last_error", "last_error_at"),
            verified_at=stamp,
        )
    if not reasons:
        reasons.append(
            f"{NO_CONTENT}: looked for {context.root / STAGING_DIR}/<cid>.car and in every other backend "
            f"holding the CID as stored; put the CAR there (e.g. 'ipfs dag export <cid>') and sync again"
        )
    return _failed(record, "; ".join(reasons))


def _failed(record: dict[str, Any], reason: str) -> PinOutcome:
    cid = str(record.get("cid"))
    attempts = _metadata(record).get("attempts", 0)
    attempts = attempts + 1 if isinstance(attempts, int) and not isinstance(attempts, bool) else 1
    return PinOutcome(
        cid,
        False,
        {"cid": cid, "error": reason},
        status=FAILED,
        metadata={"last_error": reason, "last_error_at": now_iso(), "attempts": attempts},
        require=(PENDING, FAILED),  # not over a pin another writer stored meanwhile
    )


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    try:
        return load_metadata(record.get("metadata"))
    except ValueError:
        return {"unparsed_metadata": record.get("metadata")}


def outcome_replacements(rows: Mapping[str, Mapping[str, Any]], outcomes: list[Any]) -> dict[str, dict[str, Any]]:
    """The new records for ``rows`` (the outcomes' CIDs as they are now, by CID) with each outcome
    applied; pins removed meanwhile are left out, and so are pins whose status another writer changed
    meanwhile to one the outcome does not expect (``PinOutcome.require``). (Shared with verify.)"""
    stamp = now_iso()
    replacements: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        row = rows.get(outcome.cid)
        if outcome.status is None or row is None:
            continue
        if outcome.require is not None and row.get("status") not in outcome.require:
            continue
        metadata = _metadata(row)
        for name in outcome.drop_metadata:
            metadata.pop(name, None)
        metadata.update(outcome.metadata)
        record = dict(row)
        record.update(status=outcome.status, metadata=dump_metadata(metadata), updated_at=stamp)
        if outcome.verified_at is not None:
            record["verified_at"] = outcome.verified_at
        replacements[outcome.cid] = record
    return replacements


def write_outcomes(backend: Backend, outcomes: list[PinOutcome]) -> int:
    """One commit (and the exports after it) for all of a backend's outcomes (sync's and verify's),
    rewriting only the files that hold those pins."""
    wanted = [outcome.cid for outcome in outcomes if outcome.status is not None]
    if not wanted:
        return 0

    def body(txn: Any) -> int:
        replacements = outcome_replacements(txn.records_for(wanted), outcomes)
        txn.update(replacements)
        return len(replacements)

    return change_pins(backend, body)


# -- pin_mappings.car on the backend itself --


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _heal_stale_car(backend: Backend, entry: dict[str, Any]) -> None:
    """Bring the exports up to the table when they are behind it.

    A writer killed after its commit, before its exports, leaves them one version behind. When sync
    then finds nothing to do it writes nothing, so without this the stale CAR would stay (and be pushed
    to the backend's storage below) until the next pin change."""
    store = PinStore(backend)
    try:
        states = export_state(backend, store.table_state())
        if all(state == "current" for state in states.values()):
            return
        refresh_exports(backend)
        entry["car_regenerated"] = "the exports were behind the table (an interrupted write)"
    except (PinfsError, OSError) as exc:
        entry["car_push"] = {"ok": False, "error": f"refreshing the exports: {exc}"}


def _push_car(context: SyncContext, backend: Backend, entry: dict[str, Any]) -> None:
    """Put the backend's pin_mappings.car at ``pin_mappings.car`` on its storage when it changed."""
    if not context.dry_run:
        _heal_stale_car(backend, entry)
    if not has_driver(backend) or not backend.car_path.is_file():
        return
    try:
        data = read_regular_file(backend.car_path)
    except CorruptData as exc:
        entry["car_push"] = {"ok": False, "error": str(exc)}
        return
    except OSError as exc:
        entry["car_push"] = {"ok": False, "error": f"{backend.car_path}: {exc}"}
        return
    digest = _sha256(data)
    pushed = read_state(backend).get("car_push") or {}
    if isinstance(pushed, dict) and pushed.get("sha256") == digest:
        return
    if context.dry_run:
        entry["car_push"] = {"would_push": CAR_KEY, "size": len(data)}
        return
    try:
        driver = context.driver(backend)
        if not driver.holds_files:
            return
        driver.put(CAR_KEY, data)
    except Unsupported:
        return
    except PinfsError as exc:
        _car_push_failed(entry, str(exc))
        return
    entry["car_push"] = {"ok": True, "key": CAR_KEY, "size": len(data)}
    record = {"sha256": digest, "size": len(data), "pushed_at": now_iso()}
    context.after_flush(
        backend,
        lambda: record_run(backend, "car_push", record),
        lambda reason: _car_push_failed(entry, reason),
    )


def _car_push_failed(entry: dict[str, Any], reason: str) -> None:
    entry["car_push"] = {"ok": False, "error": reason}
    if entry["ok"]:
        _set_error(entry, f"putting {CAR_KEY} failed: {reason}")
