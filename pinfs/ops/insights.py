"""Insights: failure reasons, pin ages, replication across backends, what needs syncing, and each
backend's last sync (drawn by ``pinfs.ops.insights_svg``). Read-only.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.schema import FAILED, PENDING, STATUSES, STORED, now_iso
from pinfs.errors import PinfsError, describe
from pinfs.ops.backendview import (
    STALE_VERIFY_DAYS,
    TOP_REASONS,
    BackendView,
    failure_reasons,
    iso,
    storage_used,
    true_count,
    verification_ages,
    views_of,
)

EXAMPLES = 20
AGE_BUCKETS: tuple[tuple[str, timedelta | None], ...] = (
    ("<1h", timedelta(hours=1)),
    ("1h-1d", timedelta(days=1)),
    ("1d-7d", timedelta(days=7)),
    ("7d-30d", timedelta(days=30)),
    ("30d-365d", timedelta(days=365)),
    (">365d", None),
)


class _AgeHistogram:
    """Pins by age of ``created_at``, fed one column piece at a time."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)
        self.buckets = dict.fromkeys([name for name, _ in AGE_BUCKETS] + ["unknown"], 0)
        self.oldest: str | None = None
        self.newest: str | None = None

    def add(self, column: pa.ChunkedArray | pa.Array) -> None:
        valid = pc.fill_null(pc.greater(pc.utf8_length(column), 0), False)
        self.buckets["unknown"] += len(column) - true_count(valid)
        values = column.filter(valid)
        if not len(values):
            return
        low, high = pc.min(values).as_py(), pc.max(values).as_py()
        self.oldest = low if self.oldest is None or low < self.oldest else self.oldest
        self.newest = high if self.newest is None or high > self.newest else self.newest
        upper: str | None = None  # values newer than this were counted in a younger bucket
        for name, age in AGE_BUCKETS:
            lower = iso(self.now - age) if age is not None else None
            mask = pc.greater_equal(values, lower) if lower is not None else None
            if upper is not None:
                older = pc.less(values, upper)
                mask = older if mask is None else pc.and_(mask, older)
            self.buckets[name] += len(values) if mask is None else true_count(mask)
            upper = lower

    def result(self) -> dict[str, Any]:
        return {"buckets": self.buckets, "oldest": self.oldest, "newest": self.newest}


def _replication(columns: list[pa.ChunkedArray]) -> dict[str, Any]:
    """How many backends hold each CID. Counted by sorting every backend's CIDs together and measuring
    the runs of equal ones: at 3M CIDs ~5x faster than a hash count (``value_counts``), and no table."""
    import numpy as np

    chunks = [chunk for column in columns for chunk in column.chunks]
    empty = {"cids": 0, "held_by_one": 0, "held_by_several": 0, "copies": {}, "examples_several": []}
    if not chunks or not sum(map(len, chunks)):
        return empty
    cids = pa.chunked_array(chunks, pa.string()).combine_chunks()
    ordered = pc.take(cids, pc.array_sort_indices(cids))
    changes = pc.not_equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))
    boundaries = pc.indices_nonzero(changes).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    starts = np.concatenate((np.zeros(1, np.int64), boundaries))
    copies = np.diff(np.append(starts, len(ordered)))
    distribution = {str(n): int(count) for n, count in enumerate(np.bincount(copies)) if n and count}
    several = starts[copies > 1]
    examples = pc.take(ordered, pa.array(several[:EXAMPLES])).to_pylist()
    return {
        "cids": len(starts),
        "held_by_one": int(distribution.get("1", 0)),
        "held_by_several": len(several),
        "copies": distribution,
        "examples_several": examples,
    }


def insights(root: Path) -> dict[str, Any]:
    views, problems = views_of(root)
    by_backend: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    ages = _AgeHistogram()
    waiting = {status_name: _AgeHistogram() for status_name in (PENDING, FAILED)}  # how long pins wait
    held: list[pa.ChunkedArray] = []
    stored: list[pa.ChunkedArray] = []
    reasons: Counter[str] = Counter()
    needing: dict[str, int] = {}
    storage: dict[str, dict[str, int]] = {}
    for view in views:
        name = view.backend.name
        by_backend[name] = {"type": view.backend.type, "count": view.count, "by_status": view.by_status}
        if view.snapshot is None or view.error:
            errors.append({"backend": name, "error": view.error or "unreadable"})
            continue
        try:
            for piece in view.snapshot.scan(["cid", "status", "created_at"]):  # not the read cache's
                ages.add(piece.column("created_at"))
                for status_name, histogram in waiting.items():
                    histogram.add(piece.filter(pc.equal(piece.column("status"), status_name)).column("created_at"))
                held.append(piece.column("cid"))
                stored.append(piece.filter(pc.equal(piece.column("status"), STORED)).column("cid"))
            for item in failure_reasons(view.snapshot, view.by_status.get(FAILED, 0)):
                reasons[item["reason"]] += item["count"]
            verification = verification_ages(view)
            storage[name] = by_backend[name]["storage"] = storage_used(view.snapshot)
            needing[name] = verification["stale"] + verification["unverified"] + verification["future"]
            by_backend[name]["needing_verification"] = needing[name]
        except (PinfsError, OSError, pa.ArrowException) as exc:
            errors.append({"backend": name, "error": describe(exc)})
    totals = {status_name: sum(v.by_status.get(status_name, 0) for v in views) for status_name in STATUSES}
    return {
        "ok": not errors,
        "generated_at": now_iso(),
        "root": str(root),
        "total_pins": sum(v.count for v in views),
        "by_status": totals,
        "by_backend": by_backend,
        "age": {**ages.result(), "by_status": {name: histogram.result() for name, histogram in waiting.items()}},
        "failures": {
            "total": totals[FAILED],
            "top_reasons": [{"reason": r, "count": c} for r, c in reasons.most_common(TOP_REASONS)],
        },
        "replication": {**_replication(held), "stored": _replication(stored)},
        "storage": {
            "bytes": sum(item["bytes"] for item in storage.values()),
            "by_backend": {name: item["bytes"] for name, item in storage.items()},
        },
        "verification": {
            "older_than_days": STALE_VERIFY_DAYS,
            "needing": sum(needing.values()),
            "by_backend": needing,
        },
        "last_syncs": [_last_sync(view) for view in views],
        "errors": errors,
        "problems": problems,
    }


def _last_sync(view: BackendView) -> dict[str, Any]:
    """What the backend's run record says of its last sync (``finished_at`` None: never synced)."""
    recorded = view.state.get("sync") if isinstance(view.state.get("sync"), dict) else {}
    return {
        "backend": view.backend.name,
        "finished_at": recorded.get("finished_at"),
        "ok": recorded.get("ok"),
        "state": recorded.get("state"),
        "error": recorded.get("error"),
    }
