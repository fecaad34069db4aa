"""Small helpers every operation uses: choosing backends and describing failures per backend."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pinfs.data.backends import Backend, discover_backends, get_backend, validate_backend_name
from pinfs.data.snapshots import PinSnapshot
from pinfs.data.store import PinStore
from pinfs.errors import CorruptData, InvalidInput, UnknownBackend, describe


def select_backends(root: Path, names: Sequence[str]) -> list[Backend]:
    """The backends named (validated, each must exist), or every backend of ``root`` when none is named.

    Raises InvalidInput for a malformed name and NotFound for a backend that does not exist, before
    anything is done, so a typo never runs an operation on the wrong set.
    """
    if not names:
        return discover_backends(root)[0]
    for name in names:
        validate_backend_name(name)
    return [get_backend(root, name) for name in dict.fromkeys(names)]


# A --backend-filter: a backend name, or a piece of one in any case (the seed's tool matched "S3" too).
_FILTER_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def match_backends(root: Path, filters: Sequence[str]) -> list[Backend]:
    """The backends ``--backend-filter`` selects (CONTRACT §3): for each filter, the backend of exactly
    that name, or else every backend whose name contains it (case-insensitive), as the seed's
    ``migrate-pin-mappings --backend-filter`` did. Every backend when no filter is given.

    Raises InvalidInput for a filter that cannot be part of a backend name, and NotFound naming the
    backends there are when a filter matches none, before anything is done.
    """
    if not filters:
        return discover_backends(root)[0]
    for text in filters:
        if not _FILTER_PATTERN.fullmatch(text):
            raise InvalidInput(f"invalid backend name or part of one: {text[:80]!r} (letters, digits, - and _)")
    backends = discover_backends(root)[0]
    chosen: dict[str, Backend] = {}
    for text in filters:
        exact = [backend for backend in backends if backend.name == text]
        found = exact or [backend for backend in backends if text.lower() in backend.name]
        if not found:
            names = ", ".join(backend.name for backend in backends) or "none"
            raise UnknownBackend(f"no backend matches {text!r} (backends: {names})")
        chosen.update((backend.name, backend) for backend in found)
    return sorted(chosen.values(), key=lambda backend: backend.name)


def discovery_problems(root: Path) -> list[dict[str, str]]:
    """Entries under the root that look like backends but are not usable (for reports)."""
    return [{"location": p.location, "reason": p.reason} for p in discover_backends(root)[1]]


def usable_snapshot(backend: Backend, entry: dict[str, Any]) -> PinSnapshot | None:
    """The backend's pins for sync and verify, or None (``entry`` then says it was skipped) when the
    backend is disabled. Raises CorruptData for a broken config or unreadable pins."""
    if not backend.enabled:
        entry.update(state="skipped", reason="disabled in its config")
        return None
    if backend.config_error:
        raise CorruptData(backend.config_error)
    return PinStore(backend).snapshot()


def error_entry(backend: Backend, error: BaseException) -> dict[str, Any]:
    """A per-backend report entry for a backend whose operation failed."""
    return {"backend": backend.name, "type": backend.type, "ok": False, "error": describe(error)}
