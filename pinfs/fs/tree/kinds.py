"""One class per kind of directory in the mount's tree (CONTRACT §2), the way borg's ``vfs.py`` has them.

What it is for: each kind answers, for its own directory only, ``attributes()`` (its own node),
``child(name)`` (one entry, checking whatever its existence depends on: the backend, the record),
``listing()`` (one version of its entries, to page through) and ``render(name)`` (the bytes of a
generated file in it). ``directory_at`` maps a path to its kind, by the path's shape alone: that is
the only place the tree's layout is spelled out. Kinds whose entries are made from a pin's record
(``per_cid``) also answer ``cached_child`` from the record kept in memory.

What it must not do: import pyfuse3, know about inodes, handles or errno, scan a backend to answer a
lookup (a CID is one indexed lookup per backend), or know how a backend stores its pins: it asks the
store (through the tree) for snapshots, records and the files a backend serves.

Threading: ``directory_at`` and ``cached_child`` never touch disk and may run on the event loop;
everything else blocks and runs on a worker thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pinfs.data.backends import discover_backends
from pinfs.data.fsutil import refuse_symlink
from pinfs.data.schema import STATUSES
from pinfs.errors import CorruptData, NotFound
from pinfs.fs.control import BACKEND_COMMANDS, ROOT_COMMANDS
from pinfs.fs.tree.generated import car_json, insights_svg, make_report
from pinfs.fs.tree.listings import (
    Listing,
    NameListing,
    PositionalListing,
    StaticListing,
    StreamListing,
    merge_sorted_unique,
)
from pinfs.fs.tree.names import (
    BACKEND_ENTRIES,
    BACKENDS_DIR,
    BY_CID,
    BY_STATUS,
    CAR_FILE,
    CAR_JSON,
    CIDS_DIR,
    CONTROL_DIR,
    INSIGHTS_SVG,
    PARQUET_FILE,
    README,
    RECORD_FILES,
    REPORT_FILES,
    ROOT_ENTRIES,
    SUMMARY,
    TreePath,
    shown,
)
from pinfs.fs.tree.nodes import Node, NodeKind, NotADirectory
from pinfs.fs.tree.readme import README_TEXT
from pinfs.fs.tree.records import pretty, record_file_bytes
from pinfs.fs.versions import Kept
from pinfs.ops import reports

if TYPE_CHECKING:
    from pinfs.fs.tree.pintree import PinTree


class Directory:
    """A directory of one kind at ``path``. Subclasses answer for what their kind holds."""

    per_cid = False  # entries made from a pin's record: kept with it, never as fresh nodes

    def __init__(self, tree: PinTree, path: TreePath) -> None:
        self.tree = tree
        self.path = path

    def attributes(self) -> Node:
        """This directory's own node (the parent's ``child`` checked that it exists)."""
        return self.tree.dir_node(self.path)

    def child(self, name: str) -> Node:
        """The entry ``name``. Raises NotFound, CorruptData."""
        raise NotFound(f"no entry {name!r} in {shown(self.path)}")

    def cached_child(self, name: str) -> Node | None:
        """The entry ``name`` from memory (``per_cid`` kinds), else None. Never touches disk."""
        return None

    def listing(self) -> Listing | NameListing:
        raise NotADirectory(f"{shown(self.path)} is not a directory")

    def render(self, name: str) -> bytes:
        """The bytes of the generated file ``name`` in this directory. Raises NotFound."""
        raise NotFound(f"{shown((*self.path, name))} is not a generated file")

    def data_mtime(self) -> int:
        """When the data this directory's generated files describe last changed: the newest backend."""
        times = [self.tree.mtime(snapshot) for _backend, snapshot in self.tree.readable_snapshots()]
        return max(times, default=self.tree.started_ns)

    def subdirectory(self, name: str) -> Node:
        return directory_at(self.tree, (*self.path, name)).attributes()


