"""The ``pin_mappings.car`` encoder from Arrow columns (``write_pin_mappings_car_columns``): the same bytes
as ``pinfs.data.car.write_pin_mappings_car`` over the columns' records, without a Python object per record.
Used by the exports (``pinfs.data.exports``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import libipld

from pinfs.data.car import (
    CAR_VERSION,
    DEFAULT_CHUNK_SIZE,
    FORMAT,
    MAX_ENTRY_RECORD_BYTES,
    block_ends,
    entry_blocks,
    pin_mappings_parts,
)
from pinfs.data.carv1 import DAG_CBOR_SHA256_PREFIX, car_parts, cbor_uint_head, varint
from pinfs.data.fsutil import atomic_writer
from pinfs.data.rootfs import as_path
from pinfs.data.schema import REQUIRED_COLUMNS

# The same bytes as ``write_pin_mappings_car`` over the columns' records, but encoded from Arrow
# columns without making a Python object per record: each record's DAG-CBOR map is assembled by one
# vectorized string join (its keys in DAG-CBOR's canonical order: shorter first, then bytewise), and
# an entry block is the list head followed by a contiguous run of those encodings. The file is
# streamed: the root block's size does not depend on the entries' hashes, so its place is reserved,
# the entries are written as they are hashed, and the header and root go in last.

_KEY_ORDER: tuple[str, ...] = tuple(sorted(REQUIRED_COLUMNS, key=lambda key: (len(key.encode()), key.encode())))
_GROUP_CHUNKS = 64  # entry blocks encoded per vectorized pass
_MAX_FAST_TEXT = 0xFFFF  # longer values (rare) go through the record-by-record encoder
_TEXT_HEADS: list[Any] = []  # lazily: pa.array of the CBOR text-string head of every length up to _MAX_FAST_TEXT


def _text_heads() -> Any:
    import pyarrow as pa

    if not _TEXT_HEADS:
        _TEXT_HEADS.append(pa.array([cbor_uint_head(3, n) for n in range(_MAX_FAST_TEXT + 1)], pa.binary()))
    return _TEXT_HEADS[0]


def _encoded_rows(arrays: Mapping[str, Any]) -> Any | None:
    """Every record of the (contiguous, equally long) string arrays as one DAG-CBOR map, as a binary
    array; None when the fast path cannot encode them (nulls, huge values)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pieces: list[Any] = []
    for position, name in enumerate(_KEY_ORDER):
        values = arrays[name]
        if values.null_count or not pa.types.is_string(values.type):
            return None
        lengths = pc.binary_length(values)
        if len(values) and pc.max(lengths).as_py() > _MAX_FAST_TEXT:
            return None
        key = cbor_uint_head(3, len(name.encode())) + name.encode()
        prefix = (b"\xa6" if position == 0 else b"") + key
        pieces += [pa.scalar(prefix, pa.binary()), pc.take(_text_heads(), lengths), values.cast(pa.binary())]
    try:
        joined = pc.binary_join_element_wise(*pieces, pa.scalar(b"", pa.binary()))
    except (pa.ArrowCapacityError, pa.ArrowInvalid):
        return None
    return joined


def _column_entry_blocks(
    columns: Mapping[str, Any], num_rows: int, chunk_size: int
) -> Iterator[tuple[bytes, list[Any], int]]:
    """Yield ``(cid, block pieces, number of records)`` per chunk of rows; the pieces joined are the block."""
    import numpy as np

    group_rows = chunk_size * _GROUP_CHUNKS
    for group_start in range(0, num_rows, group_rows):
        length = min(group_rows, num_rows - group_start)
        arrays = {name: columns[name].slice(group_start, length) for name in REQUIRED_COLUMNS}
        arrays = {name: (a.combine_chunks() if hasattr(a, "combine_chunks") else a) for name, a in arrays.items()}
        joined = _encoded_rows(arrays)
        if joined is None:  # the general encoder, which also names a bad record
            records = _records_from_arrays(arrays, length)
            for cid, block, count in entry_blocks(records, chunk_size):
                yield cid, [block], count
            continue
        offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset : joined.offset + length + 1]
        data = memoryview(joined.buffers()[2])
        for run in range(0, length, chunk_size):
            run_stop = min(run + chunk_size, length)
            ends = [run_stop]
            if int(offsets[run_stop]) - int(offsets[run]) > MAX_ENTRY_RECORD_BYTES:
                ends = block_ends(offsets, run, run_stop, lambda i, cids=arrays["cid"]: cids[i].as_py(), group_start)
            start = run
            for stop in ends:
                head = cbor_uint_head(4, stop - start)
                body = data[int(offsets[start]) : int(offsets[stop])]
                hasher = hashlib.sha256(head)
                hasher.update(body)
                yield DAG_CBOR_SHA256_PREFIX + hasher.digest(), [head, body], stop - start
                start = stop


