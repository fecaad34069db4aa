"""The ``pin_mappings.car`` format: the pin mappings of one backend as a CARv1 file.

What it is for:

* ``pin_mappings.car`` (CONTRACT §1): encode records into a real CARv1 file whose blocks are all
  DAG-CBOR under CIDv1 dag-cbor sha2-256 CIDs (a root map linking to entry blocks, each a list of
  records), and decode it again -- or its legacy JSON form (``"version": "1.0"``) -- into
  ``PinMappingsCar``.
* The generic CARv1 pieces (varints, CIDs, sections, content CARs) are in ``pinfs.data.carv1``; the
  encoder from Arrow columns (the exports' fast path) is in ``pinfs.data.car_columns``.

What it must not do: trust its input. Every varint is bounded, every section length is checked
against the bytes that remain and ``MAX_SECTION_BYTES``, every block's multihash is recomputed, and
anything wrong raises ``CorruptData("<source>: <what is wrong>")``. It does no I/O beyond the two
``read_``/``write_`` helpers (atomic writes via ``pinfs.data.fsutil``), knows nothing about parquet,
backends or locks, and does not validate record *values* (CID syntax, statuses): that is
``schema.record_problems``' job.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libipld

from pinfs.data.carv1 import (
    DAG_CBOR_SHA256_PREFIX,
    MAX_SECTION_BYTES,
    car_parts,
    cbor_uint_head,
    cid_text,
    iter_sections,
    read_header,
)
from pinfs.data.fsutil import atomic_writer, read_regular_file
from pinfs.data.rootfs import as_path
from pinfs.data.schema import REQUIRED_COLUMNS, dump_metadata, normalize_timestamp
from pinfs.errors import CorruptData

FORMAT = "pin_mappings_car"
CAR_VERSION = "2.0"
LEGACY_VERSION = "1.0"
FORM_CARV1 = "carv1"
FORM_LEGACY = "legacy-json"
DEFAULT_CHUNK_SIZE = 1000

# Entry blocks hold at most this many bytes, the block limit IPFS nodes use (issue #15, item 3: 1000
# records with 1 MB of metadata each made a 73 MB block that the reader refused). A run of up to
# DEFAULT_CHUNK_SIZE records whose encodings exceed MAX_ENTRY_RECORD_BYTES is cut into several blocks; a
# record bigger than that alone is a block of its own, and one too big for any block (more than
# MAX_SECTION_BYTES) is refused by the writer, so it never writes a CAR its reader rejects.
MAX_BLOCK_BYTES = 1 << 20
MAX_ENTRY_RECORD_BYTES = MAX_BLOCK_BYTES - 3  # room for the list's head (3 bytes for up to 65535 items)

_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS
_COLUMN_SET = frozenset(_COLUMNS)


@dataclass(frozen=True)
class PinMappingsCar:
    """A decoded ``pin_mappings.car``: its header fields and records, whichever form it was in."""

    backend_name: str
    created_at: str
    version: str  # "2.0" for CARv1 files, "1.0" for the legacy JSON form
    records: list[dict[str, str]]  # each with the six REQUIRED_COLUMNS as strings
    form: str  # FORM_CARV1 or FORM_LEGACY


# --------------------------------------------------------------------------- pin_mappings.car encode


def _dag_cbor_block(value: Any) -> tuple[bytes, bytes]:
    block = libipld.encode_dag_cbor(value)
    return DAG_CBOR_SHA256_PREFIX + hashlib.sha256(block).digest(), block


def _chunk_records(chunk: list[Mapping[str, str]], first_index: int) -> list[Mapping[str, str]]:
    """The chunk's records reduced to the six columns, each checked to be a string."""
    rows: list[Mapping[str, str]] = [
        r if type(r) is dict and r.keys() == _COLUMN_SET else _project(r, first_index + i) for i, r in enumerate(chunk)
    ]
    types: set[type] = set()
    for row in rows:
        types.update(map(type, row.values()))
    if types - {str}:
        _raise_first_non_string(rows, first_index)
    return rows


def _project(record: Mapping[str, str], index: int) -> dict[str, str]:
    try:
        return {column: record[column] for column in _COLUMNS}
    except KeyError as exc:
        raise ValueError(f"record {index} has no {exc.args[0]!r} field") from None
    except TypeError:
        raise ValueError(f"record {index} is not a mapping") from None


