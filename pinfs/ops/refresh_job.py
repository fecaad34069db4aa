"""A deferred export refresh in a process of its own, at a lower CPU priority.

What the mount's export duty runs (``pinfs.fs.duties``) once pin changes to a big backend pause:
``refresh_deferred`` (merge the insert file when due, bring ``pin_mappings.parquet`` and
``pin_mappings.car`` up to the table, maintain when due). In the mount's own process it would compete
with pins through control files: the CAR encoder holds the GIL much of its ~2 s at 1M pins, and its
buffers would count in the mount's RSS. A child process at niceness ``NICENESS`` leaves the mount its
cores and its memory; the table's commit protocol and the export lock make it one more writer like
any CLI command.

``python -m pinfs.ops.refresh_job ROOT BACKEND`` exits 0 when done, and 1 with one line on stderr for
a failure the caller tries again later (a full disk, a read-only root: issue #15).
"""

from __future__ import annotations

import os
import subprocess
import sys

from pinfs.data.backends import Backend, get_backend
from pinfs.data.rootfs import as_path
from pinfs.errors import PinfsError, describe
from pinfs.ops.carops import refresh_deferred

# How much lower than the mount the refresh runs (added to the mount's own niceness).
NICENESS = 10
FAILED = 1


class RefreshFailed(PinfsError):
    """The refresh process failed; the message is its one line."""


def refresh_in_child(backend: Backend) -> None:
    """``refresh_deferred(backend)`` in a child process at lower priority; waits for it. Raises
    RefreshFailed with the child's reason when it failed."""
    root = backend.directory.parent.parent
    command = [sys.executable, "-m", __name__, str(root), backend.name]
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise RefreshFailed(f"refreshing the exports of {backend.name}: {reason}")


def main(argv: list[str]) -> int:
    root, name = argv
    os.nice(NICENESS)
    try:
        refresh_deferred(get_backend(as_path(root), name))
    except (PinfsError, OSError) as exc:
        print(describe(exc), file=sys.stderr)
        return FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
