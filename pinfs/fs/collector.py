"""Python's cyclic garbage collector around the mount's start-up.

Why (issue #12 bench, a mount of 1M pins): a mount's start-up makes some hundreds of thousands of
objects that live as long as the process (modules; pyarrow's, deltalake's, trio's and pyfuse3's
objects). A full collection walks all of them: one ran in every mount's start-up (13-21 ms) and each
later one took 18-32 ms, in the middle of whatever lookup set it off. The mount command turns
collection off for its start-up, and once warmed up moves what exists into the permanent generation
(``gc.freeze``) and turns it on again: a full collection then walks only what was made since (0.15
ms in the same mount; logged through ``gc.callbacks``). Mount ready did not change measurably (0.571
against 0.581 s, 12 mounts of each in turn). Frozen objects are still freed by reference counting;
only cycles among them are never collected, and start-up makes few (what it makes is kept for the
process's life).

Threading: process-wide; both are called from the mount's main thread.
"""

from __future__ import annotations

import gc


def pause_collector_for_start_up() -> None:
    """Turn cyclic garbage collection off until ``freeze_start_up_objects`` (the mount command only,
    from its start: any other command runs with the collector as Python sets it)."""
    gc.disable()


def freeze_start_up_objects() -> None:
    """Move every object made so far out of the collector's walks, and turn collection on."""
    gc.freeze()
    gc.enable()
