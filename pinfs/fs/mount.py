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
block the loop. ``ScheduledDuties`` is the one pinfs itself adds (``--sync-interval``,
``--verify-interval``): it sleeps on a ``trio.Event`` under ``move_on_after`` until a duty is due, runs
``pinfs.ops.schedule.run_due_duties`` on a worker thread under the same CapacityLimiter as the control
commands, logs what happened and goes back to sleep. It never ends the mount: every error is logged.
On unmount it is cancelled; a run in progress is abandoned (its writes are atomic and the backend lock
dies with the process), so SIGTERM unmounts at once even during a long sync. ``run`` then says that
work was left running (after a short grace), and the CLI ends the process with ``os._exit``: a normal
exit would wait in pyarrow's S3 finalizer for the abandoned request (up to its timeouts).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from pinfs.errors import Busy, InvalidInput, NotFound, PinfsError
from pinfs.fs.adapter import PinfsOperations
from pinfs.fs.control import ControlRegistry
from pinfs.fs.kernel import KernelCache
from pinfs.fs.tree import PinTree
from pinfs.fs.versions import VersionWatch
from pinfs.fsutil import unescape_mountinfo
from pinfs.ops.carops import DEFERRED_EXPORTS
from pinfs.snapshots import DEFAULT_CACHE_ENTRIES, StoreCache

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


def build_operations(config: MountConfig, command_limiter: trio.CapacityLimiter | None = None) -> PinfsOperations:
    """The adapter over a fresh tree and control registry. Reads nothing from the data root."""
    cache = StoreCache(max_bytes=config.cache_mb << 20, max_entries=DEFAULT_CACHE_ENTRIES)
    controls = ControlRegistry(config.root, defer_car=DEFERRED_EXPORTS.defer)
    return PinfsOperations(PinTree(config.root, cache), controls, command_limiter=command_limiter)


def _enabled(interval: float | None) -> bool:
    return interval is not None and interval > 0


