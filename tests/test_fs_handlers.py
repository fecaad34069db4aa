"""The pyfuse3 adapter's handlers called directly under trio, with small fake request contexts."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
from helpers import cid_for, make_backend, store_records

from pinfs.data import schema
from pinfs.data.backends import get_backend
from pinfs.data.snapshots import DEFAULT_CACHE, DEFAULT_CACHE_BYTES, StoreCache
from pinfs.data.store import PinStore
from pinfs.fs import adapter as adapter_module
from pinfs.fs import control as control_module
from pinfs.fs.adapter import PinfsOperations
from pinfs.fs.control import ControlRegistry, ControlSession
from pinfs.fs.inodes import InodeTable, is_listing_inode
from pinfs.fs.mount import MountConfig, build_operations
from pinfs.fs.tree import PinTree
from pinfs.fs.tree import listings as listings_module
from pinfs.ops import sync as sync_module
from pinfs.ops.pins import remove_pins

pytestmark = pytest.mark.trio


@dataclass
class FakeContext:
    uid: int = os.getuid()
    gid: int = os.getgid()
    pid: int = os.getpid()
    umask: int = 0o022


CTX: Any = FakeContext()


@pytest.fixture
def ops(root: Path) -> PinfsOperations:
    make_backend(root, "s3-main")
    backend = get_backend(root, "s3-main")
    records = [schema.make_record(cid_for(i), "s3-main", backend.type, status="stored") for i in range(40)]
    store_records(backend, records)
    return PinfsOperations(PinTree(root, StoreCache()), ControlRegistry(root))


async def walk(ops: PinfsOperations, *names: str) -> int:
    inode = pyfuse3.ROOT_INODE
    for name in names:
        inode = (await ops.lookup(inode, name.encode(), CTX)).st_ino
    return inode


async def expect_errno(number: int, call: Any) -> None:
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await call
    assert caught.value.errno == number


async def test_lookup_gives_exact_size_and_forget_frees_the_inode(ops: PinfsOperations) -> None:
    inode = await walk(ops, "backends", "s3-main", "by-cid", cid_for(3), "status")
    attributes = await ops.getattr(inode, CTX)
    assert attributes.st_size == len(b"stored\n") and attributes.st_mode & 0o777 == 0o444
    assert attributes.st_uid == os.getuid()
    assert inode == InodeTable.hash_path(("backends", "s3-main", "by-cid", cid_for(3), "status"))
    known = len(ops.inodes)
    await ops.forget([(inode, 1)])
    assert len(ops.inodes) == known - 1
    await expect_errno(errno.ENOENT, ops.getattr(inode, CTX))


async def test_absent_cid_is_enoent(ops: PinfsOperations) -> None:
    by_cid = await walk(ops, "backends", "s3-main", "by-cid")
    await expect_errno(errno.ENOENT, ops.lookup(by_cid, cid_for(999).encode(), CTX))


async def test_readdir_resumes_at_the_offset_and_counts_only_accepted_entries(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted: list[tuple[str, int]] = []
    room = {"left": 0}

    def reply(token: object, name: bytes, attributes: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if room["left"] == 0:
            return False
        room["left"] -= 1
        accepted.append((name.decode(), next_id))
        return True

    monkeypatch.setattr(adapter_module.pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(await walk(ops, "backends", "s3-main", "by-cid"), CTX)
    offset = 0
    before = len(ops.inodes)
    while True:
        room["left"] = 7
        await ops.readdir(fh, offset, None)  # type: ignore[arg-type]
        if not accepted or accepted[-1][1] == offset:
            break
        offset = accepted[-1][1]
    await ops.releasedir(fh)
    names = [name for name, _next in accepted]
    assert names == sorted(cid_for(i) for i in range(40))
    assert len(ops.inodes) == before + 40


async def test_readdir_resumes_inside_and_across_batches(ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter_module, "READDIR_BATCH", 16)  # 40 entries: three batches
    fetched: list[int] = []
    real_blocking = ops._blocking

    async def counting(function: Any, *args: Any) -> Any:
        if getattr(function, "__name__", "") == "fetch":  # ListingCursor.fetch: one block read
            fetched.append(args[0])
        return await real_blocking(function, *args)

    monkeypatch.setattr(ops, "_blocking", counting)
    accepted: list[str] = []
    inodes: list[int] = []
    room = {"left": 0}

    def reply(token: object, name: bytes, attributes: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if room["left"] == 0:
            return False
        room["left"] -= 1
        accepted.append(name.decode())
        inodes.append(attributes.st_ino)
        assert attributes.st_mode & 0o170000 == 0o040000  # every by-cid entry is a directory
        return True

    monkeypatch.setattr(adapter_module.pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(await walk(ops, "backends", "s3-main", "by-cid"), CTX)
    offset = 0
    while True:
        room["left"] = 5
        await ops.readdir(fh, offset, None)  # type: ignore[arg-type]
        if len(accepted) == offset:
            break
        offset = len(accepted)
    await ops.releasedir(fh)
    assert accepted == sorted(cid_for(i) for i in range(40))
    assert [ops.inodes.path_of(inode)[-1] for inode in inodes] == accepted
    assert fetched == [0, 16, 32]  # one hop per block, not per request; the short last one is the end


async def list_inodes(ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch, *path: str) -> dict[str, int]:
    """List the directory at ``path`` as readdirplus does, the kernel taking every entry: name -> inode."""
    given: dict[str, int] = {}

    def reply(token: object, name: bytes, attributes: pyfuse3.EntryAttributes, next_id: int) -> bool:
        given[name.decode()] = attributes.st_ino
        return True

    monkeypatch.setattr(adapter_module.pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(await walk(ops, *path), CTX)
    await ops.readdir(fh, 0, None)  # type: ignore[arg-type]
    await ops.releasedir(fh)
    return given


BY_CID = ("backends", "s3-main", "by-cid")


def count_hops(ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The functions the adapter sends to a worker thread from now on, by qualified name."""
    hops: list[str] = []
    real_blocking = ops._blocking

    async def counting(function: Any, *args: Any) -> Any:
        hops.append(getattr(function, "__qualname__", repr(function)))
        return await real_blocking(function, *args)

    monkeypatch.setattr(ops, "_blocking", counting)
    return hops


