"""SQL over every backend's pins at once: ``pinfs query "SELECT … FROM pins …"`` (issue #20).

What it is for: an in-memory DuckDB connection in which ``pins`` is a view over every backend's pins
(``UNION ALL BY NAME``: a column one backend lacks is NULL in its rows). Nothing is copied: a migrated
backend is registered as a pyarrow dataset over its parquet files, which DuckDB scans lazily with the
query's columns and filters pushed down; a backend still served from its legacy ``pins.json`` is
registered as the Arrow table the mount serves it from.

What it must not do: write anything, least of all in the data root. Once the view exists, the
connection's file-system access is switched off (``enable_external_access``), so ``COPY … TO``,
``ATTACH`` or ``read_csv`` in the user's SQL fail with a permission error instead of touching a file;
DuckDB's spill directory is a private temporary directory outside the root, removed afterwards.

``pin_files`` is the one place that knows where a backend's rows are on disk: the data files of the
newest version of its Delta table (``pinfs.data.store``), or the parquet of an older release's form.

Threading: blocking; one connection per call, used by one thread.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pinfs.data.backends import Backend, discover_backends
from pinfs.data.oldforms import data_files, old_form_exists
from pinfs.data.rootfs import as_location, local_copy
from pinfs.data.schema import arrow_schema
from pinfs.data.store import PinStore
from pinfs.errors import CorruptData, InvalidInput, PinfsError, describe

VIEW = "pins"


def pin_files(backend: Backend) -> list[Path]:
    """The parquet files holding ``backend``'s pins now, in order; ``[]`` when it has none (a backend
    not migrated yet, served from its pins.json). Raises CorruptData for a store that cannot be read."""
    store = PinStore(backend)
    state = store.table_state()
    if state is not None:
        directory = as_location(state.identity.location)
        return [directory / data_file.path for data_file in state.files if data_file.rows]
    if old_form_exists(backend.parquet_path):
        return data_files(backend.parquet_path)
    return []


def backend_source(backend: Backend) -> Any:
    """What DuckDB scans for one backend: a lazy pyarrow dataset over ``pin_files``, or the Arrow table
    of a legacy (or empty) backend. Raises CorruptData / OSError when the backend cannot be read."""
    import pyarrow.dataset as ds

    files = pin_files(backend)
    if files:
        try:
            return ds.dataset([str(local_copy(path)) for path in files], format="parquet")  # S3: the read cache
        except (pa.ArrowException, OSError) as exc:
            raise CorruptData(f"{files[0]}: {exc}") from None
    return PinStore(backend).snapshot().table()


@dataclass
class QueryResult:
    table: pa.Table
    left_out: list[dict[str, str]] = field(default_factory=list)  # backends that could not be read


def run_query(root: Path, sql: str) -> QueryResult:
    """Run ``sql`` against the view ``pins`` of every backend under ``root``.

    Raises InvalidInput (exit 2) for SQL that does not parse or bind, or that tries to reach a file,
    and PinfsError for a failure while running it. A backend that cannot be read is left out of the
    view and named in ``left_out``.
    """
    import duckdb

    if not sql.strip():
        raise InvalidInput("no SQL given")
    with _connection() as connection:
        left_out = _register_pins(connection, root)
        connection.execute("SET enable_external_access = false")
        try:
            table = _arrow_table(connection.sql(sql))
        except (duckdb.ProgrammingError, duckdb.PermissionException) as exc:
            raise InvalidInput(_first_line(exc)) from None
        except duckdb.Error as exc:
            raise PinfsError(_first_line(exc)) from None
    return QueryResult(table, left_out)


@contextmanager
def _connection() -> Iterator[Any]:
    import duckdb

    spill = tempfile.mkdtemp(prefix="pinfs-query-")
    connection = duckdb.connect(":memory:")
    try:
        # Set before file access is switched off: where DuckDB may spill a big sort or join.
        connection.execute("SET temp_directory = ?", [spill])
        yield connection
    finally:
        connection.close()
        shutil.rmtree(spill, ignore_errors=True)


def _register_pins(connection: Any, root: Path) -> list[dict[str, str]]:
    """Register every readable backend and create the view ``pins``; returns the backends left out."""
    backends, _problems = discover_backends(root)
    parts: list[str] = []
    left_out: list[dict[str, str]] = []
    for backend in backends:
        try:
            source = backend_source(backend)
        except (PinfsError, OSError) as exc:
            left_out.append({"backend": backend.name, "error": describe(exc)})
            continue
        relation = f"pins_{len(parts)}"
        connection.register(relation, source)
        parts.append(f"SELECT * FROM {relation}")
    if not parts:  # no backend at all: the view still has the contract's columns
        connection.register("pins_empty", arrow_schema().empty_table())
        parts.append("SELECT * FROM pins_empty")
    connection.execute(f"CREATE VIEW {VIEW} AS " + " UNION ALL BY NAME ".join(parts))
    return left_out


def _arrow_table(relation: Any) -> pa.Table:
    """The rows of ``connection.sql(...)``: None for a statement that returns none (e.g. SET)."""
    if relation is None:
        return pa.table({})
    # DuckDB 2 renamed DuckDBPyRelation.arrow (1.x) to to_arrow_table.
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    return fetch()


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
