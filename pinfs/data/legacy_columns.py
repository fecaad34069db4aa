"""The fast path of the legacy reader (``pinfs.data.legacy``): entries straight into Arrow columns.

What it is for: a 1M-entry ``pins.json`` (issue #14: ~340 MB) must migrate faster than ``json.load`` plus a
pyarrow write, in under 1 GB. So the document is not loaded whole. ``msgspec`` splits it into raw
entries (``split_document``, one pass, no Python object per value); they are decoded a batch at a time
(``decode_batch``), and a batch whose entries are all plain (a CID string, or an object of strings,
integers, booleans and nulls with at most a flat ``metadata`` object) goes through ``add_plain_batch``,
which checks CIDs and timestamps for the whole batch at once and puts each pin's six values straight
into column lists (``RowCollector``), flushed to Arrow per batch.

What it must not do: decide anything differently from the per-entry rules of ``pinfs.data.legacy_entries``. Every
entry it is not sure of (another key, an unusual status, a timestamp to convert, a CID the batch
check does not vouch for and that libipld rejects) is handed back to them (``slow``), and a batch
msgspec does not decode exactly as ``json`` would (NaN, floats, a lone surrogate, deep nesting) is
decoded by ``json`` and handed back whole. Values msgspec decodes for the plain types are the same
as ``json.loads`` gives, and its sorted encoding of them is the same text as ``schema.dump_metadata``
(tests/test_legacy_columns.py checks both, and the whole reader against the per-entry rules).

Duplicates are found once at the end, over the CID column (the first accepted entry wins).

Threading: plain functions and a collector owned by one reader; no shared state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinfs.data.cids import cid_problem, identity_columns
from pinfs.data.schema import (
    LEGACY_STATUS_NAMES,
    PENDING,
    REQUIRED_COLUMNS,
    car_path_for,
    legacy_status_exact,
    normalize_timestamp,
)

BATCH_ENTRIES = 16_384
MISSING: Any = object()  # a key that is absent (null is a value, with rules of its own)
PLAIN_KEYS = frozenset({"cid", "status", "created_at", "car_file_path", "metadata"})

_Scalar = str | int | bool | None
# A list entry msgspec may decode for the plain path: anything else is left to json and the rules.
_PlainEntry = str | dict[str, _Scalar | dict[str, _Scalar]]
_PLAIN_BATCH = msgspec.json.Decoder(list[_PlainEntry])
_TOP = msgspec.json.Decoder(list[msgspec.Raw] | dict[str, msgspec.Raw])
# Sorted keys, compact, UTF-8: for strings, integers, booleans and null, the text of dump_metadata.
_ENCODER = msgspec.json.Encoder(order="sorted")
_UNSET: Any = msgspec.UNSET


class PlainObject(msgspec.Struct, forbid_unknown_fields=True):
    """A list entry that is an object of the five fields pinfs itself writes, of the plainest types:
    decoded without a dict per entry, and read column by column (``add_object_batch``). A batch with
    any other key or type is not decoded this way."""

    cid: str
    status: str | None | msgspec.UnsetType = msgspec.UNSET
    created_at: str | msgspec.UnsetType = msgspec.UNSET
    car_file_path: str | None | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, _Scalar] | msgspec.UnsetType = msgspec.UNSET


_OBJECT_BATCH = msgspec.json.Decoder(list[PlainObject])


# -- splitting and decoding --


def split_document(body: bytes) -> list[msgspec.Raw] | dict[str, msgspec.Raw] | None:
    """The top-level list or object with its values left as raw JSON, or None when msgspec cannot say
    (not JSON to it, or a scalar at the top): the caller then parses the document with json, which
    words the error. Raises RecursionError for absurd nesting."""
    try:
        return _TOP.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def join(raws: Sequence[msgspec.Raw]) -> bytes:
    """Raw values as the text of one JSON list."""
    return b"[" + b",".join(raws) + b"]"


def decode_objects(raws: Sequence[msgspec.Raw]) -> list[PlainObject] | None:
    """The values of ``raws`` as ``PlainObject``s, or None when one is not one."""
    try:
        return _OBJECT_BATCH.decode(join(raws))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


def decode_batch(raws: Sequence[msgspec.Raw]) -> list[Any] | None:
    """The values of ``raws`` as plain entries, decoded by msgspec, or None when one is not plain or
    msgspec cannot decode it exactly as json would (the caller then uses json)."""
    try:
        return _PLAIN_BATCH.decode(join(raws))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


# -- the rows --


class RowCollector:
    """The accepted rows, in file order, as Arrow chunks; the rejected entries by index."""

    def __init__(self, backend_name: str, backend_type: str) -> None:
        self.backend_name = backend_name
        prefix, suffix = car_path_for(backend_type, backend_name, "\0").split("\0")
        self.template = (prefix, suffix)  # a pin's default car_file_path is prefix + cid + suffix
        self.lists: dict[str, list[Any]] = {name: [] for name in _ROW_FIELDS}  # the rows not flushed yet
        self._chunks: list[pa.Table] = []
        self.rejected: list[tuple[int, Any]] = []  # (entry index, Rejected)
        self.failed_builds: list[tuple[int, str, Any]] = []  # (index, valid CID, Rejected)

    def row(self, index: int, cid: str, car: str | None, created: str, status: str, metadata: str) -> None:
        """One accepted entry; ``car`` None means the backend's template."""
        lists = self.lists
        lists["index"].append(index)
        lists["cid"].append(cid)
        lists["car_file_path"].append(car)
        lists["created_at"].append(created)
        lists["status"].append(status)
        lists["metadata"].append(metadata)

    def record(self, index: int, record: dict[str, str]) -> None:
        self.row(
            index, record["cid"], record["car_file_path"], record["created_at"], record["status"], record["metadata"]
        )

    def reject(self, index: int, rejected: Any) -> None:
        self.rejected.append((index, rejected))

    def build_failed(self, index: int, cid: str, rejected: Any) -> None:
        """An entry with a valid CID whose record could not be built: a duplicate if that CID was
        accepted before it (as the per-entry rules check duplicates first), else ``rejected``."""
        self.failed_builds.append((index, cid, rejected))

    def add_chunk(self, table: pa.Table) -> None:
        """Rows already in columns (``index`` first, then the five of ``row``), after what was flushed;
        their order among other rows is restored by index at ``finish``."""
        self.flush()
        self._chunks.append(table)

    def flush(self) -> None:
        lists = self.lists
        if not lists["index"]:
            return
        columns = {
            "index": pa.array(lists["index"], pa.int64()),
            "cid": pa.array(lists["cid"], pa.string()),
            "car_file_path": pa.array(lists["car_file_path"], pa.string()),  # null: the template's
            "created_at": pa.array(lists["created_at"], pa.string()),
            "status": pa.array(lists["status"], pa.string()),
            "metadata": pa.array(lists["metadata"], pa.string()),
        }
        self._chunks.append(pa.table(columns))
        for values in lists.values():
            values.clear()

    def finish(self, duplicate: Callable[[int], Any]) -> tuple[pa.Table, list[Any]]:
        """The table of accepted pins in the store's columns (file order; a car_file_path that is the
        template's is null, see ``template``) and the rejected entries in file order.
        ``duplicate(index)`` makes the Rejected of a later entry with an accepted CID."""
        self.flush()
        table = pa.concat_tables(self._chunks) if self._chunks else _empty_rows()
        self._chunks = []
        indexes = table.column("index")
        if len(indexes) > 1 and not pc.all(pc.less(indexes.slice(0, len(indexes) - 1), indexes.slice(1))).as_py():
            table = table.take(pc.sort_indices(indexes))  # a batch's slow entries came after its others
        table = self._without_duplicates(table, duplicate)
        self._resolve_failed_builds(table, duplicate)
        table = self._without_spelling_duplicates(table, duplicate)
        backend = pa.array([self.backend_name] * table.num_rows, pa.string())
        table = table.append_column("backend_name", backend)
        rejected = [item for _index, item in sorted(self.rejected, key=lambda pair: pair[0])]
        return table.select(list(REQUIRED_COLUMNS)), rejected

    def _without_duplicates(self, table: pa.Table, duplicate: Callable[[int], Any]) -> pa.Table:
        cids = table.column("cid")
        if len(cids) < 2 or pc.all(pc.less(cids.slice(0, len(cids) - 1), cids.slice(1))).as_py():
            return table
        order = pc.sort_indices(table, [("cid", "ascending"), ("index", "ascending")])
        ordered = pc.take(cids, order)
        repeated = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))
        if not pc.any(repeated).as_py():
            return table
        rows = order.slice(1).filter(repeated)
        for index in pc.take(table.column("index"), rows).to_pylist():
            self.reject(index, duplicate(index))
        keep = np.ones(table.num_rows, dtype=bool)
        keep[rows.to_numpy()] = False
        return table.filter(pa.array(keep))

    def _without_spelling_duplicates(self, table: pa.Table, duplicate: Callable[..., Any]) -> pa.Table:
        """A CID accepted twice spelled two ways (``Qm…`` and ``bafybei…``, two multibases, two cases
        of base32: one CID, issue #16) is a duplicate too: the first spelling wins, the later entry is
        rejected naming it."""
        cids = table.column("cid")
        (keys,) = identity_columns(cids)
        if keys is cids or len(keys) < 2:
            return table  # no two spellings of one CID can be here
        indexes = table.column("index")
        by = [("key", "ascending"), ("index", "ascending")]
        order = pc.sort_indices(pa.table({"key": keys, "index": indexes}), by)
        ordered = pc.take(keys, order)
        repeated = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))
        if not pc.any(repeated).as_py():
            return table
        keep = np.ones(table.num_rows, dtype=bool)
        rows = order.to_pylist()
        first = rows[0]
        for row, again in zip(rows[1:], repeated.to_pylist(), strict=True):
            if not again:
                first = row
                continue
            keep[row] = False
            index = indexes[row].as_py()
            self.reject(index, duplicate(index, cids[first].as_py()))
        return table.filter(pa.array(keep))

    def _resolve_failed_builds(self, table: pa.Table, duplicate: Callable[[int], Any]) -> None:
        if not self.failed_builds:
            return
        cids = pa.array([cid for _index, cid, _rejected in self.failed_builds], pa.string())
        rows = pc.index_in(cids, value_set=table.column("cid").combine_chunks()).to_pylist()
        indexes = table.column("index")
        for (index, _cid, rejected), row in zip(self.failed_builds, rows, strict=True):
            accepted_before = row is not None and indexes[row].as_py() < index
            self.reject(index, duplicate(index) if accepted_before else rejected)


