"""Verify: check that the CARs of ``stored`` pins are really on their backend.

For each chosen backend (all by default) with a driver: every ``stored`` pin whose ``verified_at``
(an extra column, absent or null until the first verify) is older than ``older_than_days`` (0: all)
is checked -- its CAR exists at ``car_file_path`` on the backend (by CID on a content-addressed one)
with the size recorded at sync (``metadata.size``, when there is one and the store keeps CARs as they
were put; a pin without one gets it recorded, for the storage utilisation of the reports), and with
``deep`` its root is the pin's CID and every block's hash is right. A missing or corrupt CAR makes the
pin ``failed`` with the reason in ``metadata.last_error``, so the next sync heals it from another
backend; a good one gets ``verified_at`` = now. All of a backend's changes are one store write (and CAR regeneration).

A backend type without a driver is reported ``unsupported`` and nothing changes; an unreachable one
is an error for that backend (recorded in its state file) and nothing of it changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.backends import Backend
from pinfs.data.carv1 import verify_content_car
from pinfs.data.runstate import record_run
from pinfs.data.schema import FAILED, FUTURE_TOLERANCE, STORED, load_metadata, now_iso
from pinfs.errors import CorruptData, InvalidInput, NotFound, PinfsError, Unsupported, describe
from pinfs.ops.common import select_backends, usable_snapshot
from pinfs.ops.drivers import Driver, DriverError, driver_for, key_for
from pinfs.ops.progress import NullProgress, Progress
from pinfs.ops.sync import MAX_DETAILS, PinOutcome, write_outcomes


@dataclass
class VerifyOptions:
    backends: list[str] = field(default_factory=list)  # empty: every backend
    older_than_days: float = 7.0
    deep: bool = False


def parse_days(text: str) -> float:
    """``older-than``'s value, from the command line or a control file: a number of days, 0 or more.
    The one days parser (issue #18). Raises InvalidInput."""
    try:
        days = float(text)
    except ValueError:
        raise InvalidInput("expected a number of days") from None
    return check_days(days)


def check_days(days: object) -> float:
    """``days`` as a float when it is a finite number, 0 or more. Raises InvalidInput."""
    if isinstance(days, bool) or not isinstance(days, int | float) or not days >= 0 or math.isinf(days):
        raise InvalidInput("expected a number of days, 0 or more")
    return float(days)


def verify(root: Path, options: VerifyOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Verify the chosen backends; see the module docstring. InvalidInput for bad names or days."""
    days = options.older_than_days
    try:
        check_days(days)
    except InvalidInput as exc:
        raise InvalidInput(f"older-than={days!r}: {exc}") from None
    progress = progress or NullProgress()
    chosen = select_backends(root, options.backends)
    entries = [_verify_backend(root, backend, _window(float(days)), options, progress) for backend in chosen]
    totals = {
        name: sum(entry["counts"][name] for entry in entries) for name in ("checked", "good", "failed", "skipped")
    }
    totals["errors"] = sum(1 for entry in entries if entry.get("error"))
    return {
        "ok": all(entry["ok"] for entry in entries),
        "older_than_days": days,
        "deep": options.deep,
        "backends": entries,
        "totals": totals,
    }


def _window(days: float) -> tuple[str, str] | None:
    """Which ``verified_at`` are not due: those after ``now - days`` and not after ``now`` (plus a
    tolerance for another host's clock), as ISO text; None for 0 days, when every stored pin is due
    (issue #15: a time still to come was written by a clock that ran ahead, and proves nothing)."""
    if days == 0:
        return None
    now = datetime.now(timezone.utc)
    return _iso(now - timedelta(days=days)), _iso(now + FUTURE_TOLERANCE)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def _verify_backend(
    root: Path, backend: Backend, cutoff: tuple[str, str] | None, options: VerifyOptions, progress: Progress
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "backend": backend.name,
        "type": backend.type,
        "ok": True,
        "state": "verified",
        "reason": None,
        "counts": {"checked": 0, "good": 0, "failed": 0, "skipped": 0},
        "failed": [],
    }
    try:
        _verify_into(root, backend, cutoff, options, entry, progress)
    except (PinfsError, OSError) as exc:
        entry.update(ok=False, state="error", error=describe(exc), reason=entry["reason"] or describe(exc))
    record_run(
        backend,
        "verify",
        {
            "finished_at": now_iso(),
            "ok": entry["ok"],
            "state": entry["state"],
            "error": entry.get("error"),
            "counts": entry["counts"],
            "deep": options.deep,
        },
    )
    return entry


def _due(snapshot: Any, window: tuple[str, str] | None) -> list[dict[str, Any]]:
    """Stored pins verified outside ``window`` (see ``_window``; None: all), or never, oldest
    verification first."""
    names = ["cid", "status", "car_file_path", "metadata"]
    has_column = "verified_at" in snapshot.column_names
    rows: list[dict[str, Any]] = []
    for table in snapshot.scan([*names, "verified_at"] if has_column else names):  # a piece at a time
        table = table.filter(pc.equal(table.column("status"), STORED))
        if has_column and window is not None:
            verified_at = table.column("verified_at")
            never = pc.fill_null(pc.equal(pc.utf8_length(verified_at), 0), True)
            old = pc.fill_null(pc.less(verified_at, window[0]), True)
            ahead = pc.fill_null(pc.greater(verified_at, window[1]), False)
            table = table.filter(pc.or_(never, pc.or_(old, ahead)))
        elif not has_column:
            table = table.append_column("verified_at", pa.nulls(table.num_rows, pa.string()))
        rows.extend(table.to_pylist())
    rows.sort(key=lambda row: (row.get("verified_at") or "", row["cid"]))
    return rows


def _verify_into(
    root: Path,
    backend: Backend,
    cutoff: tuple[str, str] | None,
    options: VerifyOptions,
    entry: dict[str, Any],
    progress: Progress,
) -> None:
    snapshot = usable_snapshot(backend, entry)
    if snapshot is None:
        return
    stored = snapshot.count_by_status()[STORED]
    if stored == 0:
        entry.update(state="skipped", reason="no stored pins")
        return
    try:
        driver = driver_for(backend, root)
    except Unsupported as exc:
        entry.update(state="unsupported", reason=str(exc))
        entry["counts"]["skipped"] = stored
        return
    if snapshot.source == "legacy":
        raise PinfsError(
            f"backend {backend.name!r} is served from its legacy pins.json; run 'pinfs migrate --backend-filter "
            f"{backend.name}' first"
        )
    due = _due(snapshot, cutoff)
    entry["counts"]["skipped"] = stored - len(due)
    if not due:
        entry.update(state="skipped", reason="every stored pin was verified recently")
        return
    try:
        outcomes = _check_due(backend, driver, due, options, entry, progress)
    finally:
        driver.close()
    if entry["counts"]["failed"]:
        entry["ok"] = False
    if outcomes:
        entry["written"] = write_outcomes(backend, outcomes)


def _check_due(
    backend: Backend,
    driver: Driver,
    due: list[dict[str, Any]],
    options: VerifyOptions,
    entry: dict[str, Any],
    progress: Progress,
) -> list[PinOutcome]:
    try:
        driver.check()
    except DriverError as exc:
        raise DriverError(f"{backend.name}: storage unreachable: {exc}") from None
    outcomes: list[PinOutcome] = []
    progress.start(f"verify {backend.name}", len(due))
    try:
        for row in due:
            try:
                problem, size = _check_pin(driver, row, options.deep)
            except DriverError as exc:  # the storage stopped answering: not the pin's fault
                entry.update(ok=False, state="error", error=str(exc))
                entry["reason"] = f"stopped after {len(outcomes)} of {len(due)} pins: {exc}"
                break
            entry["counts"]["checked"] += 1
            outcomes.append(_outcome(row, problem, size))
            if problem is None:
                entry["counts"]["good"] += 1
            else:
                entry["counts"]["failed"] += 1
                if len(entry["failed"]) < MAX_DETAILS:
                    entry["failed"].append({"cid": row["cid"], "error": problem})
            progress.advance()
    finally:
        progress.finish()
    return outcomes


def _check_pin(driver: Driver, row: dict[str, Any], deep: bool) -> tuple[str | None, int | None]:
    """Why the pin's CAR on the backend is not right (None when it is), and its size there; the size is
    returned only when the pin has none recorded yet (a pin stored by another tool), for the storage
    utilisation of the reports."""
    try:
        key = key_for(str(row.get("car_file_path")))
    except CorruptData as exc:
        return str(exc), None
    size = driver.car_size(str(row["cid"]), key)
    if size is None:
        driver.check()  # "missing" must not be an endpoint that stopped answering (DriverError then)
        return f"CAR missing on the backend at {key}", None
    try:
        expected = load_metadata(row.get("metadata")).get("size")
    except ValueError:
        expected = None
    known = isinstance(expected, int) and not isinstance(expected, bool)
    if known and driver.exact_sizes and expected != size:
        return f"CAR at {key} is {size} bytes, {expected} were stored", None
    if deep:
        try:
            verify_content_car(driver.get_car(str(row["cid"]), key), row["cid"], key)
        except NotFound:
            return f"CAR missing on the backend at {key}", None
        except CorruptData as exc:
            return f"CAR corrupt: {exc}", None
    return None, None if known or not driver.exact_sizes else size


def _outcome(row: dict[str, Any], problem: str | None, size: int | None = None) -> PinOutcome:
    stamp = now_iso()
    if problem is None:
        metadata = {"size": size} if size is not None else {}
        return PinOutcome(
            row["cid"], True, {"cid": row["cid"]}, STORED, metadata=metadata, verified_at=stamp, require=(STORED,)
        )
    return PinOutcome(
        row["cid"],
        False,
        {"cid": row["cid"], "error": problem},
        status=FAILED,
        metadata={"last_error": problem, "last_error_at": stamp, "verify_failed_at": stamp},
        require=(STORED,),
    )