async def test_lookup_counts_of_repeated_listings_are_honoured(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):  # the kernel holds one more lookup on every entry each time
        inode = (await list_inodes(ops, monkeypatch, *BY_CID))[cid_for(5)]
    known = len(ops.inodes)
    await ops.forget([(inode, 2)])
    assert len(ops.inodes) == known and (await ops.getattr(inode, CTX)).st_mode & 0o040000
    await ops.forget([(inode, 1)])
    assert len(ops.inodes) == known - 1
    await expect_errno(errno.ENOENT, ops.getattr(inode, CTX))


# -- listing inodes (issue #6) --


def by_cid_path(i: int) -> tuple[str, ...]:
    return (*BY_CID, cid_for(i))


async def test_a_listing_keeps_blocks_of_names_not_a_path_per_entry(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter_module, "READDIR_BATCH", 16)  # 40 entries: three blocks
    await walk(ops, *BY_CID)
    paths_before, known_before = len(ops.inodes.paths), len(ops.inodes)
    given = await list_inodes(ops, monkeypatch, *BY_CID)
    assert len(given) == 40 and len(ops.inodes) == known_before + 40
    assert len(ops.inodes.paths) == paths_before  # no dictionary item per listed name
    assert ops.inodes.listings.epochs == 1
    epoch = ops.inodes.listings.epoch(given[cid_for(0)])
    assert epoch is not None and epoch.blocks == 3
    for name, inode in given.items():
        assert is_listing_inode(inode) and 1 << 62 <= inode < 1 << 63
        assert ops.inodes.path_of(inode) == (*BY_CID, name)


