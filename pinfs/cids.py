"""CID validation with a real CID library (libipld), never by regular expression.

A CID is kept exactly as the user wrote it (CIDv0 ``Qm…`` or CIDv1 in any multibase); these helpers
only check it decodes to a well-formed CID with a sound multihash.
"""

from __future__ import annotations

import libipld

from pinfs.errors import InvalidInput

# A CID string longer than this is not one we accept (the longest real ones are ~100 characters);
# bounding it keeps hostile input from costing memory or time in the decoder.
MAX_CID_LENGTH = 256

_SHA2_256 = 0x12
_IDENTITY = 0x00


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