_ROW_FIELDS = ("index", "cid", "car_file_path", "created_at", "status", "metadata")


def _empty_rows() -> pa.Table:
    # Made when needed, not at import: building any table makes pyarrow ask pandas whether it was given
    # a DataFrame, which imports pandas (~0.3 s) at every start of the CLI and the mount.
    return pa.schema(
        [pa.field("index", pa.int64()), *(pa.field(name, pa.string()) for name in _ROW_FIELDS[1:])]
    ).empty_table()


def add_plain_batch(
    items: list[Any], start: int, rows: RowCollector, default_created_at: str, slow: Callable[[int, Any], None]
) -> None:
    """Add a batch of plain list entries (decoded by ``decode_batch``) numbered from ``start``: the
    usual ones as rows here, every other one through ``slow(index, item)``. One loop with its lookups
    bound locally: it runs a million times in a big migration."""
    cids = [item if type(item) is str else item.get("cid") for item in items]
    vouched = valid_cid_mask(cids).tolist()
    created = [item.get("created_at", MISSING) if type(item) is dict else MISSING for item in items]
    shaped = canonical_shape_mask(created).tolist()
    lists = rows.lists
    add_index, add_cid, add_car = lists["index"].append, lists["cid"].append, lists["car_file_path"].append
    add_created, add_status, add_metadata = lists["created_at"].append, lists["status"].append, lists["metadata"].append
    encode, statuses, plain_keys, fromisoformat = _ENCODER.encode, _STATUSES, PLAIN_KEYS, datetime.fromisoformat
    prefix, suffix = rows.template
    for offset, item in enumerate(items):
        cid = cids[offset]
        if not (vouched[offset] or (type(cid) is str and cid_problem(cid) is None)):
            slow(start + offset, item)  # the rules word the CID's problem (or find another)
            continue
        if type(item) is str:
            status, when, car, text = PENDING, default_created_at, None, "{}"
        else:
            status = item.get("status")
            status = statuses.get(status) if type(status) is not dict else None
            when = created[offset]
            car = item.get("car_file_path")
            metadata = item.get("metadata", MISSING)
            if (
                status is None
                or not item.keys() <= plain_keys
                or (car is not None and type(car) is not str)
                or (metadata is not MISSING and type(metadata) is not dict)
            ):
                slow(start + offset, item)
                continue
            if when is MISSING:
                when = default_created_at
            elif shaped[offset]:
                try:
                    fromisoformat(when)  # as normalize_timestamp: month 13 and the like fail
                except ValueError:
                    when = None
            else:
                when = _normalized(when)
            if when is None:
                slow(start + offset, item)  # an unusable timestamp stays in metadata: the rules do that
                continue
            text = encode(metadata).decode() if metadata is not MISSING and metadata else "{}"
        add_index(start + offset)
        add_cid(cid)
        # The template's own path is left null and filled at flush: ~90 bytes a pin less held meanwhile.
        add_car(None if not car or car == prefix + cid + suffix else car)
        add_created(when)
        add_status(status)
        add_metadata(text)


