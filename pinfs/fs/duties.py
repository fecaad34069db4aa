"""The mount's background duties, each a trio task in ``serve``'s nursery (issue #18, item 5).

What it is for: the work the mount does on its own, out of any request: ``ExportDuty`` brings a big
backend's exports up to its table once pin changes pause (``pinfs.ops.carops.refresh_deferred``),
and ``ScheduledDuties`` runs sync and verify every ``--sync-interval``/``--verify-interval``
(``pinfs.ops.schedule``). Backend maintenance follows each deferred refresh (``maybe_maintain``). The
kernel-cache duty (issue #19) is ``pinfs.fs.kernel.KernelCache``.

What it must not do: do the work itself (the operations are plain synchronous functions, run here on
worker threads with ``trio.to_thread.run_sync``), block the event loop, or end the mount: every
error is logged, and retried where that makes sense.

Threading: the duties are trio tasks on the event loop. ``ExportDuty.defer`` is called from the
worker threads that run pin commands: it only takes a lock and wakes the task through its trio token.
Teardown is in ``serve``'s exit stack: ``ExportDuty.finish`` does every refresh still waiting, after
the unmount; ``ScheduledDuties.close``/``wait_idle`` let a run in progress be abandoned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from pinfs.data.backends import Backend
from pinfs.errors import PinfsError, describe
from pinfs.ops.carops import DEFERRED_EXPORTS, PendingExports, refresh_deferred
from pinfs.ops.refresh_job import refresh_in_child

log = logging.getLogger(__name__)


# -- exports after pin changes --


@dataclass
class _Waiting:
    backend: Backend
    first: float  # time.monotonic() of the first change still waiting
    last: float  # of the last change
    not_before: float  # after a failure: the retry's time


# Pin changes to a big backend are exported once none came for this long: an export of 1M pins takes
# ~2.3 s of both cores and a merge of the insert file takes the backend's lock a few times, which a
# burst of pins (a 10k batch takes ~1.3 s between its commits) should not meet.
QUIET_SECONDS = 2.0


class ExportDuty:
    """Export refreshes deferred by pin commands: each backend's is done ``quiet`` seconds after its
    last change, and at most ``at_most`` seconds after the first one still waiting, so the commands
    themselves return as soon as they are committed.

    A refresh that fails with an OSError or PinfsError (a full disk, a read-only root: issue #15) is
    tried again ``retry`` seconds later, then twice as long after each failure up to ``retry_at_most``,
    until it succeeds; ``pending`` (``DEFERRED_EXPORTS``, read by health) says why meanwhile."""

    def __init__(
        self,
        pending: PendingExports = DEFERRED_EXPORTS,
        *,
        quiet: float = QUIET_SECONDS,
        at_most: float = 10.0,
        retry: float = 2.0,
        retry_at_most: float = 60.0,
    ) -> None:
        self.pending = pending
        self.quiet, self.at_most = quiet, at_most
        self.retry, self.retry_at_most = retry, retry_at_most
        self._waiting: dict[Path, _Waiting] = {}
        self._failures: dict[Path, int] = {}  # directory -> failures in a row
        self._lock = threading.Lock()
        self._wake = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    def defer(self, backend: Backend, failed: str | None = None) -> None:
        """Refresh ``backend``'s exports once its changes pause; ``failed``: a refresh just failed
        (with that error), so the next one waits as a retry does. Thread-safe."""
        now = time.monotonic()
        self.pending.add(backend)
        with self._lock:
            waiting = self._waiting.get(backend.directory) or _Waiting(backend, now, now, now)
            waiting.last = now
            if failed is not None:
                waiting.not_before = max(waiting.not_before, now + self._note_failure(backend, failed))
            self._waiting[backend.directory] = waiting
        if self._token is not None:
            self._token.run_sync_soon(lambda: self._wake.set())  # the event current on the loop

    async def __call__(self, root: Path) -> None:
        self._token = trio.lowlevel.current_trio_token()
        while True:
            backend, delay = self._next()
            if backend is None:
                with trio.move_on_after(delay if delay is not None else float("inf")):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            await trio.to_thread.run_sync(self._refresh, backend, False)

    def finish(self) -> None:
        """Do every refresh still waiting, now (blocking; at unmount, after the loop has ended)."""
        with self._lock:
            waiting = list(self._waiting.values())
            self._waiting.clear()
        for entry in waiting:
            self._refresh(entry.backend, True)

    def _due(self, waiting: _Waiting) -> float:
        return max(min(waiting.last + self.quiet, waiting.first + self.at_most), waiting.not_before)

    def _next(self) -> tuple[Backend | None, float | None]:
        """The refresh due now (taken off the waiting list), else None and how long until the next."""
        with self._lock:
            if not self._waiting:
                return None, None
            directory, waiting = min(self._waiting.items(), key=lambda item: self._due(item[1]))
            delay = self._due(waiting) - time.monotonic()
            if delay > 0:
                return None, delay
            del self._waiting[directory]
            return waiting.backend, None

    def _refresh(self, backend: Backend, closing: bool) -> None:
        """One refresh, on a worker thread: in a child process at lower priority while the mount serves
        (``pinfs.ops.refresh_job``), here at unmount (``closing``). A failure is recorded and, unless
        ``closing``, retried."""
        try:
            if closing:
                refresh_deferred(backend)
            else:
                refresh_in_child(backend)
        except (PinfsError, OSError) as exc:  # a full disk: tried again a while later (issue #15)
            self._failed(backend, describe(exc), closing)
            return
        except Exception:  # logged; the next change, sync or regenerate-car tries again
            log.exception("refreshing the exports of %s failed", backend.directory)
            self.pending.done(backend)
            return
        with self._lock:
            recovered = self._failures.pop(backend.directory, None) is not None
            still_waiting = backend.directory in self._waiting
        if recovered:
            log.info("the exports of %s are up to date again", backend.directory)
        if not still_waiting:
            self.pending.done(backend)

    def _note_failure(self, backend: Backend, error: str) -> float:
        """Count a failed refresh (call with the lock held); returns how long to wait before the next."""
        failures = self._failures.get(backend.directory, 0) + 1
        self._failures[backend.directory] = failures
        self.pending.done(backend, error)
        return min(self.retry * 2 ** (failures - 1), self.retry_at_most)

    def _failed(self, backend: Backend, error: str, closing: bool) -> None:
        with self._lock:
            delay = self._note_failure(backend, error)
            if closing:  # unmounting: the next command (or car regenerate) catches them up
                log.warning("the exports of %s are behind: %s", backend.directory, error)
                return
            now = time.monotonic()
            if backend.directory not in self._waiting:
                self._waiting[backend.directory] = _Waiting(backend, now, now, now + delay)
        log.warning("refreshing the exports of %s failed: %s; trying again in %g s", backend.directory, error, delay)


# -- scheduled sync and verify --


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
        self.after_run: Callable[[], Awaitable[None]] | None = None  # the kernel-cache duty's sync
        self.last_runs: dict[str, float] = {}  # time.monotonic() of each duty's last run
        # Runs on worker threads (an abandoned one may still be going after unmount), and whether the
        # mount is closing (a run whose thread starts only then does nothing).
        self._threads = threading.Condition()
        self._running = 0
        self._closing = False

    @property
    def active(self) -> bool:
        return self.sync_interval is not None or self.verify_interval is not None

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
            await trio.sleep(wait)
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
        if self.after_run is not None:
            await self.after_run()  # what a run changed shows at once, as a control command's does
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
