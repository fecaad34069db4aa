"""The pin-mapping record: columns, statuses, legacy status mapping and CAR path templates.

Plain data and pure functions; no I/O. A record is a ``dict[str, str]`` holding at least
``REQUIRED_COLUMNS``; optional columns (``OPTIONAL_COLUMNS``) follow them in the parquet file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

REQUIRED_COLUMNS: tuple[str, ...] = (
    "cid",
    "car_file_path",
    "backend_name",
    "created_at",
    "status",
    "metadata",
)
# Columns pinfs itself maintains, after the required ones. Every table and export has exactly
# STORE_COLUMNS, in this order, from the start (issue #12: one schema everywhere, so DuckDB and pandas
# read every backend's file together without union_by_name). A column another tool adds to a file that
# pinfs imports is kept in the record's metadata (``pinfs.data.tables.EXTRA_COLUMNS_KEY``).
OPTIONAL_COLUMNS: tuple[str, ...] = ("updated_at", "verified_at")
STORE_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

STATUSES: tuple[str, ...] = ("stored", "pending", "failed")
STORED, PENDING, FAILED = STATUSES

# CONTRACT §1: legacy status values and what they become on import.
_LEGACY_STATUS_MAP: dict[str, str] = {
    "stored": STORED,
    "pinned": STORED,
    "pending": PENDING,
    "queued": PENDING,
    "pinning": PENDING,
    "failed": FAILED,
}

LEGACY_STATUS_NAMES: tuple[str, ...] = tuple(_LEGACY_STATUS_MAP)

# CONTRACT §1: where a pin's CAR lives on each type of backend.
_CAR_PATH_TEMPLATES: dict[str, str] = {
    "s3": "/s3-bucket/cars/{cid}.car",
    "github": "/github-repo/cars/{cid}.car",
    "storacha": "/storacha/{cid}.car",
    "huggingface": "/hf-repo/cars/{cid}.car",
    "ftp": "/ftp-storage/cars/{cid}.car",
    "sshfs": "/sshfs-mount/cars/{cid}.car",
}


def arrow_schema() -> pa.Schema:
    """The schema of every table and export: ``STORE_COLUMNS``, each an Arrow ``string``; the
    required ones are not nullable. Made on first use: the command line imports this module for
    STATUSES, and shell completion must not pay for importing pyarrow."""
    global _SCHEMA
    if _SCHEMA is None:
        import pyarrow as pa

        fields = [pa.field(name, pa.string(), nullable=name not in REQUIRED_COLUMNS) for name in STORE_COLUMNS]
        _SCHEMA = pa.schema(fields)
    return _SCHEMA


_SCHEMA: pa.Schema | None = None


# A time further ahead than this (another host's clock may run a little fast) was written by a clock
# that ran ahead: health shows it, verify takes it as due, backups are not ordered by it (issue #15).
FUTURE_TOLERANCE = timedelta(minutes=5)


def now_iso() -> str:
    """Current time as ISO-8601 UTC with microseconds, e.g. ``2026-11-24T19:09:23.123456+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def utc_stamp() -> str:
    """A UTC timestamp for backup file names, sortable as text: ``20261124T190923.123456Z``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


# Text already in the form normalize_timestamp returns; it only needs its ranges checked.
_CANONICAL_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00", re.ASCII)


def normalize_timestamp(value: object) -> str | None:
    """Turn a legacy timestamp (ISO text, or seconds since the epoch) into ISO-8601 UTC, or None."""
    if value is None or isinstance(value, bool):
        return None
    if type(value) is str and _CANONICAL_TIMESTAMP.fullmatch(value):
        try:
            datetime.fromisoformat(value)  # month 13 and the like still fail
        except ValueError:
            return None
        return value
    try:
        if isinstance(value, (int, float)):
            seconds = float(value) / 1000 if value > 1e11 else float(value)  # milliseconds in some files
            moment = datetime.fromtimestamp(seconds, timezone.utc)
        elif isinstance(value, str) and value.strip():
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
        else:
            return None
        return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")
    except (ValueError, OverflowError, OSError):  # out-of-range years overflow in astimezone too
        return None


def map_legacy_status(value: object) -> tuple[str, str | None]:
    """Map a legacy status to ours. Returns ``(status, original)``; ``original`` is set when the
    value was not one we know, so the caller keeps it in ``metadata.legacy_status``."""
    if value is None:
        return PENDING, None
    if type(value) is str and value in _LEGACY_STATUS_MAP:  # the usual spellings, as written
        return _LEGACY_STATUS_MAP[value], None
    text = str(value).strip().lower()
    if text in _LEGACY_STATUS_MAP:
        return _LEGACY_STATUS_MAP[text], None
    return PENDING, str(value)


def legacy_status_exact(value: object) -> str | None:
    """Our status for a legacy status spelled exactly as in the map (or absent: ``pending``), else
    None (``map_legacy_status`` decides). The batch reader's cheap case."""
    if value is None:
        return PENDING
    return _LEGACY_STATUS_MAP.get(value) if type(value) is str else None


