"""Reader for legacy ``pins.json`` files (CONTRACT §1), the input that migration and the mount's
legacy view start from.

What it does: find a backend's legacy source (``pins.json``, else its newest backup), parse whichever
of the shapes seen in the wild it holds, and turn every entry into either a complete record
(``schema.make_record``) or a ``Rejected`` saying what is wrong and where. Nothing is dropped
silently. ``write_rejected`` keeps the rejects beside the backend as ``pins.rejected.json``.

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
  entries go straight into Arrow columns (``pinfs.legacy_columns``), every other one through the
  per-entry rules here, which decide everything. A document msgspec cannot split is parsed whole.

Threading: plain synchronous functions over local files, no shared state; call them from a worker
thread under trio. Writers serialize on ``fsutil.backend_lock``: ``write_rejected`` does not take
it, its caller does.
"""

from __future__ import annotations

import codecs
import errno
import json
import math
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.cids import cid_problem
from pinfs.errors import CorruptData, NotFound
from pinfs.fsutil import atomic_write_bytes
from pinfs.legacy_columns import (
    BATCH_ENTRIES,
    RowCollector,
    add_object_batch,
    add_plain_batch,
    decode_batch,
    decode_objects,
    join,
    split_document,
)
from pinfs.rootfs import S3Path, S3Stat, as_path
from pinfs.schema import FUTURE_TOLERANCE, PENDING, make_record, map_legacy_status, normalize_timestamp, now_iso
from pinfs.tables import empty_table

LEGACY_NAME = "pins.json"
BACKUP_PREFIX = "pins.json.backup."
REJECTED_NAME = "pins.rejected.json"

MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_DEPTH = 64
# Rejected.entry previews: a string longer than this is cut; a container whose JSON is longer
# than MAX_PREVIEW_JSON is replaced by the cut JSON text.
MAX_PREVIEW_CHARS = 200
MAX_PREVIEW_JSON = 2000
ELLIPSIS = "…"

CID_KEYS: tuple[str, ...] = ("cid", "Cid", "CID", "hash", "Hash", "/")
TIMESTAMP_KEYS: tuple[str, ...] = ("created_at", "pinned_at", "timestamp", "added_at")
CONTAINER_KEYS: tuple[str, ...] = ("pins", "Keys")

# Backup stamps: ours (schema.utc_stamp) and ipfs_kit_py's (``%Y%m%d_%H%M%S``, local time).
_STAMP_FORMATS: tuple[tuple[str, bool], ...] = (
    ("%Y%m%dT%H%M%S.%fZ", True),
    ("%Y%m%dT%H%M%SZ", True),
    ("%Y%m%d_%H%M%S", False),
)
_JSON_WHITESPACE = " \t\r\n"
_JSON_WHITESPACE_BYTES = (b" ", b"\t", b"\r", b"\n")


@dataclass
class Rejected:
    """One legacy entry that did not become a record."""

    entry: object  # the original JSON value, or a cut-down string if it is huge
    reason: str  # one line: what is wrong
    location: str  # e.g. "pins.json: entry 17" or "pins.json: key 'Qmxx'"


@dataclass
class LegacyPins:
    """Everything read from one legacy file: the pins (``table()``, in the store's schema, file order),
    what was rejected, and the document's shape."""

    source: Path
    rejected: list[Rejected] = field(default_factory=list)
    shape: str = "empty"
    default_created_at: str = ""  # given to entries without a usable timestamp
    # The pins as read: a car_file_path that is the backend's template is null until ``table()`` (a
    # big file's ~90 bytes a pin are then made after its bytes could be let go).
    pins: pa.Table = field(default_factory=empty_table)
    template: tuple[str, str] = ("", "")  # (prefix, suffix) around the CID

    @property
    def count(self) -> int:
        return self.pins.num_rows

    def table(self) -> pa.Table:
        cars = self.pins.column("car_file_path")
        if cars.null_count:
            filled = pc.coalesce(
                cars, pc.binary_join_element_wise(self.template[0], self.pins.column("cid"), self.template[1], "")
            )
            self.pins = self.pins.set_column(1, pa.field("car_file_path", pa.string(), nullable=False), filled)
        return self.pins

    @property
    def records(self) -> list[dict[str, str]]:
        """The pins as record dicts (the six contract fields), in file order."""
        return self.table().to_pylist()


