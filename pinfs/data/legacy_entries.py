"""The entries of a legacy ``pins.json`` document turned into records or ``Rejected`` ones: the shapes
seen in the wild and the per-entry rules that decide every entry (``pinfs.data.legacy`` describes them;
plain entries take the vectorized path of ``pinfs.data.legacy_columns``). The result is a ``LegacyPins``.

What it must not do: read files or raise anything but ``CorruptData`` on hostile input. Threading:
no shared state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.cids import cid_problem
from pinfs.data.legacy_columns import (
    BATCH_ENTRIES,
    RowCollector,
    add_object_batch,
    add_plain_batch,
    decode_batch,
    decode_objects,
    join,
    split_document,
)
from pinfs.data.legacy_json import MAX_DEPTH, depth_exceeds, json_type, loads_json
from pinfs.data.schema import PENDING, make_record, map_legacy_status, normalize_timestamp
from pinfs.data.tables import empty_table
from pinfs.errors import CorruptData

# Rejected.entry previews: a string longer than this is cut; a container whose JSON is longer
# than MAX_PREVIEW_JSON is replaced by the cut JSON text.
MAX_PREVIEW_CHARS = 200
MAX_PREVIEW_JSON = 2000
ELLIPSIS = "…"
CID_KEYS: tuple[str, ...] = ("cid", "Cid", "CID", "hash", "Hash", "/")
TIMESTAMP_KEYS: tuple[str, ...] = ("created_at", "pinned_at", "timestamp", "added_at")
CONTAINER_KEYS: tuple[str, ...] = ("pins", "Keys")


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
            items = loads_json(text.decode("utf-8"))
        except RecursionError:
            items = None
        if items is None or depth_exceeds(items, self.limit):
            raise CorruptData(f"{self.path}: JSON nested deeper than {MAX_DEPTH} levels")
        return items


class EntryReader:
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
            reason = f"'{key}' is {json_type(inner)}, expected a list or an object"
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
        raise _EntryProblem(f"entry is {json_type(item)}, expected a CID string or an object")
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
        raise _EntryProblem(f"value is {json_type(value)}, expected an object, a status string or null")
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
        raise _EntryProblem(f"'{key}' is {json_type(value)}, expected a CID string")
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
        parsed = loads_json(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict) or depth_exceeds(parsed, MAX_DEPTH):
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