class RootDir(Directory):
    def child(self, name: str, *, render: bool = True) -> Node:
        path = (name,)
        if name in (CONTROL_DIR, BACKENDS_DIR, CIDS_DIR):
            return self.subdirectory(name)
        if name == README:
            return self.tree.bytes_node(path, README_TEXT.encode())
        if name in REPORT_FILES:
            return self.tree.generated_node(self, name, render=render)
        raise NotFound(f"no entry {name!r} in /")

    def listing(self) -> StaticListing:
        return StaticListing([self.child(name, render=False) for name in ROOT_ENTRIES])

    def render(self, name: str) -> bytes:
        if name == INSIGHTS_SVG:
            return insights_svg(self.tree.root)
        if name in REPORT_FILES:
            return pretty(make_report(self.tree.root, name))
        return super().render(name)


class ControlDir(Directory):
    """``.control`` of the root (``backend`` None) or of a backend."""

    def __init__(self, tree: PinTree, path: TreePath, backend: str | None) -> None:
        super().__init__(tree, path)
        self.backend = backend
        self.commands = BACKEND_COMMANDS if backend is not None else ROOT_COMMANDS

    def child(self, name: str) -> Node:
        if self.backend is not None:
            self.tree.backend(self.backend)  # NotFound once the backend is gone
        if name not in self.commands:
            return super().child(name)
        return self.tree.control_node((*self.path, name), self.backend, name)

    def listing(self) -> StaticListing:
        return StaticListing([self.tree.control_node((*self.path, name), self.backend, name) for name in self.commands])


class BackendsDir(Directory):
    def child(self, name: str) -> Node:
        self.tree.backend(name)
        return self.subdirectory(name)

    def listing(self) -> StaticListing:
        backends, _problems = discover_backends(self.tree.root)
        return StaticListing([self.tree.dir_node((*self.path, backend.name)) for backend in backends])


class InBackend(Directory):
    """A directory of one backend's subtree (``backend``: its name, checked when an entry is asked for)."""

    def __init__(self, tree: PinTree, path: TreePath, backend: str) -> None:
        super().__init__(tree, path)
        self.backend = backend

    def data_mtime(self) -> int:
        return self.tree.mtime(self.tree.snapshot(self.tree.backend(self.backend)))


class BackendDir(InBackend):
    """``backends/<b>``: its summary, the files its store serves, and its directories."""

    def child(self, name: str, *, render: bool = True) -> Node:
        backend = self.tree.backend(self.backend)
        path = (*self.path, name)
        if name in (BY_CID, BY_STATUS, CONTROL_DIR):
            return self.subdirectory(name)
        if name == SUMMARY:
            return self.tree.generated_node(self, name, render=render)
        served = self.tree.served_files(backend)
        if name in (PARQUET_FILE, CAR_FILE) and name in served:
            real = served[name]
            refuse_symlink(real)  # CorruptData (EIO): a link could lead outside the data root
            try:
                info = real.stat()
            except FileNotFoundError:
                raise NotFound(f"{real} does not exist") from None
            return Node(path, NodeKind.FILE, size=info.st_size, mtime_ns=info.st_mtime_ns, real_path=real)
        if name == CAR_JSON and CAR_FILE in served and served[CAR_FILE].is_file():
            return self.tree.generated_node(self, name, render=render)
        raise NotFound(f"no entry {name!r} in backend {backend.name}")

    def listing(self) -> StaticListing:
        nodes = []
        for name in BACKEND_ENTRIES:
            try:
                nodes.append(self.child(name, render=False))
            except (NotFound, CorruptData):
                continue  # no parquet or CAR yet, or one that is not served (summary.json says why)
        return StaticListing(nodes)

    def render(self, name: str) -> bytes:
        if name == SUMMARY:
            self.tree.backend(self.backend)  # NotFound for a name that is not a backend
            return pretty(reports.backend_summary(self.tree.root, self.backend))
        if name == CAR_JSON:
            served = self.tree.served_files(self.tree.backend(self.backend))
            if CAR_FILE in served:
                return car_json(served[CAR_FILE])
        return super().render(name)


class ByStatusDir(InBackend):
    """``backends/<b>/by-status``: one directory per status."""

    def child(self, name: str) -> Node:
        self.tree.backend(self.backend)
        if name not in STATUSES:
            return super().child(name)
        return self.subdirectory(name)

    def listing(self) -> StaticListing:
        return StaticListing([self.tree.dir_node((*self.path, status)) for status in STATUSES])