def _raise_first_non_string(rows: list[Mapping[str, str]], first_index: int) -> None:
    for i, row in enumerate(rows):
        for column in _COLUMNS:
            if not isinstance(row[column], str):
                raise ValueError(f"record {first_index + i}: {column} is not a string")


def entry_blocks(records: Iterable[Mapping[str, str]], chunk_size: int) -> Iterator[tuple[bytes, bytes, int]]:
    """Yield ``(cid, block, number of records)`` per block: runs of ``chunk_size`` records, each cut
    further where its records' encodings exceed ``MAX_ENTRY_RECORD_BYTES`` (``block_ends``)."""
    chunk: list[Mapping[str, str]] = []
    index = 0
    for record in records:
        chunk.append(record)
        if len(chunk) == chunk_size:
            yield from _run_blocks(_chunk_records(chunk, index), index)
            index += len(chunk)
            chunk = []
    if chunk:
        yield from _run_blocks(_chunk_records(chunk, index), index)


def _run_blocks(rows: list[Mapping[str, str]], first_index: int) -> Iterator[tuple[bytes, bytes, int]]:
    cid, block = _dag_cbor_block(rows)
    if len(block) - len(cbor_uint_head(4, len(rows))) <= MAX_ENTRY_RECORD_BYTES:
        yield cid, block, len(rows)  # the usual case: the run is one block
        return
    sizes = [len(libipld.encode_dag_cbor(row)) for row in rows]
    offsets = [0, *itertools.accumulate(sizes)]
    start = 0
    for end in block_ends(offsets, 0, len(rows), lambda i: rows[i]["cid"], first_index):
        yield (*_dag_cbor_block(rows[start:end]), end - start)
        start = end


def block_ends(
    offsets: Sequence[int], start: int, stop: int, cid_of: Callable[[int], str], first_index: int = 0
) -> list[int]:
    """Where the blocks of records ``start``..``stop`` end, given the records' encodings' cumulative
    sizes (``offsets[i]``: bytes before record i): greedily, each block as many records as fit in
    ``MAX_ENTRY_RECORD_BYTES``, at least one. The one rule both CAR writers follow, so that they write
    the same bytes. Raises ValueError for a record too big for any block the reader accepts."""
    ends: list[int] = []
    while start < stop:
        end = bisect.bisect_right(offsets, offsets[start] + MAX_ENTRY_RECORD_BYTES, start + 1, stop + 1) - 1
        if end == start:  # one record bigger than a block: a block of its own, if the reader takes it
            end = start + 1
            size = int(offsets[end]) - int(offsets[start])
            if size > MAX_SECTION_BYTES - 64:
                raise ValueError(
                    f"record {first_index + start} ({cid_of(start)}) is {size} bytes: more than a CAR block may "
                    f"hold ({MAX_SECTION_BYTES} bytes)"
                )
        ends.append(end)
        start = end
    return ends


def encode_pin_mappings_car(
    records: Iterable[Mapping[str, str]],
    backend_name: str,
    created_at: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """The ``pin_mappings.car`` bytes for these records, in the order given.

    Deterministic: the same records, backend name, creation time and chunk size give the same bytes.
    Only the six required columns are stored. Raises ValueError for a record lacking one or holding
    a non-string value.
    """
    return b"".join(pin_mappings_parts(records, backend_name, created_at, chunk_size))


def pin_mappings_parts(
    records: Iterable[Mapping[str, str]], backend_name: str, created_at: str, chunk_size: int
) -> list[bytes]:
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    entries = list(entry_blocks(records, chunk_size))
    root = {
        "format": FORMAT,
        "version": CAR_VERSION,
        "backend_name": backend_name,
        "created_at": created_at,
        "count": sum(n for _, _, n in entries),
        "entries": [cid for cid, _, _ in entries],  # libipld writes CID bytes as tag-42 links
    }
    root_cid, root_block = _dag_cbor_block(root)
    blocks = [(root_cid, root_block)] + [(cid, block) for cid, block, _ in entries]
    return car_parts([root_cid], blocks)


def write_pin_mappings_car(path: Path, records: Iterable[Mapping[str, str]], backend_name: str, created_at: str) -> int:
    """Encode and atomically replace ``path``; return the number of bytes written."""
    parts = pin_mappings_parts(records, backend_name, created_at, DEFAULT_CHUNK_SIZE)
    with atomic_writer(as_path(path)) as temp, open(temp, "xb") as handle:
        handle.writelines(parts)
    return sum(map(len, parts))


# --------------------------------------------------------------------------- pin_mappings.car decode


def read_pin_mappings_car(path: Path) -> PinMappingsCar:
    """Read and decode ``path`` (either form). OSError propagates; bad content is CorruptData."""
    path = as_path(path)
    return decode_pin_mappings_car(read_regular_file(path), str(path))


def decode_pin_mappings_car(data: bytes, source: str = "<bytes>") -> PinMappingsCar:
    """Decode a ``pin_mappings.car`` in its CARv1 form or its legacy JSON form."""
    if bytes(data[:64]).lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"{"):
        return _decode_legacy_json(data, source)
    return _decode_carv1(data, source)


