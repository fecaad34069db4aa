"""CARv1 codec: the ``pin_mappings.car`` file and the content CARs that hold a pin's own data.

What it is for:

* ``pin_mappings.car`` (CONTRACT §1): encode records into a real CARv1 file whose blocks are all
  DAG-CBOR under CIDv1 dag-cbor sha2-256 CIDs (a root map linking to entry blocks, each a list of
  records), and decode it again -- or its legacy JSON form (``"version": "1.0"``) -- into
  ``PinMappingsCar``.
* Generic CAR helpers (``encode_car``, ``iter_car_blocks``, ``verify_content_car``,
  ``make_raw_block``) for content CARs, used by the sync operation, the demo and tests.

What it must not do: trust its input. Every varint is bounded, every section length is checked
against the bytes that remain and ``MAX_SECTION_BYTES``, every block's multihash is recomputed, and
anything wrong raises ``CorruptData("<source>: <what is wrong>")``. It does no I/O beyond the two
``read_``/``write_`` helpers (atomic writes via ``pinfs.fsutil``), knows nothing about parquet,
backends or locks, and does not validate record *values* (CID syntax, statuses): that is
``schema.record_problems``' job.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libipld

from pinfs.errors import CorruptData
from pinfs.fsutil import atomic_writer, read_regular_file
from pinfs.rootfs import as_path
from pinfs.schema import REQUIRED_COLUMNS, dump_metadata, normalize_timestamp

FORMAT = "pin_mappings_car"
CAR_VERSION = "2.0"
LEGACY_VERSION = "1.0"
FORM_CARV1 = "carv1"
FORM_LEGACY = "legacy-json"
DEFAULT_CHUNK_SIZE = 1000

MAX_VARINT_BYTES = 9  # the unsigned-varint spec caps varints at 9 bytes (63 bits)
MAX_SECTION_BYTES = 64 * 1024 * 1024
# Entry blocks hold at most this many bytes, the block limit IPFS nodes use (issue #15, item 3: 1000
# records with 1 MB of metadata each made a 73 MB block that the reader refused). A run of up to
# DEFAULT_CHUNK_SIZE records whose encodings exceed MAX_ENTRY_RECORD_BYTES is cut into several blocks; a
# record bigger than that alone is a block of its own, and one too big for any block (more than
# MAX_SECTION_BYTES) is refused by the writer, so it never writes a CAR its reader rejects.
MAX_BLOCK_BYTES = 1 << 20
MAX_ENTRY_RECORD_BYTES = MAX_BLOCK_BYTES - 3  # room for the list's head (3 bytes for up to 65535 items)
MAX_HEADER_BYTES = 1024 * 1024

CODEC_RAW = 0x55
CODEC_DAG_PB = 0x70
CODEC_DAG_CBOR = 0x71
HASH_IDENTITY = 0x00
HASH_SHA2_256 = 0x12
_SHA2_256_LEN = 32
_CIDV0_PREFIX = bytes([HASH_SHA2_256, _SHA2_256_LEN])
_DAG_CBOR_SHA256_PREFIX = bytes([0x01, CODEC_DAG_CBOR, HASH_SHA2_256, _SHA2_256_LEN])
_RAW_SHA256_PREFIX = bytes([0x01, CODEC_RAW, HASH_SHA2_256, _SHA2_256_LEN])

# Multihash functions we can recompute; a block hashed with anything else cannot be verified.
_HASHERS: dict[int, str] = {0x12: "sha256", 0x13: "sha512", 0x16: "sha3_256", 0x14: "sha3_512", 0xB220: "blake2b"}

_CARV2_PRAGMA = bytes.fromhex("0aa16776657273696f6e02")
_CARV2_HEADER_LEN = 40

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


# --------------------------------------------------------------------------- varints and CIDs


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int, source: str, what: str) -> tuple[int, int]:
    """Decode a minimal unsigned varint at ``pos``; return ``(value, next_pos)``."""
    value = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise CorruptData(f"{source}: truncated varint ({what}) at offset {pos}")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if byte == 0 and i > 0:
                raise CorruptData(f"{source}: non-minimal varint ({what}) at offset {pos}")
            return value, pos + i + 1
    raise CorruptData(f"{source}: varint ({what}) longer than {MAX_VARINT_BYTES} bytes at offset {pos}")


def _cid_length(data: bytes, pos: int, end: int, source: str) -> int:
    """Length in bytes of the binary CID starting at ``pos`` (which must end before ``end``)."""
    if data[pos : pos + 2] == _CIDV0_PREFIX:
        length = 2 + _SHA2_256_LEN
    else:
        version, cur = _read_varint(data, pos, source, "CID version")
        if version != 1:
            raise CorruptData(f"{source}: unsupported CID version {version} at offset {pos}")
        _, cur = _read_varint(data, cur, source, "CID codec")
        _, cur = _read_varint(data, cur, source, "multihash code")
        size, cur = _read_varint(data, cur, source, "multihash length")
        length = cur - pos + size
    if pos + length > end:
        raise CorruptData(f"{source}: CID at offset {pos} runs past the end of its section")
    return length


def _split_cid(cid: bytes, source: str) -> tuple[int, int, bytes]:
    """``(codec, hash code, digest)`` of a binary CID; CIDv0 is dag-pb sha2-256, so a CIDv0 and the
    CIDv1 dag-pb CID with the same multihash give the same triple."""
    if cid[:2] == _CIDV0_PREFIX and len(cid) == 2 + _SHA2_256_LEN:
        return CODEC_DAG_PB, HASH_SHA2_256, cid[2:]
    _, pos = _read_varint(cid, 0, source, "CID version")
    codec, pos = _read_varint(cid, pos, source, "CID codec")
    code, pos = _read_varint(cid, pos, source, "multihash code")
    size, pos = _read_varint(cid, pos, source, "multihash length")
    digest = cid[pos:]
    if len(digest) != size:
        raise CorruptData(f"{source}: CID {_cid_text(cid)} has a multihash of the wrong length")
    return codec, code, digest


def _cid_text(cid: bytes) -> str:
    try:
        return libipld.encode_cid(cid)
    except ValueError:
        return "0x" + cid[:48].hex()


def cid_to_bytes(text: str) -> bytes:
    """The binary form of a CID string (CIDv0 ``Qm…`` or CIDv1 in any multibase).

    Raises ValueError if ``text`` is not a CID.
    """
    decoded = libipld.decode_cid(text)
    multihash = decoded["hash"]
    body = _varint(multihash["code"]) + _varint(len(multihash["digest"])) + multihash["digest"]
    if decoded["version"] == 0:
        return body
    return _varint(1) + _varint(decoded["codec"]) + body


def _verify_block(cid: bytes, block: bytes, source: str) -> None:
    _, code, digest = _split_cid(cid, source)
    if code == HASH_IDENTITY:
        actual = bytes(block)
    elif code in _HASHERS:
        hasher = hashlib.new(_HASHERS[code], digest_size=32) if code == 0xB220 else hashlib.new(_HASHERS[code])
        hasher.update(block)
        actual = hasher.digest()
    else:
        raise CorruptData(f"{source}: block {_cid_text(cid)} uses unsupported multihash 0x{code:x}")
    if actual != digest:
        raise CorruptData(f"{source}: block {_cid_text(cid)} does not match its hash")


# --------------------------------------------------------------------------- generic CARv1


def _encode_header(roots: Sequence[bytes]) -> bytes:
    """DAG-CBOR ``{"roots": [links], "version": 1}``, written by hand so links are always tag 42."""
    if len(roots) > 0xFFFF:
        raise ValueError("too many CAR roots")
    out = bytearray(b"\xa2\x65roots")
    out += bytes([0x80 | len(roots)]) if len(roots) < 24 else _cbor_head(4, len(roots))
    for cid in roots:
        out += b"\xd8\x2a" + _cbor_head(2, len(cid) + 1) + b"\x00" + cid
    out += b"\x67version\x01"
    return bytes(out)


def _cbor_head(major: int, length: int) -> bytes:
    if length < 24:
        return bytes([(major << 5) | length])
    if length < 0x100:
        return bytes([(major << 5) | 24, length])
    return bytes([(major << 5) | 25]) + length.to_bytes(2, "big")


def _car_parts(roots: Sequence[bytes], blocks: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The pieces of a CARv1 file, in order; kept apart so large files are copied only once."""
    header = _encode_header(roots)
    parts = [_varint(len(header)), header]
    seen: set[bytes] = set()
    for cid, block in blocks:
        if cid not in seen:  # a block is stored once, however often it is linked
            seen.add(cid)
            parts += (_varint(len(cid) + len(block)), cid, block)
    return parts


