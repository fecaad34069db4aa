"""Regenerating a backend's ``pin_mappings.car`` from its parquet, and checking the two agree.

The CAR is a derived copy: it is rebuilt from the parquet whenever pins change through pinfs, and on
demand (``regenerate-car``, ``migrate --force-car-regeneration``). Callers that already hold the
backend's lock call ``write_car_locked``; ``regenerate_car`` takes the lock itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pinfs.backends import Backend
from pinfs.car import read_pin_mappings_car, write_pin_mappings_car_columns
from pinfs.errors import CorruptData, PinfsError
from pinfs.ops.common import error_entry, select_backends
from pinfs.ops.progress import NullProgress, Progress
from pinfs.schema import REQUIRED_COLUMNS, now_iso
from pinfs.store import PinStore, Transaction, sort_by_cid


@dataclass
class RegenerateOptions:
    backends: list[str] = field(default_factory=list)  # empty: every backend


def table_records(table: pa.Table) -> list[dict[str, str]]:
    """The six contract fields of every row, in CID order, as the CAR stores them."""
    table = sort_by_cid(table.select(list(REQUIRED_COLUMNS)))
    columns = [table.column(name).to_pylist() for name in REQUIRED_COLUMNS]
    return [dict(zip(REQUIRED_COLUMNS, row, strict=True)) for row in zip(*columns, strict=True)]


def write_car_locked(
    backend: Backend,
    table: pa.Table,
    created_at: str | None = None,
    before_replace: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Write ``pin_mappings.car`` for ``table``. The caller holds the backend's lock.

    Encoded straight from the table's columns (no Python object per pin); a table already in CID
    order, as every table pinfs reads and merges is, is not sorted again."""
    table = sort_by_cid(table.select(list(REQUIRED_COLUMNS)))
    columns = {name: table.column(name) for name in REQUIRED_COLUMNS}
    size = write_pin_mappings_car_columns(
        backend.car_path, columns, table.num_rows, backend.name, created_at or now_iso(), before_replace
    )
    return {"path": str(backend.car_path), "records": table.num_rows, "bytes": size}


def write_table_and_car_locked(backend: Backend, txn: Transaction, table: pa.Table) -> dict[str, Any]:
    """``txn.write(table)`` then ``write_car_locked(backend, table)``, with the CAR encoded on a second
    thread while the parquet is written. The order on disk is unchanged: the CAR's temporary file
    replaces ``pin_mappings.car`` only after the parquet has been renamed into place, and not at all
    if writing the parquet failed. The caller holds the backend's lock."""
    parquet_done = threading.Event()
    parquet_ok = False

    def after_parquet() -> None:
        parquet_done.wait()
        if not parquet_ok:
            raise _ParquetFailed

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pinfs-car") as pool:
        car = pool.submit(write_car_locked, backend, table, None, after_parquet)
        try:
            txn.write(table)
            parquet_ok = True
        finally:
            parquet_done.set()
        return car.result()


class _ParquetFailed(Exception):
    """Internal: the parquet was not written, so the CAR must not replace the old one."""


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
