"""Inode numbers: which node each number the kernel holds stands for, and how many lookups it holds.

What it is for: the adapter's table from inode numbers to paths, with the kernel's lookup counts, so
that ``forget`` frees what the kernel let go of. There are two kinds of number, in disjoint ranges of
the 64-bit space:

- *Path inodes* (below 2**60) are a hash of the node's path, for everything looked up by name and the
  entries of small listings. One dictionary item per inode the kernel holds; a path gets the same
  number again after ``forget``, so no path -> inode table is needed.
- *Listing inodes* (bit 62 set) are for the entries of big listings (``by-cid``, ``by-status/<s>``,
  ``cids``). The number encodes (epoch, position): an epoch (``ListedVersion``) is one version of one directory's
  listing, and keeps the names it handed out as the Arrow blocks the tree read them into (for
  ``by-cid`` and ``by-status`` the very buffers the read cache holds), with a lookup count per
  position. Issue #6: after readdirplus the kernel holds one inode per listed name until it forgets
  it; a path inode costs ~240 bytes each (a million names: ~240 MB), a listing inode ~4 bytes plus its
  share of an Arrow buffer that is usually in the read cache anyway.

A node keeps the number the kernel learned for it while the kernel holds that number. A lookup of a
name the current epoch of its directory holds gives the listing inode (so the kernel's revalidation
after the entry timeout finds the same number and keeps its entry); any other name gets its path
inode. A name may thus have two numbers over time (listed, then looked up after its epoch let go of
it): the kernel treats that like a file that was replaced.

A CID has many spellings (issue #16), and the kernel holds a name in the one it was asked for, while
a change names the CID as stored. The standard spellings (``Qm…``, ``bafy…``) follow from the stored
one; any other (``B…``, ``z…``, mixed case) held in a path inode below ``by-cid``, ``by-status/<s>``
or ``cids`` is indexed by the CID's identity (``PathInodes.aliases``), so that the kernel-cache duty
can tell the kernel about every name it holds for a changed CID (issue #19). Listing inodes need no
index: a listing shows the spellings as stored.

Memory stays proportional to what the kernel holds, and bounded in names: a block is dropped when no
position in it is held, an epoch when none of its blocks is and no directory handle lists it. A held
block keeps its lookup counts (a byte a position) and, for the ``KEPT_BLOCKS`` blocks used last
(``KeptNames``), its names; the others' names are let go and read again from the listed version when
the kernel asks about one of their entries (``NamesNeeded``: the adapter reads them on a worker thread
and asks again). Issue #12: at 10M pins, a full ``ls by-cid`` used to keep all 10M names the kernel
holds after readdirplus, ~630 MB; now ~10 MB of counts and at most ``KEPT_BLOCKS`` blocks of names.

When a directory is listed in a new version, its previous epoch is *superseded*: the kernel drops most of its entries as
the new listing replaces them, and a block left with few held names (e.g. CIDs removed since) keeps
just those names as strings instead of the whole block (``COMPACT_HELD``). No cap on epochs is needed:
each costs memory only for names the kernel holds. ``forget_all`` (unmount) drops everything.

What it must not do: know about the tree (beyond ``tree.names.cid_named``: where a path names a CID),
pyfuse3 handles or errno other than ENOENT for a number it does not know (the kernel asked about
something it had forgotten).

Threading: used only on the event-loop thread; no locks. The Arrow blocks come from worker threads and
are immutable.
"""

from __future__ import annotations

import bisect
import errno
import itertools
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable

import pyarrow as pa
import pyfuse3

from pinfs.data.cids import cid_key, is_standard
from pinfs.errors import InvalidInput
from pinfs.fs.tree.names import TreePath, cid_named

Names = pa.Array | pa.ChunkedArray