class ByCidDir(InBackend):
    """``backends/<b>/by-cid``: one directory per pin, listed from the newest version."""

    per_cid = True

    def child(self, name: str) -> Node:
        kept = self.tree.kept_record(self.tree.backend(self.backend), name)
        return RecordDir(self.tree, (*self.path, name), self.backend, name).made_from(kept)

    def cached_child(self, name: str) -> Node | None:
        kept = self.tree.records.get(self.backend, name)
        return None if kept is None else RecordDir(self.tree, (*self.path, name), self.backend, name).made_from(kept)

    def listing(self) -> PositionalListing:
        tree, path = self.tree, self.path
        snapshot = tree.snapshot(tree.backend(self.backend))
        # Every entry is a directory like this one, leased on the whole version: a CID a later version
        # removes is told to the kernel then (``pinfs.fs.kernel``).
        lease = tree.records.lease(self.backend, snapshot.identity)
        template = Node(path, NodeKind.DIRECTORY, mtime_ns=tree.mtime(snapshot), lease=lease)
        return PositionalListing(
            snapshot.count,
            snapshot.cid_column,
            lambda cid: Node((*path, cid), NodeKind.DIRECTORY, mtime_ns=template.mtime_ns, lease=lease),
            template=template,
            version=snapshot.identity,
        )


# Spellings of one CID whose directory a kept record holds the nodes of (``RecordDir._made``).
MADE_SPELLINGS = 4


class RecordDir(InBackend):
    """``backends/<b>/by-cid/<cid>``: the files of one pin, all made from its kept record."""

    per_cid = True

    def __init__(self, tree: PinTree, path: TreePath, backend: str, cid: str) -> None:
        super().__init__(tree, path, backend)
        self.cid = cid

    def made_from(self, kept: Kept) -> Node:
        """This directory's node from ``kept``. Raises NotFound when the CID is not pinned."""
        self._check_pinned(kept)
        return Node(self.path, NodeKind.DIRECTORY, mtime_ns=self.tree.version_mtime(kept.version), lease=kept.lease)

    def child(self, name: str) -> Node:
        if name not in RECORD_FILES:
            return super().child(name)
        return self._file(name, self.tree.kept_record(self.tree.backend(self.backend), self.cid))

    def cached_child(self, name: str) -> Node | None:
        kept = self.tree.records.get(self.backend, self.cid)
        return None if kept is None else self._file(name, kept)

    def listing(self) -> StaticListing:
        return self.listing_of(self.tree.kept_record(self.tree.backend(self.backend), self.cid))

    def listing_of(self, kept: Kept) -> StaticListing:
        return self._made(kept)[0]

    def _file(self, name: str, kept: Kept) -> Node:
        files = self._made(kept)[1]
        if name not in files:
            raise NotFound(f"no file {name!r} for a pin")
        return files[name]

    def _made(self, kept: Kept) -> tuple[StaticListing, dict[str, Node]]:
        """This directory's listing and files, made once per kept record (issue #19: a walk opens and
        reads every CID directory; making seven nodes and two JSON texts each time was ~15 % of a
        warm walk's CPU). Kept on the record, so a change, which replaces it, drops them too."""
        record = self._check_pinned(kept)
        made = kept.made.get(self.path)
        if made is None:
            files = {name: self._make_file(name, record, kept) for name in RECORD_FILES}
            made = (StaticListing(list(files.values())), files)
            if len(kept.made) < MADE_SPELLINGS:  # a bound: a CID has countless mixed-case spellings
                kept.made[self.path] = made
        return made

    def _make_file(self, name: str, record: dict, kept: Kept) -> Node:
        data = record_file_bytes(record, name)
        path = (*self.path, name)
        return Node(path, NodeKind.FILE, size=len(data), mtime_ns=kept.mtime_ns, content=data, lease=kept.lease)

    def _check_pinned(self, kept: Kept) -> dict:
        if kept.record is None:
            raise NotFound(f"{self.cid!r} is not pinned on {self.backend}")
        return kept.record