def _decode_carv1(data: bytes, source: str) -> PinMappingsCar:
    roots, pos = read_header(data, source)
    if len(roots) != 1:
        raise CorruptData(f"{source}: a pin_mappings CAR has exactly one root, not {len(roots)}")
    blocks = _collect_dag_cbor_blocks(data, pos, source)
    root_cid = roots[0]
    root = _decode_root(blocks, root_cid, source)
    records = _gather_records(blocks, root_cid, root["entries"], len(data), source)
    if len(records) != root["count"]:
        raise CorruptData(f"{source}: root field count is {root['count']} but entries hold {len(records)} records")
    return PinMappingsCar(root["backend_name"], root["created_at"], root["version"], records, FORM_CARV1)


def _collect_dag_cbor_blocks(data: bytes, pos: int, source: str) -> dict[bytes, bytes]:
    blocks: dict[bytes, bytes] = {}
    for cid, block in iter_sections(data, pos, source):
        if not _is_block_link(cid):
            raise CorruptData(f"{source}: block {cid_text(cid)} is not CIDv1 dag-cbor sha2-256")
        blocks[cid] = block
    return blocks


def _decode_block(blocks: dict[bytes, bytes], cid: bytes, source: str, what: str) -> Any:
    block = blocks.get(cid)
    if block is None:
        raise CorruptData(f"{source}: {what} block {cid_text(cid)} is missing")
    try:
        return libipld.decode_dag_cbor(block)
    except (ValueError, RecursionError) as exc:
        raise CorruptData(f"{source}: {what} block {cid_text(cid)} is not DAG-CBOR ({exc})") from None


def _decode_root(blocks: dict[bytes, bytes], root_cid: bytes, source: str) -> dict[str, Any]:
    root = _decode_block(blocks, root_cid, source, "root")
    if not isinstance(root, dict) or root.get("format") != FORMAT:
        raise CorruptData(f"{source}: root block is not a {FORMAT} map")
    if root.get("version") != CAR_VERSION:
        raise CorruptData(f"{source}: unsupported {FORMAT} version {root.get('version')!r}")
    for key in ("backend_name", "created_at"):
        if not isinstance(root.get(key), str):
            raise CorruptData(f"{source}: root field {key} is missing or not a string")
    count = root.get("count")
    if type(count) is not int or count < 0:
        raise CorruptData(f"{source}: root field count is missing or not a non-negative integer")
    entries = root.get("entries")
    if not isinstance(entries, list) or not all(_is_block_link(e) for e in entries):
        raise CorruptData(f"{source}: root field entries is not a list of dag-cbor sha2-256 links")
    if libipld.encode_dag_cbor(root) != blocks[root_cid]:  # also rejects plain bytes posing as links
        raise CorruptData(f"{source}: root block is not canonical DAG-CBOR")
    return root