def encode_car(roots: Sequence[str], blocks: Iterable[tuple[str, bytes]]) -> bytes:
    """A CARv1 file with these roots and blocks, in the order given. CIDs are strings; blocks are
    written as given (their hashes are not checked here). Raises ValueError for a bad CID."""
    return b"".join(_car_parts([cid_to_bytes(r) for r in roots], ((cid_to_bytes(c), b) for c, b in blocks)))


def _unwrap_carv2(data: bytes, source: str) -> bytes:
    """The CARv1 payload of a CARv2 file; CARv1 data is returned as is."""
    if not data.startswith(_CARV2_PRAGMA):
        return data
    start = len(_CARV2_PRAGMA)
    header = data[start : start + _CARV2_HEADER_LEN]
    if len(header) != _CARV2_HEADER_LEN:
        raise CorruptData(f"{source}: truncated CARv2 header")
    offset = int.from_bytes(header[16:24], "little")
    size = int.from_bytes(header[24:32], "little")
    if offset < start + _CARV2_HEADER_LEN or offset + size > len(data):
        raise CorruptData(f"{source}: CARv2 data payload lies outside the file")
    return data[offset : offset + size]


def _read_header(data: bytes, source: str) -> tuple[list[bytes], int]:
    """Parse the CARv1 header; return ``(root CIDs as bytes, offset of the first section)``."""
    length, pos = _read_varint(data, 0, source, "header length")
    if length == 0 or length > MAX_HEADER_BYTES or pos + length > len(data):
        raise CorruptData(f"{source}: CAR header length {length} is impossible for {len(data)} bytes")
    try:
        header = libipld.decode_dag_cbor(bytes(data[pos : pos + length]))
    except (ValueError, RecursionError) as exc:
        raise CorruptData(f"{source}: CAR header is not DAG-CBOR ({exc})") from None
    if not isinstance(header, dict) or header.get("version") != 1:
        raise CorruptData(f"{source}: not a CARv1 header (version must be 1)")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, bytes) for r in roots):
        raise CorruptData(f"{source}: CAR header roots are not a list of CID links")
    return roots, pos + length


