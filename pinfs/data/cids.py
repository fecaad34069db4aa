"""CID validation with a real CID library (libipld), never by regular expression.

A CID is kept exactly as the user wrote it (CIDv0 ``Qm…`` or CIDv1 in any multibase); these helpers
check it decodes to a well-formed CID with a sound multihash, and say which texts are the same CID
(its identity, issue #16: see the section below).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import libipld

from pinfs.errors import InvalidInput

if TYPE_CHECKING:
    import pyarrow as pa

# A CID string longer than this is not one we accept (the longest real ones are ~100 characters);
# bounding it keeps hostile input from costing memory or time in the decoder.
MAX_CID_LENGTH = 256

_SHA2_256 = 0x12
_IDENTITY = 0x00


# Within ``remembering()`` (one batch of pins, on one thread), each CID text is decoded once: a batch
# of 10,000 pins asks for each CID's spellings twice (its identity, then its lookup), and the decoder
# is most of that. Not a process-wide cache: the mount looks up millions of CIDs, once each.
_BATCH = threading.local()


@contextlib.contextmanager
def remembering() -> Iterator[None]:
    """Remember each CID's standard spellings on this thread until the block ends."""
    outer = getattr(_BATCH, "forms", None)
    if outer is None:
        _BATCH.forms = {}
    try:
        yield
    finally:
        if outer is None:
            _BATCH.forms = None


def cid_problem(text: object) -> str | None:
    """Return why ``text`` is not a valid CID, or None if it is one."""
    if not isinstance(text, str):
        return f"expected a CID string, got {type(text).__name__}"
    if not text:
        return "empty CID"
    if len(text) > MAX_CID_LENGTH:
        return f"CID longer than {MAX_CID_LENGTH} characters"
    # Fast path: every multibase but base64 is ASCII letters and digits (C-speed checks).
    if not (text.isascii() and text.isalnum()) and (
        text != text.strip() or any(ch.isspace() or ord(ch) < 32 for ch in text)
    ):
        return "CID contains whitespace or control characters"
    try:
        decoded = libipld.decode_cid(text)
    except Exception as exc:  # libipld raises ValueError and others for bad input
        return f"not a CID ({exc})".replace("\n", " ")
    multihash = decoded["hash"]
    if multihash["code"] == _SHA2_256 and len(multihash["digest"]) != 32:
        return "sha2-256 multihash with a digest that is not 32 bytes"
    if multihash["size"] != len(multihash["digest"]):
        return "multihash length does not match its digest"
    return None


def is_valid_cid(text: object) -> bool:
    return cid_problem(text) is None


def validate_cid(text: object) -> str:
    """Return ``text`` if it is a valid CID; raise InvalidInput naming the problem otherwise."""
    problem = cid_problem(text)
    if problem is not None:
        shown = repr(text)[:80]
        raise InvalidInput(f"invalid CID {shown}: {problem}")
    assert isinstance(text, str)
    return text


# -- identity (issue #16) --
#
# A CID's identity is its binary form without the version: the codec and the multihash. ``Qm…`` (CIDv0)
# and ``bafybei…`` (the same CID as CIDv1, base32) are one CID, and so are every other multibase
# spelling of a CIDv1 and every mix of cases of a case-insensitive base (base32, base36). Stores keep
# the text first written; these helpers say which texts are the same CID.
#
# Two spellings are *standard*: the CIDv0 text (for a dag-pb sha2-256 CID, the only one CIDv0 can
# hold) and the lower-case base32 CIDv1 text. Any other spelling (``B…``, ``z…``, ``k…``, a mixed
# case) is an *alias*: ``cid_key`` maps it to the key (the base32 CIDv1 text), and a store that holds
# one records it (``pinfs.data.delta``), so that a lookup by any spelling costs the lookups of the standard
# ones plus, at most, one of the alias.