def _is_block_link(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 36 and value.startswith(DAG_CBOR_SHA256_PREFIX)


def _gather_records(
    blocks: dict[bytes, bytes], root_cid: bytes, entries: list[bytes], total_bytes: int, source: str
) -> list[dict[str, str]]:
    if root_cid in entries:
        raise CorruptData(f"{source}: an entry links back to the root block (cycle)")
    unlinked = len(blocks.keys() - set(entries) - {root_cid})
    if unlinked:
        raise CorruptData(f"{source}: {unlinked} block(s) are not linked from the root")
    chunks = {cid: _decode_entry(blocks, cid, source) for cid in dict.fromkeys(entries)}
    total = sum(len(chunks[cid]) for cid in entries)
    if total > total_bytes:  # only repeated links can do this: refuse the amplification
        raise CorruptData(f"{source}: entries repeat blocks to claim {total} records")
    records: list[dict[str, str]] = []
    for cid in entries:
        records.extend(chunks[cid])
    return records


def _decode_entry(blocks: dict[bytes, bytes], cid: bytes, source: str) -> list[dict[str, str]]:
    chunk = _decode_block(blocks, cid, source, "entry")
    if not isinstance(chunk, list):
        raise CorruptData(f"{source}: entry block {cid_text(cid)} is not a list of records")
    rows = [r if type(r) is dict and r.keys() == _COLUMN_SET else _strict_row(r, cid, source) for r in chunk]
    types: set[type] = set()
    for row in rows:
        types.update(map(type, row.values()))
    if types - {str}:
        raise CorruptData(f"{source}: entry block {cid_text(cid)} holds a record field that is not a string")
    return rows


def _strict_row(record: object, cid: bytes, source: str) -> dict[str, str]:
    """A record with extra keys reduced to the six columns; one missing any is corrupt."""
    if not isinstance(record, dict):
        raise CorruptData(f"{source}: entry block {cid_text(cid)} holds a record that is not a map")
    missing = [c for c in _COLUMNS if c not in record]
    if missing:
        raise CorruptData(f"{source}: entry block {cid_text(cid)} holds a record without {missing[0]}")
    return {column: record[column] for column in _COLUMNS}


# --------------------------------------------------------------------------- legacy JSON form


def _decode_legacy_json(data: bytes, source: str) -> PinMappingsCar:
    try:
        doc = json.loads(bytes(data).decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptData(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CorruptData(f"{source}: JSON is not a {FORMAT} document")
    mappings = doc.get("pin_mappings")
    if not isinstance(mappings, list):
        raise CorruptData(f"{source}: pin_mappings is missing or not a list")
    records = [_legacy_record(r, i, source) for i, r in enumerate(mappings)]
    names = {r["backend_name"] for r in records}
    default_name = names.pop() if len(names) == 1 else ""
    created_at = doc.get("created_at")
    if not isinstance(created_at, str):
        created_at = normalize_timestamp(created_at) or ""
    return PinMappingsCar(
        backend_name=_text_or(doc.get("backend_name"), default_name),
        created_at=created_at,
        version=_text_or(doc.get("version"), LEGACY_VERSION),
        records=records,
        form=FORM_LEGACY,
    )


def _text_or(value: object, default: str) -> str:
    return value if isinstance(value, str) else default


def _legacy_record(record: object, index: int, source: str) -> dict[str, str]:
    """A legacy record as six strings. Old writers went through pandas, so ``created_at`` may be
    epoch milliseconds and ``metadata`` an object; those are converted, anything else is corrupt."""
    if not isinstance(record, dict):
        raise CorruptData(f"{source}: pin_mappings[{index}] is not an object")
    row: dict[str, str] = {}
    for column in _COLUMNS:
        if column not in record:
            raise CorruptData(f"{source}: pin_mappings[{index}] has no {column}")
        value = record[column]
        if column == "created_at" and not isinstance(value, str):
            value = normalize_timestamp(value)
        elif column == "metadata" and (value is None or isinstance(value, dict)):
            value = dump_metadata(value)
        if not isinstance(value, str):
            raise CorruptData(f"{source}: pin_mappings[{index}].{column} is not a string")
        row[column] = value
    return row


def to_legacy_json(car: PinMappingsCar) -> dict[str, Any]:
    """The decoded file in the legacy JSON form (what ``pin_mappings.car.json`` and ``car show`` print)."""
    return {
        "format": FORMAT,
        "version": LEGACY_VERSION,
        "backend_name": car.backend_name,
        "created_at": car.created_at,
        "count": len(car.records),
        "pin_mappings": car.records,
    }
