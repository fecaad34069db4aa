"""Verify (placeholder: being written; signature is fixed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinfs.ops.progress import Progress


@dataclass
class VerifyOptions:
    backends: list[str] = field(default_factory=list)  # empty: every backend
    older_than_days: float = 7.0
    deep: bool = False


def verify(root: Path, options: VerifyOptions, progress: Progress | None = None) -> dict[str, Any]:
    raise NotImplementedError("verify is not written yet")