HASH_MASK = (1 << 60) - 1  # path inodes: a 60-bit int costs 32 bytes in CPython, a 63-bit one 40
LISTING_FLAG = 1 << 62  # listing inodes; below 2**63 for tools that read st_ino as signed
POSITION_BITS = 36  # positions within one listing version
EPOCH_BITS = 62 - POSITION_BITS  # epoch numbers, reused once their epoch is gone
POSITION_MASK = (1 << POSITION_BITS) - 1
EPOCH_MASK = (1 << EPOCH_BITS) - 1
# A superseded epoch's block with at most this many held positions keeps only those names (as
# strings, ~150 bytes each) instead of the whole block (~64 bytes per name of the block).
COMPACT_HELD = 64
# Blocks of names kept in memory over every epoch (``KeptNames``). A ``by-cid`` block is a slice of a
# data file's cid column and keeps that column's buffer (~16k names, ~1 MB): 16 blocks keep ~16 MB at
# most, whatever the size of the listing. What the kernel asks after a listing mostly goes in order
# (``ls -l``, a walk): one or two blocks at a time.
KEPT_BLOCKS = 16

# (start, stop) -> the names a listed version has at those positions (blocking: a worker thread).
BlockReader = Callable[[int, int], Names]


def is_listing_inode(inode: int) -> bool:
    return bool(inode & LISTING_FLAG)


def _not_known() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.ENOENT)  # forgotten or never given: the kernel should not ask


# -- path inodes --


class PathInodes:
    """Inode -> path for the path inodes the kernel knows of, with their lookup counts.

    A hash that collides with a different live path is probed further with a salt. Python's ``hash`` is
    stable within a process, which is all an inode number must be: valid for the life of the mount.
    Each known inode is one dictionary item: the path joined with "/" (names never hold "/"), with the
    count appended after a NUL when it is above 1 (names never hold NUL either).

    Paths that name a CID in a non-standard spelling are also indexed by the CID's identity
    (``aliases``); a standard spelling costs a string test and no decoding. Every CID name a known path
    is at or below is counted (``names``), so that a change of 10,000 CIDs the kernel holds nothing of
    costs one set test each, not seven path lookups.
    """

    def __init__(self) -> None:
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: ""}
        self._named: dict[str, int] = {}  # CID name -> how many known paths are at or below it
        # CID identity (``cid_key``) -> {non-standard spelling: how many known paths name the CID so}
        self._aliases: dict[str, dict[str, int]] = {}

    @staticmethod
    def key_of(path: TreePath) -> str:
        return "/".join(path)

    @staticmethod
    def hash_key(key: str, salt: int = 0) -> int:
        return hash((salt, key) if salt else key) & HASH_MASK

    def inode_of(self, path: TreePath) -> int:
        """The inode for ``path``; not known to the kernel until ``remember``."""
        return self.inode_of_key(self.key_of(path)) if path else pyfuse3.ROOT_INODE

    def inode_of_key(self, key: str) -> int:
        """As ``inode_of`` for ``key_of(path)`` of a path that is not the root."""
        inode = hash(key) & HASH_MASK
        known = self._paths.get(inode)
        if known is None or known == key:  # the common cases first: unknown, or known with count 1
            return inode if inode > pyfuse3.ROOT_INODE else self._probe(key)
        if known.partition("\0")[0] == key:
            return inode
        return self._probe(key)

    def _probe(self, key: str) -> int:
        for salt in itertools.count(1):
            inode = self.hash_key(key, salt)
            if inode <= pyfuse3.ROOT_INODE:
                continue
            known = self._paths.get(inode)
            if known is None or known.partition("\0")[0] == key:
                return inode
        raise AssertionError("unreachable")

    def key_of_inode(self, inode: int) -> str:
        try:
            return self._paths[inode].partition("\0")[0]
        except KeyError:
            raise _not_known() from None

    def remember(self, inode: int, key: str) -> None:
        """The kernel learned of ``inode`` (path ``key``) once more. ``inode`` comes from ``inode_of``
        with no await in between."""
        if inode == pyfuse3.ROOT_INODE:
            return
        known = self._paths.get(inode)
        if known is None:
            self._paths[inode] = key
            self._index(key, 1)
        else:
            _key, _nul, count = known.partition("\0")
            self._paths[inode] = f"{key}\0{int(count or 1) + 1}"

    def forget(self, inode: int, count: int) -> None:
        known = self._paths.get(inode)
        if known is None or inode == pyfuse3.ROOT_INODE:
            return
        key, _nul, held = known.partition("\0")
        left = int(held or 1) - count
        if left > 1:
            self._paths[inode] = f"{key}\0{left}"
        elif left == 1:
            self._paths[inode] = key
        else:
            del self._paths[inode]
            self._index(key, -1)

    def aliases(self, identity: str) -> Collection[str]:
        """The non-standard spellings of the CID ``identity`` (its ``cid_key``) that known paths name
        (a copy: the caller may yield to the event loop, where forgets change the index)."""
        return tuple(self._aliases.get(identity, ()))

    def names(self, cid: str) -> bool:
        """Whether a known path is at or below the CID name ``cid`` (as spelled)."""
        return cid in self._named

    def _index(self, key: str, step: int) -> None:
        """Count ``key`` in (``step`` 1) or out of (-1) the CID names and the index of non-standard
        spellings."""
        cid = cid_named(key)
        if cid is None:
            return
        named = self._named.get(cid, 0) + step
        if named > 0:
            self._named[cid] = named
        else:
            self._named.pop(cid, None)
        if is_standard(cid):
            return
        try:
            identity = cid_key(cid)
        except InvalidInput:  # not a CID: nothing a change could name
            return
        spellings = self._aliases.setdefault(identity, {})
        count = spellings.get(cid, 0) + step
        if count > 0:
            spellings[cid] = count
        else:
            spellings.pop(cid, None)
            if not spellings:
                del self._aliases[identity]

    def holds(self, inode: int) -> bool:
        return inode in self._paths

    def under(self, prefix: str) -> list[tuple[int, str]]:
        """(inode, key) of every known path below the key ``prefix`` (for invalidating a subtree)."""
        start = prefix + "/"
        return [(inode, key.partition("\0")[0]) for inode, key in self._paths.items() if key.startswith(start)]

    def __len__(self) -> int:
        return len(self._paths) - 1  # the root is always known


