"""The composition root of the mount: builds the tree, control files, adapter and duties, serves.

What it is for: ``serve`` is the single async function that owns the mount's life. It mounts, routes
SIGINT/SIGTERM to ``pyfuse3.terminate``, runs ``pyfuse3.main`` and the background duties
(``pinfs.fs.duties``, ``pinfs.fs.kernel``) in one nursery, each teardown registered in its exit stack
right after what it tears down exists, and unmounts cleanly when the loop ended cleanly (s3ql
``mount.py``). If the loop fails, the mount is left for ``pinfs umount`` to clear (a dead endpoint says
loudly that something went wrong). The mount point's checks and unmounting are ``pinfs.fs.mountpoint``;
Arrow's set-up is ``pinfs.fs.warmup``.

What it must not do: read any data before the mount is ready (CONTRACT §2: ready in under a second
whatever the number of pins; everything is read lazily by the tree), or hold logic of the tree, the
adapter or the duties.

Threading: ``serve`` runs in the trio event loop on the main thread (signals need it); blocking work
happens in the adapter's and the duties' worker threads. On unmount the duties are cancelled; a
scheduled run in progress is abandoned (its writes are atomic and the backend lock dies with the
process), so SIGTERM unmounts at once even during a long sync. ``run`` then says that work was left
running (after a short grace), and the CLI ends the process with ``os._exit``: a normal exit would wait
in pyarrow's S3 finalizer for the abandoned request (up to its timeouts).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from pinfs.data.delta import deferred_checkpoints
from pinfs.data.snapshots import DEFAULT_CACHE
from pinfs.data.store import checkpoint_written
from pinfs.errors import PinfsError
from pinfs.fs.adapter import PinfsOperations
from pinfs.fs.collector import freeze_start_up_objects
from pinfs.fs.control import ControlRegistry
from pinfs.fs.duties import ExportDuty, ScheduledDuties
from pinfs.fs.kernel import KernelCache
from pinfs.fs.mountpoint import check_mountpoint, is_fd_mountpoint, is_mounted, unmount
from pinfs.fs.tree import PinTree
from pinfs.fs.versions import VersionWatch, records_for
from pinfs.fs.warmup import preload_tables, prepare_s3, prepare_s3_writes, use_jemalloc, warm_up_arrow
from pinfs.ops.carops import DeferExport

log = logging.getLogger(__name__)

# What the command line and the tests use from here (their homes are the modules named above).
__all__ = [
    "MountConfig",
    "check_mountpoint",
    "is_fd_mountpoint",
    "is_mounted",
    "run",
    "serve",
    "unmount",
    "use_jemalloc",
    "warm_up_arrow",
]

# A background duty: an async function run in the mount's nursery until the mount ends (it is
# cancelled then). It receives the data root.
Duty = Callable[[Path], Awaitable[None]]


@dataclass
class MountConfig:
    root: Path
    mountpoint: Path
    cache_mb: int = 256
    allow_other: bool = False
    debug: bool = False
    duties: Sequence[Duty] = field(default_factory=tuple)
    sync_interval: float | None = None  # seconds between scheduled syncs; None/<=0: off
    verify_interval: float | None = None  # seconds between scheduled verifies; None/<=0: off
    kernel_options: Sequence[str] = ()  # passed on as given (``-o ro``…: ``pinfs.cli.mount_helper``)


def mount_options(config: MountConfig) -> set[str]:
    """FUSE options. Without --allow-other only the mounting user can enter (the kernel's default);
    with it, the kernel checks modes (default_permissions) so 0600 control files stay the owner's.
    The mount's source (``findmnt``, ``df``) is the data root, as a disk's is its device."""
    options = {f"fsname={fsname(config.root)}", "subtype=pinfs", "noatime", *config.kernel_options}
    if config.allow_other:
        options |= {"allow_other", "default_permissions"}
    if config.debug:
        options.add("debug")
    return options


def fsname(root: Path) -> str:
    """The data root when FUSE can carry it (pyfuse3 passes options as ASCII, and a comma or backslash
    would end or escape the option), else ``pinfs``."""
    text = str(root)
    if text.isascii() and text.isprintable() and not any(char in text for char in ", \\"):
        return text
    return "pinfs"


# Worker threads for control commands and scheduled duties together (reads have their own).
COMMAND_THREADS = 4
# After unmounting, how long an abandoned duty may take to finish before the process exits anyway.
ABANDON_GRACE = 0.5


def build_operations(
    config: MountConfig,
    command_limiter: trio.CapacityLimiter | None = None,
    defer_exports: DeferExport | None = None,
) -> PinfsOperations:
    """The adapter over a fresh tree and control registry. Reads nothing from the data root."""
    # One cache for the tree and the operations its control files run (they make their PinStore without
    # one): a second, default-sized cache read by those runs grew the mount past --cache-mb.
    cache = DEFAULT_CACHE
    cache.limit(config.cache_mb << 20)
    controls = ControlRegistry(config.root, defer_car=defer_exports)
    tree = PinTree(config.root, cache, records_for(config.cache_mb))
    return PinfsOperations(tree, controls, command_limiter=command_limiter)


async def serve(config: MountConfig, ready: Callable[[], None] | None = None) -> bool:
    """Mount ``config.root`` at ``config.mountpoint`` and serve until unmounted or signalled.

    Returns True when, after unmounting, a scheduled duty's worker thread is still running (it was
    abandoned): the caller should then end the process without waiting for it (``os._exit``)."""
    limiter = trio.CapacityLimiter(COMMAND_THREADS)  # control commands and scheduled duties share it
    exports = ExportDuty()
    operations = build_operations(config, limiter, exports.defer)
    # Issue #19: the kernel keeps per-CID nodes for as long as their version is current; this duty
    # tells it when that changes, and control commands wait for it before their close() returns.
    watch = VersionWatch(operations.tree.root, operations.tree.cache, operations.tree.records)
    kernel_cache = KernelCache(operations.tree, operations.inodes, watch)
    operations.after_command = kernel_cache.sync
    scheduled = ScheduledDuties(config.sync_interval, config.verify_interval, limiter)
    scheduled.after_run = kernel_cache.sync
    duties: list[Duty] = [kernel_cache, exports, *config.duties]
    if scheduled.active:
        duties.append(scheduled)
    clean = False
    await trio.to_thread.run_sync(warm_up_arrow)
    freeze_start_up_objects()  # pinfs.fs.collector: what exists now lives as long as the mount
    await trio.to_thread.run_sync(preload_tables, operations.tree)
    prepare_s3(config.root)
    async with contextlib.AsyncExitStack() as stack:
        # The checkpoints this process's commits make due are written on a thread, not in the pins.
        stack.enter_context(deferred_checkpoints(after=checkpoint_written))
        # Last out: exports whose refresh was deferred after pin changes are written before exit,
        # once the mount is gone (``pinfs umount`` waits for this process to end).
        stack.push_async_callback(trio.to_thread.run_sync, exports.finish)
        stack.push_async_callback(trio.to_thread.run_sync, operations.readers.close)  # listings are over
        try:
            pyfuse3.init(operations, str(config.mountpoint), mount_options(config))
        except RuntimeError as exc:
            raise PinfsError(f"could not mount at {config.mountpoint} ({exc})") from None
        # Registered right after the mount exists: unmount only when the loop ended cleanly.
        stack.callback(lambda: pyfuse3.close(unmount=clean))
        stack.callback(operations.forget_all)
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(scheduled.close)  # before the nursery ends: no scheduled run starts any more
        nursery.start_soon(_route_signals)
        for duty in duties:
            nursery.start_soon(duty, config.root)
        if ready is not None:
            ready()
        nursery.start_soon(prepare_s3_writes, config.root)  # after ready: reads first (issue #13)
        log.info("serving %s at %s", config.root, config.mountpoint)
        await pyfuse3.main()
        clean = True
        nursery.cancel_scope.cancel()
    if not scheduled.active:
        return False
    return not await trio.to_thread.run_sync(scheduled.wait_idle, ABANDON_GRACE)


async def _route_signals() -> None:
    """SIGINT/SIGTERM end the FUSE loop; ``serve`` then unmounts cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for number in signals:
            log.info("signal %s: unmounting", signal.Signals(number).name)
            pyfuse3.terminate()
            return


def run(config: MountConfig, ready: Callable[[], None] | None = None) -> bool:
    """Serve in the foreground until unmounted (blocking). True when work was left running on a
    worker thread (see ``serve``)."""
    return trio.run(serve, config, ready)
