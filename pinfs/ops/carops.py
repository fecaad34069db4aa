"""Regenerating a backend's ``pin_mappings.car`` from its parquet, and checking the two agree.

The CAR is a derived copy: it is rebuilt from the parquet whenever pins change through pinfs, and on
demand (``regenerate-car``, ``migrate --force-car-regeneration``). Callers that already hold the
backend's lock call ``write_car_locked``; ``regenerate_car`` takes the lock itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pinfs.backends import Backend
from pinfs.car import read_pin_mappings_car, write_pin_mappings_car
from pinfs.errors import CorruptData, PinfsError
from pinfs.ops.common import error_entry, select_backends
from pinfs.ops.progress import NullProgress, Progress
from pinfs.schema import REQUIRED_COLUMNS, now_iso
from pinfs.store import PinStore


@dataclass
class RegenerateOptions:
    backends: list[str] = field(default_factory=list)  # empty: every backend


def table_records(table: pa.Table) -> list[dict[str, str]]:
    """The six contract fields of every row, in CID order, as the CAR stores them."""
    return table.select(list(REQUIRED_COLUMNS)).sort_by("cid").to_pylist()


def write_car_locked(backend: Backend, table: pa.Table, created_at: str | None = None) -> dict[str, Any]:
    """Write ``pin_mappings.car`` for ``table``. The caller holds the backend's lock."""
    size = write_pin_mappings_car(backend.car_path, table_records(table), backend.name, created_at or now_iso())
    return {"path": str(backend.car_path), "records": table.num_rows, "bytes": size}


def car_agreement(backend: Backend, table: pa.Table) -> list[str]:
    """Why the CAR does not match the parquet's table (empty when it does). Reads the whole CAR."""
    if not backend.car_path.is_file():
        return [f"{backend.car_path}: missing"]
    try:
        car = read_pin_mappings_car(backend.car_path)
    except CorruptData as exc:
        return [str(exc)]
    problems: list[str] = []
    if car.backend_name and car.backend_name != backend.name:
        problems.append(f"{backend.car_path}: backend_name is {car.backend_name!r}, not {backend.name!r}")
    expected = table_records(table)
    if sorted(car.records, key=lambda r: r["cid"]) != expected:
        problems.append(
            f"{backend.car_path}: holds {len(car.records)} records that do not match the parquet's "
            f"{len(expected)}; run 'pinfs migrate --force-car-regeneration --backend-filter {backend.name}'"
        )
    return problems


def car_is_current(backend: Backend) -> bool:
    """Cheap check for reports: the CAR exists and is not older than the parquet."""
    try:
        car_mtime = backend.car_path.stat().st_mtime_ns
        parquet_mtime = backend.parquet_path.stat().st_mtime_ns
    except FileNotFoundError:
        return not backend.parquet_path.exists()
    return car_mtime >= parquet_mtime


def regenerate_car(root: Path, options: RegenerateOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Rebuild ``pin_mappings.car`` of the chosen backends from their parquet files."""
    progress = progress or NullProgress()
    backends = select_backends(root, options.backends)
    entries: list[dict[str, Any]] = []
    progress.start("regenerate-car", len(backends))
    for backend in backends:
        entries.append(_regenerate_one(backend))
        progress.advance()
    progress.finish()
    return {"ok": all(entry["ok"] for entry in entries), "backends": entries}


def _regenerate_one(backend: Backend) -> dict[str, Any]:
    store = PinStore(backend)
    if not store.has_parquet():
        reason = "no pin_mappings.parquet yet (run 'pinfs migrate')"
        return {"backend": backend.name, "type": backend.type, "ok": True, "skipped": reason}
    try:
        with store.transaction() as txn:
            written = write_car_locked(backend, txn.current())
    except PinfsError as exc:
        return error_entry(backend, exc)
    return {"backend": backend.name, "type": backend.type, "ok": True, **written}
