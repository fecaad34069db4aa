"""What the last runs of the operations did, per backend: ``ROOT/backends/<b>/.pinfs-state.json``.

A small JSON object with one section per operation (``sync``, ``verify``, ``migrate``, ``car_push``…),
each e.g. ``{"finished_at", "ok", "error", …}``. Reports read it (last sync time, the error of the last
sync, which makes a backend "degraded"); sync and verify write it. It is replaced atomically, under the
backend's lock (the lock's holder removes stray temporary files in the directory, so writing without
it could lose the write). ``update_state_locked`` is for callers already holding the lock;
``record_run`` takes it -- never call it while holding the lock (flock does not nest).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pinfs.data.backends import Backend
from pinfs.data.fsutil import atomic_write_bytes, backend_lock

STATE_NAME = ".pinfs-state.json"
MAX_STATE_BYTES = 1 << 20


def state_path(backend: Backend) -> Path:
    return backend.directory / STATE_NAME


def read_state(backend: Backend) -> dict[str, Any]:
    """The state object; ``{}`` when there is none or it cannot be read (it is only a record)."""
    path = state_path(backend)
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            return {}
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def update_state_locked(backend: Backend, section: str, info: Mapping[str, Any]) -> None:
    """Replace one section of the state file. The caller holds the backend's lock."""
    state = read_state(backend)
    state[section] = dict(info)
    data = json.dumps(state, indent=2, sort_keys=True, default=str).encode() + b"\n"
    atomic_write_bytes(state_path(backend), data)


def record_run(backend: Backend, section: str, info: Mapping[str, Any], lock_timeout: float = 30.0) -> bool:
    """Take the backend's lock and record ``info`` as ``section``. False when it could not be written."""
    if not backend.directory.is_dir():
        return False
    try:
        with backend_lock(backend.directory, timeout=lock_timeout):
            update_state_locked(backend, section, info)
    except Exception:  # a record of a run must never make the run itself fail
        return False
    return True
