"""The virtual tree the mount serves: paths to nodes, directory listings, attributes and bytes.

What it is for: everything a user sees under the mount point (CONTRACT §2) is decided here, as plain
code over ``pinfs.backends``, ``pinfs.store`` and ``pinfs.ops.reports``. A path is a tuple of names
(``("backends", "s3-main", "by-cid", cid, "status")``); ``PinTree.resolve`` turns it into a ``Node``,
``PinTree.listing`` pins one version of a directory for paging (a ``StaticListing`` of nodes for a
small one, a ``NameListing`` giving Arrow blocks of names for ``by-cid``, ``by-status/<s>`` and
``cids``), ``PinTree.open_content`` gives the bytes of a file.

What it must not do: import pyfuse3, know about inodes, handles or errno, or scan a backend to answer
a lookup. Looking up ``by-cid/<cid>`` or ``cids/<cid>`` is one indexed ``PinSnapshot.lookup`` per
backend. Nothing is read when the tree is built (the mount is ready at once); every snapshot is taken
per access, so a parquet rewritten by another process is seen on the next lookup. Errors are domain
errors from ``pinfs.errors`` (plus ``NotADirectory`` below); the adapter maps them to errno.

Threading: every method that touches disk (``resolve``, ``lookup``, ``listing``, ``open_content``,
``NameListing.block``/``entries``, ``Content.read``) blocks and is meant to run on a worker thread.
``resolve_cached``, ``content_in_memory`` and ``forget_rendered`` never touch disk and may be called
on the event loop. The tree's own mutable state (rendered files, fresh nodes and records) is guarded
by locks held only for dictionary operations, and the ``StoreCache`` is thread-safe; a
``StreamListing`` guards its cursor with a lock.
"""

from __future__ import annotations

import errno
import hashlib
import heapq
import json
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import cachetools
import pyarrow as pa

from pinfs.backends import NAME_PATTERN, Backend, discover_backends, get_backend
from pinfs.cids import is_valid_cid
from pinfs.commands import control_readme
from pinfs.errors import CorruptData, InvalidInput, NotFound, PinfsError, describe
from pinfs.fs.control import BACKEND_COMMANDS, ROOT_COMMANDS
from pinfs.fs.versions import FRESH_SECONDS, SHORT_SECONDS, Kept, Lease, RecordCache
from pinfs.fsutil import refuse_symlink
from pinfs.ops import reports
from pinfs.rootfs import as_path, local_copy
from pinfs.schema import STATUSES, load_metadata
from pinfs.snapshots import PinSnapshot, StoreCache
from pinfs.store import PinStore

log = logging.getLogger(__name__)

Path_ = tuple[str, ...]

# Names of the fixed entries (CONTRACT §2).
README = "README"
CONTROL_DIR = ".control"
BACKENDS_DIR = "backends"
CIDS_DIR = "cids"
BY_CID = "by-cid"
BY_STATUS = "by-status"
SUMMARY = "summary.json"
PARQUET_FILE = "pin_mappings.parquet"
CAR_FILE = "pin_mappings.car"
CAR_JSON = "pin_mappings.car.json"
INSIGHTS_SVG = "insights.svg"
REPORT_FILES = ("health.json", "status.json", "insights.json", INSIGHTS_SVG)
# How long a generated file's bytes are reused: short, so outside changes show within 2 s (CONTRACT §2).
RENDER_SECONDS = 1.0
# Nodes that are not made from a record (directories, real files) resolved on a worker thread may
# answer again from memory, on the event loop, for FRESH_SECONDS (the adapter's fast path, issue #6).
# With the kernel's SHORT_SECONDS, an outside change shows within 1.5 s (CONTRACT §2: 2 s). Records
# and the nodes made from them live in ``self.records`` (``pinfs.fs.versions``, issue #19).
FRESH_ENTRIES = 4096  # nodes; the least recently used goes first
RECORD_VALUE_FILES = ("cid", "status", "car_file_path", "backend_name", "created_at")
RECORD_FILES = (*RECORD_VALUE_FILES, "metadata.json", "pin.json")


class NotADirectory(PinfsError):
    """A path goes through something that is not a directory."""

    errno = errno.ENOTDIR


class NodeKind(Enum):
    DIRECTORY = "directory"
    FILE = "file"  # bytes known now (``content``) or a real file (``real_path``)
    GENERATED = "generated"  # bytes made by pinfs (reports, summary, CAR as JSON), cached briefly
    SYMLINK = "symlink"
    CONTROL = "control"


_MODES = {
    # 0755, not 0555 (issue #16): a copy made with 'cp -r' keeps the modes, and its owner must be able
    # to remove it again. Nothing here is writable all the same: every change is refused with EROFS.
    NodeKind.DIRECTORY: stat.S_IFDIR | 0o755,
    NodeKind.FILE: stat.S_IFREG | 0o444,
    NodeKind.GENERATED: stat.S_IFREG | 0o444,
    NodeKind.SYMLINK: stat.S_IFLNK | 0o777,
    NodeKind.CONTROL: stat.S_IFREG | 0o600,
}