def add_object_batch(
    items: list[PlainObject], start: int, rows: RowCollector, default_created_at: str, slow: Callable[[int], None]
) -> None:
    """Add a batch of ``PlainObject`` entries numbered from ``start``, column by column: each check is
    one pass over a column (most of them in Arrow or numpy), and an entry any check is unsure of goes
    through ``slow(index)`` (the caller decodes it again, exactly, for the rules)."""
    count = len(items)
    cids = [item.cid for item in items]
    ok = valid_cid_mask(cids)
    for offset in np.flatnonzero(~ok).tolist():
        ok[offset] = cid_problem(cids[offset]) is None  # CIDv0 and the rest: libipld decides
    # Unknown (None here) is left to the rules: they keep the original in metadata.legacy_status.
    statuses = [_STATUSES.get(item.status) if item.status is not _UNSET else PENDING for item in items]
    ok &= np.array([status is not None for status in statuses], dtype=bool)
    created = _created_column([item.created_at for item in items], default_created_at, ok)
    encode = _ENCODER.encode
    metadata = [b"{}" if item.metadata is _UNSET or not item.metadata else encode(item.metadata) for item in items]
    cid_array = pa.array(cids, pa.string())
    cars = pa.array([item.car_file_path or None for item in items], pa.string())  # "" and null: the template
    template = pc.binary_join_element_wise(rows.template[0], cid_array, rows.template[1], "")
    cars = pc.if_else(pc.fill_null(pc.equal(cars, template), False), pa.scalar(None, pa.string()), cars)
    table = pa.table(
        {
            "index": pa.array(np.arange(start, start + count, dtype=np.int64)),
            "cid": cid_array,
            "car_file_path": cars,
            "created_at": pa.array(created, pa.string()),
            "status": pa.array(statuses, pa.string()),
            "metadata": pa.array(metadata, pa.string()),
        }
    )
    if ok.all():
        rows.add_chunk(table)
        return
    rows.add_chunk(table.filter(pa.array(ok)))
    for offset in np.flatnonzero(~ok).tolist():
        slow(start + offset)


