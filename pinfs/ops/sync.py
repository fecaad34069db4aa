"""Sync (placeholder: being written; signature is fixed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinfs.ops.progress import Progress


@dataclass
class SyncOptions:
    backends: list[str] = field(default_factory=list)  # empty: every backend
    dry_run: bool = False


def sync(root: Path, options: SyncOptions, progress: Progress | None = None) -> dict[str, Any]:
    raise NotImplementedError("sync is not written yet")