_V0_HEADER = b"\x01\x70\x12\x20"  # CIDv1, dag-pb, sha2-256, 32 bytes: what a CIDv0 holds
_V0_LENGTH = 46
# How the base32 CIDv1 of a CID with a CIDv0 begins: _V0_HEADER's first 30 bits (the last two are the
# digest length's, 32 for the only valid sha2-256 digest).
_V0_BASE32_PREFIX = "bafybei"


def _binary_v1(text: str) -> bytes:
    """The CIDv1 binary form of a valid CID text (a CIDv0 becomes dag-pb CIDv1)."""
    if text.startswith("Qm") and len(text) == _V0_LENGTH:
        return b"\x01\x70" + libipld.decode_multibase("z" + text)[1]
    return libipld.decode_multibase(text)[1]


def _v0_text(binary: bytes) -> str | None:
    if len(binary) == len(_V0_HEADER) + 32 and binary.startswith(_V0_HEADER):
        return libipld.encode_multibase("z", binary[2:])[1:]
    return None


def cid_key(text: str) -> str:
    """The identity of a CID as text: its CIDv1 in lower-case base32. Equal keys, same CID.
    Raises InvalidInput for a text that is not a CID."""
    return standard_forms(text)[-1]


def standard_forms(text: str) -> tuple[str, ...]:
    """The standard spellings of the CID ``text`` spells: its CIDv0 (when it has one) and its base32
    CIDv1. Raises InvalidInput for a text that is not a CID."""
    memo: dict[str, tuple[str, ...]] | None = getattr(_BATCH, "forms", None)
    if memo is None:
        return _standard_forms(text)
    found = memo.get(text)
    if found is None:
        found = memo[text] = _standard_forms(text)
    return found


def _standard_forms(text: str) -> tuple[str, ...]:
    validate_cid(text)
    if not has_other_standard_form(text):
        return (text,)
    binary = _binary_v1(text)
    key = libipld.encode_multibase("b", binary)
    v0 = _v0_text(binary)
    return (v0, key) if v0 is not None else (key,)


def has_other_standard_form(text: str) -> bool:
    """Whether a valid CID text may have a standard spelling other than itself: False for the base32
    CIDv1 (``is_standard``) of a CID that has no CIDv0, which is its own key. A string test."""
    return not (text.startswith("b") and text.islower() and not text.startswith(_V0_BASE32_PREFIX))


def is_own_key(text: str) -> bool:
    """Whether ``text``, if it is a CID, is its own ``cid_key``: a lower-case ``b…`` text is the
    base32 CIDv1, whose spelling of given bytes is unique. A string test."""
    return text.startswith("b") and text.islower()


def is_standard(text: str) -> bool:
    """Whether a valid CID text is one of its standard spellings (checked without decoding: a
    ``Qm…`` of 46 characters is a CIDv0, and a lower-case ``b…`` text is the base32 CIDv1, since
    a base32 spelling of given bytes is unique)."""
    return (text.startswith("Qm") and len(text) == _V0_LENGTH) or is_own_key(text)


def candidate_forms(text: str, aliases: Mapping[str, str] | None = None) -> list[str]:
    """The texts under which a store may hold the CID ``text`` spells, most likely first: ``text``
    itself when standard, the stored alias of its key (``aliases``: key -> text), then its other
    standard spellings. Raises InvalidInput for a text that is not a CID."""
    forms = standard_forms(text)
    found = [text] if text in forms else []
    if aliases:
        alias = aliases.get(forms[-1])
        if alias is not None:
            found.append(alias)
    found.extend(form for form in forms if form not in found)
    return found