def _created_column(values: list[Any], default: str, ok: np.ndarray) -> list[Any]:
    """The created_at of each entry as the rules make it (absent: ``default``); an entry whose value the
    rules would leave in metadata is marked not ``ok``."""
    shaped = canonical_shape_mask(values)
    fromisoformat = datetime.fromisoformat
    if shaped.all():
        try:
            list(map(fromisoformat, values))  # as normalize_timestamp: month 13 and the like fail
            return values
        except ValueError:
            pass
    created = list(values)
    for offset, value in enumerate(values):
        if value is _UNSET:
            created[offset] = default
        elif shaped[offset]:
            try:
                fromisoformat(value)
            except ValueError:
                ok[offset] = False
        else:
            created[offset] = _normalized(value)
            ok[offset] &= created[offset] is not None  # None: the rules leave it in metadata
    return created


# legacy_status_exact as a lookup: absent or null is pending; any other non-string misses.
_STATUSES: dict[Any, str] = {None: PENDING, **{name: legacy_status_exact(name) for name in LEGACY_STATUS_NAMES}}


def _normalized(value: Any) -> str | None:
    try:
        return normalize_timestamp(value)
    except (OverflowError, ValueError):  # as the rules' _take_timestamp: left to them
        return None


# -- batch checks --

_BASE32 = np.full(256, 255, dtype=np.uint8)
_BASE32[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz234567", dtype=np.uint8)] = np.arange(32, dtype=np.uint8)
_CIDV1_LENGTH = 59  # "b" + base32 of 36 bytes: version 1, a one-byte codec, sha2-256 (0x12), 32 (0x20), digest


def valid_cid_mask(values: Sequence[Any]) -> np.ndarray:
    """For each value: True when it is certainly a valid CID (``cid_problem`` is None): a CIDv1 in
    lowercase base32 with a one-byte codec and a sha2-256 multihash, its padding bits zero. False
    says nothing (the caller asks ``cid_problem``). All checked at once with numpy."""
    result = np.zeros(len(values), dtype=bool)
    positions = [
        i for i, value in enumerate(values) if type(value) is str and len(value) == _CIDV1_LENGTH and value.isascii()
    ]
    if not positions:
        return result
    text = "".join([values[i] for i in positions]).encode("ascii")
    chars = np.frombuffer(text, dtype=np.uint8).reshape(len(positions), _CIDV1_LENGTH)
    digits = _BASE32[chars[:, 1:]]
    ok = (chars[:, 0] == ord("b")) & (digits != 255).all(axis=1)
    # The first 8 digits are the first 5 bytes: version 1, a one-byte codec, 0x12 (sha2-256), 0x20 (32).
    head = np.zeros(len(positions), dtype=np.uint64)
    for column in range(8):
        head = (head << np.uint64(5)) | digits[:, column].astype(np.uint64)
    version, codec, hash_code, length = ((head >> np.uint64(shift)) & np.uint64(0xFF) for shift in (32, 24, 16, 8))
    ok &= (version == 1) & (codec < 0x80) & (hash_code == 0x12) & (length == 0x20)
    ok &= (digits[:, -1] & 3) == 0  # 58 digits are 290 bits: the 2 past the 36 bytes must be zero
    result[np.array(positions)] = ok
    return result


# The text normalize_timestamp keeps as it is (when datetime.fromisoformat accepts it), as in schema.
_CANONICAL = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$"


def canonical_shape_mask(values: Sequence[Any]) -> np.ndarray:
    """For each value: whether it is a string shaped as ``schema._CANONICAL_TIMESTAMP`` (one Arrow
    regex pass instead of a Python one per value)."""
    texts = pa.array([value if type(value) is str else None for value in values], pa.string())
    if texts.null_count == len(texts):
        return np.zeros(len(values), dtype=bool)
    return pc.fill_null(pc.match_substring_regex(texts, _CANONICAL), False).to_numpy(zero_copy_only=False)
