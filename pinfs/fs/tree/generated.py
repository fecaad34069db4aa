"""Generated files: the reports, a backend's summary and its CAR as JSON, rendered and kept briefly.

What it is for: making the bytes of a GENERATED node (``make_report``, ``insights_svg``,
``car_json``) and ``RenderCache``, which keeps them ``RENDER_SECONDS`` (a ``stat`` then ``cat`` sees
one version, ``ls -l`` does not recompute reports, changes still show within 2 s: CONTRACT §2) and
gives each file an mtime that moves only when its bytes do (issue #19).

What it must not do: decide which generated files exist (the directory kinds do) or know inodes.

Threading: rendering blocks (worker threads). ``RenderCache`` is shared by every thread: its state
is guarded by a lock held only for dictionary operations.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cachetools

from pinfs.errors import NotFound, PinfsError
from pinfs.fs.tree.names import TreePath
from pinfs.fs.tree.records import pretty
from pinfs.ops import reports

log = logging.getLogger(__name__)

# How long a generated file's bytes are reused: short, so outside changes show within 2 s (CONTRACT §2).
RENDER_SECONDS = 1.0
_REPORTS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "health.json": reports.health,
    "status.json": reports.status,
    "insights.json": reports.insights,
}


def make_report(root: Path, name: str) -> dict[str, Any]:
    """The report ``name`` over every backend; a report that cannot be made says why instead."""
    try:
        return _REPORTS[name](root)
    except PinfsError as exc:  # e.g. the data root is gone (RootMissing): the report is an error
        return {"ok": False, "state": "error", "error": str(exc)}
    except Exception as exc:  # a report must not take the mount down; the file says what went wrong
        log.exception("making %s failed", name)
        return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}


def insights_svg(root: Path) -> bytes:
    from pinfs.ops.insights_svg import render_svg  # matplotlib: imported on first read, not at mount

    return render_svg(make_report(root, "insights.json"))


def car_json(car_path: Path) -> bytes:
    """The CAR at ``car_path`` as legacy JSON. Raises NotFound, CorruptData."""
    from pinfs.data.car import read_pin_mappings_car, to_legacy_json

    try:
        car = read_pin_mappings_car(car_path)
    except FileNotFoundError:
        raise NotFound(f"{car_path} does not exist") from None
    return pretty(to_legacy_json(car))


class RenderCache:
    """Rendered bytes by path for ``RENDER_SECONDS``, and what each generated file last held."""

    def __init__(self) -> None:
        self._rendered: cachetools.TTLCache = cachetools.TTLCache(maxsize=1024, ttl=RENDER_SECONDS)
        # path -> (digest, mtime_ns) of what each generated file last held: its mtime moves only when
        # its bytes do (issue #19: stable from one stat to the next).
        self._times: dict[TreePath, tuple[bytes, int]] = {}
        self._lock = threading.Lock()

    def bytes_of(self, path: TreePath, render: Callable[[], bytes]) -> bytes:
        """The bytes at ``path``: kept ones, else ``render()`` (kept from now on)."""
        with self._lock:
            found = self._rendered.get(path)
        if found is not None:
            return found
        data = render()
        with self._lock:
            self._rendered[path] = data
        return data

    def last_mtime(self, path: TreePath) -> int | None:
        """The mtime the file at ``path`` was last given, if it was rendered yet."""
        with self._lock:
            known = self._times.get(path)
        return known[1] if known is not None else None

    def mtime(self, path: TreePath, data: bytes, data_mtime: Callable[[], int]) -> int:
        """The mtime of a generated file holding ``data``: unchanged while its bytes are (however often
        it is rendered); when they change, the time of the data version they describe
        (``data_mtime()``) if that is newer, else now (a report can change with the clock or a run
        record, not only with the data)."""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        with self._lock:
            known = self._times.get(path)
        if known is not None and known[0] == digest:
            return known[1]
        newest = data_mtime()
        changed_with_data = known is None or newest > known[1]
        mtime_ns = newest if changed_with_data else max(time.time_ns(), known[1] + 1)
        with self._lock:
            self._times[path] = (digest, mtime_ns)
        return mtime_ns

    def clear(self) -> None:
        """Drop every kept rendering (their mtimes stay: they move only with the bytes)."""
        with self._lock:
            self._rendered.clear()