class ScheduledDuties:
    """The ``--sync-interval``/``--verify-interval`` duty: a nursery task (call it with the root)."""

    def __init__(
        self,
        sync_interval: float | None,
        verify_interval: float | None,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.sync_interval = sync_interval if _enabled(sync_interval) else None
        self.verify_interval = verify_interval if _enabled(verify_interval) else None
        self.limiter = limiter
        self.last_runs: dict[str, float] = {}  # time.monotonic() of each duty's last run
        self._wake = trio.Event()
        # Runs on worker threads (an abandoned one may still be going after unmount), and whether the
        # mount is closing (a run whose thread starts only then does nothing).
        self._threads = threading.Condition()
        self._running = 0
        self._closing = False

    @property
    def active(self) -> bool:
        return self.sync_interval is not None or self.verify_interval is not None

    def wake(self) -> None:
        """Check now whether a duty is due (from the event loop's thread)."""
        self._wake.set()

    def close(self) -> None:
        """No new run starts from now on (the mount is ending)."""
        with self._threads:
            self._closing = True

    def wait_idle(self, timeout: float) -> bool:
        """Wait (blocking) until no run is on a worker thread; False when one still is after ``timeout``."""
        with self._threads:
            return self._threads.wait_for(lambda: self._running == 0, timeout)

    def _run_due(self, root: Path) -> dict | None:
        """The worker thread's side: run what is due, unless the mount is closing."""
        from pinfs.ops.schedule import run_due_duties

        with self._threads:
            if self._closing:
                return None
            self._running += 1
        try:
            return run_due_duties(root, self.last_runs, self.sync_interval, self.verify_interval)
        finally:
            with self._threads:
                self._running -= 1
                self._threads.notify_all()

    async def __call__(self, root: Path) -> None:
        from pinfs.ops.schedule import seconds_until_due

        if not self.active:
            return
        started = time.monotonic()  # the first run is one interval after the mount started
        for name, interval in (("sync", self.sync_interval), ("verify", self.verify_interval)):
            if interval is not None:
                self.last_runs.setdefault(name, started)
        log.info("scheduled duties: sync every %s s, verify every %s s", self.sync_interval, self.verify_interval)
        while True:
            wait = seconds_until_due(self.last_runs, self.sync_interval, self.verify_interval)
            if wait is None:
                return
            with trio.move_on_after(wait):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.run_once(root)

    async def run_once(self, root: Path) -> dict | None:
        """Run whatever is due on a worker thread and log it; never raises (but for cancellation)."""
        try:
            outcome = await trio.to_thread.run_sync(
                self._run_due,
                root,
                abandon_on_cancel=True,  # unmounting must not wait for a long sync
                limiter=self.limiter,
            )
        except Exception:  # the mount outlives any duty
            log.exception("scheduled duties failed")
            now = time.monotonic()  # wait a whole interval before trying again, not spin
            for name in ("sync", "verify"):
                if name in self.last_runs:
                    self.last_runs[name] = now
            return None
        if outcome is None:
            return None
        for name, report in outcome["ran"].items():
            _log_duty(name, report)
        return outcome


def _log_duty(name: str, report: dict) -> None:
    """One line per duty run, and one warning per backend (or run) that failed."""
    if not isinstance(report, dict):
        log.warning("scheduled %s: unexpected report %r", name, report)
        return
    if report.get("error") and not report.get("backends"):
        log.warning("scheduled %s failed: %s", name, report["error"])
        return
    log.info("scheduled %s: ok=%s totals=%s", name, report.get("ok"), report.get("totals"))
    for entry in report.get("backends") or []:
        if entry.get("ok", True):
            continue
        problems = entry.get("error") or "; ".join(
            f"{item.get('cid')}: {item.get('error')}" for item in (entry.get("failed") or [])[:3]
        )
        log.warning("scheduled %s: backend %s: %s", name, entry.get("backend"), problems or entry.get("state"))
    for backup in report.get("backups") or []:
        if not backup.get("ok", True):
            log.warning("scheduled %s: backup to %s failed: %s", name, backup.get("target"), backup.get("error"))


def is_fd_mountpoint(mountpoint: Path) -> bool:
    """``/dev/fd/N``: a FUSE device already mounted by the caller (mount.fuse3 -o drop_privileges)."""
    return re.fullmatch(r"/dev/fd/\d+", str(mountpoint)) is not None


def check_mountpoint(mountpoint: Path, *, nonempty: bool = False) -> None:
    """Raise InvalidInput (exit 2) when ``mountpoint`` cannot be mounted on: not a directory, a mount
    already, or (unless ``nonempty``) a directory with entries, which the mount would hide (issue #16:
    libfuse 3 mounts over them without a word)."""
    if is_fd_mountpoint(mountpoint):
        return
    # The mount table first: stat of a mount whose process died fails (ENOTCONN).
    if is_mounted(mountpoint) and not _connected(os.path.abspath(mountpoint)):
        raise InvalidInput(
            f"{mountpoint} is a mount whose process has gone (transport endpoint is not connected); "
            f"run 'pinfs umount {mountpoint}' to clear it, then mount again"
        )
    if is_mounted(mountpoint) or os.path.ismount(mountpoint):
        raise InvalidInput(f"{mountpoint} is already a mount point; 'pinfs umount {mountpoint}' first")
    try:
        is_dir = stat.S_ISDIR(os.stat(mountpoint).st_mode)
    except OSError:
        is_dir = False
    if not is_dir:
        raise InvalidInput(f"mount point {mountpoint} is not an existing directory")
    if not nonempty:
        with contextlib.suppress(OSError), os.scandir(mountpoint) as entries:
            if next(entries, None) is not None:
                raise InvalidInput(
                    f"mount point {mountpoint} is not empty: mounting would hide what is in it; use an empty "
                    "directory, or give --nonempty (-o nonempty) to mount over it anyway"
                )


def warm_up_arrow() -> None:
    """Before the mount answers: pick the Arrow memory pool (``use_jemalloc``), settle pyarrow's
    pandas probe, import deltalake and read a parquet file from memory, so that the first CID lookup
    pays for none of them.

    pyarrow imports pandas the first time it converts a Python value, only to ask whether the value
    is a pandas object (its ``pandas_api`` shim). The mount never hands it one, and the import cost
    the mount 0.1-0.35 s before it was ready and ~40 MB of RSS (issue #12 bench). So the probe is made
    here while ``import pandas`` fails: the shim then answers "not pandas" without importing it, and
    still imports pandas if anything later really converts to pandas (it retries then). deltalake
    (~30 ms) was imported by the first lookup, which reads the table's log."""
    import sys

    import pyarrow as pa

    use_jemalloc()
    sys.meta_path.insert(0, _NO_PANDAS)
    try:
        pa.scalar("", pa.string())
    finally:
        sys.meta_path.remove(_NO_PANDAS)
    import deltalake  # noqa: F401
    import pyarrow.parquet as pq

    # A parquet round trip in memory: the first row group a process reads costs a few ms more than
    # the next ones (reader and codec set-up), which the first lookup would pay.
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"cid": pa.array([""], pa.string())}), sink)
    pq.ParquetFile(pa.BufferReader(sink.getvalue())).read_row_group(0)


