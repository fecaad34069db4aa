"""The files of one pin (``by-cid/<cid>/…``), made from its record (CONTRACT §2).

What it is for: the bytes of each per-CID file and the time they carry. Pure functions over a record
dictionary; no disk, no threading concerns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from pinfs.data.schema import load_metadata
from pinfs.errors import NotFound
from pinfs.fs.tree.names import RECORD_VALUE_FILES


def record_file_bytes(record: Mapping[str, Any], name: str) -> bytes:
    """The content of one per-CID file (CONTRACT §2): a value + "\\n", or pretty JSON."""
    if name in RECORD_VALUE_FILES:
        value = record.get(name)
        return (("" if value is None else str(value)) + "\n").encode()
    metadata = _metadata_of(record)
    if name == "metadata.json":
        return pretty(metadata)
    if name == "pin.json":
        return pretty({**record, "metadata": metadata})
    raise NotFound(f"no file {name!r} for a pin")


def _metadata_of(record: Mapping[str, Any]) -> Any:
    try:
        return load_metadata(record.get("metadata"))
    except ValueError:
        return record.get("metadata")  # not an object on disk: shown as the string it is


def pretty(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode()


def record_mtime(record: Mapping[str, Any], fallback_ns: int) -> int:
    """The time a pin's files carry: its newest own timestamp (``created_at``, ``updated_at``,
    ``verified_at``; every change pinfs makes moves one of them), so a file keeps its mtime from one
    version to the next while its record does not change (issue #19: ``rsync``, ``make``)."""
    newest = 0
    for name in ("created_at", "updated_at", "verified_at"):
        value = record.get(name)
        if not isinstance(value, str) or not value:
            continue
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        newest = max(newest, int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000)
    return newest or fallback_ns
