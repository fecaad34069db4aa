"""``PinTree``: the mount's tree over one data root, the facade the adapter uses.

What it is for: everything a user sees under the mount point (CONTRACT §2) is decided by the
directory kinds (``pinfs.fs.tree.kinds``); the tree holds what they share: the data root, the read
cache, the records kept for the kernel (``pinfs.fs.versions``, issue #19), rendered files, nodes
resolved lately, and the makers of nodes. ``resolve`` turns a path into a ``Node``, ``listing`` pins
one version of a directory for paging, ``open_content`` gives the bytes of a file.

What it must not do: import pyfuse3, know about inodes, handles or errno, or scan a backend to answer
a lookup. Looking up ``by-cid/<cid>`` or ``cids/<cid>`` is one indexed ``PinSnapshot.find`` per
backend. Nothing is read when the tree is built (the mount is ready at once); every snapshot is taken
per access, so a table changed by another process is seen on the next lookup. Errors are domain
errors from ``pinfs.errors`` (plus ``NotADirectory``); the adapter maps them to errno.

Threading: every method that touches disk (``resolve``, ``lookup``, ``listing``, ``open_content``,
``render``) blocks and is meant to run on a worker thread. ``resolve_cached``, ``listing_cached``,
``content_in_memory`` and the ``forget_*`` methods never touch disk and may be called on the event
loop. The tree's own mutable state (rendered files, fresh nodes and records) is guarded by locks held
only for dictionary operations, and the ``StoreCache`` is thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import cachetools

from pinfs.data.backends import NAME_PATTERN, Backend, discover_backends, get_backend
from pinfs.data.cids import is_valid_cid
from pinfs.data.rootfs import as_path
from pinfs.data.snapshots import PinSnapshot, StoreCache, held_bytes
from pinfs.data.store import PinStore
from pinfs.errors import CorruptData, InvalidInput, NotFound, PinfsError, describe
from pinfs.fs.tree.generated import RenderCache
from pinfs.fs.tree.kinds import Directory, RecordDir, directory_at
from pinfs.fs.tree.listings import Listing, NameListing, StaticListing
from pinfs.fs.tree.names import BACKENDS_DIR, BY_CID, TreePath, nameable, shown
from pinfs.fs.tree.nodes import BytesContent, Content, Node, NodeKind, NotADirectory, RealFileContent
from pinfs.fs.tree.records import record_mtime
from pinfs.fs.versions import FRESH_SECONDS, SHORT_SECONDS, Kept, Lease, RecordCache

log = logging.getLogger(__name__)

# Nodes that are not made from a record (directories, real files) resolved on a worker thread may
# answer again from memory, on the event loop, for FRESH_SECONDS (the adapter's fast path, issue #6).
# With the kernel's SHORT_SECONDS, an outside change shows within 1.5 s (CONTRACT §2: 2 s). Records
# and the nodes made from them live in ``self.records`` (``pinfs.fs.versions``, issue #19).
FRESH_ENTRIES = 4096  # nodes; the least recently used goes first


def _fresh_cache() -> cachetools.TTLCache:
    # The clock is looked up on each call (not bound here), so tests can move it.
    return cachetools.TTLCache(maxsize=FRESH_ENTRIES, ttl=FRESH_SECONDS, timer=lambda: time.monotonic())


class PinTree:
    """The mount's tree over one data root. Blocking; see the module docstring for threading."""

    def __init__(self, root: Path, cache: StoreCache, records: RecordCache | None = None) -> None:
        self.root = as_path(root)
        self.cache = cache
        self.records = records if records is not None else RecordCache()
        self.started_ns = time.time_ns()
        self.rendered = RenderCache()
        # Nodes not made from a record, resolved lately (by path), dropped FRESH_SECONDS after they were
        # kept. Written on worker threads, read on the event loop: guarded by a lock held only for cache
        # operations (a TTLCache is not thread-safe, and expires entries on access).
        self._fresh_nodes: cachetools.TTLCache = _fresh_cache()  # path -> Node
        self._fresh_lock = threading.Lock()
        # Backends by name, kept as briefly: finding one reads its config (~10 stats), and a cold stat of
        # by-cid/<cid> asked for it again at each of its lookups (issue #19, item 4: cold walks).
        self._backends: cachetools.TTLCache = _fresh_cache()  # name -> Backend
        # Bumped by ``forget_rendered``: a resolve that started before a control command finished must
        # not keep what it read as fresh after it (``_local.generation`` is the one it started in).
        self._generation = 0
        self._local = threading.local()

    # -- resolving paths --

    def directory(self, path: TreePath) -> Directory:
        """The directory kind at ``path`` (by shape; never touches disk). Raises NotFound."""
        return directory_at(self, path)

    def resolve(self, path: TreePath) -> Node:
        """The node at ``path``. Raises NotFound or CorruptData (a backend that cannot be read).

        Not recursive: each kind's ``child`` checks whatever the entry's existence depends on (the
        backend, the record), so ancestors need not be resolved again."""
        self._local.generation = self._generation
        parent = self.directory(path[:-1]) if path else None
        node = parent.child(path[-1]) if parent is not None else self.dir_node(())
        # Generated files have their own render cache; per-CID nodes are made from ``self.records``.
        if node.kind is not NodeKind.GENERATED and (parent is None or not parent.per_cid):
            self._keep_fresh(path, node)
        return node

    def resolve_cached(self, path: TreePath) -> Node | None:
        """The node at ``path`` from memory, else None: a per-CID node from its kept record (raising
        NotFound for a CID known not to be there), any other from a node resolved less than
        ``FRESH_SECONDS`` ago. Never touches disk: it may run on the event loop (issue #6). A per-CID
        file or directory is made from the kept record, so ``stat`` of every file of a CID costs one
        indexed lookup on a worker thread, not one each."""
        if not path:
            return self._fresh(path)
        try:
            parent = self.directory(path[:-1])
        except NotFound:
            return None  # the worker thread says so
        if not parent.per_cid:
            return self._fresh(path)
        try:
            return parent.cached_child(path[-1])
        except NotFound:
            raise
        except Exception:  # never on the loop: the worker thread will say what is wrong
            return None

    def lookup(self, parent: TreePath, name: str) -> Node:
        """The entry ``name`` of the directory at ``parent``."""
        return self.resolve((*parent, name))

    def kernel_timeout(self, node: Node) -> float:
        """Seconds the kernel may keep ``node``'s name and attributes: what remains of its lease (0 when
        a change ended it after the node was made), else ``SHORT_SECONDS``."""
        remaining = self.records.remaining(node.lease)
        return SHORT_SECONDS if remaining is None else remaining

    def _fresh(self, path: TreePath) -> Node | None:
        with self._fresh_lock:
            return self._fresh_nodes.get(path)

    def _keep_fresh(self, path: TreePath, node: Node) -> None:
        with self._fresh_lock:
            if self._same_generation():
                self._fresh_nodes[path] = node

    def _same_generation(self) -> bool:
        """Whether no control command ran since this thread's ``resolve`` started."""
        return getattr(self._local, "generation", None) == self._generation

    # -- listing directories --

    def listing(self, path: TreePath) -> Listing | NameListing:
        """One version of the directory at ``path``, to page through. Raises like ``resolve``."""
        node = self.resolve(path)
        if not node.is_dir:
            raise NotADirectory(f"{shown(path)} is not a directory")
        return self.directory(path).listing()

    def listing_cached(self, path: TreePath) -> StaticListing | None:
        """``listing`` of a ``by-cid/<cid>`` directory from its kept record, else None. Never touches
        disk (for the event loop: a walk opens every such directory)."""
        if len(path) != 4 or path[0] != BACKENDS_DIR or path[2] != BY_CID:
            return None
        kept = self.records.get(path[1], path[3])
        if kept is None:
            return None
        return RecordDir(self, path, path[1], path[3]).listing_of(kept)

    # -- opening files --

    def open_content(self, node: Node) -> Content:
        """The bytes of a FILE or GENERATED node, fixed from now on. Raises NotFound, CorruptData."""
        if node.kind is NodeKind.FILE:
            if node.real_path is not None:
                try:
                    return RealFileContent(node.real_path)
                except FileNotFoundError:
                    raise NotFound(f"{node.real_path} does not exist any more") from None
            return BytesContent(node.content or b"")
        if node.kind is NodeKind.GENERATED:
            return BytesContent(node.content if node.content is not None else self._render_cached(node.path))
        raise InvalidInput(f"{shown(node.path)} is not a file with content")

    def content_in_memory(self, node: Node) -> Content | None:
        """``open_content`` when it needs no disk (bytes held by the node), else None; for the loop."""
        if node.kind is NodeKind.FILE and node.real_path is None:
            return BytesContent(node.content or b"")
        if node.kind is NodeKind.GENERATED and node.content is not None:
            return BytesContent(node.content)
        return None

    def render(self, path: TreePath) -> bytes:
        """Make a generated file: reports, a backend's summary, the CAR as legacy JSON."""
        if not path:
            raise NotFound("/ is not a generated file")
        return self.directory(path[:-1]).render(path[-1])

    def _render_cached(self, path: TreePath) -> bytes:
        return self.rendered.bytes_of(path, lambda: self.render(path))

    def forget_rendered(self) -> None:
        """Drop cached generated files, fresh nodes and the records kept without a lease (after a
        control command, whose effect must show at once; leased records are dropped by the version
        watch, exactly those that changed)."""
        self.forget_reports()
        with self._fresh_lock:
            self._generation += 1
        self.records.forget_unleased()

    def forget_reports(self) -> None:
        """Drop cached generated files and fresh nodes (a backend's data changed)."""
        self.rendered.clear()
        with self._fresh_lock:
            self._fresh_nodes.clear()
            self._backends.clear()

    # -- what the directory kinds share: backends, snapshots, records --

    def backend(self, name: str) -> Backend:
        """The backend ``name``. Raises NotFound (also for one that is not served, e.g. a symlink)."""
        with self._fresh_lock:
            found = self._backends.get(name)
        if found is not None:
            return found
        if not NAME_PATTERN.fullmatch(name):
            raise NotFound(f"no backend {name!r}")
        try:
            backend = get_backend(self.root, name)
        except InvalidInput as exc:  # e.g. a symlinked backend directory: not served
            raise NotFound(str(exc)) from None
        with self._fresh_lock:
            self._backends[name] = backend
        return backend

    def snapshot(self, backend: Backend) -> PinSnapshot:
        return PinStore(backend, self.cache).snapshot()

    def served_files(self, backend: Backend) -> dict[str, Path]:
        """The files of ``backend`` the store serves as they are, by name."""
        return PinStore(backend, self.cache).served_files()

    def readable_snapshots(self) -> list[tuple[Backend, PinSnapshot]]:
        """Every backend's snapshot; a backend that cannot be read is left out (its summary says why)."""
        backends, _problems = discover_backends(self.root)
        readable = []
        for backend in backends:
            try:
                readable.append((backend, self.snapshot(backend)))
            except (CorruptData, OSError) as exc:
                log.info("backend %s left out of cids/: %s", backend.name, exc)
        return readable

    def holders(self, cid: str) -> dict[str, str]:
        """The backends holding the CID ``cid`` spells, each with the spelling it stores: one indexed
        lookup per backend (and per other standard spelling, for a CID not spelled as stored). When
        none of those that can be read holds it but some cannot be read, nobody can say it is not
        there: CorruptData (EIO, not ENOENT: issue #15, item 8)."""
        if not nameable(cid) or not is_valid_cid(cid):
            return {}
        holders: dict[str, str] = {}
        unreadable: list[str] = []
        for backend in discover_backends(self.root)[0]:
            try:
                record = self.snapshot(backend).find(cid)
            except (PinfsError, OSError) as exc:
                unreadable.append(f"{backend.name}: {describe(exc)}")
                continue
            if record is not None:
                holders[backend.name] = str(record["cid"])
        if not holders and unreadable:
            raise CorruptData(f"{cid}: in no backend that can be read, and cannot read {'; '.join(unreadable)}")
        return holders

    def kept_record(self, backend: Backend, cid: str) -> Kept:
        """The record of ``cid`` (``Kept.record`` None: not pinned): the one kept under a lease (it is
        current: a change would have dropped it), else read from the newest version and kept."""
        if not nameable(cid) or not is_valid_cid(cid):
            raise NotFound(f"{cid!r} is not a CID")  # not a CID at all: nothing to read, nothing to keep
        kept = self.records.get(backend.name, cid, leased_only=True)
        if kept is not None:
            return kept
        snapshot = self.snapshot(backend)
        record = snapshot.find(cid)  # any spelling (issue #16)
        fallback = self.mtime(snapshot)
        mtime_ns = record_mtime(record, fallback) if record is not None else fallback
        kept = self.records.keep(
            backend.name, cid, record, snapshot.identity, mtime_ns, unleased_ok=self._same_generation()
        )
        if record is not None and kept.lease is not None:
            self._keep_group(backend.name, snapshot, str(record["cid"]))
        return kept

    def _keep_group(self, backend: str, snapshot: PinSnapshot, stored: str) -> None:
        """Keep the row group ``stored`` was read from, so that its neighbours' records are made from
        memory, on the event loop, when asked for (issue #19, item 4: a walk of ``by-cid`` goes in CID
        order, and a hop to a worker thread per CID directory was most of a cold walk). The group is
        in the read cache already: this costs no read, only holding it (bounded, ``RecordCache``)."""
        if self.records.holds_group(backend, stored):
            return
        table = snapshot.group_holding(stored)
        if table is None:
            return
        fallback = self.mtime(snapshot)

        def make(start: int, stop: int) -> list[tuple[dict[str, Any], int]]:
            rows = table.slice(start, stop - start).to_pylist()
            return [(row, record_mtime(row, fallback)) for row in rows]

        cids = table.column("cid").combine_chunks()
        self.records.keep_group(backend, snapshot.identity, cids, make, held_bytes(table))

    # -- node makers --

    def mtime(self, snapshot: PinSnapshot | None) -> int:
        if snapshot is not None and snapshot.identity is not None:
            return snapshot.identity.mtime_ns
        return self.started_ns

    def version_mtime(self, version: Hashable | None) -> int:
        return getattr(version, "mtime_ns", None) or self.started_ns

    def dir_node(self, path: TreePath) -> Node:
        return Node(path, NodeKind.DIRECTORY, mtime_ns=self.started_ns)

    def bytes_node(self, path: TreePath, data: bytes) -> Node:
        return Node(path, NodeKind.FILE, size=len(data), mtime_ns=self.started_ns, content=data)

    def generated_node(self, directory: Directory, name: str, *, render: bool = True) -> Node:
        """A generated file of ``directory``; with ``render`` False (a listing), without its bytes."""
        path = (*directory.path, name)

        def data_mtime() -> int:
            try:
                return directory.data_mtime()
            except (PinfsError, OSError):
                return self.started_ns

        if not render:
            known = self.rendered.last_mtime(path)
            mtime_ns = known if known is not None else data_mtime()
            return Node(path, NodeKind.GENERATED, mtime_ns=mtime_ns, size_known=False)
        data = self._render_cached(path)
        mtime_ns = self.rendered.mtime(path, data, data_mtime)
        return Node(path, NodeKind.GENERATED, size=len(data), mtime_ns=mtime_ns, content=data)

    def control_node(self, path: TreePath, backend: str | None, command: str) -> Node:
        return Node(path, NodeKind.CONTROL, mtime_ns=self.started_ns, control_key=(backend, command))

    def status_link(self, path: TreePath, cid: str, mtime_ns: int, lease: Lease | None) -> Node:
        target = f"../../{BY_CID}/{cid}"
        return Node(path, NodeKind.SYMLINK, size=len(target), mtime_ns=mtime_ns, target=target, lease=lease)

    def cid_link(self, path: TreePath, cid: str, backend: str) -> Node:
        target = f"../../{BACKENDS_DIR}/{backend}/{BY_CID}/{cid}"
        return Node(path, NodeKind.SYMLINK, size=len(target), mtime_ns=self.started_ns, target=target)