class _EntryProblem(Exception):
    """Internal: why one entry is rejected."""


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

    The document is split by msgspec and read a batch of entries at a time (``pinfs.legacy_columns``);
    one msgspec cannot split (NaN, a scalar at the top, not JSON) is parsed whole by json, as before.
    """
    if not data.isascii():  # ASCII is UTF-8; anything else is decoded once to find a bad byte
        _decode_text(source, data)
    body = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    result = LegacyPins(source=source, default_created_at=default_created_at)
    if body[:1] in (b"", *_JSON_WHITESPACE_BYTES) and not body.strip(_JSON_WHITESPACE.encode()):
        return result  # (only a file that starts with whitespace is copied by strip)
    reader = _Reader(result, backend_name, backend_type, default_created_at)
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


def find_legacy_source(backend_dir: Path) -> Path | None:
    """``backend_dir/pins.json`` if it exists, else the newest ``pins.json.backup.<stamp>``, else None.

    Backups are ordered by the time in their stamp (ours in UTC, ipfs_kit_py's in local time), then by
    modification time, then by name; a backup whose stamp is in neither form ranks below every dated one.
    """
    backend_dir = as_path(backend_dir)
    current = backend_dir / LEGACY_NAME
    if current.exists():
        return current
    backups = list_backups(backend_dir)
    return backups[-1] if backups else None


def list_backups(backend_dir: Path) -> list[Path]:
    """Every ``pins.json.backup.<stamp>`` of a backend, oldest first (ordered as in find_legacy_source)."""
    backups = [p for p in as_path(backend_dir).glob(BACKUP_PREFIX + "*") if len(p.name) > len(BACKUP_PREFIX)]
    return sorted(backups, key=_backup_sort_key)


def new_backup_path(backend_dir: Path) -> Path:
    """Where a new backup of pins.json goes: ``pins.json.backup.<UTC stamp>`` of now, or, when a backup
    is dated now or later (made while the clock ran ahead, issue #15), 1 µs after the newest one. So a
    new backup is always the newest, whatever the clock says, and the stamps keep the order in which
    the backups were made (a sequence the clock cannot reorder); ``future_backups`` reports the ones
    dated ahead."""
    backend_dir = as_path(backend_dir)
    moment = datetime.now(timezone.utc)
    backups = list_backups(backend_dir)
    if backups:
        newest = _backup_sort_key(backups[-1])[0]
        if newest >= moment:
            moment = newest + timedelta(microseconds=1)
    return backend_dir / f"{BACKUP_PREFIX}{moment.strftime('%Y%m%dT%H%M%S.%fZ')}"


def future_backups(backend_dir: Path) -> list[str]:
    """Names of the backups dated later than now (beyond another host's clock skew): made while the
    clock ran ahead, or stamped after such a one by ``new_backup_path``."""
    ahead = datetime.now(timezone.utc) + FUTURE_TOLERANCE
    return [path.name for path in list_backups(backend_dir) if _backup_sort_key(path)[0] > ahead]


def is_own_backup(path: Path) -> bool:
    """Whether a backup's stamp is pinfs' own (UTC), as opposed to ipfs_kit_py's (local time)."""
    stamp = path.name[len(BACKUP_PREFIX) :]
    return any(in_utc and _parses(stamp, pattern) for pattern, in_utc in _STAMP_FORMATS)


def _parses(stamp: str, pattern: str) -> bool:
    try:
        datetime.strptime(stamp, pattern)
    except ValueError:
        return False
    return True


def write_rejected(backend_dir: Path, rejected: list[Rejected], source: Path) -> Path | None:
    """Write ``backend_dir/pins.rejected.json`` atomically and return its path.

    Content: ``{"source", "written_at", "count", "rejected": [{"entry", "reason", "location"}]}``.
    Writes nothing and returns None when ``rejected`` is empty. The caller holds the backend lock.
    """
    if not rejected:
        return None
    target = as_path(backend_dir) / REJECTED_NAME
    document = {
        "source": str(source),
        "written_at": now_iso(),
        "count": len(rejected),
        "rejected": [asdict(item) for item in rejected],
    }
    atomic_write_bytes(target, _encode_json(document))
    return target


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
        value = _loads(text)
    except RecursionError:
        raise CorruptData(f"{path}: JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise CorruptData(f"{path}: not JSON ({exc})") from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise CorruptData(f"{path}: JSON nested deeper than {MAX_DEPTH} levels")
    if not isinstance(value, (list, dict)):
        raise CorruptData(f"{path}: top-level JSON {_json_type(value)}, expected a list or an object")
    return value


def _loads(text: str) -> Any:
    """``json.loads`` keeping every value strict JSON (see the module docstring).

    Raises ValueError for text that is not JSON and RecursionError for absurd nesting.
    """
    try:
        # Integers parsed by json itself (a Python call per integer costs seconds in a 1M-pin file);
        # only one too long for int() makes this fail, and then the hooked parse below keeps it as text.
        return json.loads(text, parse_constant=str, parse_float=_parse_float)
    except ValueError:
        return json.loads(text, parse_constant=str, parse_float=_parse_float, parse_int=_parse_int)


def _parse_float(text: str) -> float | str:
    number = float(text)
    return number if math.isfinite(number) else text


def _parse_int(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        return text


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels, walked level by level without recursion.

    Values come from ``json`` (exactly ``dict``/``list``), so ``type() in`` is enough and cheap.
    """
    level = [value] if type(value) in _CONTAINER_TYPES else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            below += [child for child in children if type(child) in _CONTAINER_TYPES]
        level = below
    return False


_CONTAINER_TYPES = (dict, list)


# -- turning entries into records --


class _ListItems:
    """The entries of a list (or the values of an object), a batch at a time: raw JSON split by msgspec,
    or values json already parsed."""

    def __init__(self, path: Path, raws: list[Any] | None = None, values: list[Any] | None = None, outer: int = 0):
        self.path, self.raws, self.values = path, raws, values
        self.limit = MAX_DEPTH - outer  # the batch stands for the container: its depth counts

    def __len__(self) -> int:
        return len(self.raws if self.raws is not None else self.values or [])

    def batch(self, start: int, stop: int, *, plain: bool) -> tuple[list[Any], str]:
        """Entries ``start:stop`` and how they were decoded (see legacy_columns): ``objects`` (all
        ``PlainObject``s), ``plain`` (plain entries) or ``json`` (as json parses them)."""
        if self.raws is None:
            return (self.values or [])[start:stop], "json"
        raws = self.raws[start:stop]
        if plain and (objects := decode_objects(raws)) is not None:
            return objects, "objects"
        if plain and (items := decode_batch(raws)) is not None:
            return items, "plain"
        return self._parsed(join(raws)), "json"

    def item(self, index: int) -> Any:
        if self.raws is None:
            return (self.values or [])[index]
        return self._parsed(join(self.raws[index : index + 1]))[0]

    def _parsed(self, text: bytes) -> list[Any]:
        try:
            items = _loads(text.decode("utf-8"))
        except RecursionError:
            items = None
        if items is None or _depth_exceeds(items, self.limit):
            raise CorruptData(f"{self.path}: JSON nested deeper than {MAX_DEPTH} levels")
        return items


class _Reader:
    """Fills one LegacyPins: entries become rows (``legacy_columns.RowCollector``) or rejects; a CID
    accepted twice is a duplicate (the first one wins)."""

    def __init__(self, result: LegacyPins, backend_name: str, backend_type: str, default_created_at: str):
        self.result = result
        self.backend_name = backend_name
        self.backend_type = backend_type
        self.default_created_at = default_created_at
        self.name = result.source.name
        self.path = result.source
        self.rows = RowCollector(backend_name, backend_type)
        self._entry: Callable[[int], tuple[Any, str]] = _no_entry

    def finish(self) -> None:
        def duplicate(index: int, spelled: str | None = None) -> Rejected:
            item, location = self._entry(index)
            # issue #16: one CID spelled two ways is one CID; say which entry's spelling was kept
            reason = "duplicate CID"
            if spelled is not None:
                reason = f"duplicate CID: the same CID as {spelled}, spelled another way"
            return Rejected(entry=_preview(item), reason=reason, location=location)

        self.result.pins, self.result.rejected = self.rows.finish(duplicate)
        self.result.template = self.rows.template
        # The entry finder holds the raw entries, and so the file's bytes, in a cycle through self:
        # break it, so that they go as soon as the caller lets the bytes go, not at the next GC.
        self._entry = _no_entry

    # -- the document --

    def read_top(self, value: list[Any] | dict[str, Any]) -> None:
        """Read a document json parsed whole."""
        if isinstance(value, list):
            self.result.shape = self.read_list(_ListItems(self.path, values=value), "")
        elif not value:
            self.result.shape = "empty"
        elif (container := next((key for key in CONTAINER_KEYS if key in value), None)) is None:
            self.read_map(list(value), _ListItems(self.path, values=list(value.values())), "")
            self.result.shape = "cid-map"
        else:
            self.read_container(container, value[container])
            self.result.shape = "pins-object"

    def read_split(self, top: list[Any] | dict[str, Any]) -> None:
        """Read a document msgspec split into raw values."""
        if isinstance(top, list):
            self.result.shape = self.read_list(_ListItems(self.path, raws=top), "")
        elif not top:
            self.result.shape = "empty"
        elif (container := next((key for key in CONTAINER_KEYS if key in top), None)) is None:
            self.read_map(list(top), _ListItems(self.path, raws=list(top.values())), "")
            self.result.shape = "cid-map"
        else:
            self.result.shape = "pins-object"
            inner = split_document(bytes(top[container]))
            if isinstance(inner, list):
                self.read_list(_ListItems(self.path, raws=inner, outer=1), f"{container} ")
            elif isinstance(inner, dict):
                self.read_map(list(inner), _ListItems(self.path, raws=list(inner.values()), outer=1), f"{container} ")
            else:
                self.read_container(container, _ListItems(self.path, raws=[top[container]]).item(0))

    def read_container(self, key: str, inner: Any) -> None:
        if isinstance(inner, list):
            self.read_list(_ListItems(self.path, values=inner), f"{key} ")
        elif isinstance(inner, dict):
            self.read_map(list(inner), _ListItems(self.path, values=list(inner.values())), f"{key} ")
        elif inner is not None:
            reason = f"'{key}' is {_json_type(inner)}, expected a list or an object"
            self.rows.reject(0, Rejected(_preview(inner), reason, f"{self.name}: key {_show_key(key)}"))

    def read_list(self, items: _ListItems, prefix: str) -> str:
        """Read every entry of a list; returns the list's shape."""
        self._entry = lambda index: (items.item(index), f"{self.name}: {prefix}entry {index}")
        kinds: set[type] = set()
        for start in range(0, len(items), BATCH_ENTRIES):
            batch, decoded = items.batch(start, start + BATCH_ENTRIES, plain=True)
            if decoded == "objects":
                kinds.add(dict)
                add_object_batch(
                    batch,
                    start,
                    self.rows,
                    self.default_created_at,
                    lambda i: self.read_entry(i, items.item(i), prefix),
                )
                continue
            kinds.update(map(type, batch))
            if decoded == "plain":
                add_plain_batch(
                    batch, start, self.rows, self.default_created_at, lambda i, item: self.read_entry(i, item, prefix)
                )
            else:
                for offset, item in enumerate(batch):
                    self.read_entry(start + offset, item, prefix)
            self.rows.flush()
        return _list_shape(kinds)

    def read_entry(self, index: int, item: Any, prefix: str) -> None:
        location = f"{self.name}: {prefix}entry {index}"
        try:
            cid, fields = _split_list_entry(item)
            self.add(index, cid, fields, item, location)
        except _EntryProblem as problem:
            self.rows.reject(index, Rejected(_preview(item), str(problem), location))

    def read_map(self, keys: list[str], values: _ListItems, prefix: str) -> None:
        self._entry = lambda index: (
            {keys[index]: values.item(index)},
            f"{self.name}: {prefix}key {_show_key(keys[index])}",
        )
        for start in range(0, len(keys), BATCH_ENTRIES):
            batch, _decoded = values.batch(start, start + BATCH_ENTRIES, plain=False)
            for offset, item in enumerate(batch):
                index = start + offset
                key = keys[index]
                location = f"{self.name}: {prefix}key {_show_key(key)}"
                try:
                    self.add(index, key, _map_value_fields(key, item), {key: item}, location)
                except _EntryProblem as problem:
                    self.rows.reject(index, Rejected(_preview({key: item}), str(problem), location))
            self.rows.flush()

    def add(self, index: int, cid: object, fields: dict[str, Any], item: Any, location: str) -> None:
        """Validate and keep one entry; raises _EntryProblem instead. A valid CID whose record cannot
        be built is rejected as a duplicate if that CID was accepted before (``RowCollector``)."""
        problem = cid_problem(cid)
        if problem is not None:
            raise _EntryProblem(f"invalid CID: {problem}")
        assert isinstance(cid, str)
        try:
            record = self.build(cid, fields)
        except _EntryProblem as failure:
            self.rows.build_failed(index, cid, Rejected(_preview(item), str(failure), location))
            return
        self.rows.record(index, record)

    def build(self, cid: str, fields: dict[str, Any]) -> dict[str, str]:
        rest = fields  # always a fresh dict made for this entry (_split_list_entry, _map_value_fields)
        status, legacy_status = _take_status(rest)
        created_at = _take_timestamp(rest) or self.default_created_at
        car_file_path = _take_car_path(rest)
        if rest.get("backend_name") == self.backend_name:
            del rest["backend_name"]
        metadata = _merge_metadata(rest)
        if legacy_status is not None:
            metadata["legacy_status"] = legacy_status
        record = make_record(
            cid,
            self.backend_name,
            self.backend_type,
            status=status,
            created_at=created_at,
            metadata=metadata,
            car_file_path=car_file_path,
        )
        _require_utf8(record)
        return record


def _no_entry(index: int) -> tuple[Any, str]:
    return None, ""


def _list_shape(kinds: set[type]) -> str:
    if not kinds:
        return "empty"
    if kinds == {str}:
        return "list-of-strings"
    if kinds == {dict}:
        return "list-of-objects"
    return "mixed"


def _split_list_entry(item: Any) -> tuple[object, dict[str, Any]]:
    """A list entry as (cid, other fields)."""
    if isinstance(item, str):
        return item, {}
    if not isinstance(item, dict):
        raise _EntryProblem(f"entry is {_json_type(item)}, expected a CID string or an object")
    key = "cid" if item.get("cid") is not None else next((k for k in CID_KEYS if item.get(k) is not None), None)
    if key is None:
        raise _EntryProblem("object has no 'cid' or 'hash' field")
    rest = dict(item)
    value = rest.pop(key)
    return (value if type(value) is str else _cid_field_value(key, value)), rest


def _map_value_fields(key: str, value: Any) -> dict[str, Any]:
    """The fields of a cid-map value (object, status string or null)."""
    if value is None:
        return {}
    if isinstance(value, str):
        return {"status": value}
    if not isinstance(value, dict):
        raise _EntryProblem(f"value is {_json_type(value)}, expected an object, a status string or null")
    cid_key = next((k for k in CID_KEYS if value.get(k) is not None), None)
    if cid_key is None:
        return dict(value)
    if _cid_field_value(cid_key, value[cid_key]) != key:
        raise _EntryProblem(f"the key and the value's '{cid_key}' field name different CIDs")
    return {k: v for k, v in value.items() if k != cid_key}


def _cid_field_value(key: str, value: Any) -> str:
    """A CID field's string, unwrapping an IPLD link ``{"/": "<cid>"}``."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("/"), str):
        return value["/"]
    if not isinstance(value, str):
        raise _EntryProblem(f"'{key}' is {_json_type(value)}, expected a CID string")
    return value


def _take_status(fields: dict[str, Any]) -> tuple[str, Any]:
    """Pop ``status``; returns (our status, original value to keep or None)."""
    value = fields.pop("status", None)
    if value is None:
        return PENDING, None
    if isinstance(value, str):
        return map_legacy_status(value)
    return PENDING, value  # not text: keep the JSON value itself, not its Python repr


def _take_timestamp(fields: dict[str, Any]) -> str | None:
    """Pop the first timestamp field that parses; others (and unparsable ones) stay in metadata."""
    for key in TIMESTAMP_KEYS:
        if key not in fields:
            continue
        try:
            moment = normalize_timestamp(fields[key])
        except (OverflowError, ValueError):  # e.g. year 1 with a +05:00 offset
            moment = None
        if moment is not None:
            del fields[key]
            return moment
    return None


def _take_car_path(fields: dict[str, Any]) -> str | None:
    """Pop ``car_file_path`` if it is a non-empty string; anything else stays in metadata."""
    value = fields.get("car_file_path")
    if isinstance(value, str) and value:
        del fields["car_file_path"]
        return value
    if value is None or value == "":
        fields.pop("car_file_path", None)
    return None


def _merge_metadata(fields: dict[str, Any]) -> dict[str, Any]:
    """The entry's remaining fields, with its own ``metadata`` object merged in when nothing collides."""
    if "metadata" not in fields:
        return fields
    nested = _as_object(fields["metadata"])
    if nested is None:
        return fields
    if len(fields) == 1:  # only "metadata": a copy (the entry's own object may still be shown as rejected)
        return dict(nested)
    rest = {k: v for k, v in fields.items() if k != "metadata"}
    if nested.keys() & rest.keys():
        return fields
    return {**nested, **rest}


def _as_object(value: Any) -> dict[str, Any] | None:
    """``value`` if it is an object, or the object a JSON string holds; otherwise None."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = _loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict) or _depth_exceeds(parsed, MAX_DEPTH):
        return None
    return parsed


def _require_utf8(record: Mapping[str, str]) -> None:
    if all(map(str.isascii, record.values())):  # O(1) per ASCII string, which cannot hold a surrogate
        return
    for column, text in record.items():
        if text.isascii():  # O(1) for ASCII text, which cannot hold a surrogate
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _EntryProblem(f"{column} holds text that is not valid Unicode (lone surrogate)") from None


# -- small helpers --


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


def _show_key(key: str) -> str:
    return repr(_cut(key, MAX_PREVIEW_CHARS))


def _preview(value: object) -> object:
    """``value`` for Rejected.entry, cut down to a string when it is huge."""
    if isinstance(value, str):
        return _cut(value, MAX_PREVIEW_CHARS)
    if not isinstance(value, (dict, list)):
        return value
    text = json.dumps(value, ensure_ascii=False)
    return value if len(text) <= MAX_PREVIEW_JSON else _cut(text, MAX_PREVIEW_JSON)


def _encode_json(document: Mapping[str, Any]) -> bytes:
    """Pretty UTF-8 JSON; falls back to ASCII escapes when the text holds lone surrogates."""
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(document, indent=2) + "\n").encode("ascii")


def _backup_sort_key(path: Path) -> tuple[datetime, int, str]:
    """When a backup was made: the time in its stamp (ours is UTC; ipfs_kit_py's ``%Y%m%d_%H%M%S`` is
    local time, issue #14), then its modification time for equal stamps, then its name. A stamp in
    neither form ranks below every dated one."""
    stamp = path.name[len(BACKUP_PREFIX) :]
    try:
        mtime_ns = path.lstat().st_mtime_ns
    except OSError:
        mtime_ns = 0
    for pattern, in_utc in _STAMP_FORMATS:
        try:
            moment = datetime.strptime(stamp, pattern)
        except ValueError:
            continue
        try:
            # astimezone() on a naive time reads it as local time, DST included.
            return (
                moment.replace(tzinfo=timezone.utc) if in_utc else moment.astimezone(timezone.utc),
                mtime_ns,
                path.name,
            )
        except (OverflowError, OSError, ValueError):  # year 1 in a zone east of UTC, and the like
            break
    return _UNDATED, mtime_ns, path.name


_UNDATED = datetime.min.replace(tzinfo=timezone.utc)