def car_path_for(backend_type: str, backend_name: str, cid: str) -> str:
    template = _CAR_PATH_TEMPLATES.get(backend_type, "/{backend_name}/cars/{cid}.car")
    return template.format(cid=cid, backend_name=backend_name)


_METADATA_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# The C encoder behind _METADATA_ENCODER, made once instead of per call (json.dumps builds both every
# time). No circular-reference markers: nothing is shared between threads, and a cycle (which JSON-
# parsed metadata cannot hold) ends in RecursionError, which falls back to json.dumps' own message.
_C_METADATA_ENCODER = (
    json.encoder.c_make_encoder(
        None, _METADATA_ENCODER.default, json.encoder.encode_basestring, None, ":", ",", True, False, True
    )
    if json.encoder.c_make_encoder is not None
    else None
)


def dump_metadata(metadata: Mapping[str, Any] | None) -> str:
    """Metadata as the compact JSON object string stored in the ``metadata`` column."""
    if not metadata:
        return "{}"
    if type(metadata) is not dict:
        metadata = dict(metadata)
    if _C_METADATA_ENCODER is not None:
        try:
            return "".join(_C_METADATA_ENCODER(metadata, 0))
        except RecursionError:
            pass
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_metadata(text: str | None) -> dict[str, Any]:
    """Parse the ``metadata`` column; raises ValueError when it is not a JSON object."""
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("metadata is not a JSON object")
    return value


def make_record(
    cid: str,
    backend_name: str,
    backend_type: str,
    *,
    status: str = PENDING,
    created_at: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    car_file_path: str | None = None,
) -> dict[str, str]:
    """A complete record with defaults filled in. ``cid`` must already be validated."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    return {
        "cid": cid,
        "car_file_path": car_file_path or car_path_for(backend_type, backend_name, cid),
        "backend_name": backend_name,
        "created_at": created_at or now_iso(),
        "status": status,
        "metadata": dump_metadata(metadata),
    }


def record_problems(record: Mapping[str, Any]) -> list[str]:
    """What is wrong with a record read from disk (empty when it is sound). Used by verify-only."""
    from pinfs.data.cids import cid_problem  # local: schema stays importable without libipld at import

    problems: list[str] = []
    for column in REQUIRED_COLUMNS:
        if not isinstance(record.get(column), str):
            problems.append(f"{column} is missing or not a string")
    if problems:
        return problems
    cid_issue = cid_problem(record["cid"])
    if cid_issue:
        problems.append(f"cid {record['cid']!r}: {cid_issue}")
    if record["status"] not in STATUSES:
        problems.append(f"status {record['status']!r} is not one of {', '.join(STATUSES)}")
    if normalize_timestamp(record["created_at"]) is None:
        problems.append(f"created_at {record['created_at']!r} is not an ISO-8601 time")
    try:
        load_metadata(record["metadata"])
    except ValueError as exc:
        problems.append(f"metadata: {exc}")
    return problems