async def test_forget_frees_the_blocks_of_a_listing_then_its_epoch(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter_module, "READDIR_BATCH", 16)
    given = await list_inodes(ops, monkeypatch, *BY_CID)
    last = given.pop(cid_for(39))
    epoch = ops.inodes.listings.epoch(last)
    await ops.forget([(inode, 1) for inode in given.values()])
    assert epoch is not None and epoch.blocks == 1 and ops.inodes.listings.epochs == 1
    assert (await ops.getattr(last, CTX)).st_mode & 0o040000
    await expect_errno(errno.ENOENT, ops.getattr(given[cid_for(0)], CTX))
    await ops.forget([(last, 1)])
    assert ops.inodes.listings.epochs == 0
    await expect_errno(errno.ENOENT, ops.getattr(last, CTX))


async def test_listing_the_same_version_again_gives_the_same_numbers(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await list_inodes(ops, monkeypatch, *BY_CID)
    assert await list_inodes(ops, monkeypatch, *BY_CID) == first
    assert ops.inodes.listings.epochs == 1


async def test_listing_the_same_version_again_takes_the_names_the_kernel_holds_not_a_new_read(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second ``ls`` of a big directory adds no copy of its names (10M pins: 328 MB more before)."""
    monkeypatch.setattr(adapter_module, "READDIR_BATCH", 16)  # 40 entries: three blocks
    first = await list_inodes(ops, monkeypatch, *BY_CID)
    await ops.forget([(first[cid_for(i)], 1) for i in range(40) if sorted(first).index(cid_for(i)) < 16])
    read: list[int] = []
    listing_block = listings_module.PositionalListing.block

    def counted(self: Any, start: int, limit: int) -> Any:
        read.append(start)
        return listing_block(self, start, limit)

    monkeypatch.setattr(listings_module.PositionalListing, "block", counted)
    assert await list_inodes(ops, monkeypatch, *BY_CID) == first
    assert read == [0]  # the first block was let go of by the kernel: read again; the others were kept


async def test_a_big_listing_keeps_few_blocks_of_names_and_reads_one_again_when_the_kernel_asks(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #12: a full ``ls by-cid`` of 10M pins kept all 10M names (~630 MB). Past ``KEPT_BLOCKS``
    a block keeps only its lookup counts; an entry of it is named by reading the block again."""
    monkeypatch.setattr(adapter_module, "READDIR_BATCH", 16)  # 40 entries: three blocks
    ops.inodes.listings.kept.limit = 1
    given = await list_inodes(ops, monkeypatch, *BY_CID)
    first = min(given)  # in block 0, whose names were let go when block 1 was listed
    epoch = ops.inodes.listings.epoch(given[first])
    assert epoch is not None and epoch.blocks == 3 and epoch.named_blocks == 1
    hops = count_hops(ops, monkeypatch)
    assert (await ops.getattr(given[first], CTX)).st_mode & 0o040000
    assert hops[0] == "NamesNeeded.read"
    assert await walk(ops, *BY_CID, first) == given[first]  # the kernel's revalidation: the same number
    status = (await ops.lookup(given[first], b"status", CTX)).st_ino
    info = await ops.open(status, os.O_RDONLY, CTX)
    assert await ops.read(info.fh, 0, 100) == b"stored\n"
    await ops.release(info.fh)
    assert epoch.named_blocks == 1 and len(ops.inodes.listings.kept) == 1  # still one block of names
    last = max(given)
    assert await walk(ops, *BY_CID, last) == given[last]  # block 2: read again, block 0 let go
    assert ops.inodes.path_of(given[last]) == (*BY_CID, last) and hops.count("NamesNeeded.read") == 2
    await ops.forget([(inode, 1) for inode in given.values()])
    await ops.forget([(given[first], 1), (given[last], 1)])  # the lookups above
    assert ops.inodes.listings.epochs == 0 and len(ops.inodes.listings.kept) == 0


async def test_a_big_listing_hands_freed_memory_back_when_it_is_closed(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter_module, "READDIR_BATCH", 16)  # 40 entries: three blocks
    trims: list[str] = []
    monkeypatch.setattr(adapter_module, "give_back_freed_memory", lambda: trims.append(threading.current_thread().name))
    monkeypatch.setattr(adapter_module, "TRIM_AFTER_BLOCKS", 4)
    await list_inodes(ops, monkeypatch, *BY_CID)
    assert trims == []  # three blocks: not a big listing
    monkeypatch.setattr(adapter_module, "TRIM_AFTER_BLOCKS", 3)
    await list_inodes(ops, monkeypatch, *BY_CID)
    assert len(trims) == 1 and trims[0] != threading.main_thread().name  # on a worker thread


async def test_a_lookup_of_a_listed_name_gives_its_listing_inode_and_counts(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = (await list_inodes(ops, monkeypatch, *BY_CID))[cid_for(5)]
    # The kernel revalidates a listed entry with a lookup once its timeout passed: the same number keeps it.
    assert await walk(ops, *by_cid_path(5)) == listed
    await ops.forget([(listed, 1)])
    assert ops.inodes.path_of(listed) == by_cid_path(5)
    await ops.forget([(listed, 1)])
    await expect_errno(errno.ENOENT, ops.getattr(listed, CTX))
    assert await walk(ops, *by_cid_path(5)) == listed  # its block is kept for the other names: the same number


async def test_a_listed_inode_keeps_its_path_after_the_backend_is_rewritten(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    old = await list_inodes(ops, monkeypatch, *BY_CID)
    backend = get_backend(root, "s3-main")
    records = [schema.make_record(cid_for(i), "s3-main", backend.type, status="pending") for i in range(100, 140)]
    store_records(backend, records)  # 80 CIDs now: positions moved
    inode = old[cid_for(7)]
    assert ops.inodes.path_of(inode) == by_cid_path(7)
    status = (await ops.lookup(inode, b"status", CTX)).st_ino  # a child of a listing inode
    info = await ops.open(status, os.O_RDONLY, CTX)
    assert await ops.read(info.fh, 0, 100) == b"stored\n"
    await ops.release(info.fh)
    added = (*BY_CID, cid_for(120))  # not in the listing the kernel holds: its path inode
    assert await walk(ops, *added) == InodeTable.hash_path(added)
    new = await list_inodes(ops, monkeypatch, *BY_CID)
    assert len(new) == 80 and new[cid_for(7)] != inode and ops.inodes.listings.epochs == 2
    assert ops.inodes.path_of(inode) == by_cid_path(7)  # the kernel still holds it: same path
    assert await walk(ops, *by_cid_path(7)) == new[cid_for(7)]  # lookups give the current listing's number


async def test_a_superseded_listing_keeps_only_the_names_the_kernel_still_holds(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    old = await list_inodes(ops, monkeypatch, *BY_CID)
    remove_pins(root, "s3-main", [cid_for(3)])
    await list_inodes(ops, monkeypatch, *BY_CID)
    # The new listing replaced every kernel entry but the one of the CID that is gone: those are forgotten.
    gone = old.pop(cid_for(3))
    await ops.forget([(inode, 1) for inode in old.values()])
    epoch = ops.inodes.listings.epoch(gone)
    assert epoch is not None and epoch.superseded and epoch.blocks == 0  # just the one name is kept
    assert ops.inodes.path_of(gone) == by_cid_path(3)
    await expect_errno(errno.ENOENT, ops.getattr(gone, CTX))  # the path is gone: the kernel drops the entry
    await ops.forget([(gone, 1)])
    assert ops.inodes.listings.epochs == 1 and ops.inodes.listings.epoch(gone) is None


async def test_status_and_cids_listings_give_listing_inodes_whose_children_resolve(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = await list_inodes(ops, monkeypatch, "backends", "s3-main", "by-status", "stored")
    assert len(stored) == 40 and all(is_listing_inode(inode) for inode in stored.values())
    assert await ops.readlink(stored[cid_for(9)], CTX) == f"../../by-cid/{cid_for(9)}".encode()
    cids = await list_inodes(ops, monkeypatch, "cids")
    assert len(cids) == 40 and ops.inodes.listings.epochs == 2
    link = await ops.lookup(cids[cid_for(9)], b"s3-main", CTX)
    assert await ops.readlink(link.st_ino, CTX) == f"../../backends/s3-main/by-cid/{cid_for(9)}".encode()


async def test_unmount_forgets_every_listing(ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch) -> None:
    inode = (await list_inodes(ops, monkeypatch, *BY_CID))[cid_for(1)]
    ops.forget_all()
    assert len(ops.inodes) == 0 and ops.inodes.listings.epochs == 0
    await expect_errno(errno.ENOENT, ops.getattr(inode, CTX))


async def test_warm_requests_are_answered_on_the_loop_and_commands_show_at_once(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops = count_hops(ops, monkeypatch)
    directory = await walk(ops, "backends", "s3-main", "by-cid", cid_for(3))
    status = (await ops.lookup(directory, b"status", CTX)).st_ino
    hops.clear()
    for name in (b"cid", b"pin.json", b"status"):  # files of a CID whose record was just read
        await ops.lookup(directory, name, CTX)
    await ops.getattr(status, CTX)
    info = await ops.open(status, os.O_RDONLY, CTX)
    assert await ops.read(info.fh, 0, 100) == b"stored\n"
    await ops.release(info.fh)
    assert hops == []
    ops.tree.forget_rendered()  # what a control command does when it has run
    await ops.getattr(status, CTX)
    assert hops == ["PinTree.resolve"]


async def test_writes_creates_and_removals_are_erofs(ops: PinfsOperations) -> None:
    root_inode = pyfuse3.ROOT_INODE
    await expect_errno(errno.EROFS, ops.mkdir(root_inode, b"new", 0o755, CTX))
    await expect_errno(errno.EROFS, ops.create(root_inode, b"new", 0o644, os.O_WRONLY, CTX))
    await expect_errno(errno.EROFS, ops.unlink(root_inode, b"README", CTX))
    readme = await walk(ops, "README")
    await expect_errno(errno.EROFS, ops.open(readme, os.O_WRONLY, CTX))
    await expect_errno(errno.EROFS, ops.setattr(readme, pyfuse3.EntryAttributes(), pyfuse3.SetattrFields(), None, CTX))


async def test_unknown_word_fails_the_write_and_nothing_runs(ops: PinfsOperations) -> None:
    inode = await walk(ops, ".control", "sync")
    info = await ops.open(inode, os.O_WRONLY | os.O_TRUNC, CTX)
    await expect_errno(errno.EINVAL, ops.write(info.fh, 0, b"dry-run frobnicate\n"))
    await ops.flush(info.fh)
    await ops.release(info.fh)
    state = json.loads(ops.controls.get((None, "sync")).describe())
    assert state["state"] == "rejected" and state["started_at"] is None and state["result"] is None


async def test_only_the_owner_may_open_a_control_file_for_writing(ops: PinfsOperations) -> None:
    inode = await walk(ops, ".control", "sync")
    stranger: Any = FakeContext(uid=os.getuid() + 1000)
    await expect_errno(errno.EACCES, ops.open(inode, os.O_WRONLY, stranger))


def replace_sync(monkeypatch: pytest.MonkeyPatch, function: Any) -> None:
    """Make the sync control file call ``function`` instead of the real sync."""
    command = control_module.COMMANDS["sync"]
    declaration = replace(command.declaration, function=function)
    monkeypatch.setitem(control_module.COMMANDS, "sync", replace(command, declaration=declaration))


async def test_failed_command_fails_the_flush_with_eio_and_says_why(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(root: Path, options: sync_module.SyncOptions, progress: object = None) -> dict[str, Any]:
        return {"ok": False, "error": "remote unreachable"}

    replace_sync(monkeypatch, failing)
    inode = await walk(ops, ".control", "sync")
    info = await ops.open(inode, os.O_WRONLY | os.O_TRUNC, CTX)
    assert await ops.write(info.fh, 0, b"dry-run\n") == 8
    await expect_errno(errno.EIO, ops.flush(info.fh))
    await ops.release(info.fh)
    state = json.loads(ops.controls.get((None, "sync")).describe())
    assert state["state"] == "failed" and state["error"] == "remote unreachable"
    assert state["args"] == {"backends": [], "dry_run": True}


async def test_running_command_makes_a_second_writer_busy_and_the_rest_answers(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(root: Path, options: sync_module.SyncOptions, progress: object = None) -> dict[str, Any]:
        started.set()
        release.wait(10)
        return {"ok": True}

    replace_sync(monkeypatch, slow)
    inode = await walk(ops, "backends", "s3-main", ".control", "sync")
    info = await ops.open(inode, os.O_WRONLY | os.O_TRUNC, CTX)
    await ops.write(info.fh, 0, b"\n")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.flush, info.fh)
        await trio.to_thread.run_sync(started.wait, 10)
        await expect_errno(errno.EBUSY, ops.open(inode, os.O_WRONLY, CTX))
        with trio.fail_after(2):
            attributes = await ops.getattr(await walk(ops, "backends", "s3-main", "summary.json"), CTX)
        assert attributes.st_mode & 0o777 == 0o444
        state = json.loads(ops.controls.get(("s3-main", "sync")).describe())
        assert state["state"] == "running" and state["args"]["backends"] == ["s3-main"]
        release.set()
    await ops.release(info.fh)
    assert json.loads(ops.controls.get(("s3-main", "sync")).describe())["state"] == "succeeded"


async def test_a_write_refused_busy_leaves_nothing_of_its_open_file_to_run(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second open file took a line, then its next write met a run in progress (EBUSY): its close
    runs nothing, not the part it took before (issue #15: a batch runs whole or not at all)."""
    release = threading.Event()
    started = threading.Event()
    calls: list[bool] = []

    def slow(root: Path, options: sync_module.SyncOptions, progress: object = None) -> dict[str, Any]:
        calls.append(options.dry_run)
        started.set()
        release.wait(10)
        return {"ok": True}

    replace_sync(monkeypatch, slow)
    inode = await walk(ops, ".control", "sync")
    first = await ops.open(inode, os.O_WRONLY | os.O_TRUNC, CTX)
    second = await ops.open(inode, os.O_WRONLY | os.O_TRUNC, CTX)
    await ops.write(second.fh, 0, b"dry-run\n")
    await ops.write(first.fh, 0, b"\n")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.flush, first.fh)
        await trio.to_thread.run_sync(started.wait, 10)
        await expect_errno(errno.EBUSY, ops.write(second.fh, 8, b"\n"))
        release.set()
    await ops.release(first.fh)
    await ops.flush(second.fh)
    await ops.release(second.fh)
    assert calls == [False]  # the first run only; the refused open file's dry-run never ran


async def test_unexpected_error_is_logged_and_answered_eio(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path: tuple[str, ...]) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(ops.tree, "resolve", broken)
    with caplog.at_level(logging.ERROR, logger="pinfs.fs.adapter"):
        await expect_errno(errno.EIO, ops.lookup(pyfuse3.ROOT_INODE, b"README", CTX))
    assert "ZeroDivisionError" in caplog.text


async def test_generated_file_opens_direct_io_and_reads_whole(ops: PinfsOperations) -> None:
    info = await ops.open(await walk(ops, "backends", "s3-main", "summary.json"), os.O_RDONLY, CTX)
    assert info.direct_io
    data = await ops.read(info.fh, 0, 1 << 20)
    await ops.release(info.fh)
    summary = json.loads(data)
    assert summary["backend"] == "s3-main" and summary["count"] == 40
    assert summary["by_status"] == {"stored": 40, "pending": 0, "failed": 0}


async def test_the_mount_bounds_the_cache_its_control_runs_read_through(root: Path) -> None:
    """--cache-mb bounds every read of the mount process: the tree's and those of the operations its
    control files run, which make their PinStore without a cache (a second, 256 MB one grew the mount
    by ~40 MB over 1000 control runs)."""
    make_backend(root, "bounded")
    operations = build_operations(MountConfig(root=root, mountpoint=root, cache_mb=3))
    try:
        store = PinStore(get_backend(root, "bounded"))
        assert store.cache is operations.tree.cache
        assert store.cache.max_bytes == 3 << 20
        assert operations.tree.records.group_bytes <= 1 << 20  # the row groups kept for walks: a part of it
    finally:
        DEFAULT_CACHE.limit(DEFAULT_CACHE_BYTES)


async def test_two_closes_of_one_open_file_at_once_run_its_command_once(
    ops: PinfsOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child forked while a control file is open closes its copy at exec while the parent closes
    its own: two flushes of one open file at once. The command runs once, and neither close fails."""
    calls: list[bool] = []

    def counted(root: Path, options: sync_module.SyncOptions, progress: object = None) -> dict[str, Any]:
        calls.append(options.dry_run)
        return {"ok": True}

    def looked_up_slowly(self: object, path: str) -> bool:
        time.sleep(0.2)  # both closes are past the "anything to run?" check before either runs it
        return False

    replace_sync(monkeypatch, counted)
    monkeypatch.setattr(ControlSession, "held_elsewhere", looked_up_slowly)
    inode = await walk(ops, ".control", "sync")
    opened = await ops.open(inode, os.O_WRONLY | os.O_TRUNC, CTX)
    await ops.write(opened.fh, 0, b"\n")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.flush, opened.fh)
        nursery.start_soon(ops.flush, opened.fh)
    await ops.release(opened.fh)
    assert calls == [False]


async def test_a_batch_written_in_pieces_runs_each_line_once_parsed_once(
    ops: PinfsOperations, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines are parsed as the writes bring them (a bad one fails its write); the close runs what they
    parsed to, parsing only what no write completed (here the last line, written without its newline)."""
    from pinfs.ops import pins as pins_module

    parsed: list[str] = []
    parse_line = pins_module.parse_pin_line

    def counted(line: str, where: str = "") -> pins_module.PinRequest:
        parsed.append(line.split()[0])
        return parse_line(line, where)

    monkeypatch.setattr(pins_module, "parse_pin_line", counted)
    new = [cid_for(f"piece{i}") for i in range(3)]
    pieces = [f"{new[0]}\n{new[1]} sta".encode(), b"tus=failed\n", new[2].encode()]
    inode = await walk(ops, "backends", "s3-main", ".control", "pin")
    opened = await ops.open(inode, os.O_WRONLY | os.O_TRUNC, CTX)
    offset = 0
    for piece in pieces:
        await ops.write(opened.fh, offset, piece)
        offset += len(piece)
    await ops.flush(opened.fh)
    await ops.release(opened.fh)
    assert sorted(parsed) == sorted(new)  # each line once
    snapshot = PinStore(get_backend(root, "s3-main"), StoreCache()).snapshot()
    assert [snapshot.lookup(cid)["status"] for cid in new] == ["pending", "failed", "pending"]
    assert snapshot.count == 43


async def test_a_bad_line_in_a_later_write_is_named_by_its_line_in_the_whole_input(ops: PinfsOperations) -> None:
    """A batch arrives in several writes; the error says where the bad line is in what the user wrote."""
    good = "".join(f"{cid_for(f'numbered{i}')}\n" for i in range(5)).encode()
    inode = await walk(ops, "backends", "s3-main", ".control", "pin")
    opened = await ops.open(inode, os.O_WRONLY | os.O_TRUNC, CTX)
    await ops.write(opened.fh, 0, good)  # lines 1-5
    await expect_errno(errno.EINVAL, ops.write(opened.fh, len(good), f"{cid_for('six')}\nnot-a-cid\n".encode()))
    await ops.flush(opened.fh)
    await ops.release(opened.fh)
    state = json.loads(ops.controls.get(("s3-main", "pin")).describe())
    assert state["state"] == "rejected" and "line 7:" in state["error"], state
