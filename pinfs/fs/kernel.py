"""The kernel-cache duty: tell the kernel what changed, as soon as the mount sees it (issue #19).

What it is for: the adapter lets the kernel keep per-CID names, attributes and pages for as long as
their lease runs (``pinfs.fs.versions``). This duty keeps that true. It runs ``VersionWatch.check``
when inotify says a local table's log (or a backend) changed, on a poll (the backstop, and the only way
on an S3 root), and when a control command has run (``sync``, awaited before that command's close()
returns). For each change it invalidates exactly what the change touched: the changed CIDs' entries in
``by-cid``, ``by-status/<s>`` and ``cids``, the inodes of their files (attributes and pages), the
attributes of the backend's directories, and its summary, exports and the reports. A backend that
changed beyond diffing (another table, a form without versions) has its whole subtree dropped.

Every invalidation is sent twice, the second time ``SECOND_PASS`` later: a lookup answered just
before a change (the answer was on its way to the kernel when the first pass ran) is dropped then.

What it must not do: call pyfuse3's ``invalidate_*`` on the event loop or from a request handler:
they block until related requests are answered (pyfuse3 docs), which only the loop can do. They run
on a worker thread of their own; ``sync`` only waits for this duty's round.

Threading: a trio task in the mount's nursery. The check runs on a worker thread, the plan (which
inodes, which names) is made on the event loop where the inode table lives, the invalidations run on
one worker thread at a time.

Spellings (issue #16): a change names a CID as stored, while the kernel holds names in whatever spelling
was looked up. Each changed CID is told in its stored spelling, its standard ones (``Qm…``, ``bafy…``)
and every other one the inode table holds a path under (``InodeTable.aliases``).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyfuse3
import trio
from pyfuse3 import FileNameT, InodeT

from pinfs.data.backends import backends_dir
from pinfs.data.cids import has_other_standard_form, standard_forms
from pinfs.data.delta import LOG_DIR, TABLE_DIR
from pinfs.data.rootfs import S3Path
from pinfs.data.schema import STATUSES
from pinfs.errors import InvalidInput, PinfsError
from pinfs.errors import describe as describe_error
from pinfs.fs.inodes import InodeTable
from pinfs.fs.inotify import Inotify
from pinfs.fs.tree import (
    BACKENDS_DIR,
    BY_CID,
    BY_STATUS,
    CAR_FILE,
    CAR_JSON,
    CIDS_DIR,
    PARQUET_FILE,
    RECORD_FILES,
    REPORT_FILES,
    SUMMARY,
    PinTree,
    TreePath,
)
from pinfs.fs.versions import Change, VersionWatch, describe

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # local roots: the backstop behind inotify
S3_POLL_SECONDS = 0.5  # S3 roots: with S3 metadata cached 1 s, a change is seen within 1.5 s
MIN_INTERVAL = 0.05  # between two rounds nobody waits for: a burst of commits is diffed at once
SECOND_PASS = 0.5
CHECKPOINT_EVERY = 512  # CIDs planned between two yields to the event loop


class Notifier(Protocol):
    """Where invalidations go: the kernel (``FuseNotifier``), or a list in tests."""

    def entry(self, parent: int, name: str) -> None: ...

    def inode(self, inode: int) -> None: ...


class FuseNotifier:
    """pyfuse3's invalidations. Blocking: call from a worker thread only. The kernel answers ENOENT for
    what it does not hold any more (forgotten meanwhile): nothing to do then."""

    def entry(self, parent: int, name: str) -> None:
        try:
            pyfuse3.invalidate_entry(InodeT(parent), FileNameT(name.encode()))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                log.info("invalidating %s in inode %s: %s", name, parent, exc)

    def inode(self, inode: int) -> None:
        try:
            pyfuse3.invalidate_inode(InodeT(inode), attr_only=False)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.info("invalidating inode %s: %s", inode, exc)


@dataclass
class Plan:
    """What to tell the kernel: inodes whose attributes and pages to drop, (parent, name) entries."""

    inodes: list[int] = field(default_factory=list)
    entries: list[tuple[int, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.inodes or self.entries)


async def plan_for(inodes: InodeTable, changes: Sequence[Change]) -> Plan:
    """The invalidations ``changes`` call for, among what the kernel holds (on the event loop)."""
    plan = Plan()

    def inode(path: TreePath) -> None:
        found = inodes.held(path)
        if found is not None:
            plan.inodes.append(found)

    def entry(parent: TreePath, name: str) -> None:
        # Only a name the kernel holds: it keeps a dentry only after a positive lookup (pinfs caches no
        # negative ones), which makes its node held. A batch of 10,000 new pins then costs no call. A
        # listed name whose block has let its names go may be held: it is told by name.
        if not inodes.may_hold((*parent, name)):
            return
        found = inodes.held(parent)
        if found is not None:
            plan.entries.append((found, name))

    for change in changes:
        base: TreePath = (BACKENDS_DIR, change.backend)
        for path in (
            (BACKENDS_DIR,),
            base,
            (*base, BY_CID),
            (*base, BY_STATUS),
            *((*base, BY_STATUS, status) for status in STATUSES),
            *((*base, name) for name in (SUMMARY, CAR_JSON, PARQUET_FILE, CAR_FILE)),
        ):
            inode(path)
        if change.cids is None:
            await _plan_everything(inodes, plan, change.backend)
            continue
        listed = [(*base, BY_CID), *((*base, BY_STATUS, status) for status in STATUSES), (CIDS_DIR,)]
        for count, cid in enumerate(_spellings(change.cids, inodes), 1):
            if count % CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
            if not inodes.may_name(cid, listed):  # a new pin, or one nobody looked at: nothing held
                continue
            entry((*base, BY_CID), cid)
            if inodes.may_hold((*base, BY_CID, cid)):  # else the kernel holds nothing below it
                inode((*base, BY_CID, cid))
                for name in RECORD_FILES:
                    inode((*base, BY_CID, cid, name))
            for status in STATUSES:
                entry((*base, BY_STATUS, status), cid)
            entry((CIDS_DIR, cid), change.backend)
            entry((CIDS_DIR,), cid)
    if changes:
        for name in REPORT_FILES:
            inode((name,))
    return plan


def _spellings(cids: Collection[str], inodes: InodeTable) -> Iterator[str]:
    """Each changed CID as stored, in its standard spellings (``Qm…`` and ``bafy…``) and in every other
    spelling the kernel holds names in (``B…``, ``z…``…): each shows the same record (issue #16)."""
    for cid in cids:
        yield cid
        key = cid  # a base32 CIDv1 without a CIDv0 (most): its own key, no decoding
        if has_other_standard_form(cid):
            try:
                forms = standard_forms(cid)
            except InvalidInput:
                continue
            yield from (form for form in forms if form != cid)
            key = forms[-1]  # the cid_key
        yield from (alias for alias in inodes.aliases(key) if alias != cid)


async def _plan_everything(inodes: InodeTable, plan: Plan, backend: str) -> None:
    """A backend that may have changed in every record: its whole subtree, and its links in cids/."""
    backends = inodes.held((BACKENDS_DIR,))
    if backends is not None:
        plan.entries.append((backends, backend))  # the kernel drops every name below it
    plan.inodes.extend(inode for inode, _key in inodes.paths.under(f"{BACKENDS_DIR}/{backend}"))
    await trio.lowlevel.checkpoint()
    for _inode, key in inodes.paths.under(CIDS_DIR):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == backend:
            parent = inodes.held(tuple(parts[:2]))
            if parent is not None:
                plan.entries.append((parent, backend))


class KernelCache:
    """The duty (call it with the root, in the mount's nursery) and ``sync`` for control commands."""

    def __init__(
        self,
        tree: PinTree,
        inodes: InodeTable,
        watch: VersionWatch,
        *,
        notifier: Notifier | None = None,
        poll_seconds: float | None = None,
        use_inotify: bool = True,
    ) -> None:
        self.tree = tree
        self.inodes = inodes
        self.watch = watch
        self.notifier = notifier or FuseNotifier()
        is_s3 = isinstance(watch.root, S3Path)
        self.poll_seconds = poll_seconds if poll_seconds is not None else (S3_POLL_SECONDS if is_s3 else POLL_SECONDS)
        self.use_inotify = use_inotify and not is_s3
        self.rounds = 0
        self.invalidations = 0  # sent, counting both passes (for tests and diagnostics)
        self._wake = trio.Event()
        self._asked = trio.Event()  # set by sync(): a control command waits for a round
        self._round_done = trio.Event()
        self._wanted = 0  # sync() calls so far
        self._done = 0  # sync() calls whose round has finished
        self._running = False
        self._last = float("-inf")
        self._inotify: Inotify | None = None
        self._check_limiter = trio.CapacityLimiter(1)
        self._notify_limiter = trio.CapacityLimiter(1)

    def wake(self) -> None:
        """Look for changes now (from the event loop)."""
        self._wake.set()

    async def sync(self) -> None:
        """Return once a round that started after this call has told the kernel every change it found
        (a control command's, for one). Returns at once when the duty is not running."""
        if not self._running:
            return
        self._wanted += 1
        ticket = self._wanted
        self._wake.set()
        self._asked.set()
        while self._done < ticket and self._running:
            await self._round_done.wait()

    async def __call__(self, root: Path) -> None:
        self._running = True
        self._wake.set()  # the first round at once: leases are long only for versions seen
        try:
            async with trio.open_nursery() as nursery:
                if self.use_inotify:
                    self._start_inotify(nursery)
                while True:
                    await self._wait()
                    ticket = self._wanted
                    await self._round(nursery)
                    self._done = ticket
                    self._last = trio.current_time()
                    self._round_done.set()
                    self._round_done = trio.Event()
        finally:
            self._running = False
            self._round_done.set()
            if self._inotify is not None:
                self._inotify.close()

    async def _wait(self) -> None:
        with trio.move_on_after(self.poll_seconds):
            await self._wake.wait()
        self._wake = trio.Event()
        # Woken by inotify or the poll: let a burst of commits gather for MIN_INTERVAL before the round
        # looks, unless a control command waits (``sync``). Further inotify events do not end it: a
        # commit writes its data file and then its log entry, and a round started by the entry's event
        # ran beside the command that made the commit, loading the new version before its writer had
        # recorded it (``PinStore.remember``; 5-27 ms beside a 1M-pin mount's one pin, issue #12), and
        # the command's close() waited that round out before its own. The first round, at mount, goes at
        # once: leases are long only for versions seen, and a lookup right after mount should not meet it.
        if self._done == self._wanted and self.rounds:
            self._asked = trio.Event()
            with trio.move_on_at(max(self._last, trio.current_time()) + MIN_INTERVAL):
                await self._asked.wait()
            self._wake = trio.Event()

    async def _round(self, nursery: trio.Nursery) -> None:
        """One check, and the invalidations its changes call for; never raises (the mount outlives it)."""
        self.rounds += 1
        try:
            changes = await trio.to_thread.run_sync(self.watch.check, limiter=self._check_limiter)
        except (PinfsError, OSError) as exc:  # the root gone or unreachable: looked at again next round
            log.info("looking for new versions: %s", describe_error(exc))
            return
        except Exception:
            log.exception("looking for new versions failed")
            return
        if self._inotify is not None:
            self._watch_directories()
        if not changes:
            return
        log.debug("new versions: %s", describe(changes))
        self.tree.forget_reports()
        plan = await plan_for(self.inodes, changes)
        if plan:
            await self._send(plan)
            nursery.start_soon(self._second_pass, plan)

    async def _send(self, plan: Plan) -> None:
        await trio.to_thread.run_sync(self._apply, plan, limiter=self._notify_limiter)

    def _apply(self, plan: Plan) -> None:
        for inode in plan.inodes:
            self.notifier.inode(inode)
        for parent, name in plan.entries:
            self.notifier.entry(parent, name)
        self.invalidations += len(plan.inodes) + len(plan.entries)

    async def _second_pass(self, plan: Plan) -> None:
        await trio.sleep(SECOND_PASS)
        try:
            await self._send(plan)
        except Exception:
            log.exception("invalidating again failed")

    # -- inotify --

    def _start_inotify(self, nursery: trio.Nursery) -> None:
        try:
            self._inotify = Inotify()
        except OSError as exc:  # e.g. no more inotify instances: the poll still sees every change
            log.warning("inotify unavailable (%s); changes outside the mount are seen by polling", exc)
            return
        self._watch_directories()
        nursery.start_soon(self._listen)

    def _watch_directories(self) -> None:
        """Watch the backends directory, every backend's directory and its table and log directories
        (each a few syscalls; missing ones are tried again next round)."""
        assert self._inotify is not None
        backends = backends_dir(self.watch.root)
        try:
            self._inotify.watch(backends)
            for directory in backends.iterdir():
                if directory.is_dir() and not directory.is_symlink():
                    for path in (directory, directory / TABLE_DIR, directory / TABLE_DIR / LOG_DIR):
                        self._inotify.watch(path)
        except OSError as exc:
            log.debug("watching %s: %s", backends, exc)

    async def _listen(self) -> None:
        assert self._inotify is not None
        while True:
            await trio.lowlevel.wait_readable(self._inotify.fd)
            if self._inotify.drain():
                self._wake.set()
