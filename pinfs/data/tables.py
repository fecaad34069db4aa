"""Arrow tables of pins and their parquet files: building, normalizing, merging, reading and writing.

A backend's pins are one table in one schema (``pinfs.data.schema.arrow_schema``: the same columns in the
same order in every backend, every table and every export, issue #12), sorted by CID, one row per CID.
Parquet files are written with row groups of ``ROW_GROUP_ROWS`` rows, statistics and
``sorting_columns``, so a reader finds one CID's row group from the footer alone. The canonical store
is a Delta table of such files (``pinfs.data.delta``); the one-file export and the old single-file and
sharded forms (read for the upgrade) are such files too.

Everything here is a plain function over tables and paths: no cache, no lock (``pinfs.data.store``), no
snapshot (``pinfs.data.snapshots``).
"""

from __future__ import annotations

import bisect
import itertools
import operator
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pinfs.data.fsutil import atomic_writer, refuse_symlink
from pinfs.data.rootfs import local_copy
from pinfs.data.schema import REQUIRED_COLUMNS, STORE_COLUMNS, arrow_schema, now_iso
from pinfs.errors import CorruptData, InvalidInput

# Rows per row group: small enough that a lookup reads little (~200 KB), large enough that a 1M-pin
# file has few enough groups for its footer to stay small.
ROW_GROUP_ROWS = 2048

# Columns whose values repeat across rows; the others are written PLAIN.
DICTIONARY_COLUMNS: tuple[str, ...] = ("backend_name", "status")

WORKER_THREADS = min(4, os.cpu_count() or 1)  # for the files of one write
# A column another tool added to a file pinfs imports is kept in the record's metadata under this key
# (one schema everywhere, issue #12), never dropped.
EXTRA_COLUMNS_KEY = "extra_columns"
T = TypeVar("T")


@dataclass(frozen=True)
class RowGroup:
    """Where one row group sits in the sorted order, and which CIDs it covers."""

    index: int
    start: int
    length: int
    min_cid: str
    max_cid: str


# -- helpers --


def open_parquet(source: pa.NativeFile, *, ranged: bool = False) -> pq.ParquetFile:
    """A reader without pyarrow's pre-buffering for a local file: that is for high-latency stores, and
    each open reader keeps its last read's buffers alive (~1 MB per shard read whole), which a snapshot
    holding dozens of open shards turned into 150+ MB of mount RSS (issue #6, measured). A file read by
    ranged GETs from S3 (``ranged``, ``rootfs.open_object``) is pre-buffered: one GET per row group
    instead of one per page (a cold row group of a 1M table: 35-60 ms -> 6-15 ms on the local server).
    Such readers are few (until the read cache has the file) and keep one row group's bytes each."""
    return pq.ParquetFile(source, pre_buffer=ranged)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_schema(schema: pa.Schema, path: Path) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise CorruptData(f"{path}: missing required column(s) {', '.join(missing)}")
    # Only the contract's columns must be strings; extra columns of other types are cast on read.
    wrong = [
        f"{name} is {schema.field(name).type}"
        for name in REQUIRED_COLUMNS
        if not (pa.types.is_string(schema.field(name).type) or pa.types.is_large_string(schema.field(name).type))
    ]
    if wrong:
        raise CorruptData(f"{path}: columns must be strings: {', '.join(wrong)}")


def groups_from_table(table: pa.Table) -> list[RowGroup]:
    groups: list[RowGroup] = []
    cids = table.column("cid")
    for start in range(0, table.num_rows, ROW_GROUP_ROWS):
        length = min(ROW_GROUP_ROWS, table.num_rows - start)
        groups.append(RowGroup(len(groups), start, length, cids[start].as_py(), cids[start + length - 1].as_py()))
    return groups


def parallel_map(function: Callable[..., T], *iterables: Iterable[Any]) -> list[T]:
    """``list(map(function, …))`` on ``WORKER_THREADS`` threads: shard reads, merges and writes are
    mostly Arrow work, which runs without the GIL. One item (a small backend's one piece) runs here."""
    argument_lists = [list(iterable) for iterable in iterables]
    if min((len(arguments) for arguments in argument_lists), default=0) <= 1:
        return list(map(function, *argument_lists))
    with ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="pinfs-shards") as pool:
        return list(pool.map(function, *argument_lists))


# -- tables --


