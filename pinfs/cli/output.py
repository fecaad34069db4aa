"""Printing reports: JSON for scripts, text for people, progress bars only on a terminal."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from pinfs.data.backends import resolve_root
from pinfs.ops.progress import NullProgress, Progress


def root_of(args: argparse.Namespace) -> Any:
    return resolve_root(args.root)


def emit(args: argparse.Namespace, report: Any, human: Callable[[Any], str]) -> None:
    """Print ``report`` as JSON (``--json``) or as the text ``human`` makes of it."""
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=False, default=str)
        sys.stdout.write("\n")
    else:
        text = human(report)
        if text:
            print(text)


def exit_status(report: dict[str, Any]) -> int:
    return 0 if report.get("ok", True) else 1


class TerminalProgress:
    """A tqdm bar on stderr."""

    def __init__(self) -> None:
        self._bar: Any = None

    def start(self, label: str, total: int | None) -> None:
        from tqdm import tqdm

        self.finish()
        self._bar = tqdm(total=total, desc=label, unit="pin", file=sys.stderr, leave=False, dynamic_ncols=True)

    def advance(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(amount)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def make_progress(args: argparse.Namespace) -> Progress:
    """A progress bar when stderr is a terminal and output is for a person; otherwise nothing."""
    if not args.json and sys.stderr.isatty():
        return TerminalProgress()
    return NullProgress()


def counts_text(counts: dict[str, int]) -> str:
    """``3 stored, 1 failed``."""
    return ", ".join(f"{value} {name}" for name, value in counts.items())
