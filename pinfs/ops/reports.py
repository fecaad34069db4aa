"""Read-only reports over every backend: health (``pinfs.ops.health``), status (``pinfs.ops.status``),
insights (``pinfs.ops.insights``), and here each backend's ``summary.json``.

Everything is computed from the table reading only the columns needed, a data file at a time
(``snapshot.scan([...])``: at a million pins a whole column through the read cache would flush it;
counts by status are cached per data file), the backend's small state file
(``pinfs.data.runstate``: last sync/verify) and ``stat`` of its files. Nothing here touches the network:
an unreachable backend shows up through the error its last sync recorded.

A backend whose files or config are bad shows its error in its own entry and never stops the others.
The same dicts are printed by the CLI (``--json``) and served by the mount (``health.json``,
``status.json``, ``insights.json``, ``backends/<b>/summary.json``).

Health per backend: ``ok``; ``degraded`` (failed pins, verification gone stale, an export missing,
or behind the table with nobody refreshing it; not migrated yet, storage misconfigured or missing, last
sync or verify failed); ``error`` (config or table unreadable). Pins never verified, an export being
refreshed and a parquet replaced by another tool (imported at the next write) are notes. Overall = the
worst; the report's ``ok`` is False only when some backend is in error.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pinfs.data.backends import discover_backends, get_backend
from pinfs.ops.backendview import safe_entry, view_of
from pinfs.ops.health import health, health_of
from pinfs.ops.insights import insights
from pinfs.ops.status import status

# The reports, importable from one place by the CLI, the mount and tests.
__all__ = ["backend_summary", "dumps", "health", "insights", "status"]

# -- one backend's summary.json --


def backend_summary(root: Path, backend_name: str) -> dict[str, Any]:
    """CONTRACT §2 summary.json: {"backend","type","count","by_status":{...},"source",...}.

    Raises InvalidInput for a malformed name and NotFound for a backend that does not exist; a
    backend whose files are bad gets ``"source": "error"`` and its ``"error"``.
    """
    view = view_of(get_backend(root, backend_name))
    summary: dict[str, Any] = {
        "backend": view.backend.name,
        "type": view.backend.type,
        "count": view.count,
        "by_status": view.by_status,
        "source": view.source,
    }
    sources = discover_backends(root)[0]
    health_entry = safe_entry(functools.partial(health_of, sources=sources), view)
    sync_state = view.state.get("sync") if isinstance(view.state.get("sync"), dict) else {}
    summary.update(
        ok=health_entry["state"] != "error",
        health=health_entry["state"],
        reasons=health_entry.get("reasons", []),
        enabled=view.backend.enabled,
        last_sync=sync_state.get("finished_at"),
    )
    if view.error or health_entry.get("error"):
        summary["error"] = view.error or health_entry.get("error")
    return summary


def dumps(report: dict[str, Any]) -> str:
    """A report as the pretty JSON the mount serves."""
    return json.dumps(report, indent=2, default=str) + "\n"