def records_to_table(records: Iterable[Mapping[str, str | None]]) -> pa.Table:
    """Build a table in the store's schema from record dicts (a missing optional value becomes null;
    a key that is not a column goes into the record's metadata, ``fold_extra_columns``)."""
    rows = list(records)
    # Every key in order of first appearance, gathered at C speed (a 1M-record migration builds this).
    seen = dict.fromkeys(itertools.chain.from_iterable(rows))
    names = [*STORE_COLUMNS, *(name for name in seen if name not in STORE_COLUMNS)]
    columns = {name: pa.array(_column_values(rows, name), pa.string()) for name in names}
    return normalize_table(pa.table(columns) if rows else empty_table(), sort=False)


def _column_values(rows: list[Mapping[str, str | None]], name: str) -> list[str | None]:
    try:
        return list(map(operator.itemgetter(name), rows))
    except KeyError:  # an optional column some records lack
        return [row.get(name) for row in rows]


def normalize_table(table: pa.Table, *, sort: bool = True) -> pa.Table:
    """``table`` in the store's schema (``STORE_COLUMNS``, strings, missing optional columns null,
    extra columns folded into metadata), rows sorted by CID (unless ``sort`` is False)."""
    schema = arrow_schema()
    if table.schema != schema:
        table = fold_extra_columns(table)
        for name in STORE_COLUMNS:
            if name not in table.column_names:
                table = table.append_column(pa.field(name, pa.string()), pa.nulls(table.num_rows, pa.string()))
        table = table.select(list(STORE_COLUMNS))
        if table.schema != schema:
            table = table.cast(schema)
    return sort_by_cid(table) if sort else table


def fold_extra_columns(table: pa.Table) -> pa.Table:
    """``table`` without the columns that are not the store's, their non-null values kept in each
    row's metadata object under ``EXTRA_COLUMNS_KEY`` (``{"extra_columns": {"name": "value"}}``)."""
    extras = [name for name in table.column_names if name not in STORE_COLUMNS]
    if not extras:
        return table
    values = {name: table.column(name).cast(pa.string()).to_pylist() for name in extras}
    metadata = table.column("metadata").to_pylist() if "metadata" in table.column_names else ["{}"] * table.num_rows
    folded = []
    for index, text in enumerate(metadata):
        kept = {name: values[name][index] for name in extras if values[name][index] is not None}
        folded.append(_with_extra_columns(text, kept) if kept else text)
    table = table.drop_columns(extras)
    field = pa.field("metadata", pa.string(), nullable=False)
    if "metadata" in table.column_names:
        return table.set_column(table.schema.get_field_index("metadata"), field, pa.array(folded, pa.string()))
    return table.append_column(field, pa.array(folded, pa.string()))


def _with_extra_columns(text: str | None, kept: dict[str, str]) -> str:
    from pinfs.data.schema import dump_metadata, load_metadata

    try:
        metadata = load_metadata(text)
    except ValueError:
        metadata = {"_unparsed": text}
    metadata[EXTRA_COLUMNS_KEY] = {**metadata.get(EXTRA_COLUMNS_KEY, {}), **kept}
    return dump_metadata(metadata)


def cids_strictly_ascending(cids: pa.ChunkedArray | pa.Array) -> bool:
    """Whether the CIDs are sorted with no CID twice (one vectorized pass, no copy of the data)."""
    if len(cids) < 2:
        return True
    return bool(pc.all(pc.less(cids.slice(0, len(cids) - 1), cids.slice(1))).as_py())


def sort_by_cid(table: pa.Table) -> pa.Table:
    """``table`` sorted by CID (stable). A table already in strict CID order (what pinfs writes, and
    every merge of sorted tables) is returned as is, so the common case copies nothing."""
    if cids_strictly_ascending(table.column("cid")):
        return table
    return take_rows(table, pc.sort_indices(table.column("cid")))


def take_rows(table: pa.Table, indices: pa.Array) -> pa.Table:
    """The rows at ``indices``, gathered column by column (``Table.take`` is many times slower)."""
    columns = [pc.take(column, indices) for column in table.columns]
    return pa.Table.from_arrays(columns, schema=table.schema)


def merge_sorted(table: pa.Table, other: pa.Table) -> pa.Table:
    """Two sorted tables with the same columns and no CID in common, as one sorted table. A few rows of
    ``other`` are spliced in by binary search (``_splice_sorted``), then copied into one chunk per
    column (a merged row group is counted by its buffers: ``snapshots.held_bytes``): a lookup in a
    data file with rows in the insert file merges the row group it reads with those few rows, and the
    sort and gather of every column took ~1.5 ms of a ~6 ms cold lookup after 2,000 single pins
    (issue #12 bench, 1M pins)."""
    if not other.num_rows:
        return table
    if other.num_rows <= _SPLICE_MAX_ROWS:
        return _splice_sorted(table, other).combine_chunks()
    both = pa.concat_tables([table, other])
    return take_rows(both, pc.sort_indices(both.column("cid")))


