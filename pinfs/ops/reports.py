"""Health, status, insights and per-backend summaries (placeholder: being written; signatures fixed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def health(root: Path) -> dict[str, Any]:
    raise NotImplementedError


def status(root: Path, detailed: bool = False) -> dict[str, Any]:
    raise NotImplementedError


def insights(root: Path) -> dict[str, Any]:
    raise NotImplementedError


def backend_summary(root: Path, backend_name: str) -> dict[str, Any]:
    """CONTRACT §2 summary.json: {"backend","type","count","by_status":{...},"source",...}."""
    raise NotImplementedError