# -- listing inodes --


class _Block:
    """The names at ``block_size`` consecutive positions of a listing (None once let go: read them
    again), and the lookups held on each: a byte a position, since the kernel holds one or a few
    lookups per entry; a count of ``BIG`` or more is kept in ``big``."""

    __slots__ = ("names", "counts", "held", "big")

    BIG = 255

    def __init__(self, names: Names) -> None:
        self.names: Names | None = names
        self.counts = bytearray(len(names))
        self.held = 0  # positions whose count is above 0
        self.big: dict[int, int] = {}

    def count(self, offset: int) -> int:
        small = self.counts[offset]
        return small if small < self.BIG else self.big[offset]

    def add(self, offset: int) -> bool:
        """One more lookup at ``offset``; True when it is the first."""
        small = self.counts[offset]
        if small < self.BIG - 1:
            self.counts[offset] = small + 1
        elif small == self.BIG - 1:
            self.counts[offset] = self.BIG
            self.big[offset] = self.BIG
        else:
            self.big[offset] += 1
        if small == 0:
            self.held += 1
        return small == 0

    def subtract(self, offset: int, count: int) -> int:
        """``count`` lookups fewer at ``offset`` (not below 0); the lookups left."""
        left = max(self.count(offset) - count, 0)
        if left >= self.BIG:
            self.big[offset] = left
            return left
        if self.counts[offset] == self.BIG:
            del self.big[offset]
        if left == 0 and self.counts[offset]:
            self.held -= 1
        self.counts[offset] = left
        return left


class NamesNeeded(Exception):
    """The kernel asked about an entry of a block whose names were let go: ``read`` them (blocking, on
    a worker thread), hand them to ``restore`` (on the event loop), and ask again."""

    def __init__(self, epoch: ListedVersion, index: int) -> None:
        super().__init__(f"the names of block {index} of {'/'.join(epoch.directory)}")
        self.epoch = epoch
        self.index = index

    def read(self) -> Names:
        return self.epoch.read_block(self.index)

    def restore(self, names: Names) -> None:
        self.epoch.restore(self.index, names)


