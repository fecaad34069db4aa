"""Pin and unpin, look up and list pins: the operations behind ``pinfs pin …``, ``pinfs find`` and the
mount's ``pin``/``unpin`` control files.

A batch is one write: every request is validated first (InvalidInput names the bad line and nothing
changes), then one commit to the backend's table rewrites only the files holding the batch's CIDs, and
the exports follow (``pinfs.ops.carops``: at once, or for a big backend in the mount, once writes pause).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinfs.data.backends import Backend, discover_backends, ensure_backend_dir, get_backend
from pinfs.data.cids import cid_key, remembering, validate_cid
from pinfs.data.readers import READERS
from pinfs.data.schema import REQUIRED_COLUMNS, STATUSES, dump_metadata, load_metadata, make_record, now_iso
from pinfs.data.store import PinStore, Transaction
from pinfs.errors import CorruptData, InvalidInput, NotFound, PinfsError, describe
from pinfs.ops.carops import DeferExport, change_pins

DeferCar = DeferExport

# CONTRACT §2: one control-file line is at most 4 KiB.
MAX_LINE_BYTES = 4096
_META_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass
class PinRequest:
    """One pin to add. ``status`` None keeps an existing pin's status (new pins are ``pending``)."""

    cid: str
    status: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


# -- parsing (shared by the CLI and the control files) --


def parse_status(value: str, where: str = "") -> str:
    if value not in STATUSES:
        raise InvalidInput(f"{where}status must be one of {', '.join(STATUSES)}, not {value!r}")
    return value


def parse_meta(assignment: str, where: str = "") -> tuple[str, str]:
    """``key=value`` → (key, value); keys are letters, digits, ``_ - .``."""
    key, sep, value = assignment.partition("=")
    if not sep or not key or not set(key) <= _META_KEY_CHARS:
        raise InvalidInput(
            f"{where}metadata must be KEY=VALUE with KEY of letters, digits, '_', '-', '.': {assignment!r}"
        )
    return key, value


def parse_pin_line(line: str, where: str = "") -> PinRequest:
    """``<cid> [status=S] [meta.<key>=<value>]…`` → PinRequest; InvalidInput for anything else."""
    words = line.split()
    if not words:
        raise InvalidInput(f"{where}empty pin line")
    request = PinRequest(cid=_cid(words[0], where))
    for word in words[1:]:
        name, sep, value = word.partition("=")
        if name == "status" and sep:
            request.status = parse_status(value, where)
        elif name.startswith("meta.") and sep:
            key, meta_value = parse_meta(word[len("meta.") :], where)
            request.metadata[key] = meta_value
        else:
            raise InvalidInput(f"{where}unknown word {word!r}{_pin_word_hint(name, sep, value)}")
    return request


def _pin_word_hint(name: str, sep: str, value: str) -> str:
    """`` (did you mean 'status=pending'?)`` for a near miss (issue #16), else what a pin line takes."""
    if sep and difflib.get_close_matches(name, ["status"], n=1, cutoff=0.6):
        return f" (did you mean {'status=' + value!r}?)"
    if difflib.get_close_matches(name.partition(".")[0], ["meta"], n=1, cutoff=0.6) and "." in name:
        return f" (did you mean {'meta.' + name.partition('.')[2] + sep + value!r}?)"
    return " (a pin line is: CID [status=stored|pending|failed] [meta.KEY=VALUE]...)"


def _cid(text: str, where: str) -> str:
    try:
        return validate_cid(text)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}{exc}") from None


def _lines(text: str, first_line: int = 1) -> Iterator[tuple[int, str]]:
    """The non-blank lines of ``text`` with their numbers, the first being ``first_line`` (a control
    file's input is checked as it arrives: a later write's lines go on from the earlier ones')."""
    for number, line in enumerate(text.splitlines(), start=first_line):
        if len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
            raise InvalidInput(f"line {number}: longer than {MAX_LINE_BYTES} bytes")
        if line.strip():
            yield number, line


def parse_pin_lines(text: str, first_line: int = 1) -> list[PinRequest]:
    """Every non-blank line a pin; the whole batch is validated before it is returned. Errors name the
    line's number, counted from ``first_line``."""
    return [parse_pin_line(line, f"line {number}: ") for number, line in _lines(text, first_line)]