def _records_from_arrays(arrays: Mapping[str, Any], length: int) -> list[dict[str, Any]]:
    values = [arrays[name].to_pylist() for name in REQUIRED_COLUMNS]
    return [dict(zip(REQUIRED_COLUMNS, row, strict=True)) for row in zip(*values, strict=True)] if length else []


def write_pin_mappings_car_columns(
    path: Path,
    columns: Mapping[str, Any],
    num_rows: int,
    backend_name: str,
    created_at: str,
    before_replace: Callable[[Path], None] | None = None,
) -> int:
    """``write_pin_mappings_car`` for records held as Arrow string columns (``pa.Array`` or
    ``pa.ChunkedArray`` per required column, rows in the order to store): the same bytes, streamed.
    Returns the number of bytes written.

    ``before_replace`` is called with the temporary file once it is complete, before it replaces
    ``path``; if it raises, ``path`` is left as it was (used to rename the parquet first, and to give
    the CAR the time of the parquet version it was made from)."""
    if num_rows == 0:
        with atomic_writer(as_path(path)) as temp, open(temp, "xb") as handle:
            parts = pin_mappings_parts([], backend_name, created_at, DEFAULT_CHUNK_SIZE)
            handle.writelines(parts)
            if before_replace is not None:
                before_replace(temp)
        return sum(map(len, parts))
    chunks = -(-num_rows // DEFAULT_CHUNK_SIZE)

    def root_block(entries: list[bytes]) -> bytes:
        root = {"format": FORMAT, "version": CAR_VERSION, "backend_name": backend_name, "created_at": created_at}
        return libipld.encode_dag_cbor({**root, "count": num_rows, "entries": entries})

    placeholder = [DAG_CBOR_SHA256_PREFIX + bytes(32)] * chunks
    prefix_size = len(b"".join(car_parts([placeholder[0]], [(placeholder[0], root_block(placeholder))])))
    entries: list[bytes] = []
    seen: set[bytes] = set()
    written = prefix_size
    with atomic_writer(as_path(path)) as temp, open(temp, "xb") as handle:
        handle.seek(prefix_size)
        for cid, pieces, _count in _column_entry_blocks(columns, num_rows, DEFAULT_CHUNK_SIZE):
            entries.append(cid)
            if cid in seen:  # a block is stored once, however often it is linked
                continue
            seen.add(cid)
            size = sum(map(len, pieces))
            section = [varint(len(cid) + size), cid, *pieces]
            handle.writelines(section)
            written += len(section[0]) + len(cid) + size
        root = root_block(entries)
        root_cid = DAG_CBOR_SHA256_PREFIX + hashlib.sha256(root).digest()
        prefix = b"".join(car_parts([root_cid], [(root_cid, root)]))
        if len(prefix) == prefix_size:
            handle.seek(0)
            handle.write(prefix)
            handle.flush()
        else:  # records too big for one block per run of DEFAULT_CHUNK_SIZE: more entries than reserved
            handle.flush()
            _move_after_prefix(temp, prefix, prefix_size, written)
            written += len(prefix) - prefix_size
        if before_replace is not None:
            before_replace(temp)
    return written


def _move_after_prefix(path: Path, prefix: bytes, reserved: int, end: int) -> None:
    """Rewrite ``path`` as ``prefix`` followed by its bytes from ``reserved`` to ``end`` (the entry
    blocks, written after a place for a root block that turned out too small), in the kernel."""
    moved = path.with_name(path.name + ".moved")
    try:
        with open(path, "rb") as source, open(moved, "xb") as target:
            target.write(prefix)
            target.flush()
            position, remaining = reserved, end - reserved
            while remaining > 0:
                copied = os.copy_file_range(source.fileno(), target.fileno(), remaining, position)
                if copied == 0:
                    raise OSError(f"{path}: ended before byte {end} while its entries were moved")
                position += copied
                remaining -= copied
        os.replace(moved, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            moved.unlink()
