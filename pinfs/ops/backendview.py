"""What the read-only reports (``pinfs.ops.health``, ``pinfs.ops.status``, ``pinfs.ops.insights``,
``pinfs.ops.reports``) need of one backend, read once (``BackendView``), and the checks they share:
verification ages, export states, and a backend's failure kept in its own entry.

Nothing here touches the network or writes. Threading: synchronous, no shared state.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.backends import Backend, discover_backends
from pinfs.data.delta import TableState
from pinfs.data.exports import export_state
from pinfs.data.runstate import read_state
from pinfs.data.schema import FAILED, FUTURE_TOLERANCE, STATUSES, STORED, load_metadata
from pinfs.data.snapshots import PinSnapshot
from pinfs.data.store import PinStore
from pinfs.errors import PinfsError, describe
from pinfs.ops.carops import DEFERRED_EXPORTS

STALE_VERIFY_DAYS = 7.0
TOP_REASONS = 10
MAX_REASON_ROWS = 100_000  # failed rows whose metadata is parsed for the failure-reason ranking


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


# -- what one backend looks like --


@dataclass
class BackendView:
    """What the reports need of one backend, read once."""

    backend: Backend
    snapshot: PinSnapshot | None = None
    error: str | None = None
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.snapshot.count if self.snapshot is not None else 0

    @property
    def source(self) -> str:
        if self.snapshot is None:
            return "error"
        return self.snapshot.source


def view_of(backend: Backend) -> BackendView:
    view = BackendView(backend, state=read_state(backend))
    errors = [backend.config_error] if backend.config_error else []
    try:
        view.snapshot = PinStore(backend).snapshot()
        view.by_status = view.snapshot.count_by_status()
    except (PinfsError, OSError) as exc:
        view.snapshot = None
        errors.append(describe(exc))
    if errors:
        view.error = "; ".join(errors)
    return view


def views_of(root: Path) -> tuple[list[BackendView], list[dict[str, str]]]:
    backends, problems = discover_backends(root)
    return [view_of(b) for b in backends], [{"location": p.location, "reason": p.reason} for p in problems]


def verification_ages(view: BackendView, older_than_days: float = STALE_VERIFY_DAYS) -> dict[str, int]:
    """Stored pins: verified recently, verified long ago (stale), never verified, and verified at a
    time still to come (``future``: the clock was ahead then, issue #15; verify checks them again)."""
    result = {"verified": 0, "stale": 0, "unverified": 0, "future": 0}
    snapshot = view.snapshot
    stored = view.by_status.get(STORED, 0)
    if snapshot is None or stored == 0:
        return result
    if "verified_at" not in snapshot.column_names:
        result["unverified"] = stored
        return result
    now = datetime.now(timezone.utc)
    cutoff, ahead = iso(now - timedelta(days=older_than_days)), iso(now + FUTURE_TOLERANCE)
    for piece in snapshot.scan(["status", "verified_at"]):
        verified_at = piece.filter(pc.equal(piece.column("status"), STORED)).column("verified_at")
        known = pc.fill_null(pc.greater(pc.utf8_length(verified_at), 0), False)
        stale = pc.and_(known, pc.fill_null(pc.less(verified_at, cutoff), False))
        future = pc.and_(known, pc.fill_null(pc.greater(verified_at, ahead), False))
        result["unverified"] += len(verified_at) - true_count(known)
        result["stale"] += true_count(stale)
        result["future"] += true_count(future)
        result["verified"] += true_count(known) - true_count(stale) - true_count(future)
    return result


def true_count(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def table_state_of(view: BackendView) -> TableState | None:
    identity = view.snapshot.identity if view.snapshot is not None else None
    return PinStore(view.backend).table_state() if identity is not None and view.source == "table" else None


def export_states(view: BackendView) -> dict[str, str]:
    """Per export (``parquet``, ``car``): ``current``; ``pending`` (this process refreshes it shortly:
    ``DEFERRED_EXPORTS``); ``stale`` (behind the table, nobody refreshing it); ``missing``; ``foreign``
    (replaced by another tool; imported at the next write). Empty for a backend without a table."""
    states = export_state(view.backend, table_state_of(view))
    if DEFERRED_EXPORTS.is_pending(view.backend):
        return {kind: "pending" if state != "current" else state for kind, state in states.items()}
    return {kind: "stale" if state == "pending" else state for kind, state in states.items()}


def car_state(view: BackendView) -> str:
    """The CAR's export state, or for a backend not yet in a table: ``n/a`` without pins, else whether a
    CAR exists (``current`` or ``missing``)."""
    if view.source == "table":
        return export_states(view).get("car", "n/a")
    if view.source != "parquet":
        return "n/a"
    return "current" if view.backend.car_path.is_file() else "missing"


def safe_entry(function: Any, view: BackendView) -> dict[str, Any]:
    """``function(view)``; an unexpected failure becomes that backend's error entry, not the report's."""
    try:
        return function(view)
    except (PinfsError, OSError, ValueError, pa.ArrowException) as exc:
        backend = view.backend
        return {
            "backend": backend.name,
            "type": backend.type,
            "state": "error",
            "ok": False,
            "error": describe(exc),
            "reasons": [describe(exc)],
        }


def failure_reasons(snapshot: PinSnapshot, failed: int) -> list[dict[str, Any]]:
    if not failed:
        return []
    reasons: Counter[str] = Counter()
    left = MAX_REASON_ROWS
    for piece in snapshot.scan(["status", "metadata"]):
        metadata = piece.filter(pc.equal(piece.column("status"), FAILED)).column("metadata").slice(0, left)
        for text in metadata.to_pylist():
            try:
                reason = load_metadata(text).get("last_error")
            except ValueError:
                reason = None
            reasons[_reason_key(reason)] += 1
        left -= len(metadata)
        if left <= 0:
            break
    return [{"reason": reason, "count": count} for reason, count in reasons.most_common(TOP_REASONS)]


def _reason_key(reason: object) -> str:
    if not reason:
        return "(no reason recorded)"
    text = str(reason)
    return text if len(text) <= 300 else text[:297] + "..."


SIZE_PATTERN = r'[{,]"size":(?P<size>[0-9]+)[,}]'  # metadata.size in the compact JSON dump_metadata writes


def storage_used(snapshot: PinSnapshot) -> dict[str, int]:
    """Storage utilisation of a backend: the bytes of its stored CARs, from the ``metadata.size`` that
    sync and verify record (pins stored by other tools have none until verified)."""
    result = {"bytes": 0, "cars": 0, "cars_without_size": 0}
    for piece in snapshot.scan(["status", "metadata"]):
        metadata = piece.filter(pc.equal(piece.column("status"), STORED)).column("metadata")
        if not len(metadata):
            continue
        sizes = pc.struct_field(pc.extract_regex(metadata, SIZE_PATTERN), [0])
        known = pc.cast(sizes.filter(pc.is_valid(sizes)), pa.int64())
        result["bytes"] += int(pc.sum(known).as_py() or 0)
        result["cars"] += len(metadata)
        result["cars_without_size"] += len(metadata) - len(known)
    return result