class _NoPandasFinder:
    """An import finder under which ``import pandas`` fails (``warm_up_arrow``)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ImportError("pandas is not imported by the mount")


_NO_PANDAS = _NoPandasFinder()


def use_jemalloc() -> str:
    """Make jemalloc Arrow's memory pool in this process, unless the user chose one
    (``ARROW_DEFAULT_MEMORY_POOL``) or pyarrow was built without it; returns the pool in use.

    Why (issue #6, measured on the 1M x 3 benchmark): with the default mimalloc, buffers freed on the
    mount's worker threads stay in per-thread heaps, and the mount's RSS sat 150-200 MB above what its
    read cache holds; jemalloc hands pages back to the system within a second or so."""
    import pyarrow as pa

    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        with contextlib.suppress(NotImplementedError):
            pa.set_memory_pool(pa.jemalloc_memory_pool())
    return pa.default_memory_pool().backend_name


async def serve(config: MountConfig, ready: Callable[[], None] | None = None) -> bool:
    """Mount ``config.root`` at ``config.mountpoint`` and serve until unmounted or signalled.

    Returns True when, after unmounting, a scheduled duty's worker thread is still running (it was
    abandoned): the caller should then end the process without waiting for it (``os._exit``)."""
    limiter = trio.CapacityLimiter(COMMAND_THREADS)  # control commands and scheduled duties share it
    operations = build_operations(config, limiter)
    # Issue #19: the kernel keeps per-CID nodes for as long as their version is current; this duty
    # tells it when that changes, and control commands wait for it before their close() returns.
    watch = VersionWatch(operations.tree.root, operations.tree.cache, operations.tree.records)
    kernel_cache = KernelCache(operations.tree, operations.inodes, watch)
    operations.after_command = kernel_cache.sync
    duties = [kernel_cache, *config.duties]
    scheduled = ScheduledDuties(config.sync_interval, config.verify_interval, limiter)
    if scheduled.active:
        duties.append(scheduled)
    clean = False
    await trio.to_thread.run_sync(warm_up_arrow)
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
        for duty in duties:
            nursery.start_soon(duty, config.root)
        if ready is not None:
            ready()
        log.info("serving %s at %s", config.root, config.mountpoint)
        try:
            await pyfuse3.main()
            clean = True
        finally:
            scheduled.close()
        nursery.cancel_scope.cancel()
    # Exports of big backends whose refresh was deferred after pin changes are written before exit.
    await trio.to_thread.run_sync(DEFERRED_EXPORTS.close)
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


# -- unmounting --


def is_mounted(mountpoint: Path) -> bool:
    """Whether ``mountpoint`` is in the mount table (true also for a dead FUSE endpoint)."""
    target = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            return any(unescape_mountinfo(line.split()[4]) == target for line in table if len(line.split()) > 4)
    except OSError:
        return os.path.ismount(target)


def _connected(mountpoint: str) -> bool:
    try:
        os.stat(mountpoint)
    except OSError as exc:
        return exc.errno != errno.ENOTCONN
    return True


# How long ``unmount`` waits for the process that served the mount to finish (it writes the exports
# still deferred, a few seconds for a million pins) before saying it is still at work.
SERVER_EXIT_TIMEOUT = 120.0


def unmount(mountpoint: Path, wait: float = SERVER_EXIT_TIMEOUT) -> str:
    """Unmount ``mountpoint``; lazily (``-uz``) when the process behind it is gone. Returns how. When the
    mount was served by a live process, returns once that process has exited (issue #15, item 8), so
    that whatever it still had to write (deferred exports) is written.

    Raises NotFound when nothing is mounted there and PinfsError when unmounting fails.
    """
    target = os.path.abspath(mountpoint)
    if not is_mounted(Path(target)):
        raise NotFound(f"{target} is not mounted")
    servers = serving_processes(target)
    attempt = _fusermount("-u", target)
    if attempt.returncode == 0:
        left = _wait_for_exit(servers, wait)
        if left:
            return f"unmounted; the process serving it ({', '.join(map(str, left))}) has not exited after {wait:g} s"
        return "unmounted"
    if not _connected(target) or "not connected" in attempt.stderr.lower():
        lazy = _fusermount("-uz", target)
        if lazy.returncode == 0:
            return "unmounted (lazily: the process serving it had gone)"
        attempt = lazy
    message = (attempt.stderr.strip().splitlines() or [f"fusermount3 exited {attempt.returncode}"])[-1]
    if "busy" in message.lower():
        users = mount_users(target)
        held = "; ".join(users[:10]) + (f"; and {len(users) - 10} more" if len(users) > 10 else "")
        who = f"in use by {held}" if users else "in use by a process this user cannot see (try 'fuser -vm')"
        raise Busy(
            f"could not unmount {target}: it is busy, {who}; leave it (cd elsewhere, close those programs), "
            f"then run 'pinfs umount {target}' again"
        )
    raise PinfsError(f"could not unmount {target}: {message}")


def serving_processes(target: str) -> list[int]:
    """The pids of the processes serving the FUSE mount at ``target``: those holding a /dev/fuse
    descriptor of its connection (fdinfo's ``fuse_connection``, Linux 6.x, is the minor number of the
    mount's device). Empty when the kernel does not say, or no process is left."""
    device = _mount_device(target)
    if device is None:
        return []
    wanted = f"fuse_connection:\t{device[1]}"
    found: list[int] = []
    for name in os.listdir("/proc"):  # (a process that serves a mount and unmounts it does not wait for itself)
        if name.isdigit() and int(name) != os.getpid() and _holds_connection(name, wanted):
            found.append(int(name))
    return found


def _mount_device(target: str) -> tuple[int, int] | None:
    """(major, minor) of the mount at ``target``, from the mount table (stat would ask the mount)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 4 and unescape_mountinfo(fields[4]) == target:
                    major, _, minor = fields[2].partition(":")
                    return int(major), int(minor)
    except (OSError, ValueError):
        return None
    return None


def _holds_connection(pid: str, wanted: str) -> bool:
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{descriptor}") != "/dev/fuse":
                continue
            with open(f"/proc/{pid}/fdinfo/{descriptor}", encoding="ascii", errors="replace") as info:
                if any(line.rstrip("\n") == wanted for line in info):
                    return True
        except OSError:
            continue
    return False


def _wait_for_exit(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until every process in ``pids`` has exited (a pidfd becomes readable then); the pids
    still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = []
    for pid in pids:
        try:
            handle = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        try:
            ready, _, _ = select.select([handle], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                left.append(pid)
        finally:
            os.close(handle)
    return left


def mount_users(target: str) -> list[str]:
    """What holds a mount, as ``fuser -m`` tells it (issue #16): processes whose working directory,
    root, open files or mapped files are under ``target``, e.g. ``pid 4242 (bash: working directory)``.
    Read from /proc without touching the mount (a link's text is not the file it names); processes of
    other users are not readable and are left out."""
    inside = target.rstrip("/") + "/"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        uses = _uses_of(entry.path, target, inside)
        if uses:
            found.append(f"pid {entry.name} ({_process_name(entry.path)}: {', '.join(uses)})")
    return found


def _uses_of(process: str, target: str, inside: str) -> list[str]:
    def under(link: str) -> bool:
        try:
            path = os.readlink(link)
        except OSError:
            return False
        return path == target or path.startswith(inside)

    uses = [word for name, word in (("cwd", "working directory"), ("root", "root")) if under(f"{process}/{name}")]
    with contextlib.suppress(OSError):
        if any(under(f"{process}/fd/{fd}") for fd in os.listdir(f"{process}/fd")):
            uses.append("open file")
    return uses


def _process_name(process: str) -> str:
    try:
        with open(f"{process}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip() or "?"
    except OSError:
        return "?"


def _fusermount(flags: str, target: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["fusermount3", flags, target], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise PinfsError("fusermount3 is not installed (package fuse3)") from None
