"""Generic CARv1 codec: varints, CIDs, CAR sections and blocks, and the check of a content CAR (the CAR
holding a pin's own data: its root is the pin's CID, every block's hash is right).

Used by ``pinfs.data.car`` (the ``pin_mappings.car`` format), the sync and verify operations, the IPFS
driver, the demo and tests.

What it must not do: trust its input. Every varint is bounded, every section length is checked
against the bytes that remain and ``MAX_SECTION_BYTES``, every block's multihash is recomputed, and
anything wrong raises ``CorruptData("<source>: <what is wrong>")``. It does no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence

import libipld

from pinfs.errors import CorruptData

MAX_VARINT_BYTES = 9  # the unsigned-varint spec caps varints at 9 bytes (63 bits)
MAX_SECTION_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024

CODEC_RAW = 0x55
CODEC_DAG_PB = 0x70
CODEC_DAG_CBOR = 0x71
HASH_IDENTITY = 0x00
HASH_SHA2_256 = 0x12
_SHA2_256_LEN = 32
_CIDV0_PREFIX = bytes([HASH_SHA2_256, _SHA2_256_LEN])
DAG_CBOR_SHA256_PREFIX = bytes([0x01, CODEC_DAG_CBOR, HASH_SHA2_256, _SHA2_256_LEN])
_RAW_SHA256_PREFIX = bytes([0x01, CODEC_RAW, HASH_SHA2_256, _SHA2_256_LEN])

# Multihash functions we can recompute; a block hashed with anything else cannot be verified.
_HASHERS: dict[int, str] = {0x12: "sha256", 0x13: "sha512", 0x16: "sha3_256", 0x14: "sha3_512", 0xB220: "blake2b"}

_CARV2_PRAGMA = bytes.fromhex("0aa16776657273696f6e02")
_CARV2_HEADER_LEN = 40


# --------------------------------------------------------------------------- varints and CIDs


def varint(value: int) -> bytes:
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
        raise CorruptData(f"{source}: CID {cid_text(cid)} has a multihash of the wrong length")
    return codec, code, digest


def cid_text(cid: bytes) -> str:
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
    body = varint(multihash["code"]) + varint(len(multihash["digest"])) + multihash["digest"]
    if decoded["version"] == 0:
        return body
    return varint(1) + varint(decoded["codec"]) + body


def _verify_block(cid: bytes, block: bytes, source: str) -> None:
    _, code, digest = _split_cid(cid, source)
    if code == HASH_IDENTITY:
        actual = bytes(block)
    elif code in _HASHERS:
        hasher = hashlib.new(_HASHERS[code], digest_size=32) if code == 0xB220 else hashlib.new(_HASHERS[code])
        hasher.update(block)
        actual = hasher.digest()
    else:
        raise CorruptData(f"{source}: block {cid_text(cid)} uses unsupported multihash 0x{code:x}")
    if actual != digest:
        raise CorruptData(f"{source}: block {cid_text(cid)} does not match its hash")


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


def cbor_uint_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([(major << 5) | value])
    for marker, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([(major << 5) | marker]) + value.to_bytes(size, "big")
    raise ValueError("CBOR length too large")


def car_parts(roots: Sequence[bytes], blocks: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The pieces of a CARv1 file, in order; kept apart so large files are copied only once."""
    header = _encode_header(roots)
    parts = [varint(len(header)), header]
    seen: set[bytes] = set()
    for cid, block in blocks:
        if cid not in seen:  # a block is stored once, however often it is linked
            seen.add(cid)
            parts += (varint(len(cid) + len(block)), cid, block)
    return parts


def encode_car(roots: Sequence[str], blocks: Iterable[tuple[str, bytes]]) -> bytes:
    """A CARv1 file with these roots and blocks, in the order given. CIDs are strings; blocks are
    written as given (their hashes are not checked here). Raises ValueError for a bad CID."""
    return b"".join(car_parts([cid_to_bytes(r) for r in roots], ((cid_to_bytes(c), b) for c, b in blocks)))


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


def read_header(data: bytes, source: str) -> tuple[list[bytes], int]:
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


def iter_sections(data: bytes, pos: int, source: str) -> Iterator[tuple[bytes, bytes]]:
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
    roots, pos = read_header(payload, source)
    root_texts = [_root_text(r, source) for r in roots]
    blocks = ((libipld.encode_cid(cid), block) for cid, block in iter_sections(payload, pos, source))
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
    roots, pos = read_header(payload, source)
    if wanted not in {_split_cid(r, source) for r in roots}:
        shown = ", ".join(cid_text(r) for r in roots) or "none"
        raise CorruptData(f"{source}: CAR roots ({shown}) do not include {expected_root}")
    count, root_found = 0, False
    for cid, _block in iter_sections(payload, pos, source):
        count += 1
        root_found = root_found or _split_cid(cid, source) == wanted
    if not root_found:
        raise CorruptData(f"{source}: root block {expected_root} is missing from the CAR")
    return count


def make_raw_block(data: bytes) -> tuple[str, bytes]:
    """A raw (0x55) sha2-256 block: ``("bafkrei…", data)``."""
    return libipld.encode_cid(_RAW_SHA256_PREFIX + hashlib.sha256(data).digest()), bytes(data)
