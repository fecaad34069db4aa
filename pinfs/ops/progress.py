"""Progress reporting for long operations, independent of how it is shown.

Operations call ``progress.start(label, total)``, ``progress.advance(n)`` and ``progress.finish()``;
the CLI passes a terminal progress bar (tqdm, on stderr, only when stderr is a terminal), the mount and
tests pass nothing and get ``NullProgress``.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, label: str, total: int | None) -> None: ...

    def advance(self, amount: int = 1) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """Progress that shows nothing."""

    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass
