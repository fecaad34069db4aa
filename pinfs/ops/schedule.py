"""Scheduled sync and verify for the mount (``--sync-interval``, ``--verify-interval``; off by default).

Trio-free and synchronous: the mount calls ``run_due_duties`` from a worker thread every so often
(``seconds_until_due`` says how long it may sleep) and keeps ``last_runs`` between calls. A duty runs
when its interval has passed since its last run; a duty never run yet is first run one interval after
the first call (a mount's start is not slowed down by a sync). An interval of None or <= 0 is off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from pinfs.errors import PinfsError

log = logging.getLogger(__name__)


def _intervals(sync_interval: float | None, verify_interval: float | None) -> dict[str, float]:
    chosen = {"sync": sync_interval, "verify": verify_interval}
    return {name: float(value) for name, value in chosen.items() if value is not None and value > 0}


def seconds_until_due(
    last_runs: MutableMapping[str, float],
    sync_interval: float | None,
    verify_interval: float | None,
    now: float | None = None,
) -> float | None:
    """Seconds until the next duty is due (0 when one is due now); None when both are off."""
    now = time.monotonic() if now is None else now
    waits = [
        max(0.0, last_runs.get(name, now) + interval - now)
        for name, interval in _intervals(sync_interval, verify_interval).items()
    ]
    return min(waits) if waits else None


def run_due_duties(
    root: Path,
    last_runs: MutableMapping[str, float],
    sync_interval: float | None,
    verify_interval: float | None,
    now: float | None = None,
) -> dict[str, Any]:
    """Run sync and/or verify (every backend, defaults) if due; updates ``last_runs`` (monotonic
    seconds, the clock ``now`` is on). Returns ``{"ran": {name: report}, "next_in": seconds|None}``;
    a duty that raised has ``{"ok": False, "error": …}`` as its report. Never raises for a duty."""
    from pinfs.ops.sync import SyncOptions, sync
    from pinfs.ops.verify import VerifyOptions, verify

    now = time.monotonic() if now is None else now
    duties = {
        "sync": lambda: sync(root, SyncOptions()),
        "verify": lambda: verify(root, VerifyOptions()),
    }
    ran: dict[str, Any] = {}
    for name, interval in _intervals(sync_interval, verify_interval).items():
        last = last_runs.setdefault(name, now)
        if now - last < interval:
            continue
        last_runs[name] = now
        try:
            ran[name] = duties[name]()
        except PinfsError as exc:  # e.g. the data root is gone: said in one line, no traceback
            log.warning("scheduled %s failed: %s", name, exc)
            ran[name] = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a scheduled duty must not take the mount down
            log.exception("scheduled %s failed", name)
            ran[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ran": ran, "next_in": seconds_until_due(last_runs, sync_interval, verify_interval, now)}