class KeptNames:
    """The blocks whose names are kept, least recently used first. Past ``limit`` the oldest one's
    names are let go (its lookup counts stay). Only blocks whose epoch can read them again are here;
    the others keep their names while they are held."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = KEPT_BLOCKS if limit is None else limit
        self._order: OrderedDict[int, _Block] = OrderedDict()  # id(block) -> block

    def add(self, block: _Block) -> None:
        self._order[id(block)] = block
        self._order.move_to_end(id(block))
        while len(self._order) > self.limit:
            _key, oldest = self._order.popitem(last=False)
            oldest.names = None

    def touch(self, block: _Block) -> None:
        if id(block) in self._order:
            self._order.move_to_end(id(block))

    def discard(self, block: _Block) -> None:
        self._order.pop(id(block), None)

    def __len__(self) -> int:
        return len(self._order)


class ListedVersion:
    """One version of one directory's big listing, and the lookups the kernel holds on its entries.

    ``version`` comes from the tree (``NameListing.version``): two listings of a directory with equal
    versions list the same names at the same positions, so they share an epoch and their entries get
    the same numbers (the kernel then only counts one more lookup, instead of replacing every entry).
    """

    def __init__(
        self,
        number: int,
        directory: TreePath,
        version: Hashable | None,
        block_size: int,
        reader: BlockReader | None = None,
        kept: KeptNames | None = None,
    ) -> None:
        self.number = number
        self.base = LISTING_FLAG | (number << POSITION_BITS)  # the inode of position 0
        self.directory = directory
        self.version = version
        self.block_size = block_size
        # Reads a block's names again; None: they cannot be (a stream), so held blocks keep them.
        self.reader = reader
        self.kept = kept if kept is not None else KeptNames()
        self.handles = 0  # open directory handles listing this version
        self.superseded = False  # the directory has since been listed in another version
        self.held = 0  # positions held, in blocks and loose
        self._blocks: dict[int, _Block] = {}
        self._order: list[int] = []  # indexes of the blocks, ascending
        self._firsts: list[str] = []  # the first name of each block in ``_order`` (names are sorted)
        self._loose: dict[int, list] = {}  # position -> [name, count], from compacted blocks

    def lists(self, version: Hashable | None, block_size: int) -> bool:
        """Whether a listing of ``version`` in blocks of ``block_size`` gives this epoch's positions."""
        return version is not None and version == self.version and block_size == self.block_size

    # -- the kernel learns of an entry --

    def hold(self, position: int, names: Names) -> int:
        """Count one more lookup of the entry at ``position``; ``names`` are the names of its block (from
        the block's first position), kept if the epoch has not got them yet. Returns the inode."""
        index, offset = divmod(position, self.block_size)
        block = self._blocks.get(index)
        if block is None:
            block = self._add_block(index, names)
        elif block.names is None:
            self._keep_names(block, names)
        if block.add(offset):
            self.held += 1
        return self.base + position

    def _add_block(self, index: int, names: Names) -> _Block:
        block = self._blocks[index] = _Block(names)
        at = bisect.bisect_left(self._order, index)
        self._order.insert(at, index)
        self._firsts.insert(at, names[0].as_py())
        if self.reader is not None:
            self.kept.add(block)
        return block

    def _keep_names(self, block: _Block, names: Names) -> None:
        block.names = names
        self.kept.add(block)

    def hold_again(self, position: int) -> None:
        """Count one more lookup of an entry the kernel holds or ``find`` gave. Raises FUSEError(ENOENT)
        for one this epoch does not keep."""
        block = self._blocks.get(position // self.block_size)
        if block is not None:
            if block.add(position % self.block_size):
                self.held += 1
        elif position in self._loose:
            self._loose[position][1] += 1
        else:
            raise _not_known()

    def kept_names(self, position: int) -> Names | None:
        """The names of the block holding ``position``, if this epoch keeps it (whole, as listed): a
        listing of the same version again takes them instead of reading them once more, so a second
        ``ls`` of a big directory adds nothing to memory (the read cache would hold a second copy)."""
        block = self._blocks.get(position // self.block_size)
        if block is None or block.names is None:
            return None
        self.kept.touch(block)
        return block.names

    def find(self, name: str) -> int | None:
        """The position of ``name`` in a block this epoch keeps, else None. Raises NamesNeeded when the
        block it would be in has let its names go."""
        at = bisect.bisect_right(self._firsts, name) - 1
        if at < 0:
            return None
        index = self._order[at]
        block = self._blocks[index]
        names = block.names
        if names is None:
            raise NamesNeeded(self, index)
        self.kept.touch(block)
        # Binary search (names are sorted; Arrow's byte order is str order for UTF-8): ~12 scalar reads,
        # a few microseconds on the loop where a linear pc.index over the block takes ~20.
        low, high = 0, len(names)
        while low < high:
            middle = (low + high) // 2
            if names[middle].as_py() < name:
                low = middle + 1
            else:
                high = middle
        if low < len(names) and names[low].as_py() == name:
            return index * self.block_size + low
        return None

    def may_hold(self, name: str) -> bool:
        """Whether the kernel may hold ``name`` from this epoch: exact when its block keeps its names,
        else True if it would be in a held block (never reads)."""
        try:
            return self.find(name) is not None
        except NamesNeeded:
            return True

    # -- what an inode stands for --

    def name_at(self, position: int) -> str:
        """The name at ``position``, if the kernel holds it. Raises FUSEError(ENOENT), or NamesNeeded
        when its block let its names go."""
        index, offset = divmod(position, self.block_size)
        block = self._blocks.get(index)
        if block is not None and block.counts[offset]:
            if block.names is None:
                raise NamesNeeded(self, index)
            self.kept.touch(block)
            return block.names[offset].as_py()
        loose = self._loose.get(position)
        if loose is None:
            raise _not_known()
        return loose[0]

    # -- the kernel lets go --

    def release(self, position: int, count: int) -> None:
        index, offset = divmod(position, self.block_size)
        block = self._blocks.get(index)
        if block is not None and block.counts[offset]:
            if block.subtract(offset, count) == 0:
                self.held -= 1
                if block.held == 0:
                    self._drop_block(index)
                elif self.superseded and block.held <= COMPACT_HELD and block.names is not None:
                    self._compact(index)
            return
        loose = self._loose.get(position)
        if loose is not None:
            loose[1] -= count
            if loose[1] <= 0:
                del self._loose[position]
                self.held -= 1

    def supersede(self) -> None:
        """The directory was listed in another version: the kernel drops this one's entries as the new
        listing replaces them; blocks that keep only a few (names gone since) keep just those."""
        self.superseded = True
        for index, block in list(self._blocks.items()):
            if block.held <= COMPACT_HELD and block.names is not None:
                self._compact(index)

    def _compact(self, index: int) -> None:
        block = self._blocks[index]
        assert block.names is not None
        start = index * self.block_size
        for offset, small in enumerate(block.counts):
            if not small:
                continue
            count = block.count(offset)
            loose = self._loose.get(start + offset)
            if loose is None:
                self._loose[start + offset] = [block.names[offset].as_py(), count]
            else:  # compacted before, then listed again by a handle still open on this version
                loose[1] += count
                self.held -= 1  # one position, no longer counted twice
        self._drop_block(index)

    def _drop_block(self, index: int) -> None:
        self.kept.discard(self._blocks.pop(index))
        at = bisect.bisect_left(self._order, index)
        del self._order[at]
        del self._firsts[at]

    @property
    def unused(self) -> bool:
        return self.held == 0 and self.handles == 0

    # -- names let go, read again --

    def read_block(self, index: int) -> Names:
        """The names of block ``index`` as this version lists them. Blocking: a worker thread."""
        if self.reader is None:
            raise AssertionError("a block that cannot be read again keeps its names")
        start = index * self.block_size
        return self.reader(start, start + self.block_size)

    def restore(self, index: int, names: Names) -> None:
        """Names ``read_block`` gave, kept again if the block is still held and still wants them."""
        block = self._blocks.get(index)
        if block is not None and block.names is None:
            self._keep_names(block, names)

    @property
    def blocks(self) -> int:
        """How many blocks this epoch holds lookups in (for tests and diagnostics)."""
        return len(self._blocks)

    @property
    def named_blocks(self) -> int:
        """How many of them keep their names in memory (for tests and diagnostics)."""
        return sum(1 for block in self._blocks.values() if block.names is not None)


class ListingInodes:
    """The live epochs: by number (for inodes the kernel holds) and the newest per directory (for
    lookups and for listing the same version again)."""

    def __init__(self, kept_blocks: int | None = None) -> None:
        self._epochs: dict[int, ListedVersion] = {}
        self._current: dict[TreePath, ListedVersion] = {}
        self._numbers = itertools.count(1)
        self.kept = KeptNames(kept_blocks)

    def open(
        self, directory: TreePath, version: Hashable | None, block_size: int, reader: BlockReader | None = None
    ) -> ListedVersion:
        """The epoch for listing ``directory`` in ``version`` (None: a version that cannot be told
        apart from others, so never shared), held until ``close``. ``reader`` reads the names of a
        block of this version again (None: they cannot be, so they are kept while held)."""
        current = self._current.get(directory)
        if current is not None and current.lists(version, block_size):
            epoch = current
        else:
            epoch = ListedVersion(self._new_number(), directory, version, block_size, reader, self.kept)
            self._epochs[epoch.number] = epoch
            self._current[directory] = epoch
            if current is not None:
                current.supersede()
                self._drop_if_unused(current)
        epoch.handles += 1
        return epoch

    def close(self, epoch: ListedVersion) -> None:
        epoch.handles -= 1
        self._drop_if_unused(epoch)

    def _new_number(self) -> int:
        for _attempt in range(len(self._epochs) + 2):  # after a wrap: 0 and the numbers in use are skipped
            number = next(self._numbers) & EPOCH_MASK
            if number and number not in self._epochs:
                return number
        raise AssertionError("unreachable: more epochs than numbers")

    def _drop_if_unused(self, epoch: ListedVersion) -> None:
        if epoch.unused and self._epochs.get(epoch.number) is epoch:
            del self._epochs[epoch.number]
            if self._current.get(epoch.directory) is epoch:
                del self._current[epoch.directory]

    def _epoch_of(self, inode: int) -> tuple[ListedVersion, int]:
        epoch = self._epochs.get((inode >> POSITION_BITS) & EPOCH_MASK)
        if epoch is None:
            raise _not_known()
        return epoch, inode & POSITION_MASK

    def epoch(self, inode: int) -> ListedVersion | None:
        """The live epoch a listing inode belongs to (for tests and diagnostics)."""
        return self._epochs.get((inode >> POSITION_BITS) & EPOCH_MASK)

    def path_of(self, inode: int) -> TreePath:
        epoch, position = self._epoch_of(inode)
        return (*epoch.directory, epoch.name_at(position))

    def find(self, directory: TreePath, name: str) -> int | None:
        """The listing inode of ``directory/name`` in the directory's current epoch, if it keeps the name
        (nothing is counted yet: ``hold_again``). Raises NamesNeeded (``ListedVersion.find``)."""
        epoch = self._current.get(directory)
        if epoch is None:
            return None
        position = epoch.find(name)
        return None if position is None else epoch.base + position

    def may_hold(self, directory: TreePath, name: str) -> bool:
        """Whether the kernel may hold ``directory/name`` from the directory's current epoch (never
        reads: ``ListedVersion.may_hold``)."""
        epoch = self._current.get(directory)
        return epoch is not None and epoch.may_hold(name)

    def hold_again(self, inode: int) -> None:
        epoch, position = self._epoch_of(inode)
        epoch.hold_again(position)

    def forget(self, inode: int, count: int) -> None:
        epoch = self._epochs.get((inode >> POSITION_BITS) & EPOCH_MASK)
        if epoch is not None:
            epoch.release(inode & POSITION_MASK, count)
            self._drop_if_unused(epoch)

    def __len__(self) -> int:
        return sum(epoch.held for epoch in self._epochs.values())

    @property
    def epochs(self) -> int:
        return len(self._epochs)


# -- both --


class InodeTable:
    """Path and listing inodes behind one interface, for the adapter."""

    key_of = staticmethod(PathInodes.key_of)
    hash_key = staticmethod(PathInodes.hash_key)

    def __init__(self) -> None:
        self.paths = PathInodes()
        self.listings = ListingInodes()

    @classmethod
    def hash_path(cls, path: TreePath, salt: int = 0) -> int:
        return PathInodes.hash_key(PathInodes.key_of(path), salt)

    def inode_of(self, path: TreePath) -> int:
        """The inode a lookup of ``path`` gives: its listing inode when the current epoch of its directory
        keeps the name, else its path inode. Not counted until ``remember``. Raises NamesNeeded when
        the block it would be in has let its names go."""
        if path:
            found = self.listings.find(path[:-1], path[-1])
            if found is not None:
                return found
        return self.paths.inode_of(path)

    def remember(self, inode: int, path: TreePath) -> None:
        """The kernel learned of ``inode`` (from ``inode_of(path)``, no await in between) once more."""
        if is_listing_inode(inode):
            self.listings.hold_again(inode)
        else:
            self.paths.remember(inode, PathInodes.key_of(path))

    def path_of(self, inode: int) -> TreePath:
        """The path ``inode`` stands for. Raises FUSEError(ENOENT) for a number the kernel does not hold,
        NamesNeeded for a listing inode whose block has let its names go."""
        if is_listing_inode(inode):
            return self.listings.path_of(inode)
        key = self.paths.key_of_inode(inode)
        return tuple(key.split("/")) if key else ()

    def forget(self, inode: int, count: int) -> None:
        if is_listing_inode(inode):
            self.listings.forget(inode, count)
        else:
            self.paths.forget(inode, count)

    def held(self, path: TreePath) -> int | None:
        """The inode the kernel may hold for ``path`` (its listing inode if the current epoch of its
        directory keeps the name, else its path inode if that is known), else None. For telling the
        kernel that the node changed (``pinfs.fs.kernel``). A listing inode in a block that has let its
        names go is not found here (``may_hold`` is True for it: tell the kernel by name)."""
        if not path:
            return pyfuse3.ROOT_INODE
        try:
            found = self.listings.find(path[:-1], path[-1])
        except NamesNeeded:
            found = None
        if found is not None:
            return found
        inode = self.paths.inode_of_key(PathInodes.key_of(path))
        return inode if self.paths.holds(inode) else None

    def may_hold(self, path: TreePath) -> bool:
        """Whether the kernel may hold ``path``: ``held`` finds it, or a listing block that has let its
        names go may have it (never reads)."""
        return self.held(path) is not None or (bool(path) and self.listings.may_hold(path[:-1], path[-1]))

    def aliases(self, identity: str) -> Collection[str]:
        """The non-standard spellings of the CID ``identity`` (its ``cid_key``) the kernel may hold
        names in (path inodes; a listing's names are spelled as stored)."""
        return self.paths.aliases(identity)

    def may_name(self, cid: str, directories: Iterable[TreePath]) -> bool:
        """Whether the kernel may hold a path at or below the CID name ``cid``: a path inode, or a name
        the current listing of one of ``directories`` keeps. False: nothing to tell it of ``cid``."""
        return self.paths.names(cid) or any(self.listings.may_hold(directory, cid) for directory in directories)

    def forget_all(self) -> None:
        self.paths = PathInodes()
        self.listings = ListingInodes()

    def __len__(self) -> int:
        """How many inodes the kernel holds (the root aside)."""
        return len(self.paths) + len(self.listings)