def range_bounds(table: pa.Table, mins: Sequence[str]) -> list[int]:
    """Where the rows of sorted ``table`` for each range start (range i holds CIDs from ``mins[i]`` up
    to ``mins[i + 1]``, the first one also those below), and its length at the end."""
    cids = table.column("cid").to_pylist()
    return [0, *(bisect.bisect_left(cids, low) for low in mins[1:]), len(cids)]


def first_duplicate_cid(table: pa.Table) -> str | None:
    cids = table.column("cid")
    if cids_strictly_ascending(cids):  # sorted without repeats: no duplicate by construction
        return None
    counts = pc.value_counts(cids)
    repeated = counts.filter(pc.greater(pc.struct_field(counts, "counts"), 1))
    return repeated[0]["values"].as_py() if len(repeated) else None


def settle_pandas_probe() -> None:
    """Make pyarrow's "is this a pandas object?" probe answer no without importing pandas, once per
    process, before anything converts a Python value (``pa.array``, ``pa.scalar``, a compute call
    with a Python argument). pyarrow imports pandas at its first such conversion only to ask that;
    pinfs never hands it a pandas object, and the import costs ~0.45 s and ~40 MB: at every CLI
    command, and before a mount answers. The probe is made while ``import pandas`` fails; pyarrow
    still imports pandas later if anything really converts to or from pandas."""
    global _PANDAS_PROBE_SETTLED
    if _PANDAS_PROBE_SETTLED:
        return
    import sys

    sys.meta_path.insert(0, _NO_PANDAS)
    try:
        # An untyped array: the conversion that records "no pandas" for good (pyarrow 26; a typed one,
        # or pa.scalar, asks again at the next conversion, and imports pandas then).
        pa.array([1])
    finally:
        sys.meta_path.remove(_NO_PANDAS)
    _PANDAS_PROBE_SETTLED = True


class _NoPandasFinder:
    """An import finder under which ``import pandas`` fails (``settle_pandas_probe``)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ImportError("pandas is not imported by pinfs")


_NO_PANDAS = _NoPandasFinder()
_PANDAS_PROBE_SETTLED = False


def empty_table() -> pa.Table:
    return arrow_schema().empty_table()


# -- reading and writing --


def read_whole_table(path: Path, *, sort: bool = True) -> pa.Table:
    """Read one parquet file of pins entirely, in the store's schema, sorted (or in file order with
    ``sort=False``, for checking it); CorruptData if it cannot be read or lacks columns."""
    refuse_symlink(path)
    try:
        # Read through one open file: pq.read_table(path) opens the path twice (footer, then data), so a
        # writer renaming a new version in between would mix two versions ("Page was smaller than expected").
        with pa.OSFile(str(local_copy(path)), "r") as source:
            table = open_parquet(source).read()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CorruptData(f"{path}: not a readable parquet file ({one_line(exc)})") from None
    return checked_table(table, path, sort=sort)


def checked_table(table: pa.Table, path: Path | str, *, sort: bool = True) -> pa.Table:
    """A table read from ``path``, checked (required columns, strings, no nulls) and normalized."""
    check_schema(table.schema, path)  # type: ignore[arg-type]
    # Required columns are non-nullable in our schema: casting a null into one raises a bare ValueError
    # (not ArrowInvalid), which escaped as a traceback from verify-only/migrate/pin. Name them instead.
    nulls = [name for name in REQUIRED_COLUMNS if table.column(name).null_count]
    if nulls:
        raise CorruptData(f"{path}: null values in required column(s) {', '.join(nulls)}")
    try:
        return normalize_table(table, sort=sort)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CorruptData(f"{path}: an extra column cannot be read as text ({one_line(exc)})") from None


def write_table(path: Path, table: pa.Table, metadata: Mapping[str, str] | None = None) -> pa.Table:
    """Write a table as one parquet file, atomically; returns it as written (normalized). ``metadata``
    goes into the file's key-value metadata (an export's table version)."""
    table = checked_for_writing(table, path)
    with atomic_writer(path) as temp:
        write_parquet(table, temp, metadata)
    return table


def checked_for_writing(table: pa.Table, path: Path | str) -> pa.Table:
    table = normalize_table(table)
    duplicate = first_duplicate_cid(table)
    if duplicate is not None:
        raise InvalidInput(f"{path}: refusing to write duplicate CID {duplicate}")
    return table


def parquet_writer(target: Path | pa.NativeFile, metadata: Mapping[str, str] | None = None) -> pq.ParquetWriter:
    """A writer of pins in the store's layout, for a file written piece by piece (the export)."""
    schema = arrow_schema()
    if metadata:
        schema = schema.with_metadata(dict(metadata))
    return pq.ParquetWriter(
        target,
        schema,
        write_statistics=True,
        # Dictionary encoding only where values repeat: CIDs, paths, times and metadata are (nearly)
        # unique per row, so a dictionary there costs write time and bytes and saves nothing.
        use_dictionary=list(DICTIONARY_COLUMNS),
        # sorting_columns declares the CID order, so readers need not check it (snapshots trust it)
        sorting_columns=[pq.SortingColumn(schema.get_field_index("cid"))],
    )


