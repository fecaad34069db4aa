"""The pyfuse3 Operations adapter: inodes, handles, EntryAttributes and errno over ``PinTree``.

What it is for: translating kernel requests into calls on the tree model (``pinfs.fs.tree``) and the
control files (``pinfs.fs.control``), and their answers and errors back. Inode numbers and the
kernel's lookup counts are kept by ``pinfs.fs.inodes`` (a hash of the path, or for the entries of big
listings an epoch and a position); ``forget`` frees them.

What it must not do: decide what exists or what a file holds (that is the tree), or let any exception
but ``FUSEError`` leave a handler: pyfuse3 ends the main loop on any other. Domain errors become their
``errno`` in ``pinfs.fs.fuse_errors`` (the one place), an OSError keeps its own, anything else is logged with its
traceback and answered EIO.

Threading: handlers run as trio tasks on the event-loop thread and never block it. Everything that
touches disk (the tree, file reads, command runs) goes to ``trio.to_thread.run_sync`` under a
CapacityLimiter (one for reads, a separate one for commands so a long command never starves reads).
The inode and handle tables are only touched on the event-loop thread, so they need no locks.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT, ModeT

from pinfs.data.readers import READERS, ReaderRecords, table_versions
from pinfs.errors import InvalidInput, PinfsError, ReadOnly
from pinfs.fs.control import ControlRegistry, ControlSession
from pinfs.fs.fuse_errors import answer_errors
from pinfs.fs.handles import ControlHandle, DirHandle, FileHandle, Handle, ListingHandle, close_content
from pinfs.fs.inodes import InodeTable, NamesNeeded
from pinfs.fs.tree import BytesContent, ListingCursor, NameListing, Node, NodeKind, PinTree, TreePath
from pinfs.fs.warmup import give_back_freed_memory

log = logging.getLogger(__name__)

# How long the kernel may keep a name and its attributes comes from the tree (``kernel_timeout``,
# issue #19): what remains of the node's lease when it is made from a version the mount watches (the
# mount tells the kernel when that changes, ``pinfs.fs.kernel``), else a second, which keeps "visible
# within 2 s" (CONTRACT §2) with margin.
# Entries of a big listing fetched per hop to a worker thread (issue #6: a hop costs ~100 us, the
# kernel takes a few dozen entries per readdir request); what the kernel did not take is kept in the
# ListingHandle. Blocks start at multiples of it, so a listing epoch keeps each block once.
READDIR_BATCH = 4096
# A listing that read this many blocks (~1M names) made and freed enough for its releasedir to hand
# the C heap's free pages back (``pinfs.fs.warmup.give_back_freed_memory``).
TRIM_AFTER_BLOCKS = 256
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR

# -- the operations --


class PinfsOperations(pyfuse3.Operations):
    """Thin pyfuse3 adapter over a ``PinTree`` and a ``ControlRegistry``."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        tree: PinTree,
        controls: ControlRegistry,
        *,
        uid: int | None = None,
        gid: int | None = None,
        read_limiter: trio.CapacityLimiter | None = None,
        command_limiter: trio.CapacityLimiter | None = None,
        after_command: Callable[[], Awaitable[None]] | None = None,
        readers: ReaderRecords | None = None,
    ) -> None:
        super().__init__()
        self.tree = tree
        self.controls = controls
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.inodes = InodeTable()
        self._handles: dict[int, Handle] = {}
        self._next_handle = itertools.count(1)
        self._read_limiter = read_limiter or trio.CapacityLimiter(8)
        self._command_limiter = command_limiter or trio.CapacityLimiter(4)
        # Awaited after every control command, before close() returns: the mount's kernel-cache duty
        # tells the kernel what the command changed (``pinfs.fs.kernel.KernelCache.sync``).
        self.after_command = after_command
        self.readers = readers or READERS  # the versions open listings read, recorded for maintenance

    async def _blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(function, *args, limiter=self._read_limiter)

    async def _resolve(self, path: TreePath) -> Node:
        """The node at ``path``: from memory on the loop when the tree has it fresh, else resolved on a
        worker thread. The hop to a thread and back is most of a warm ``stat`` or ``cat`` (issue #6)."""
        node = self.tree.resolve_cached(path)
        if node is None:
            node = await self._blocking(self.tree.resolve, path)
        return node

    async def _path_of(self, inode: int) -> TreePath:
        """The path ``inode`` stands for (``InodeTable.path_of``)."""
        return await self._with_names(self.inodes.path_of, inode)

    async def _inode_of(self, path: TreePath) -> int:
        """The number a lookup of ``path`` gives (``InodeTable.inode_of``)."""
        return await self._with_names(self.inodes.inode_of, path)

    async def _with_names(self, ask: Callable[[Any], Any], argument: Any) -> Any:
        """``ask(argument)`` of the inode table; when a listing block it needs let its names go, they
        are read again on a worker thread first (``NamesNeeded``)."""
        while True:
            try:
                return ask(argument)
            except NamesNeeded as needed:
                try:
                    names = await self._blocking(needed.read)
                except (OSError, PinfsError) as exc:  # that version's files are gone (vacuumed long after)
                    log.info("%s could not be read again: %s", needed, exc)
                    raise pyfuse3.FUSEError(errno.ENOENT) from None
                needed.restore(names)

    def _attributes(self, node: Node, inode: int) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = InodeT(inode)
        attributes.generation = 0
        attributes.entry_timeout = attributes.attr_timeout = self.tree.kernel_timeout(node)
        attributes.st_mode = ModeT(node.mode)
        attributes.st_nlink = 2 if node.is_dir else 1
        attributes.st_uid = self.uid
        attributes.st_gid = self.gid
        attributes.st_rdev = 0
        size = node.size
        if node.kind is NodeKind.CONTROL and node.control_key is not None:
            size = len(self.controls.get(node.control_key).describe())  # what a read gives now
        if not node.size_known:
            attributes.attr_timeout = 0  # a listing entry: the next stat asks getattr, which renders it
        attributes.st_size = size
        attributes.st_blksize = 4096
        attributes.st_blocks = (size + 511) // 512
        attributes.st_atime_ns = attributes.st_mtime_ns = attributes.st_ctime_ns = node.mtime_ns
        return attributes

    def _add_handle(self, handle: Handle) -> FileHandleT:
        number = next(self._next_handle)
        self._handles[number] = handle
        return FileHandleT(number)

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    @staticmethod
    def _name(name: bytes) -> str:
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None  # every name we serve is UTF-8

    # -- names and attributes --

    @answer_errors
    async def lookup(self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext) -> Any:
        parent = await self._path_of(parent_inode)
        if name == b".":
            path = parent
        elif name == b"..":
            path = parent[:-1]
        else:
            path = (*parent, self._name(name))
        node = await self._resolve(path)
        # No await from the number to remember: the table stays consistent. "." is the parent's own
        # number (a listing inode has no path inode that would be the same).
        inode = parent_inode if name == b"." else await self._inode_of(path)
        attributes = self._attributes(node, inode)
        self.inodes.remember(inode, path)
        return attributes

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        for inode, count in inode_list:
            self.inodes.forget(inode, count)

    def forget_all(self) -> None:
        """At unmount the kernel may not have sent every forget (pyfuse3 ``forget`` docs)."""
        self.inodes.forget_all()
        for handle in self._handles.values():
            close_content(handle)
        self._handles.clear()

    @answer_errors
    async def getattr(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> Any:
        node = await self._resolve(await self._path_of(inode))
        return self._attributes(node, inode)

    @answer_errors
    async def setattr(
        self,
        inode: InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> Any:
        node = await self._resolve(await self._path_of(inode))
        if node.kind is not NodeKind.CONTROL:
            raise ReadOnly("read-only filesystem")
        self._check_owner(ctx)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        if fields.update_size and attr.st_size != 0:
            raise InvalidInput("a control file can only be truncated to 0")
        # Truncating (shell '>') and touching a control file are accepted and change nothing: input is
        # buffered per open handle, so it always starts empty (CONTRACT §2).
        return self._attributes(node, inode)

    @answer_errors
    async def readlink(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileNameT:
        node = await self._resolve(await self._path_of(inode))
        if node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return FileNameT(node.target.encode())

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data

    # -- directories --

    @answer_errors
    async def opendir(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileHandleT:
        path = await self._path_of(inode)
        listing = self.tree.listing_cached(path)  # a by-cid/<cid> of a kept record: no hop to a thread
        if listing is None:
            listing = await self._blocking(self.tree.listing, path)
        if isinstance(listing, NameListing):
            reader = listing.names if listing.random_access else None
            epoch = self.inodes.listings.open(path, listing.version, READDIR_BATCH, reader)
            await self._record_reader(listing)
            return self._add_handle(ListingHandle(ListingCursor(listing, READDIR_BATCH), epoch))
        return self._add_handle(DirHandle(listing))

    async def _record_reader(self, listing: NameListing) -> None:
        """Record this process as a reader of the table versions ``listing`` reads until ``releasedir``
        (minutes, for a ``find``), before its first entry is read: maintenance on any host then keeps
        their files past the vacuum retention (``pinfs.data.readers``). Written only when a version is
        new to the records, so listing one version again costs no disk."""
        stale = self.readers.hold(table_versions(listing.reads))
        if stale:
            await self._blocking(self.readers.write, stale)

    @answer_errors
    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._handle(fh)
        if isinstance(handle, ListingHandle):
            await self._readdir_listing(handle, start_id, token)
        elif isinstance(handle, DirHandle):
            self._readdir_small(handle, start_id, token)
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)

    def _readdir_small(self, handle: DirHandle, position: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries of a small directory (all in memory) with path inodes."""
        paths = self.inodes.paths
        for next_offset, node in handle.listing.entries(position, sys.maxsize):
            key = paths.key_of(node.path)
            inode = paths.inode_of_key(key)
            attributes = self._attributes(node, inode)
            if not pyfuse3.readdir_reply(token, FileNameT(node.name.encode()), attributes, next_offset):
                return
            paths.remember(inode, key)  # readdirplus: the kernel now holds a lookup on it

    async def _readdir_listing(self, handle: ListingHandle, position: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries of a big listing with listing inodes. Offsets are positions in the version pinned by
        opendir, + 1. A block holds far more entries than one request takes; it is kept, so resuming
        inside it costs no hop to a thread."""
        cursor, epoch = handle.cursor, handle.epoch
        listing = cursor.listing
        shared = None if listing.template is None else self._attributes(listing.template, pyfuse3.ROOT_INODE)
        while True:
            block = cursor.cached(position)
            if block is None:
                if cursor.at_end(position):
                    return  # the end of this version, already known: no hop to a thread
                block = await self._blocking(cursor.fetch, position, epoch.kept_names(position))
                if block is None:
                    return  # the end of this version
            offsets, names, column = block.offsets, block.names, block.column
            for index in range(bisect.bisect_right(offsets, position), len(offsets)):
                next_offset = offsets[index]
                inode = epoch.base + next_offset - 1
                if shared is not None:
                    attributes = shared  # readdir_reply copies it: one object serves every entry
                    attributes.st_ino = InodeT(inode)
                else:
                    attributes = self._attributes(listing.node(names[index]), inode)
                if not pyfuse3.readdir_reply(token, FileNameT(names[index].encode()), attributes, next_offset):
                    return
                epoch.hold(next_offset - 1, column)  # readdirplus: the kernel now holds a lookup on it
            position = block.stop  # past names that cannot be file names, too
            await trio.lowlevel.checkpoint()

    @answer_errors
    async def releasedir(self, fh: FileHandleT) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, ListingHandle):
            self.inodes.listings.close(handle.epoch)
            self.readers.release(table_versions(handle.cursor.listing.reads))
            if handle.cursor.fetched >= TRIM_AFTER_BLOCKS:
                await trio.to_thread.run_sync(give_back_freed_memory)

    # -- files --

    @answer_errors
    async def open(self, inode: InodeT, flags: FlagT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = await self._resolve(await self._path_of(inode))
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        writing = bool(flags & _WRITE_FLAGS) or bool(flags & os.O_TRUNC)
        if node.kind is NodeKind.CONTROL:
            assert node.control_key is not None
            control = self.controls.get(node.control_key)
            if writing:
                self._check_owner(ctx)
                control.check_idle()
                # '>>' works like '>' (issue #16): input is per handle and starts empty either way.
                append = bool(flags & os.O_APPEND)
                session = ControlSession(control, node.control_key, inode=inode, opener_pid=ctx.pid, append=append)
                handle = ControlHandle(node, control, session)
            else:
                handle = ControlHandle(node, control, content=BytesContent(control.describe()))
            return pyfuse3.FileInfo(fh=self._add_handle(handle), direct_io=True)
        if writing:
            raise ReadOnly("read-only filesystem")
        content = self.tree.content_in_memory(node)
        if content is None:
            content = await self._blocking(self.tree.open_content, node)
        # Generated files may change between stat and open: direct_io so reads are never cut at st_size.
        # The kernel keeps the pages of a leased file (a record's bytes, immutable within its version)
        # across opens; the kernel-cache duty drops them when the record changes. Any other file's pages
        # are dropped at each open (an export replaced on disk keeps its inode number here).
        direct = node.kind is NodeKind.GENERATED
        keep = node.lease is not None and not direct
        return pyfuse3.FileInfo(fh=self._add_handle(FileHandle(node, content)), direct_io=direct, keep_cache=keep)

    @answer_errors
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        handle = self._handle(fh)
        if isinstance(handle, DirHandle | ListingHandle):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if isinstance(handle, ControlHandle):
            if handle.content is None:  # opened for writing only, or read+write: show the current state
                handle.content = BytesContent(handle.control.describe())
            return handle.content.read(off, size)
        if isinstance(handle.content, BytesContent):
            return handle.content.read(off, size)
        return await self._blocking(handle.content.read, off, size)

    @answer_errors
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        handle = self._handle(fh)
        if not isinstance(handle, ControlHandle) or handle.session is None:
            raise pyfuse3.FUSEError(errno.EBADF if isinstance(handle, ControlHandle) else errno.EROFS)
        session = handle.session
        written = session.accept(off, buf)
        start = session.checked.upto
        try:
            checked = await self._blocking(self.controls.check_partial, session.key, written, start)
        except InvalidInput as exc:
            session.reject()
            log.info("rejected input for %s: %s", "/".join(handle.node.path), exc)
            raise
        session.checked_up_to(start, checked)
        return len(buf)

    @answer_errors
    async def flush(self, fh: FileHandleT) -> None:
        """A close(): the command written through this open file runs now, unless another process still
        holds the open file (``pinfs.fs.holders``): then the close of the last one runs it, so that it
        runs once, on everything written (issue #15). Its failure makes this close() fail with EIO."""
        handle = self._handle(fh)
        if not isinstance(handle, ControlHandle) or handle.session is None or not handle.session.pending:
            return  # nothing buffered (a shell may flush before it writes): nothing to run
        if await self._blocking(handle.session.held_elsewhere, "/".join(handle.node.path)):
            return
        if not handle.session.pending:
            # Another close of this open file ran it while we looked (a forked child's copy of the
            # descriptor, closed at its exec, flushes too): it runs once.
            return
        await self._run_command(handle, handle.session)

    async def _run_command(self, handle: ControlHandle, session: ControlSession) -> None:
        """Validate what was written and run it (on a command thread). Raises InvalidInput, Busy, or
        FUSEError(EIO) when the command failed (its error is in the file's JSON)."""
        data, checked = session.take()
        try:
            prepared = await self._blocking(self.controls.parse, session.key, data, checked)
        except InvalidInput as exc:
            log.info("rejected input for %s: %s", "/".join(handle.node.path), exc)
            raise
        handle.control.start(prepared)  # Busy when another run started meanwhile
        succeeded = await trio.to_thread.run_sync(handle.control.run, prepared, limiter=self._command_limiter)
        self.tree.forget_rendered()  # the command changed data: the next read shows it, not a cached report
        if self.after_command is not None:
            await self.after_command()  # the kernel forgets what changed before close() returns
        if not succeeded:
            raise pyfuse3.FUSEError(errno.EIO)  # close() fails; the error is in the file's JSON

    @answer_errors
    async def release(self, fh: FileHandleT) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        close_content(handle)
        if isinstance(handle, ControlHandle) and handle.session is not None and handle.session.pending:
            # No close ran it: the last one still saw a holder that is gone now (one we could not tell
            # from this open file). Run it here; pyfuse3 drops errors from release, the JSON has them.
            try:
                await self._run_command(handle, handle.session)
            except (pyfuse3.FUSEError, PinfsError) as exc:
                log.info("%s, run at release: %s", "/".join(handle.node.path), exc)

    # -- read-only: everything that would change the tree --

    def _check_owner(self, ctx: pyfuse3.RequestContext) -> None:
        if ctx.uid != self.uid:  # CONTRACT §2: only the mounting user runs commands
            raise pyfuse3.FUSEError(errno.EACCES)

    async def _read_only(self, *_args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    # Everything that would create, remove, rename or relabel an entry: refused, whatever the arguments.
    mknod = mkdir = unlink = rmdir = symlink = rename = link = create = setxattr = removexattr = _read_only
