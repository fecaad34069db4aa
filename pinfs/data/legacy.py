"""Reader for legacy ``pins.json`` files (CONTRACT §1), the input that migration and the mount's
legacy view start from.

What it does: read a backend's legacy source (``pins.json``, else its newest backup), parse whichever
of the shapes seen in the wild it holds, and turn every entry into either a complete record
(``schema.make_record``) or a ``Rejected`` saying what is wrong and where. Nothing is dropped
silently. The per-entry rules are in ``pinfs.data.legacy_entries``, the JSON value helpers in
``pinfs.data.legacy_json``; the files around pins.json (its backups, ``pins.rejected.json``) in
``pinfs.data.legacy_files``.

Accepted shapes (``LegacyPins.shape``):

- ``empty``: 0 bytes or only whitespace, ``[]`` or ``{}``;
- ``list-of-strings``: ``["<cid>", …]``;
- ``list-of-objects``: ``[{"cid"|"hash"|"Cid"|"CID"|"Hash"|"/": "<cid>" or {"/": "<cid>"}, …}, …]``;
- ``mixed``: a list holding strings, objects and/or other values (the others are rejected);
- ``pins-object``: ``{"pins": <any list shape or a cid-map>, …}`` (other top-level keys ignored;
  ``{"Keys": {…}}`` from ``ipfs pin ls --enc=json`` is read the same way);
- ``cid-map``: ``{"<cid>": <object | status string | null>, …}``.

Locations are ``"<file name>: entry N"`` (N counts from 0, as ``jq '.[N]'`` does) or
``"<file name>: key '<key>'"``, prefixed with ``pins``/``Keys`` inside a pins-object.

What it must not do: modify, move or delete any pins.json or backup (CONTRACT §1: migration backs
them up and never touches them); follow anything but the given paths; raise anything but
``CorruptData`` (the file as a whole is unusable) or ``NotFound`` (it does not exist) on hostile
input. Input is bounded: at most ``MAX_FILE_BYTES`` read, nesting at most ``MAX_DEPTH`` levels,
checked without recursion.

Choices worth knowing:

- Non-standard JSON constants (``NaN``, ``Infinity``), floats that overflow and integers too long
  for Python's int parser are kept as their literal text, so every value stays strict JSON.
- An entry without a usable timestamp gets the source file's modification time: the pin existed
  by then at the latest, and reading the same file twice gives the same records.
- An entry's own ``metadata`` (an object, or a JSON object as a string like our ``metadata``
  column) is merged with its unknown keys when no key collides; otherwise it is kept as is under
  ``metadata``. A ``backend_name`` equal to the backend's own is dropped as redundant.
- Text that cannot be written as UTF-8 (lone surrogates from ``\\udXXX`` escapes) rejects the entry.
- A CID accepted twice is a duplicate: the first accepted entry wins (checked once, over the CID
  column, at the end). An entry that is both a duplicate and unbuildable is rejected as a duplicate.
- Speed (issue #14): the document is split by msgspec and read a batch of entries at a time; plain
  entries go straight into Arrow columns (``pinfs.data.legacy_columns``), every other one through the
  per-entry rules here, which decide everything. A document msgspec cannot split is parsed whole.

Threading: plain synchronous functions over local files, no shared state; call them from a worker
thread under trio.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pinfs.data.legacy_columns import (
    split_document,
)
from pinfs.data.legacy_entries import EntryReader, LegacyPins
from pinfs.data.legacy_json import MAX_DEPTH, depth_exceeds, json_type, loads_json
from pinfs.data.rootfs import S3Path, S3Stat, as_path
from pinfs.errors import CorruptData, NotFound

MAX_FILE_BYTES = 512 * 1024 * 1024
_JSON_WHITESPACE = " \t\r\n"
_JSON_WHITESPACE_BYTES = (b" ", b"\t", b"\r", b"\n")


# -- public API --


def read_legacy_pins(path: Path, backend_name: str, backend_type: str) -> LegacyPins:
    """Read a legacy pins file into records and rejects (``read_legacy_bytes`` then ``parse_legacy``).

    Raises ``NotFound`` if ``path`` does not exist and ``CorruptData("<path>: <reason>")`` when the
    file as a whole is unusable: not a regular file, too big, not UTF-8, not JSON, nested deeper
    than ``MAX_DEPTH`` or a top-level value that is neither a list nor an object.
    """
    data, mtime = read_legacy_bytes(path)
    return parse_legacy(data, as_path(path), backend_name, backend_type, default_created_at=mtime_iso(mtime))


def read_legacy_bytes(path: Path) -> tuple[bytes, float]:
    """The bytes of a legacy file and its modification time, read once, bounded, never following a
    symlink or blocking on a FIFO (migration backs up exactly these bytes). Raises as ``read_legacy_pins``."""
    return _read_bytes(as_path(path))


def mtime_iso(mtime: float) -> str:
    """The ``created_at`` of entries without a usable timestamp: the file's modification time (the pin
    existed by then at the latest, and reading the same file twice gives the same records)."""
    return datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="microseconds")


def parse_legacy(
    data: bytes, source: Path, backend_name: str, backend_type: str, *, default_created_at: str
) -> LegacyPins:
    """Parse the bytes of a legacy file (read from ``source``, named in locations and errors).

    ``default_created_at`` is the ``created_at`` of entries without a usable timestamp; migration
    gives a file and the backup it is compared with the same one, so that such entries compare equal.
    Raises ``CorruptData`` as ``read_legacy_pins`` does.

    The document is split by msgspec and read a batch of entries at a time (``pinfs.data.legacy_columns``);
    one msgspec cannot split (NaN, a scalar at the top, not JSON) is parsed whole by json, as before.
    """
    if not data.isascii():  # ASCII is UTF-8; anything else is decoded once to find a bad byte
        _decode_text(source, data)
    body = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    result = LegacyPins(source=source, default_created_at=default_created_at)
    if body[:1] in (b"", *_JSON_WHITESPACE_BYTES) and not body.strip(_JSON_WHITESPACE.encode()):
        return result  # (only a file that starts with whitespace is copied by strip)
    reader = EntryReader(result, backend_name, backend_type, default_created_at)
    try:
        top = split_document(body)
    except RecursionError:
        raise CorruptData(f"{source}: JSON nested deeper than {MAX_DEPTH} levels") from None
    if top is None:
        reader.read_top(_parse_document(source, _decode_text(source, data)))
    else:
        reader.read_split(top)
    reader.finish()
    return result


# -- reading and parsing the file --


def _read_bytes(path: Path | S3Path) -> tuple[bytes, float]:
    """The file's bytes and modification time, bounded and without blocking on odd files."""
    if isinstance(path, S3Path):
        return _read_object_bytes(path)
    try:
        # O_NONBLOCK: a FIFO named pins.json must not hang us; it is refused below.
        # O_NOFOLLOW: a pins.json (or backup) that is a symlink may point outside the data root; it is
        # reported, never followed (hardening: nothing outside the root is read or copied into it).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptData(f"{path}: is a symlink; refusing to follow it") from None
        raise CorruptData(f"{path}: cannot open ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        _require_readable_size(path, info)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise CorruptData(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise CorruptData(f"{path}: more than the {MAX_FILE_BYTES} bytes accepted")
    return data, info.st_mtime


def _decode_text(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorruptData(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None


def _read_object_bytes(path: S3Path) -> tuple[bytes, float]:
    """``_read_bytes`` of an object on an S3 root (it has no links, FIFOs or odd files)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such object") from None
    _require_readable_size(path, info)
    return path.read_bytes(), info.st_mtime


def _require_readable_size(path: Path | S3Path, info: os.stat_result | S3Stat) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise CorruptData(f"{path}: not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise CorruptData(f"{path}: {info.st_size} bytes, more than the {MAX_FILE_BYTES} accepted")


def _parse_document(path: Path, text: str) -> list[Any] | dict[str, Any]:
    """The top-level list or object; CorruptData for anything else."""
    try:
        value = loads_json(text)
    except RecursionError:
        raise CorruptData(f"{path}: JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise CorruptData(f"{path}: not JSON ({exc})") from None
    if depth_exceeds(value, MAX_DEPTH):
        raise CorruptData(f"{path}: JSON nested deeper than {MAX_DEPTH} levels")
    if not isinstance(value, (list, dict)):
        raise CorruptData(f"{path}: top-level JSON {json_type(value)}, expected a list or an object")
    return value
