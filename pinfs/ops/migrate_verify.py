"""``pinfs migrate --verify-only``: check a backend's table (data files, schema, order, values) and that its
exports hold what it holds. Writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.backends import Backend
from pinfs.data.cids import spelling_duplicates
from pinfs.data.datafiles import table_snapshot
from pinfs.data.schema import REQUIRED_COLUMNS, record_problems
from pinfs.data.store import PinStore
from pinfs.data.tables import first_duplicate_cid, read_whole_table
from pinfs.errors import PinfsError
from pinfs.ops.carops import car_agreement
from pinfs.ops.migrate_plan import MAX_LISTED_PROBLEMS, source_path


def verify_backend(backend: Backend) -> dict[str, Any]:
    """Check the table (data files, schema, order, values) and that its exports hold what it holds.
    Writes nothing.

    A backend with no pins at all (no store and no legacy file) has nothing to verify and is ok; one
    still served from its legacy file is reported as not migrated."""
    problems: list[str] = []
    entry: dict[str, Any] = {"backend": backend.name, "type": backend.type}
    if backend.config_error:
        problems.append(backend.config_error)
    if not PinStore(backend).has_parquet():
        source = source_path(backend)
        if source is not None:
            problems.append(
                f"not migrated yet: served from {source} (run 'pinfs migrate --backend-filter {backend.name}')"
            )
        else:
            entry["pins"] = 0
            entry["note"] = "no pins: nothing to verify"
    elif not PinStore(backend).has_table():
        table = _verify_old_form(PinStore(backend), problems)
        if table is not None:
            entry["pins"] = table.num_rows
            problems.extend(car_agreement(backend, table))
    else:
        store = PinStore(backend)
        table = _verify_table(store, problems)
        if table is not None:
            entry["pins"] = table.num_rows
            entry["version"] = store.table_state().version  # type: ignore[union-attr]
            problems.extend(_export_problems(backend, table))
    entry["ok"] = not problems
    entry["problem_count"] = len(problems)
    entry["problems"] = problems[:MAX_LISTED_PROBLEMS]
    return entry


def _verify_old_form(store: PinStore, problems: list[str]) -> pa.Table | None:
    """An old-form parquet (a file or the sharded form), checked as the table will be made from it."""
    if store.path.is_file():
        return _verify_parquet(store.path, problems)
    try:
        table = store.snapshot().table()
    except PinfsError as exc:
        problems.append(str(exc))
        return None
    _verify_rows(store.path, table, problems)
    return table


def _verify_table(store: PinStore, problems: list[str]) -> pa.Table | None:
    """The table's newest version: every data file readable, sorted, of the size and rows the log says,
    in disjoint CID ranges, and every row sound."""
    try:
        state = store.table_state(reload=True)
        assert state is not None
        table = table_snapshot(state, store.cache).table()
    except PinfsError as exc:
        problems.append(str(exc))
        return None
    ranged = [data_file for data_file in state.range_files if data_file.rows]
    for left, right in zip(ranged, ranged[1:], strict=False):
        if left.max_cid >= right.min_cid:  # type: ignore[operator]
            problems.append(
                f"{store.table.directory}: files {left.path} and {right.path} overlap (run 'pinfs maintain')"
            )
    duplicate = first_duplicate_cid(table)
    if duplicate is not None:
        problems.append(f"{store.table.directory}: CID {duplicate} appears more than once")
    for first, second in spelling_duplicates(table.column("cid"))[:MAX_LISTED_PROBLEMS]:
        problems.append(f"{store.table.directory}: {first} and {second} are one CID spelled two ways (issue #16)")
    _verify_rows(store.table.directory, table, problems)
    return table


def _export_problems(backend: Backend, table: pa.Table) -> list[str]:
    """Whether the exports hold what the table holds (an export being refreshed is not a problem)."""
    problems: list[str] = []
    if not backend.parquet_path.is_file():
        problems.append(f"{backend.parquet_path}: missing (run 'pinfs car regenerate --backend {backend.name}')")
    else:
        exported = _verify_parquet(backend.parquet_path, problems)
        if exported is not None and not exported.equals(table):
            problems.append(
                f"{backend.parquet_path}: does not hold what the table holds; it was changed by another tool "
                "(it is imported at the next write) or is behind (run 'pinfs car regenerate')"
            )
    problems.extend(car_agreement(backend, table))
    return problems


def _verify_parquet(path: Path, problems: list[str]) -> pa.Table | None:
    try:
        # One read, in file order: raises for missing columns, non-string types and nulls.
        as_stored = read_whole_table(path, sort=False)
    except PinfsError as exc:
        problems.append(str(exc))
        return None
    if not _strictly_ascending(as_stored.column("cid")):
        problems.append(f"{path}: rows are not sorted by cid")
    table = as_stored.sort_by("cid")
    duplicate = first_duplicate_cid(table)
    if duplicate is not None:
        problems.append(f"{path}: CID {duplicate} appears more than once")
    _verify_rows(path, table, problems)
    return table


def _strictly_ascending(cids: pa.ChunkedArray) -> bool:
    if len(cids) < 2:
        return True
    return bool(pc.all(pc.less(cids.slice(0, len(cids) - 1), cids.slice(1))).as_py())


def _verify_rows(path: Path, table: pa.Table, problems: list[str]) -> None:
    for index, row in enumerate(table.select(list(REQUIRED_COLUMNS)).to_pylist()):
        for problem in record_problems(row):
            problems.append(f"{path}: row {index}: {problem}")
            if len(problems) > MAX_LISTED_PROBLEMS * 4:
                return