class StatusDir(InBackend):
    """``backends/<b>/by-status/<status>``: a symlink to ``by-cid/<cid>`` per pin with that status."""

    per_cid = True

    def __init__(self, tree: PinTree, path: TreePath, backend: str, status: str) -> None:
        super().__init__(tree, path, backend)
        self.status = status

    def child(self, name: str) -> Node:
        return self._link(name, self.tree.kept_record(self.tree.backend(self.backend), name))

    def cached_child(self, name: str) -> Node | None:
        kept = self.tree.records.get(self.backend, name)
        return None if kept is None else self._link(name, kept)

    def _link(self, cid: str, kept: Kept) -> Node:
        if kept.record is None or kept.record.get("status") != self.status:
            raise NotFound(f"{cid!r} has no status {self.status} on {self.backend}")
        return self.tree.status_link((*self.path, cid), cid, self.tree.version_mtime(kept.version), kept.lease)

    def listing(self) -> PositionalListing:
        tree, path = self.tree, self.path
        snapshot = tree.snapshot(tree.backend(self.backend))
        column = snapshot.status_column(self.status)  # counts only: the CIDs stay in the read cache
        lease = tree.records.lease(self.backend, snapshot.identity)
        return PositionalListing(
            len(column),
            column.slice,
            lambda cid: tree.status_link((*path, cid), cid, tree.mtime(snapshot), lease),
            version=snapshot.identity,
        )


class CidsDir(Directory):
    """``cids``: every CID of every backend that can be read, merged."""

    def child(self, name: str) -> Node:
        if not self.tree.holders(name):
            raise NotFound(f"no backend holds {name!r}")
        return self.subdirectory(name)

    def listing(self) -> StreamListing:
        readable = self.tree.readable_snapshots()
        snapshots = [snapshot for _backend, snapshot in readable]
        version = tuple((backend.name, snapshot.identity) for backend, snapshot in readable)
        return StreamListing(
            lambda: merge_sorted_unique([snapshot.iter_cids() for snapshot in snapshots]),
            lambda cid: self.tree.dir_node((*self.path, cid)),
            template=self.tree.dir_node(self.path),
            version=None if any(snapshot.identity is None for snapshot in snapshots) else version,
            reads=[snapshot.identity for snapshot in snapshots],
        )


class CidDir(Directory):
    """``cids/<cid>``: a symlink per backend holding the CID."""

    def __init__(self, tree: PinTree, path: TreePath, cid: str) -> None:
        super().__init__(tree, path)
        self.cid = cid

    def child(self, name: str) -> Node:
        stored = self.tree.holders(self.cid).get(name)
        if stored is None:
            return super().child(name)
        return self.tree.cid_link((*self.path, name), stored, name)

    def listing(self) -> StaticListing:
        holders = self.tree.holders(self.cid)
        return StaticListing([self.tree.cid_link((*self.path, name), stored, name) for name, stored in holders.items()])


def directory_at(tree: PinTree, path: TreePath) -> Directory:
    """The directory at ``path``, by its shape alone (never touches disk). Raises NotFound for a path
    that no directory can be at (what each kind's existence depends on is checked by its parent's
    ``child``)."""
    depth = len(path)
    if depth == 0:
        return RootDir(tree, path)
    top = path[0]
    if path == (CONTROL_DIR,):
        return ControlDir(tree, path, None)
    if top == CIDS_DIR and depth <= 2:
        return CidsDir(tree, path) if depth == 1 else CidDir(tree, path, path[1])
    if top == BACKENDS_DIR:
        if depth == 1:
            return BackendsDir(tree, path)
        return _backend_directory(tree, path, path[1], path[2:])
    raise NotFound(f"no directory {shown(path)}")


def _backend_directory(tree: PinTree, path: TreePath, backend: str, rest: TreePath) -> Directory:
    if not rest:
        return BackendDir(tree, path, backend)
    if rest == (CONTROL_DIR,):
        return ControlDir(tree, path, backend)
    if rest == (BY_CID,):
        return ByCidDir(tree, path, backend)
    if rest == (BY_STATUS,):
        return ByStatusDir(tree, path, backend)
    if len(rest) == 2 and rest[0] == BY_CID:
        return RecordDir(tree, path, backend, rest[1])
    if len(rest) == 2 and rest[0] == BY_STATUS and rest[1] in STATUSES:
        return StatusDir(tree, path, backend, rest[1])
    raise NotFound(f"no directory {shown(path)}")