def parse_unpin_lines(text: str, first_line: int = 1) -> list[str]:
    """One CID per non-blank line (numbered from ``first_line`` in errors)."""
    cids = []
    for number, line in _lines(text, first_line):
        words = line.split()
        if len(words) != 1:
            raise InvalidInput(f"line {number}: expected exactly one CID, got {len(words)} words")
        cids.append(_cid(words[0], f"line {number}: "))
    return cids


# -- writing --


def add_pins(
    root: Path, backend_name: str, requests: Sequence[PinRequest], *, defer_car: DeferCar | None = None
) -> dict[str, Any]:
    """Add or update pins in one backend, in one write. Existing pins keep their creation time and
    CAR path; their status changes only if the request names one; metadata keys are merged.
    ``defer_car`` (the mount's) takes over refreshing a big backend's exports (``pinfs.ops.carops``)."""
    if not requests:
        raise InvalidInput("no pins given")
    backend = get_backend(root, backend_name)
    ensure_backend_dir(backend)  # a backend known only from its config gets its directory on first pin
    with remembering():  # each CID decoded once, for its identity and its lookup
        return _add_pins(backend, requests, defer_car)


def _add_pins(backend: Backend, requests: Sequence[PinRequest], defer_car: DeferCar | None) -> dict[str, Any]:
    batch = _by_identity(requests)

    def body(txn: Transaction) -> dict[str, Any]:
        existing = txn.records_by_identity(list(batch))
        added: list[str] = []
        updated: list[str] = []
        unchanged: list[str] = []
        replacements = {}
        now = now_iso()
        for cid, request in batch.items():
            old = existing.get(cid)
            record = _apply_request(backend, request, old, now)
            if old is None:
                added.append(cid)
            elif any(record.get(column) != old.get(column) for column in REQUIRED_COLUMNS):
                updated.append(record["cid"])  # the spelling stored, which stays (issue #16)
            else:
                unchanged.append(record["cid"])
                continue
            replacements[record["cid"]] = record
        total = txn.update(replacements)
        report = {"ok": True, "backend": backend.name, "added": added, "updated": updated, "unchanged": unchanged}
        return {**report, "total": total}

    return change_pins(backend, body, defer_car)


def _by_identity(requests: Sequence[PinRequest]) -> dict[str, PinRequest]:
    """One request per CID, however it is spelled (issue #16): the first spelling names it; a later
    line's status wins and its metadata is merged in, as a second pin of the CID would."""
    batch: dict[str, PinRequest] = {}
    spelling: dict[str, str] = {}  # identity key -> first spelling
    for request in requests:
        first = spelling.setdefault(cid_key(request.cid), request.cid)
        earlier = batch.get(first)
        if earlier is None:
            batch[first] = PinRequest(first, request.status, dict(request.metadata))
        else:
            earlier.status = request.status or earlier.status
            earlier.metadata.update(request.metadata)
    return batch


