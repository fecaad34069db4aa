"""Directory listings of the mount's tree, and the cursor a directory handle pages them with.

What it is for: a listing is one pinned version of a directory (CONTRACT §2: readdir offsets are
positions in that version). A small directory is a ``StaticListing`` of nodes; a big, sorted one of
CIDs (``by-cid``, ``by-status/<s>``, ``cids``) is a ``NameListing`` read in Arrow blocks of names by
position (issue #6). A ``ListingCursor`` keeps the last block read and where the version ends, so a
readdir that resumes inside it needs no disk: it is what a directory handle holds, testable without
a mount.

What it must not do: import pyfuse3, know about inodes, or know where names come from (the
directory kinds give the fetch functions).

Threading: ``block``/``entries`` and ``ListingCursor.fetch`` may touch disk and run on a worker
thread; ``ListingCursor.cached``/``at_end`` never do. A ``StreamListing`` guards its stream with a lock.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from pinfs.fs.tree.names import nameable
from pinfs.fs.tree.nodes import Node


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


def _nameable_batch(first: int, cids: list[str]) -> tuple[list[int], list[str]]:
    """``(next_offsets, names)`` of the nameable ``cids``, the first at position ``first``. The common
    case (all nameable) is checked with a few C-level scans instead of a test per CID."""
    if "/" not in "".join(cids) and "" not in cids and "." not in cids and ".." not in cids:
        return list(range(first + 1, first + 1 + len(cids))), cids
    kept = [(position, cid) for position, cid in enumerate(cids, first + 1) if nameable(cid)]
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
    cannot be told, never treated as equal). ``reads``: the snapshot identities whose files it reads
    while it is open, for the reader records that keep them (``pinfs.data.readers``)."""

    template: Node | None = None
    version: Hashable | None = None
    reads: Sequence[Hashable | None] = ()
    # Whether ``names`` reads any positions again (a stream can only go forward).
    random_access = False

    def names(self, start: int, stop: int) -> pa.Array | pa.ChunkedArray:
        """Every name at positions ``start`` up to ``stop`` (shorter only at the end), nameable or not.
        Blocking."""
        raise NotImplementedError

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

    random_access = True

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
        self.reads = (version,)

    def names(self, start: int, stop: int) -> pa.Array | pa.ChunkedArray:
        stop = min(stop, self.count)
        return self._fetch(start, stop) if start < stop else pa.array([], pa.string())

    def block(self, start: int, limit: int) -> NameBlock:
        return NameBlock.of(start, self.names(start, start + limit))

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
        reads: Sequence[Hashable | None] = (),
    ) -> None:
        self._open_stream = open_stream
        self._make_node = make_node
        self.template = template
        self.version = version
        self.reads = reads
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


class ListingCursor:
    """Where a directory handle is in one ``NameListing``: the last block fetched (the kernel takes it
    over several readdir requests) and, once a fetch found it, the position past the last entry.

    Blocks start at multiples of ``block_size``, so one listing version keeps each block once (the
    adapter's listing inodes number entries by those blocks, ``pinfs.fs.inodes``)."""

    def __init__(self, listing: NameListing, block_size: int) -> None:
        self.listing = listing
        self.block_size = block_size
        self.block: NameBlock | None = None
        self.end: int | None = None
        self.fetched = 0  # blocks fetched (read, or taken from ``kept``)

    def cached(self, position: int) -> NameBlock | None:
        """The block holding ``position`` when it is the one kept; never touches disk."""
        block = self.block
        return block if block is not None and block.start <= position < block.stop else None

    def at_end(self, position: int) -> bool:
        """Whether ``position`` is known to be past the last entry of this version."""
        return self.end is not None and position >= self.end

    def fetch(self, position: int, kept: pa.Array | pa.ChunkedArray | None = None) -> NameBlock | None:
        """Read the block holding ``position`` and keep it; None past the end. ``kept``: that block's
        names as an earlier listing of this very version read them (the adapter's listing inodes keep
        what the kernel holds), used instead of reading them again. Blocking."""
        start = position - position % self.block_size
        block = NameBlock.of(start, kept) if kept is not None else self.listing.block(start, self.block_size)
        self.block = block
        self.fetched += 1
        if len(block.column) < self.block_size:
            self.end = block.stop
        return block if position < block.stop else None
