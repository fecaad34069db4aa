"""The composition root of the mount: builds the tree, control files and adapter, serves, unmounts.

What it is for: ``serve`` is the single async function that owns the mount's life. It mounts, routes
SIGINT/SIGTERM to ``pyfuse3.terminate``, runs ``pyfuse3.main`` and any background duties in one
nursery, and unmounts cleanly when the loop ended cleanly (s3ql ``mount.py``). If the loop fails, the
mount is left for ``pinfs umount`` to clear (a dead endpoint says loudly that something went wrong).
``unmount`` is the other half: ``fusermount3 -u``, or ``-uz`` when the process behind the mount died.

What it must not do: read any data before the mount is ready (CONTRACT §2: ready in under a second
whatever the number of pins; everything is read lazily by the tree), or hold logic of the tree or
the adapter.

Threading: ``serve`` runs in the trio event loop on the main thread (signals need it); blocking work
happens in the adapter's worker threads. Background duties (``MountConfig.duties``, e.g. scheduled
sync/verify) are nursery tasks; each gets the tree's root and must wait on trio primitives, never
block the loop.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from pinfs.errors import InvalidInput, NotFound, PinfsError
from pinfs.fs.adapter import PinfsOperations
from pinfs.fs.control import ControlRegistry
from pinfs.fs.tree import PinTree
from pinfs.store import DEFAULT_CACHE_ENTRIES, StoreCache

log = logging.getLogger(__name__)

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


def mount_options(config: MountConfig) -> set[str]:
    """FUSE options. Without --allow-other only the mounting user can enter (the kernel's default);
    with it, the kernel checks modes (default_permissions) so 0600 control files stay the owner's."""
    options = {"fsname=pinfs", "subtype=pinfs", "noatime"}
    if config.allow_other:
        options |= {"allow_other", "default_permissions"}
    if config.debug:
        options.add("debug")
    return options


def build_operations(config: MountConfig) -> PinfsOperations:
    """The adapter over a fresh tree and control registry. Reads nothing from the data root."""
    cache = StoreCache(max_bytes=config.cache_mb << 20, max_entries=DEFAULT_CACHE_ENTRIES)
    return PinfsOperations(PinTree(config.root, cache), ControlRegistry(config.root))


def check_mountpoint(mountpoint: Path) -> None:
    """Raise NotFound / InvalidInput when ``mountpoint`` cannot be mounted on."""
    if not mountpoint.is_dir():
        raise NotFound(f"mount point {mountpoint} is not an existing directory")
    if os.path.ismount(mountpoint) or is_mounted(mountpoint):
        raise InvalidInput(f"{mountpoint} is already a mount point; 'pinfs umount {mountpoint}' first")


async def serve(config: MountConfig, ready: Callable[[], None] | None = None) -> None:
    """Mount ``config.root`` at ``config.mountpoint`` and serve until unmounted or signalled."""
    operations = build_operations(config)
    clean = False
    async with contextlib.AsyncExitStack() as stack:
        try:
            pyfuse3.init(operations, str(config.mountpoint), mount_options(config))
        except RuntimeError as exc:
            raise PinfsError(f"could not mount at {config.mountpoint} ({exc})") from None
        # Registered right after the mount exists: unmount only when the loop ended cleanly.
        stack.callback(lambda: pyfuse3.close(unmount=clean))
        stack.callback(operations.forget_all)
        nursery = await stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(_route_signals)
        for duty in config.duties:
            nursery.start_soon(duty, config.root)
        if ready is not None:
            ready()
        log.info("serving %s at %s", config.root, config.mountpoint)
        await pyfuse3.main()
        clean = True
        nursery.cancel_scope.cancel()


async def _route_signals() -> None:
    """SIGINT/SIGTERM end the FUSE loop; ``serve`` then unmounts cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for number in signals:
            log.info("signal %s: unmounting", signal.Signals(number).name)
            pyfuse3.terminate()
            return


def run(config: MountConfig, ready: Callable[[], None] | None = None) -> None:
    """Serve in the foreground until unmounted (blocking)."""
    trio.run(serve, config, ready)


# -- unmounting --


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \\ooo (octal).
    out, index = [], 0
    while index < len(field):
        if field[index] == "\\" and index + 3 < len(field) and field[index + 1 : index + 4].isdigit():
            out.append(chr(int(field[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def is_mounted(mountpoint: Path) -> bool:
    """Whether ``mountpoint`` is in the mount table (true also for a dead FUSE endpoint)."""
    target = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            return any(_unescape(line.split()[4]) == target for line in table if len(line.split()) > 4)
    except OSError:
        return os.path.ismount(target)


def _connected(mountpoint: str) -> bool:
    try:
        os.stat(mountpoint)
    except OSError as exc:
        return exc.errno != errno.ENOTCONN
    return True


def unmount(mountpoint: Path) -> str:
    """Unmount ``mountpoint``; lazily (``-uz``) when the process behind it is gone. Returns how.

    Raises NotFound when nothing is mounted there and PinfsError when unmounting fails.
    """
    target = os.path.abspath(mountpoint)
    if not is_mounted(Path(target)):
        raise NotFound(f"{target} is not mounted")
    attempt = _fusermount("-u", target)
    if attempt.returncode == 0:
        return "unmounted"
    if not _connected(target) or "not connected" in attempt.stderr.lower():
        lazy = _fusermount("-uz", target)
        if lazy.returncode == 0:
            return "unmounted (lazily: the process serving it had gone)"
        attempt = lazy
    message = (attempt.stderr.strip().splitlines() or [f"fusermount3 exited {attempt.returncode}"])[-1]
    raise PinfsError(f"could not unmount {target}: {message}")


def _fusermount(flags: str, target: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["fusermount3", flags, target], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise PinfsError("fusermount3 is not installed (package fuse3)") from None