@dataclass(frozen=True)
class Node:
    """One entry of the tree. ``size`` is exact, except for a GENERATED node made for a directory
    listing (``size_known`` False: rendering every report just to list a directory would make ``ls``
    slow, so the adapter gives such entries no attribute lifetime and the next ``stat`` renders it).
    GENERATED and CONTROL files are opened with direct_io, so a read is never cut at ``size`` even when
    the content changed between ``stat`` and ``open``."""

    path: Path_
    kind: NodeKind
    size: int = 0
    mtime_ns: int = 0
    content: bytes | None = None
    real_path: Path | None = None
    target: str | None = None
    control_key: tuple[str | None, str] | None = None  # (backend or None for the root, command)
    size_known: bool = True
    lease: Lease | None = None  # how long the kernel may keep it (``kernel_timeout``); None: briefly

    @property
    def mode(self) -> int:
        return _MODES[self.kind]

    @property
    def is_dir(self) -> bool:
        return self.kind is NodeKind.DIRECTORY

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""


# -- file contents --


class Content(Protocol):
    """The bytes of one open file, fixed for the life of the handle."""

    size: int

    def read(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


class BytesContent:
    """Bytes made once (at open) and kept, so one read sequence sees one version."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    def close(self) -> None:
        pass


class RealFileContent:
    """A real file, open for the life of the handle (an atomic replace leaves this version readable)."""

    def __init__(self, path: Path) -> None:
        # A file on an S3 root is read from its copy in the local read cache.
        self._fd = os.open(local_copy(path), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- listings --


class Listing(Protocol):
    """One pinned version of a small directory. ``entries(start, limit)`` returns ``(next_offset, node)``
    pairs: ``start`` is 0 or a ``next_offset`` returned earlier, always a position in this version."""

    def entries(self, start: int, limit: int) -> list[tuple[int, Node]]: ...


class StaticListing:
    """A small directory, listed once in sorted order."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = sorted(nodes, key=lambda node: node.name)

    def entries(self, start: int, limit: int) -> list[tuple[int, Node]]:
        return [(index + 1, node) for index, node in enumerate(self.nodes[start : start + limit], start)]

    def names(self) -> list[str]:
        return [node.name for node in self.nodes]


def _nameable(cid: str) -> bool:
    # base64 multibase CIDs ("m…", "u…") may hold "/": they cannot be a file name, so listings skip
    # them (they stay readable through the parquet and the CLI). NUL cannot occur in a valid CID.
    return "/" not in cid and cid not in ("", ".", "..")


def _nameable_batch(first: int, cids: list[str]) -> tuple[list[int], list[str]]:
    """``(next_offsets, names)`` of the nameable ``cids``, the first at position ``first``. The common
    case (all nameable) is checked with a few C-level scans instead of a test per CID."""
    if "/" not in "".join(cids) and "" not in cids and "." not in cids and ".." not in cids:
        return list(range(first + 1, first + 1 + len(cids))), cids
    kept = [(position, cid) for position, cid in enumerate(cids, first + 1) if _nameable(cid)]
    return [position for position, _cid in kept], [cid for _position, cid in kept]


@dataclass(frozen=True)
class NameBlock:
    """The entries of a big listing at positions ``start`` up to ``start + len(column)``.

    ``column`` holds every name there in order (Arrow; for ``by-cid`` and ``by-status`` a slice of
    what the read cache holds, so keeping it costs no copy); ``offsets`` and ``names`` are the entries
    that can be file names, each with its next offset (its position + 1)."""

    start: int
    column: pa.Array | pa.ChunkedArray
    offsets: list[int]
    names: list[str]

    @property
    def stop(self) -> int:
        return self.start + len(self.column)

    @classmethod
    def of(cls, start: int, column: pa.Array | pa.ChunkedArray) -> NameBlock:
        offsets, names = _nameable_batch(start, column.to_pylist())
        return cls(start, column, offsets, names)


class NameListing:
    """One pinned version of a big, sorted directory of CIDs (``by-cid``, ``by-status/<s>``, ``cids``),
    read in blocks of names by position (issue #6: no node object per entry, and the adapter keeps the
    blocks it listed instead of a path string per entry).

    ``template``, when not None, is the node every entry is but for its name (``by-cid``, ``cids``: all
    directories alike); otherwise ``node(name)`` makes each. ``version`` tells versions apart: two
    listings of one directory with equal versions give the same names at the same positions (None:
    cannot be told, never treated as equal)."""

    template: Node | None = None
    version: Hashable | None = None

    def block(self, start: int, limit: int) -> NameBlock:
        """The entries at positions ``start`` up to ``start + limit``; shorter only at the end."""
        raise NotImplementedError

    def node(self, name: str) -> Node:
        raise NotImplementedError

    def entries(self, start: int, limit: int) -> list[tuple[int, Node]]:
        """As ``Listing.entries``; empty only at the end, even past a run of names that cannot be file
        names."""
        while True:
            block = self.block(start, limit)
            if block.names:
                return [(offset, self.node(name)) for offset, name in zip(block.offsets, block.names, strict=True)]
            if block.stop < start + limit:
                return []
            start = block.stop


class PositionalListing(NameListing):
    """A sorted column of CIDs with random access by position (``by-cid``, ``by-status/<s>``):
    ``fetch(start, stop)`` gives the names at those positions."""

    def __init__(
        self,
        count: int,
        fetch: Callable[[int, int], pa.Array | pa.ChunkedArray],
        make_node: Callable[[str], Node],
        template: Node | None = None,
        version: Hashable | None = None,
    ) -> None:
        self.count = count
        self._fetch = fetch
        self._make_node = make_node
        self.template = template
        self.version = version

    def block(self, start: int, limit: int) -> NameBlock:
        stop = min(start + limit, self.count)
        return NameBlock.of(start, self._fetch(start, stop) if start < stop else pa.array([], pa.string()))

    def node(self, name: str) -> Node:
        return self._make_node(name)


class StreamListing(NameListing):
    """A sorted stream with no random access (``cids``: a k-way merge of every backend's CIDs).

    Positions count items of the stream. The cursor goes forward; the last ``RECENT`` items are kept so
    a readdir that resumes inside the previous batch (the kernel took only part of it) costs nothing.
    Going back further restarts the stream, which only happens on a ``seekdir`` backwards.
    """

    RECENT = 4096

    def __init__(
        self,
        open_stream: Callable[[], Iterator[str]],
        make_node: Callable[[str], Node],
        template: Node | None = None,
        version: Hashable | None = None,
    ) -> None:
        self._open_stream = open_stream
        self._make_node = make_node
        self.template = template
        self.version = version
        self._stream: Iterator[str] = open_stream()
        self._position = 0  # position of the next item the stream yields
        self._recent: deque[tuple[int, str]] = deque(maxlen=self.RECENT)
        self._lock = threading.Lock()

    def block(self, start: int, limit: int) -> NameBlock:
        with self._lock:
            items = self._take(start, limit)
        # A copy into one Arrow array (~64 bytes a CID, against ~110 for a str): the merged stream
        # has no buffer of its own to share.
        return NameBlock.of(start, pa.array([cid for _position, cid in items], pa.string()))

    def node(self, name: str) -> Node:
        return self._make_node(name)

    def _take(self, start: int, limit: int) -> list[tuple[int, str]]:
        items: list[tuple[int, str]] = []
        if start < self._position:
            if self._recent and self._recent[0][0] <= start:
                items = [item for item in self._recent if item[0] >= start][:limit]
            else:
                self._stream, self._position = self._open_stream(), 0
                self._recent.clear()
        while self._position < start and next(self._stream, None) is not None:
            self._position += 1
        while len(items) < limit:
            cid = next(self._stream, None)
            if cid is None:
                break
            item = (self._position, cid)
            self._position += 1
            self._recent.append(item)
            items.append(item)
        return items


def merge_sorted_unique(streams: list[Iterator[str]]) -> Iterator[str]:
    """Every item of several sorted streams once, in order."""
    previous: str | None = None
    for item in heapq.merge(*streams):
        if item != previous:
            yield item
            previous = item


# -- record files --


def record_file_bytes(record: Mapping[str, Any], name: str) -> bytes:
    """The content of one per-CID file (CONTRACT §2): a value + "\\n", or pretty JSON."""
    if name in RECORD_VALUE_FILES:
        value = record.get(name)
        return (("" if value is None else str(value)) + "\n").encode()
    metadata = _metadata_of(record)
    if name == "metadata.json":
        return _pretty(metadata)
    if name == "pin.json":
        return _pretty({**record, "metadata": metadata})
    raise NotFound(f"no file {name!r} for a pin")


def _metadata_of(record: Mapping[str, Any]) -> Any:
    try:
        return load_metadata(record.get("metadata"))
    except ValueError:
        return record.get("metadata")  # not an object on disk: shown as the string it is


def _pretty(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode()


README_TEXT = (
    """\
pinfs: IPFS pin mappings of the data root, one directory per storage backend.

  health.json  status.json  insights.json   reports over every backend
  insights.svg                              insights.json drawn: open it in a browser
  backends/<b>/summary.json                 count, counts by status, source (parquet/legacy)
  backends/<b>/pin_mappings.parquet         the file itself (pandas.read_parquet works on it), an
                                            export of the backend's Delta table
  backends/<b>/pin_mappings.car             the file itself (a CARv1 file)
  backends/<b>/pin_mappings.car.json        the CAR's content as JSON (json.load works on it)
  backends/<b>/by-cid/<cid>/                cid status car_file_path backend_name created_at
                                            metadata.json pin.json
  backends/<b>/by-status/<status>/<cid>     symlinks to ../../by-cid/<cid>
  cids/<cid>/<b>                            one symlink per backend holding the CID

"""
    + control_readme()
    + """\
The command runs once, on everything written, at the last close of the open file: when the
process that opened it and every process that inherited it have closed it, so
( cat a; cat b ) > backends/<b>/.control/pin is one batch of both. That close returns when the
command has finished, and fails with EIO when it failed: /bin/echo run by bash reports it. A shell
that opens the file itself and keeps it open around a command (dash: sh -c '/bin/echo x > f';
any shell's built-in echo) makes the last close its own, and ignores errors at close: check "state"
in the file's JSON, which is final when the shell returns. A bad word or CID, or a line over 4 KiB,
fails the write (EINVAL) and nothing of that open file runs; the file's JSON then says "state":
"rejected" and why, in "error" (a bad last line without a newline is only found at close, which
bash's printf does not check: read the JSON). '>>' and 'tee -a' work like '>'. Reading a control
file gives JSON about its last run.
Any spelling of a CID finds it: by-cid/<cid> and cids/<cid> take Qm... or bafy..., in any case.
Mounted with --sync-interval / --verify-interval (e.g. 15m, 1d), the mount also runs sync and
verify on that schedule; health.json and status.json show their last runs. CIDs containing "/" (base64 multibase)
cannot be file names and are left out of listings.
"""
)


# -- the tree --


def _fresh_cache() -> cachetools.TTLCache:
    # The clock is looked up on each call (not bound here), so tests can move it.
    return cachetools.TTLCache(maxsize=FRESH_ENTRIES, ttl=FRESH_SECONDS, timer=lambda: time.monotonic())


def record_mtime(record: Mapping[str, Any], fallback_ns: int) -> int:
    """The time a pin's files carry: its newest own timestamp (``created_at``, ``updated_at``,
    ``verified_at``; every change pinfs makes moves one of them), so a file keeps its mtime from one
    version to the next while its record does not change (issue #19: ``rsync``, ``make``)."""
    newest = 0
    for name in ("created_at", "updated_at", "verified_at"):
        value = record.get(name)
        if not isinstance(value, str) or not value:
            continue
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        newest = max(newest, int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000)
    return newest or fallback_ns


def _per_cid(path: Path_) -> str | None:
    """The CID a per-CID path is about (``by-cid/<cid>``, ``by-cid/<cid>/<file>``,
    ``by-status/<s>/<cid>`` of a backend), else None."""
    if len(path) < 4 or path[0] != BACKENDS_DIR:
        return None
    if path[2] == BY_CID and len(path) in (4, 5):
        return path[3]
    if path[2] == BY_STATUS and len(path) == 5:
        return path[4]
    return None


class PinTree:
    """The mount's tree over one data root. Blocking; see the module docstring for threading."""

    def __init__(self, root: Path, cache: StoreCache, records: RecordCache | None = None) -> None:
        self.root = as_path(root)
        self.cache = cache
        self.records = records if records is not None else RecordCache()
        self.started_ns = time.time_ns()
        self._rendered: cachetools.TTLCache = cachetools.TTLCache(maxsize=1024, ttl=RENDER_SECONDS)
        self._rendered_lock = threading.Lock()
        # path -> (digest, mtime_ns) of what each generated file last held: its mtime moves only when
        # its bytes do (issue #19: stable from one stat to the next).
        self._generated_times: dict[Path_, tuple[bytes, int]] = {}
        # Nodes not made from a record, resolved lately (by path), dropped FRESH_SECONDS after they were
        # kept. Written on worker threads, read on the event loop: guarded by a lock held only for cache
        # operations (a TTLCache is not thread-safe, and expires entries on access).
        self._fresh_nodes: cachetools.TTLCache = _fresh_cache()  # path -> Node
        self._fresh_lock = threading.Lock()
        # Bumped by ``forget_rendered``: a resolve that started before a control command finished must
        # not keep what it read as fresh after it (``_local.generation`` is the one it started in).
        self._generation = 0
        self._local = threading.local()

    # -- resolving paths --

    def resolve(self, path: Path_) -> Node:
        """The node at ``path``. Raises NotFound or CorruptData (a backend that cannot be read).

        Not recursive: every rule in ``_child`` checks the exact shape of its parent path and whatever
        its existence depends on (the backend, the record), so ancestors need not be resolved again.
        """
        self._local.generation = self._generation
        node = self._child(self._dir(path[:-1]), path[-1]) if path else self._dir(())
        # Generated files have their own render cache; per-CID nodes are made from ``self.records``.
        if node.kind is not NodeKind.GENERATED and _per_cid(path) is None:
            self._keep_fresh(path, node)
        return node

    def resolve_cached(self, path: Path_) -> Node | None:
        """The node at ``path`` from memory, else None: a per-CID node from its kept record (raising
        NotFound for a CID known not to be there), any other from a node resolved less than
        ``FRESH_SECONDS`` ago. Never touches disk: it may run on the event loop (issue #6). A per-CID
        file or directory is made from the kept record, so ``stat`` of every file of a CID costs one
        indexed lookup on a worker thread, not one each."""
        cid = _per_cid(path)
        if cid is not None:
            kept = self.records.get(path[1], cid)
            if kept is None:
                return None
            try:
                return self._record_node(path, kept)
            except NotFound:
                raise
            except Exception:  # never on the loop: the worker thread will say what is wrong
                return None
        with self._fresh_lock:
            return self._fresh_nodes.get(path)

    def kernel_timeout(self, node: Node) -> float:
        """Seconds the kernel may keep ``node``'s name and attributes: what remains of its lease (0 when
        a change ended it after the node was made), else ``SHORT_SECONDS``."""
        remaining = self.records.remaining(node.lease)
        return SHORT_SECONDS if remaining is None else remaining

    def _keep_fresh(self, path: Path_, node: Node) -> None:
        with self._fresh_lock:
            if self._same_generation():
                self._fresh_nodes[path] = node

    def _same_generation(self) -> bool:
        """Whether no control command ran since this thread's ``resolve`` started."""
        return getattr(self._local, "generation", None) == self._generation

    def lookup(self, parent: Path_, name: str) -> Node:
        """The entry ``name`` of the directory at ``parent``."""
        return self.resolve((*parent, name))

    def _child(self, parent: Node, name: str) -> Node:
        """``name`` inside the directory ``parent`` (already resolved, so its ancestors exist)."""
        path = (*parent.path, name)
        depth = len(parent.path)
        if depth == 0:
            return self._root_child(name)
        top = parent.path[0]
        if top == CONTROL_DIR and depth == 1 and name in ROOT_COMMANDS:
            return self._control(path, None, name)
        if top == CIDS_DIR:
            return self._cids_child(parent.path, name)
        if top == BACKENDS_DIR:
            if depth == 1:
                self._backend(name)
                return self._dir(path)
            return self._backend_child(parent.path, name)
        raise NotFound(f"no entry {name!r} in /{'/'.join(parent.path)}")

    def _root_child(self, name: str, *, render: bool = True) -> Node:
        if name in (CONTROL_DIR, BACKENDS_DIR, CIDS_DIR):
            return self._dir((name,))
        if name == README:
            return self._bytes_node((name,), README_TEXT.encode())
        if name in REPORT_FILES:
            return self._generated((name,), render=render)
        raise NotFound(f"no entry {name!r} in /")

    def _backend_child(self, parent: Path_, name: str) -> Node:
        backend = self._backend(parent[1])
        path = (*parent, name)
        rest = parent[2:]
        if not rest:
            return self._backend_top(backend, path, name)
        if rest == (CONTROL_DIR,) and name in BACKEND_COMMANDS:
            return self._control(path, backend.name, name)
        if rest == (BY_CID,) or (len(rest) == 2 and rest[0] == BY_CID and name in RECORD_FILES):
            return self._record_node(path, self._kept_record(backend, path[3]))
        if rest == (BY_STATUS,) and name in STATUSES:
            return self._dir(path)
        if len(rest) == 2 and rest[0] == BY_STATUS and rest[1] in STATUSES:
            return self._record_node(path, self._kept_record(backend, name))
        raise NotFound(f"no entry {name!r} in /{'/'.join(parent)}")

    def _backend_top(self, backend: Backend, path: Path_, name: str, *, render: bool = True) -> Node:
        if name in (BY_CID, BY_STATUS, CONTROL_DIR):
            return self._dir(path)
        if name == SUMMARY:
            return self._generated(path, render=render)
        if name in (PARQUET_FILE, CAR_FILE):
            real = backend.directory / name
            refuse_symlink(real)  # CorruptData (EIO): a link could lead outside the data root
            try:
                info = real.stat()
            except FileNotFoundError:
                raise NotFound(f"{real} does not exist") from None
            return Node(path, NodeKind.FILE, size=info.st_size, mtime_ns=info.st_mtime_ns, real_path=real)
        if name == CAR_JSON and backend.car_path.is_file():
            return self._generated(path, render=render)
        raise NotFound(f"no entry {name!r} in backend {backend.name}")

    def _cids_child(self, parent: Path_, name: str) -> Node:
        if len(parent) == 1:
            if not self._holders(name):
                raise NotFound(f"no backend holds {name!r}")
            return self._dir((*parent, name))
        stored = self._holders(parent[1]).get(name) if len(parent) == 2 else None
        if stored is not None:
            return self._cid_link((*parent, name), stored, name)
        raise NotFound(f"no entry {name!r} in /{'/'.join(parent)}")

    # -- listing directories --

    def listing(self, path: Path_) -> Listing | NameListing:
        """One version of the directory at ``path``, to page through. Raises like ``resolve``."""
        node = self.resolve(path)
        if not node.is_dir:
            raise NotADirectory(f"/{'/'.join(path)} is not a directory")
        if not path:
            names = [README, *REPORT_FILES, CONTROL_DIR, BACKENDS_DIR, CIDS_DIR]
            return StaticListing([self._root_child(name, render=False) for name in names])
        if path == (CONTROL_DIR,):
            return StaticListing([self._control((*path, name), None, name) for name in ROOT_COMMANDS])
        if path == (BACKENDS_DIR,):
            backends, _problems = discover_backends(self.root)
            return StaticListing([self._dir((*path, backend.name)) for backend in backends])
        if path == (CIDS_DIR,):
            return self._cids_listing()
        if path[0] == CIDS_DIR:
            holders = self._holders(path[1])
            return StaticListing([self._cid_link((*path, name), stored, name) for name, stored in holders.items()])
        return self._backend_listing(path)

    def _backend_listing(self, path: Path_) -> Listing | NameListing:
        backend = self._backend(path[1])
        rest = path[2:]
        if len(rest) == 2 and rest[0] == BY_CID:
            return self._record_listing(path, self._kept_record(backend, rest[1]))
        if not rest:
            names = [SUMMARY, PARQUET_FILE, CAR_FILE, CAR_JSON, BY_CID, BY_STATUS, CONTROL_DIR]
            nodes = []
            for name in names:
                try:
                    nodes.append(self._backend_top(backend, (*path, name), name, render=False))
                except (NotFound, CorruptData):
                    continue  # no parquet or CAR yet, or one that is not served (summary.json says why)
            return StaticListing(nodes)
        if rest == (CONTROL_DIR,):
            return StaticListing([self._control((*path, name), backend.name, name) for name in BACKEND_COMMANDS])
        if rest == (BY_STATUS,):
            return StaticListing([self._dir((*path, status)) for status in STATUSES])
        snapshot = self._snapshot(backend)
        if rest == (BY_CID,):
            # Every entry is a directory like this one, leased on the whole version: a CID a later
            # version removes is told to the kernel then (``pinfs.fs.kernel``).
            lease = self.records.lease(backend.name, snapshot.identity)
            template = Node(path, NodeKind.DIRECTORY, mtime_ns=self._mtime(snapshot), lease=lease)
            return PositionalListing(
                snapshot.count,
                snapshot.cid_column,
                lambda cid: Node((*path, cid), NodeKind.DIRECTORY, mtime_ns=template.mtime_ns, lease=lease),
                template=template,
                version=snapshot.identity,
            )
        if len(rest) == 2 and rest[0] == BY_STATUS:
            column = snapshot.cids_with_status(rest[1])
            lease = self.records.lease(backend.name, snapshot.identity)
            return PositionalListing(
                len(column),
                lambda start, stop: column.slice(start, stop - start),
                lambda cid: self._status_link((*path, cid), cid, self._mtime(snapshot), lease),
                version=snapshot.identity,
            )
        raise NotADirectory(f"/{'/'.join(path)} is not a directory")

    def _cids_listing(self) -> NameListing:
        readable = self._readable_snapshots()
        snapshots = [snapshot for _backend, snapshot in readable]
        version = tuple((backend.name, snapshot.identity) for backend, snapshot in readable)
        return StreamListing(
            lambda: merge_sorted_unique([snapshot.iter_cids() for snapshot in snapshots]),
            lambda cid: self._dir((CIDS_DIR, cid)),
            template=self._dir((CIDS_DIR,)),
            version=None if any(snapshot.identity is None for snapshot in snapshots) else version,
        )

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
        raise InvalidInput(f"/{'/'.join(node.path)} is not a file with content")

    def _render_cached(self, path: Path_) -> bytes:
        """``render`` through a cache of ``RENDER_SECONDS``: a ``stat`` then ``open``/``cat`` sees one
        version, and repeated ``ls -l`` do not recompute reports, while changes still show within 2 s."""
        with self._rendered_lock:
            found = self._rendered.get(path)
        if found is not None:
            return found
        data = self.render(path)
        with self._rendered_lock:
            self._rendered[path] = data
        return data

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
        with self._rendered_lock:
            self._rendered.clear()
        with self._fresh_lock:
            self._fresh_nodes.clear()

    def content_in_memory(self, node: Node) -> Content | None:
        """``open_content`` when it needs no disk (bytes held by the node), else None; for the loop."""
        if node.kind is NodeKind.FILE and node.real_path is None:
            return BytesContent(node.content or b"")
        if node.kind is NodeKind.GENERATED and node.content is not None:
            return BytesContent(node.content)
        return None

    def render(self, path: Path_) -> bytes:
        """Make a generated file: reports, a backend's summary, the CAR as legacy JSON."""
        if path == (INSIGHTS_SVG,):
            return self._insights_svg()
        if len(path) == 1 and path[0] in REPORT_FILES:
            return _pretty(self._report(path[0]))
        if len(path) == 3 and path[0] == BACKENDS_DIR and path[2] == SUMMARY:
            return _pretty(self.summary(path[1]))
        if len(path) == 3 and path[0] == BACKENDS_DIR and path[2] == CAR_JSON:
            return self._car_json(self._backend(path[1]))
        raise NotFound(f"/{'/'.join(path)} is not a generated file")

    def _report(self, name: str) -> dict[str, Any]:
        function = {"health.json": reports.health, "status.json": reports.status, "insights.json": reports.insights}
        try:
            return function[name](self.root)
        except PinfsError as exc:  # e.g. the data root is gone (RootMissing): the report is an error
            return {"ok": False, "state": "error", "error": str(exc)}
        except Exception as exc:  # a report must not take the mount down; the file says what went wrong
            log.exception("making %s failed", name)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    def _insights_svg(self) -> bytes:
        from pinfs.ops.insights_svg import render_svg  # matplotlib: imported on first read, not at mount

        return render_svg(self._report("insights.json"))

    def summary(self, name: str) -> dict[str, Any]:
        """summary.json (``reports.backend_summary``; a bad backend's summary carries its error)."""
        self._backend(name)  # NotFound for a name that is not a backend
        return reports.backend_summary(self.root, name)

    def _car_json(self, backend: Backend) -> bytes:
        from pinfs.car import read_pin_mappings_car, to_legacy_json

        try:
            car = read_pin_mappings_car(backend.car_path)
        except FileNotFoundError:
            raise NotFound(f"{backend.car_path} does not exist") from None
        return _pretty(to_legacy_json(car))

    # -- backends, snapshots and records --

    def _backend(self, name: str) -> Backend:
        if not NAME_PATTERN.fullmatch(name):
            raise NotFound(f"no backend {name!r}")
        try:
            return get_backend(self.root, name)
        except InvalidInput as exc:  # e.g. a symlinked backend directory: not served
            raise NotFound(str(exc)) from None

    def _snapshot(self, backend: Backend) -> PinSnapshot:
        return PinStore(backend, self.cache).snapshot()

    def _readable_snapshots(self) -> list[tuple[Backend, PinSnapshot]]:
        """Every backend's snapshot; a backend that cannot be read is left out (its summary says why)."""
        backends, _problems = discover_backends(self.root)
        readable = []
        for backend in backends:
            try:
                readable.append((backend, self._snapshot(backend)))
            except (CorruptData, OSError) as exc:
                log.info("backend %s left out of cids/: %s", backend.name, exc)
        return readable

    def _holders(self, cid: str) -> dict[str, str]:
        """The backends holding the CID ``cid`` spells, each with the spelling it stores: one indexed
        lookup per backend (and per other standard spelling, for a CID not spelled as stored). When
        none of those that can be read holds it but some cannot be read, nobody can say it is not
        there: CorruptData (EIO, not ENOENT: issue #15, item 8)."""
        if not _nameable(cid) or not is_valid_cid(cid):
            return {}
        holders: dict[str, str] = {}
        unreadable: list[str] = []
        for backend in discover_backends(self.root)[0]:
            try:
                record = self._snapshot(backend).find(cid)
            except (PinfsError, OSError) as exc:
                unreadable.append(f"{backend.name}: {describe(exc)}")
                continue
            if record is not None:
                holders[backend.name] = str(record["cid"])
        if not holders and unreadable:
            raise CorruptData(f"{cid}: in no backend that can be read, and cannot read {'; '.join(unreadable)}")
        return holders

    # -- node makers --

    def _dir(self, path: Path_, snapshot: PinSnapshot | None = None) -> Node:
        return Node(path, NodeKind.DIRECTORY, mtime_ns=self._mtime(snapshot))

    def _bytes_node(self, path: Path_, data: bytes, snapshot: PinSnapshot | None = None) -> Node:
        return Node(path, NodeKind.FILE, size=len(data), mtime_ns=self._mtime(snapshot), content=data)

    def _generated(self, path: Path_, *, render: bool = True) -> Node:
        if not render:
            with self._rendered_lock:
                known = self._generated_times.get(path)
            mtime_ns = known[1] if known is not None else self._data_mtime(path)
            return Node(path, NodeKind.GENERATED, mtime_ns=mtime_ns, size_known=False)
        data = self._render_cached(path)
        return Node(path, NodeKind.GENERATED, size=len(data), mtime_ns=self._generated_mtime(path, data), content=data)

    def _generated_mtime(self, path: Path_, data: bytes) -> int:
        """The mtime of a generated file holding ``data``: unchanged while its bytes are (however often
        it is rendered); when they change, the time of the data version they describe if that is newer,
        else now (a report can change with the clock or a run record, not only with the data)."""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        with self._rendered_lock:
            known = self._generated_times.get(path)
        if known is not None and known[0] == digest:
            return known[1]
        data_mtime = self._data_mtime(path)
        changed_with_data = known is None or data_mtime > known[1]
        mtime_ns = data_mtime if changed_with_data else max(time.time_ns(), known[1] + 1)
        with self._rendered_lock:
            self._generated_times[path] = (digest, mtime_ns)
        return mtime_ns

    def _data_mtime(self, path: Path_) -> int:
        """When the data a generated file describes was last changed: its backend's version, or for the
        reports over every backend the newest of theirs."""
        try:
            if len(path) == 3 and path[0] == BACKENDS_DIR:
                return self._mtime(self._snapshot(self._backend(path[1])))
            times = [self._mtime(snapshot) for _backend, snapshot in self._readable_snapshots()]
            return max(times, default=self.started_ns)
        except (PinfsError, OSError):
            return self.started_ns

    def _control(self, path: Path_, backend: str | None, command: str) -> Node:
        return Node(path, NodeKind.CONTROL, mtime_ns=self.started_ns, control_key=(backend, command))

    def _status_link(self, path: Path_, cid: str, mtime_ns: int, lease: Lease | None) -> Node:
        target = f"../../{BY_CID}/{cid}"
        return Node(path, NodeKind.SYMLINK, size=len(target), mtime_ns=mtime_ns, target=target, lease=lease)

    # -- per-CID nodes, made from kept records --

    def _kept_record(self, backend: Backend, cid: str) -> Kept:
        """The record of ``cid`` (``Kept.record`` None: not pinned): the one kept under a lease (it is
        current: a change would have dropped it), else read from the newest version and kept."""
        if not _nameable(cid) or not is_valid_cid(cid):
            raise NotFound(f"{cid!r} is not a CID")  # not a CID at all: nothing to read, nothing to keep
        kept = self.records.get(backend.name, cid, leased_only=True)
        if kept is not None:
            return kept
        snapshot = self._snapshot(backend)
        record = snapshot.find(cid)  # any spelling (issue #16)
        fallback = self._mtime(snapshot)
        mtime_ns = record_mtime(record, fallback) if record is not None else fallback
        return self.records.keep(
            backend.name, cid, record, snapshot.identity, mtime_ns, unleased_ok=self._same_generation()
        )

    def _record_node(self, path: Path_, kept: Kept) -> Node:
        """A per-CID node (``_per_cid``) made from ``kept``. Raises NotFound."""
        record = kept.record
        if path[2] == BY_CID:
            if record is None:
                raise NotFound(f"{path[3]!r} is not pinned on {path[1]}")
            if len(path) == 4:
                return Node(path, NodeKind.DIRECTORY, mtime_ns=self._version_mtime(kept.version), lease=kept.lease)
            if path[4] not in RECORD_FILES:
                raise NotFound(f"no file {path[4]!r} for a pin")
            data = record_file_bytes(record, path[4])
            return Node(path, NodeKind.FILE, size=len(data), mtime_ns=kept.mtime_ns, content=data, lease=kept.lease)
        if record is None or record.get("status") != path[3]:
            raise NotFound(f"{path[4]!r} has no status {path[3]} on {path[1]}")
        return self._status_link(path, path[4], self._version_mtime(kept.version), kept.lease)

    def _record_listing(self, path: Path_, kept: Kept) -> StaticListing:
        if kept.record is None:
            raise NotFound(f"{path[3]!r} is not pinned on {path[1]}")
        return StaticListing([self._record_node((*path, name), kept) for name in RECORD_FILES])

    def listing_cached(self, path: Path_) -> StaticListing | None:
        """``listing`` of a ``by-cid/<cid>`` directory from its kept record, else None. Never touches
        disk (for the event loop: a walk opens every such directory)."""
        if len(path) != 4 or path[0] != BACKENDS_DIR or path[2] != BY_CID:
            return None
        kept = self.records.get(path[1], path[3])
        if kept is None:
            return None
        return self._record_listing(path, kept)

    def _version_mtime(self, version: Hashable | None) -> int:
        return getattr(version, "mtime_ns", None) or self.started_ns

    def _cid_link(self, path: Path_, cid: str, backend: str) -> Node:
        target = f"../../{BACKENDS_DIR}/{backend}/{BY_CID}/{cid}"
        return Node(path, NodeKind.SYMLINK, size=len(target), mtime_ns=self.started_ns, target=target)

    def _mtime(self, snapshot: PinSnapshot | None) -> int:
        if snapshot is not None and snapshot.identity is not None:
            return snapshot.identity.mtime_ns
        return self.started_ns