def nonstandard_mask(cids: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Which CIDs of a column are aliases (not a standard spelling), vectorized (see ``is_standard``).
    Cheap in the common case (every data file written pays it): whether a ``b…`` text has an upper-case
    letter is asked of the whole column's bytes at once, and row by row only when one has."""
    import pyarrow.compute as pc

    v0 = pc.and_(pc.starts_with(cids, "Qm"), pc.equal(pc.binary_length(cids), _V0_LENGTH))
    base32 = pc.starts_with(cids, "b")
    mask = pc.invert(pc.or_(v0, base32))
    if _has_upper_case(cids.filter(base32)):
        mask = pc.or_(mask, pc.and_(base32, pc.not_equal(cids, pc.utf8_lower(cids))))
    return mask


def _has_upper_case(texts: pa.Array | pa.ChunkedArray) -> bool:
    """Whether any byte of the texts is an ASCII upper-case letter (a slice may count a neighbour's
    bytes too: then the caller only takes the slower, exact way)."""
    import numpy as np
    import pyarrow as pa

    chunks = texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        data = chunk.buffers()[2]
        if data is not None:
            values = np.frombuffer(data, dtype=np.uint8)
            if bool(((values - np.uint8(ord("A"))) < 26).any()):  # uint8 wraps: one comparison for A..Z
                return True
    return False


def aliases_of(cids: pa.Array | pa.ChunkedArray) -> dict[str, str]:
    """``{key: text}`` for the CIDs of a column that are aliases (usually none: one vectorized pass)."""
    import pyarrow.compute as pc

    if len(cids) == 0:
        return {}
    mask = nonstandard_mask(cids)
    if not pc.any(mask).as_py():
        return {}
    return {cid_key(text): text for text in cids.filter(mask).to_pylist()}


def identity_columns(*columns: pa.Array | pa.ChunkedArray) -> list[pa.Array | pa.ChunkedArray]:
    """Each column's CIDs as texts that are equal exactly when the CIDs are the same CID, in one
    spelling chosen for this call. Cheap when it can be: standard spellings differ for one CID only
    between a ``Qm…`` and a ``bafybei…``, so the columns come back unchanged when no such pair can
    exist, and otherwise only the rarer of the two (and every alias) is converted."""
    import pyarrow.compute as pc

    v0_rows = sum(pc.sum(pc.starts_with(column, "Qm")).as_py() or 0 for column in columns)
    v1_rows = sum(pc.sum(pc.starts_with(column, "bafybei")).as_py() or 0 for column in columns)
    aliases = sum(pc.sum(nonstandard_mask(column)).as_py() or 0 for column in columns)
    if aliases == 0 and (v0_rows == 0 or v1_rows == 0):
        return list(columns)
    to_v0 = v1_rows <= v0_rows  # convert the rarer spelling
    return [_identity_column(column, to_v0) for column in columns]


def _identity_column(column: pa.Array | pa.ChunkedArray, to_v0: bool) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    convert = pc.or_(nonstandard_mask(column), pc.starts_with(column, "bafybei" if to_v0 else "Qm"))
    if not pc.any(convert).as_py():
        return column
    positions = pc.indices_nonzero(convert)
    converted = [_spelling(text, to_v0) for text in column.filter(convert).to_pylist()]
    values = column.to_pylist()
    for position, text in zip(positions.to_pylist(), converted, strict=True):
        values[position] = text
    return pa.array(values, pa.string())


def _spelling(text: str, to_v0: bool) -> str:
    binary = _binary_v1(text)
    v0 = _v0_text(binary) if to_v0 else None
    return v0 if v0 is not None else libipld.encode_multibase("b", binary)


def spelling_duplicates(cids: pa.Array | pa.ChunkedArray) -> list[tuple[str, str]]:
    """Pairs of different texts of a column that are one CID (a store written by another tool may
    hold them; pinfs never writes them)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    (keys,) = identity_columns(cids)
    if keys is cids or len(cids) < 2:
        return []
    texts = pa.chunked_array([cids]).combine_chunks() if isinstance(cids, pa.Array) else cids.combine_chunks()
    order = pc.sort_indices(keys)
    ordered = pc.take(keys, order)
    repeated = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))
    pairs = []
    rows = order.to_pylist()
    for position in pc.indices_nonzero(repeated).to_pylist():
        pairs.append((texts[rows[position]].as_py(), texts[rows[position + 1]].as_py()))
    return pairs