def _apply_request(backend: Backend, request: PinRequest, old: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    if old is None:
        return make_record(
            request.cid,
            backend.name,
            backend.type,
            status=request.status or "pending",
            metadata=request.metadata,
            created_at=now,
        )
    record = dict(old)
    if request.status:
        record["status"] = request.status
    if request.metadata:
        record["metadata"] = dump_metadata({**_metadata_or_empty(old), **request.metadata})
    record["updated_at"] = None  # merge_records stamps it
    return record


def _metadata_or_empty(record: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return load_metadata(record.get("metadata"))
    except ValueError:
        return {}


def remove_pins(
    root: Path, backend_name: str, cids: Sequence[str], *, defer_car: DeferCar | None = None
) -> dict[str, Any]:
    """Remove pins from one backend in one write. If any CID is not pinned there, nothing changes
    and NotFound names it."""
    if not cids:
        raise InvalidInput("no CIDs given")
    backend = get_backend(root, backend_name)
    wanted = list(dict.fromkeys(cids))
    request = request_key("unpin", wanted)

    def body(txn: Transaction) -> dict[str, Any]:
        found = txn.records_by_identity(wanted)  # any spelling of a pinned CID removes it (issue #16)
        missing = [cid for cid in wanted if cid not in found]
        if missing:
            done = _done_before(txn, request) if len(missing) == len(wanted) else None
            if done is None:
                raise NotFound(f"{missing[0]} is not pinned in backend {backend.name!r}" + _and_more(missing))
            total = txn.update({})
            return {"ok": True, "backend": backend.name, "removed": [], "already_removed": done, "total": total}
        removed = list(dict.fromkeys(str(found[cid]["cid"]) for cid in wanted))
        total = txn.update({}, removals=removed, request=request)
        return {"ok": True, "backend": backend.name, "removed": removed, "total": total}

    return change_pins(backend, body, defer_car)


def request_key(operation: str, cids: Sequence[str]) -> str:
    """A digest of a request (its operation and CIDs, in any order) for the commit that carries it out."""
    digest = hashlib.sha256(operation.encode())
    for cid in sorted(set(cids)):
        digest.update(b"\n" + cid.encode())
    return digest.hexdigest()[:32]


def _done_before(txn: Transaction, request: str) -> int | None:
    """The version at which the same request was committed lately, if it was: a retried ``pin rm``
    (issue #15: its commit went in, its exports failed, the user runs it again) then succeeds."""
    if txn.state() is None:
        return None
    try:
        return txn.store.table.version_of_request(request)
    except (PinfsError, OSError):
        return None


def _and_more(items: Sequence[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


# -- reading --


def public_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record for people and scripts: the six fields (metadata as an object) plus extra columns set."""
    result: dict[str, Any] = {name: record.get(name) for name in REQUIRED_COLUMNS}
    try:
        result["metadata"] = load_metadata(record.get("metadata"))
    except ValueError:
        result["metadata"] = {"_unparsed": record.get("metadata")}
    result.update({k: v for k, v in record.items() if k not in REQUIRED_COLUMNS and v is not None})
    return result


def _backends_to_search(root: Path, backend_name: str | None) -> list[Backend]:
    return [get_backend(root, backend_name)] if backend_name else discover_backends(root)[0]


def find_cid(root: Path, cid: str, backend_name: str | None = None) -> dict[str, Any]:
    """Every backend holding ``cid``, with its record. NotFound when none does. A backend whose files
    cannot be read is listed under ``errors`` and does not stop the search."""
    validate_cid(cid)
    holders: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for backend in _backends_to_search(root, backend_name):
        try:
            record = PinStore(backend).snapshot().find(cid)  # any spelling (issue #16)
        except PinfsError as exc:
            errors.append({"backend": backend.name, "error": describe(exc)})
            continue
        if record is not None:
            holders.append({"backend": backend.name, "type": backend.type, **public_record(record)})
    if not holders and errors and backend_name:
        raise CorruptData(errors[0]["error"])  # the one backend asked about cannot be read: say why
    if not holders:
        where = f"backend {backend_name!r}" if backend_name else "any backend"
        unread = f" (unreadable: {'; '.join(error['error'] for error in errors)})" if errors else ""
        raise NotFound(f"{cid} is not pinned in {where}{unread}")
    return {"ok": True, "cid": cid, "backends": holders, "errors": errors}


def iter_pins(
    root: Path,
    backend_name: str | None = None,
    status: str | None = None,
    on_error: Callable[[Backend, BaseException], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every pin (optionally of one backend and/or status), streamed one row group at a time.

    A backend that cannot be read (or stops being readable part way) is passed to ``on_error`` and the
    others are listed (issue #15, item 7: one broken backend never hides the rest); without
    ``on_error``, its error is raised."""
    if status is not None:
        parse_status(status)
    for backend in _backends_to_search(root, backend_name):
        try:
            snapshot = PinStore(backend).snapshot()
            with READERS.reading(snapshot.identity):  # a pipe to a pager may take its time: files kept
                for record in snapshot.iter_records(status):
                    yield public_record(record)
        except (PinfsError, OSError) as exc:
            if on_error is None or backend_name is not None:
                raise
            on_error(backend, exc)