def _iter_sections(data: bytes, pos: int, source: str) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(cid bytes, block bytes)`` for each section from ``pos``, each hash verified."""
    view = memoryview(data)
    end_of_data = len(data)
    while pos < end_of_data:
        length, start = _read_varint(data, pos, source, "section length")
        if length == 0 or length > MAX_SECTION_BYTES or start + length > end_of_data:
            raise CorruptData(
                f"{source}: section at offset {pos} declares {length} bytes "
                f"({end_of_data - start} remain, limit {MAX_SECTION_BYTES})"
            )
        end = start + length
        cid_len = _cid_length(data, start, end, source)
        cid = bytes(view[start : start + cid_len])
        block = bytes(view[start + cid_len : end])
        _verify_block(cid, block, source)
        yield cid, block
        pos = end


def iter_car_blocks(data: bytes, source: str = "<bytes>") -> tuple[list[str], Iterator[tuple[str, bytes]]]:
    """Parse a CAR (v1, or the v1 payload of a v2): its roots now, its blocks lazily.

    Each block's multihash is recomputed as it is yielded; any fault -- in the header now, in a
    section when the iterator reaches it -- raises CorruptData.
    """
    payload = _unwrap_carv2(data, source)
    roots, pos = _read_header(payload, source)
    root_texts = [_root_text(r, source) for r in roots]
    blocks = ((libipld.encode_cid(cid), block) for cid, block in _iter_sections(payload, pos, source))
    return root_texts, blocks


def _root_text(cid: bytes, source: str) -> str:
    try:
        return libipld.encode_cid(cid)
    except ValueError as exc:
        raise CorruptData(f"{source}: CAR root is not a CID ({exc})") from None


def verify_content_car(data: bytes, expected_root: str, source: str) -> int:
    """Check a pin's content CAR: ``expected_root`` among its roots and present as a block, every
    block's hash right. A CIDv0 and the CIDv1 dag-pb CID with the same multihash count as equal.
    Returns the number of blocks. Does not check that the DAG below the root is complete."""
    try:
        wanted = _split_cid(cid_to_bytes(expected_root), source)
    except ValueError as exc:
        raise CorruptData(f"{source}: expected root {expected_root!r} is not a CID ({exc})") from None
    payload = _unwrap_carv2(data, source)
    roots, pos = _read_header(payload, source)
    if wanted not in {_split_cid(r, source) for r in roots}:
        shown = ", ".join(_cid_text(r) for r in roots) or "none"
        raise CorruptData(f"{source}: CAR roots ({shown}) do not include {expected_root}")
    count, root_found = 0, False
    for cid, _block in _iter_sections(payload, pos, source):
        count += 1
        root_found = root_found or _split_cid(cid, source) == wanted
    if not root_found:
        raise CorruptData(f"{source}: root block {expected_root} is missing from the CAR")
    return count


def make_raw_block(data: bytes) -> tuple[str, bytes]:
    """A raw (0x55) sha2-256 block: ``("bafkrei…", data)``."""
    return libipld.encode_cid(_RAW_SHA256_PREFIX + hashlib.sha256(data).digest()), bytes(data)


# --------------------------------------------------------------------------- pin_mappings.car encode


def _dag_cbor_block(value: Any) -> tuple[bytes, bytes]:
    block = libipld.encode_dag_cbor(value)
    return _DAG_CBOR_SHA256_PREFIX + hashlib.sha256(block).digest(), block


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


def _entry_blocks(records: Iterable[Mapping[str, str]], chunk_size: int) -> Iterator[tuple[bytes, bytes, int]]:
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
    if len(block) - len(_cbor_uint_head(4, len(rows))) <= MAX_ENTRY_RECORD_BYTES:
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
    return b"".join(_pin_mappings_parts(records, backend_name, created_at, chunk_size))


def _pin_mappings_parts(
    records: Iterable[Mapping[str, str]], backend_name: str, created_at: str, chunk_size: int
) -> list[bytes]:
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    entries = list(_entry_blocks(records, chunk_size))
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
    return _car_parts([root_cid], blocks)


def write_pin_mappings_car(path: Path, records: Iterable[Mapping[str, str]], backend_name: str, created_at: str) -> int:
    """Encode and atomically replace ``path``; return the number of bytes written."""
    parts = _pin_mappings_parts(records, backend_name, created_at, DEFAULT_CHUNK_SIZE)
    with atomic_writer(as_path(path)) as temp, open(temp, "xb") as handle:
        handle.writelines(parts)
    return sum(map(len, parts))


# --------------------------------------------------------------------------- pin_mappings.car from columns
#
# The same bytes as ``write_pin_mappings_car`` over the columns' records, but encoded from Arrow
# columns without making a Python object per record: each record's DAG-CBOR map is assembled by one
# vectorized string join (its keys in DAG-CBOR's canonical order: shorter first, then bytewise), and
# an entry block is the list head followed by a contiguous run of those encodings. The file is
# streamed: the root block's size does not depend on the entries' hashes, so its place is reserved,
# the entries are written as they are hashed, and the header and root go in last.

_KEY_ORDER: tuple[str, ...] = tuple(sorted(_COLUMNS, key=lambda key: (len(key.encode()), key.encode())))
_GROUP_CHUNKS = 64  # entry blocks encoded per vectorized pass
_MAX_FAST_TEXT = 0xFFFF  # longer values (rare) go through the record-by-record encoder
_TEXT_HEADS: list[Any] = []  # lazily: pa.array of the CBOR text-string head of every length up to _MAX_FAST_TEXT


def _cbor_uint_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([(major << 5) | value])
    for marker, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([(major << 5) | marker]) + value.to_bytes(size, "big")
    raise ValueError("CBOR length too large")


def _text_heads() -> Any:
    import pyarrow as pa

    if not _TEXT_HEADS:
        _TEXT_HEADS.append(pa.array([_cbor_uint_head(3, n) for n in range(_MAX_FAST_TEXT + 1)], pa.binary()))
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
        key = _cbor_uint_head(3, len(name.encode())) + name.encode()
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
        arrays = {name: columns[name].slice(group_start, length) for name in _COLUMNS}
        arrays = {name: (a.combine_chunks() if hasattr(a, "combine_chunks") else a) for name, a in arrays.items()}
        joined = _encoded_rows(arrays)
        if joined is None:  # the general encoder, which also names a bad record
            records = _records_from_arrays(arrays, length)
            for cid, block, count in _entry_blocks(records, chunk_size):
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
                head = _cbor_uint_head(4, stop - start)
                body = data[int(offsets[start]) : int(offsets[stop])]
                hasher = hashlib.sha256(head)
                hasher.update(body)
                yield _DAG_CBOR_SHA256_PREFIX + hasher.digest(), [head, body], stop - start
                start = stop


def _records_from_arrays(arrays: Mapping[str, Any], length: int) -> list[dict[str, Any]]:
    values = [arrays[name].to_pylist() for name in _COLUMNS]
    return [dict(zip(_COLUMNS, row, strict=True)) for row in zip(*values, strict=True)] if length else []


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
            parts = _pin_mappings_parts([], backend_name, created_at, DEFAULT_CHUNK_SIZE)
            handle.writelines(parts)
            if before_replace is not None:
                before_replace(temp)
        return sum(map(len, parts))
    chunks = -(-num_rows // DEFAULT_CHUNK_SIZE)

    def root_block(entries: list[bytes]) -> bytes:
        root = {"format": FORMAT, "version": CAR_VERSION, "backend_name": backend_name, "created_at": created_at}
        return libipld.encode_dag_cbor({**root, "count": num_rows, "entries": entries})

    placeholder = [_DAG_CBOR_SHA256_PREFIX + bytes(32)] * chunks
    prefix_size = len(b"".join(_car_parts([placeholder[0]], [(placeholder[0], root_block(placeholder))])))
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
            section = [_varint(len(cid) + size), cid, *pieces]
            handle.writelines(section)
            written += len(section[0]) + len(cid) + size
        root = root_block(entries)
        root_cid = _DAG_CBOR_SHA256_PREFIX + hashlib.sha256(root).digest()
        prefix = b"".join(_car_parts([root_cid], [(root_cid, root)]))
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
    roots, pos = _read_header(data, source)
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
    for cid, block in _iter_sections(data, pos, source):
        if not _is_block_link(cid):
            raise CorruptData(f"{source}: block {_cid_text(cid)} is not CIDv1 dag-cbor sha2-256")
        blocks[cid] = block
    return blocks


def _decode_block(blocks: dict[bytes, bytes], cid: bytes, source: str, what: str) -> Any:
    block = blocks.get(cid)
    if block is None:
        raise CorruptData(f"{source}: {what} block {_cid_text(cid)} is missing")
    try:
        return libipld.decode_dag_cbor(block)
    except (ValueError, RecursionError) as exc:
        raise CorruptData(f"{source}: {what} block {_cid_text(cid)} is not DAG-CBOR ({exc})") from None


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
    return isinstance(value, bytes) and len(value) == 36 and value.startswith(_DAG_CBOR_SHA256_PREFIX)


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
        raise CorruptData(f"{source}: entry block {_cid_text(cid)} is not a list of records")
    rows = [r if type(r) is dict and r.keys() == _COLUMN_SET else _strict_row(r, cid, source) for r in chunk]
    types: set[type] = set()
    for row in rows:
        types.update(map(type, row.values()))
    if types - {str}:
        raise CorruptData(f"{source}: entry block {_cid_text(cid)} holds a record field that is not a string")
    return rows


def _strict_row(record: object, cid: bytes, source: str) -> dict[str, str]:
    """A record with extra keys reduced to the six columns; one missing any is corrupt."""
    if not isinstance(record, dict):
        raise CorruptData(f"{source}: entry block {_cid_text(cid)} holds a record that is not a map")
    missing = [c for c in _COLUMNS if c not in record]
    if missing:
        raise CorruptData(f"{source}: entry block {_cid_text(cid)} holds a record without {missing[0]}")
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