def write_parquet(table: pa.Table, target: Path | pa.NativeFile, metadata: Mapping[str, str] | None = None) -> None:
    """``table`` (already sorted, in the store's schema) as one parquet file at ``target``."""
    with parquet_writer(target, metadata) as writer:
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as the bytes of one parquet file, written as ``write_table`` writes it."""
    sink = pa.BufferOutputStream()
    write_parquet(checked_for_writing(table, "<memory>"), sink)
    return sink.getvalue().to_pybytes()


def split_into_files(table: pa.Table, target: int, *, exact: bool = False) -> list[pa.Table]:
    """``table`` cut into pieces of about ``target`` rows: into equal pieces when it is above twice
    that (or always, with ``exact``), else left whole; none when it is empty."""
    rows = table.num_rows
    if rows == 0:
        return []
    if rows <= 2 * target and not exact:
        return [table]
    pieces = -(-rows // target)
    size = -(-rows // pieces)
    return [table.slice(start, size) for start in range(0, rows, size)]


# -- merging --


def merge_records(current: pa.Table, replacements: Mapping[str, Mapping[str, str | None]]) -> pa.Table:
    """``current`` with the rows of ``replacements`` (by CID) replaced or added, ``updated_at`` set.

    When ``current`` is in strict CID order (every table pinfs reads from its own files), so is the
    result: the new rows are merged in at their places instead of sorting the whole table again.
    """
    if not replacements:
        return current
    current = normalize_table(current, sort=False)
    new_table = sort_by_cid(_stamp_updated_at(records_to_table(replacements.values()), now_iso()))
    if current.num_rows == 0:
        return new_table
    if not cids_strictly_ascending(current.column("cid")):
        keep = current.filter(pc.invert(pc.is_in(current.column("cid"), new_table.column("cid"))))
        return pa.concat_tables([keep, new_table])
    if new_table.num_rows <= _SPLICE_MAX_ROWS:
        return _splice_sorted(current, new_table)
    replaced = pc.is_in(current.column("cid"), new_table.column("cid"))
    keep = current.filter(pc.invert(replaced)) if pc.any(replaced).as_py() else current
    both = pa.concat_tables([keep, new_table])
    return take_rows(both, pc.sort_indices(both.column("cid")))


# A batch of at most this many rows is spliced into the sorted table by binary search (no copy of the
# table; ``merge_sorted`` copies the result into one chunk); a bigger one is merged by one sort of the
# CID column and one gather of every column.
_SPLICE_MAX_ROWS = 64


def _stamp_updated_at(table: pa.Table, stamp: str) -> pa.Table:
    """``updated_at`` set to ``stamp`` where it is null or empty."""
    column = table.column("updated_at")
    missing = pc.fill_null(pc.equal(column, ""), True)
    filled = pc.if_else(missing, pa.scalar(stamp, pa.string()), column)
    return table.set_column(table.schema.get_field_index("updated_at"), table.schema.field("updated_at"), filled)


class _CidSequence(Sequence[str]):
    """A sorted CID column indexed lazily, for ``bisect`` without converting the whole column."""

    def __init__(self, cids: pa.ChunkedArray) -> None:
        self._cids = cids

    def __len__(self) -> int:
        return len(self._cids)

    def __getitem__(self, index):  # type: ignore[override]
        return self._cids[index].as_py()


def _splice_sorted(current: pa.Table, new_table: pa.Table) -> pa.Table:
    """Sorted ``current`` with the sorted rows of ``new_table`` put in place (replacing equal CIDs)."""
    cids = _CidSequence(current.column("cid"))
    pieces: list[pa.Table] = []
    start = 0
    for index, cid in enumerate(new_table.column("cid").to_pylist()):
        position = bisect.bisect_left(cids, cid, lo=start)
        if position > start:
            pieces.append(current.slice(start, position - start))
        pieces.append(new_table.slice(index, 1))
        start = position + 1 if position < len(cids) and cids[position] == cid else position
    if start < current.num_rows:
        pieces.append(current.slice(start))
    return pa.concat_tables(pieces)
