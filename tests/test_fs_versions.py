"""Issue #19 without a mount: the record cache's leases (with a fake clock), the diff of two versions,
the version watch, and the kernel-cache duty's invalidations (recorded instead of sent to a kernel)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyfuse3
import pytest
import trio
import trio.testing
from helpers import cid_for, make_backend, spelled

from pinfs.data.backends import get_backend
from pinfs.data.cids import standard_forms
from pinfs.data.snapshots import StoreCache
from pinfs.data.store import PinStore
from pinfs.fs import adapter as adapter_module
from pinfs.fs import kernel as kernel_module
from pinfs.fs.adapter import PinfsOperations
from pinfs.fs.control import ControlRegistry
from pinfs.fs.kernel import KernelCache
from pinfs.fs.tree import PinTree
from pinfs.fs.versions import LONG_SECONDS, RecordCache, VersionWatch, differing_cids
from pinfs.ops.pins import PinRequest, add_pins, remove_pins


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def version(number: int, table: str = "t") -> Any:
    from pinfs.data.delta import TableVersion

    return TableVersion("loc", table, number, number * 1000)


# -- the record cache --


def test_a_record_of_the_current_version_is_leased_for_long_and_others_briefly() -> None:
    clock = FakeClock()
    cache = RecordCache(clock=clock)
    cache.advance("b", version(3), set())
    current = cache.keep("b", "x", {"status": "stored"}, version(3))
    assert current.lease is not None and cache.remaining(current.lease) == LONG_SECONDS
    unseen = cache.keep("b", "y", {"status": "stored"}, version(4))  # newer than the watch knows
    assert unseen.lease is None and cache.remaining(unseen.lease) is None
    clock.now += 10
    assert cache.remaining(current.lease) == LONG_SECONDS - 10  # the kernel is told what remains
    assert cache.get("b", "y") is None  # the brief one expired
    clock.now += LONG_SECONDS
    assert cache.get("b", "x") is None and cache.remaining(current.lease) == 0


def test_each_cid_kept_in_one_version_is_found_with_its_own_record() -> None:
    # Two functions once shared the name ``_identity``: every CID was kept under one key, and
    # ``by-cid/<cid>`` showed the record of whichever CID was read last (issue #19 bench).
    cache = RecordCache(clock=FakeClock())
    cache.advance("b", version(3), set())
    cids = [
        "bafkreig3tj4xyyx24y6kbjliv4koyleilma5b33quefu4r3buum42ux6he",
        "bafkreieuxhchbukiaax4cstymwet3cbhb6yxo2b6j22asnymmr472em43i",
    ]
    for cid in cids:
        assert cache.keep("b", cid, {"cid": cid}, version(3)).record == {"cid": cid}
    assert [cache.get("b", cid).record for cid in cids] == [{"cid": cid} for cid in cids]


def test_a_change_ends_exactly_the_leases_of_the_changed_cids() -> None:
    cache = RecordCache(clock=FakeClock())
    cache.advance("b", version(1), set())
    changed = cache.keep("b", "x", {"status": "stored"}, version(1))
    unchanged = cache.keep("b", "y", {"status": "stored"}, version(1))
    listing = cache.lease("b", version(1))
    cache.advance("b", version(2), {"x"})
    assert cache.get("b", "x") is None and cache.remaining(changed.lease) == 0
    assert cache.get("b", "y") is unchanged and cache.remaining(unchanged.lease) == LONG_SECONDS
    assert cache.remaining(listing) == 0  # a lease on the whole version ends with it
    cache.advance("b", version(3), None)  # everything may have changed
    assert cache.get("b", "y") is None


def test_a_newer_record_is_never_replaced_by_an_older_one() -> None:
    cache = RecordCache(clock=FakeClock())
    cache.advance("b", version(2), set())
    newer = cache.keep("b", "x", {"status": "failed"}, version(2))
    assert cache.keep("b", "x", {"status": "stored"}, version(1)) is newer
    assert cache.get("b", "x") is newer


def test_a_record_read_before_the_current_version_is_not_kept() -> None:
    cache = RecordCache(clock=FakeClock())
    cache.advance("b", version(5), set())
    late = cache.keep("b", "x", {"status": "stored"}, version(4))  # a read that started before version 5
    assert late.lease is None and cache.get("b", "x") is None


# -- row groups: neighbours made from memory (issue #19, item 4) --


def keep_group_of(cache: RecordCache, at: Any, statuses: dict[str, str], backend: str = "b") -> list[str]:
    """Keep a row group of ``at`` holding ``statuses`` (CID -> status); returns its CIDs in order."""
    table = pa.Table.from_pylist([{"cid": cid, "status": status} for cid, status in sorted(statuses.items())])
    cache.keep_group(backend, at, table.column("cid").combine_chunks(), made_from(table), table.nbytes)
    return sorted(statuses)


def made_from(table: pa.Table) -> Any:
    return lambda start, stop: [(row, 7) for row in table.slice(start, stop - start).to_pylist()]


GROUP = {cid_for(number): "stored" for number in range(100)}


def test_each_cid_of_a_kept_row_group_is_made_into_its_own_record_under_a_lease() -> None:
    cache = RecordCache(clock=FakeClock())
    cache.advance("b", version(3), set())
    cids = keep_group_of(cache, version(3), GROUP)
    for cid in [cids[0], cids[50], cids[99], cids[51]]:
        kept = cache.get("b", cid, leased_only=True)
        assert kept is not None and kept.record == {"cid": cid, "status": "stored"} and kept.version == version(3)
        assert cache.remaining(kept.lease) == LONG_SECONDS and kept.mtime_ns == 7
    assert cache.get("b", cid_for("not in the group")) is None
    assert cache.get("b", spelled(cids[90], "z")) is None  # a spelling not stored: the disk decides
    assert cache.get("b", spelled(cids[3], "z")).record["cid"] == cids[3]  # made: kept for every spelling


def test_a_change_drops_the_row_groups_holding_a_changed_cid_and_their_records() -> None:
    cache = RecordCache(clock=FakeClock())
    cache.advance("b", version(1), set())
    cache.advance("c", version(1), set())
    cids = keep_group_of(cache, version(1), GROUP)
    others = keep_group_of(cache, version(1), {cid_for(f"other {number}"): "failed" for number in range(100)}, "c")
    made = cache.get("b", cids[10])  # made, with the next ones, before the change
    assert made is not None and cache.get("b", cids[11]) is not None
    cache.advance("b", version(2), {cids[11]})
    assert cache.get("b", cids[11]) is None  # the changed CID: read again, from the new version
    assert cache.get("b", cids[60]) is None  # not made yet: its group may be older than what is stored now
    assert cache.get("b", cids[10]) is made  # made before, unchanged: kept like any record
    assert cache.get("c", others[5]) is not None  # another backend's group is not touched
    cache.advance("c", version(9), None)  # everything may have changed
    assert cache.get("c", others[70]) is None


def test_a_row_group_serves_no_record_once_a_newer_version_was_read() -> None:
    cache = RecordCache(clock=FakeClock())
    cache.advance("b", version(1), set())
    cids = keep_group_of(cache, version(1), GROUP)
    newer = cache.keep("b", cids[40], {"cid": cids[40], "status": "failed"}, version(2))  # before the watch saw it
    assert newer.lease is None
    assert cache.get("b", cids[41]) is None  # version 1 might not hold for it any more
    keep_group_of(cache, version(1), GROUP)
    assert cache.get("b", cids[42]) is None  # nor is a group of version 1 kept again
    cache.advance("b", version(2), {cids[40]})
    keep_group_of(cache, version(2), GROUP)
    assert cache.get("b", cids[43]) is not None  # the watch caught up


def test_a_row_group_is_kept_only_from_the_current_version_and_for_a_lease_at_most() -> None:
    clock = FakeClock()
    cache = RecordCache(clock=clock)
    cache.advance("b", version(2), set())
    cids = keep_group_of(cache, version(1), GROUP)  # read before version 2 was current
    assert cache.get("b", cids[0]) is None
    keep_group_of(cache, version(2), GROUP)
    clock.now += LONG_SECONDS  # the backstop: read again however sure the mount is
    assert cache.get("b", cids[0]) is None


def test_row_groups_are_bounded_by_bytes_least_recently_used_first() -> None:
    ordered = sorted(GROUP)
    groups = [dict.fromkeys(ordered[start : start + 30], "stored") for start in (0, 30, 60)]  # disjoint ranges
    size = pa.Table.from_pylist([{"cid": cid, "status": "stored"} for cid in groups[0]]).nbytes
    cache = RecordCache(clock=FakeClock(), maxsize=1, group_bytes=2 * size)
    cache.advance("b", version(1), set())
    first, second = keep_group_of(cache, version(1), groups[0]), keep_group_of(cache, version(1), groups[1])
    assert cache.get("b", first[0]) is not None  # used: the second group is the least recently used now
    third = keep_group_of(cache, version(1), groups[2])
    assert cache.get("b", third[0]) is not None and cache.get("b", first[20]) is not None
    assert cache.get("b", second[20]) is None


# -- diffs --


def rows(**records: dict[str, str | None]) -> pa.Table:
    return pa.Table.from_pylist([{"cid": cid, **fields} for cid, fields in sorted(records.items())])


def test_differing_cids_are_the_added_removed_and_changed_ones() -> None:
    before = rows(a={"status": "stored"}, b={"status": "stored"}, c={"status": "pending"})
    after = rows(b={"status": "stored"}, c={"status": "failed"}, d={"status": "stored"})
    assert differing_cids(before, after) == {"a", "c", "d"}
    assert differing_cids(before, None) == {"a", "b", "c"}


def test_a_column_present_on_one_side_only_counts_as_null() -> None:
    before = rows(a={"status": "stored"}, b={"status": "stored"})
    after = rows(a={"status": "stored", "verified_at": None}, b={"status": "stored", "verified_at": "2026-01-01"})
    assert differing_cids(before, after) == {"b"}


# -- the version watch, on a real store --


@pytest.fixture
def pinned(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PINFS_FILE_ROWS", "64")  # several data files, so a change rewrites one of them
    make_backend(root, "b")
    add_pins(root, "b", [PinRequest(cid_for(i), "stored") for i in range(300)])
    return root


def watch_for(root: Path) -> VersionWatch:
    cache = StoreCache()
    return VersionWatch(root, cache, RecordCache())


def test_the_watch_finds_exactly_the_cids_a_commit_changed(pinned: Path) -> None:
    watch = watch_for(pinned)
    [first] = watch.check()
    assert first.backend == "b" and first.cids == frozenset()  # seen for the first time
    assert watch.check() == []
    add_pins(pinned, "b", [PinRequest(cid_for(7), "failed"), PinRequest(cid_for("new"), "pending")])
    remove_pins(pinned, "b", [cid_for(9)])
    [change] = watch.check()  # two commits, diffed at once
    assert change.cids == {cid_for(7), cid_for("new"), cid_for(9)}
    assert change.after == PinStore(get_backend(pinned, "b")).table_state().identity  # type: ignore[union-attr]


def test_a_merge_of_the_insert_files_changes_nothing_and_is_not_read(
    pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that only moved rows between files (the insert files merged into the ranges) is known
    by its commit info: the watch reports no changed CID without reading the files it rewrote."""
    from pinfs.fs import versions
    from pinfs.ops.maintain import merge_inserts

    add_pins(pinned, "b", [PinRequest(cid_for(f"batch{i}"), "pending") for i in range(40)])
    watch = watch_for(pinned)
    watch.check()
    assert merge_inserts(get_backend(pinned, "b"), due_only=False) == 40

    def no_reading(*_args: object) -> None:
        raise AssertionError("the files of a merge were read to find what changed")

    rows_of = versions._rows_of
    monkeypatch.setattr(versions, "_rows_of", no_reading)
    [change] = watch.check()
    assert change.cids == frozenset() and change.after != change.before
    monkeypatch.setattr(versions, "_rows_of", rows_of)
    add_pins(pinned, "b", [PinRequest(cid_for("batch3"), "failed")])  # a change after it is found as ever
    [change] = watch.check()
    assert change.cids == {cid_for("batch3")}


def test_a_table_made_again_changes_everything(pinned: Path) -> None:
    import shutil

    watch = watch_for(pinned)
    watch.check()
    shutil.rmtree(pinned / "backends" / "b" / "pin_mappings.delta")
    add_pins(pinned, "b", [PinRequest(cid_for(1), "stored")])
    [change] = watch.check()
    assert change.cids is None


def test_a_backend_that_goes_away_changes_everything(pinned: Path) -> None:
    import shutil

    watch = watch_for(pinned)
    watch.check()
    shutil.rmtree(pinned / "backends" / "b")
    [change] = watch.check()
    assert change.backend == "b" and change.cids is None and change.after is None


# -- the tree over a watched store: what a walk of by-cid reads --

BY_CID = ("backends", "b", "by-cid")


def watched_tree(root: Path) -> tuple[PinTree, VersionWatch]:
    records = RecordCache()
    tree = PinTree(root, StoreCache(), records)
    watch = VersionWatch(root, tree.cache, records)
    watch.check()  # the version is current: records are leased
    return tree, watch


def files_of(tree: PinTree, cid: str) -> dict[str, bytes]:
    """The files of ``by-cid/<cid>`` as listed: from memory when the tree can, else from disk."""
    listing = tree.listing_cached((*BY_CID, cid)) or tree.listing((*BY_CID, cid))
    return {node.name: node.content or b"" for _offset, node in listing.entries(0, 100)}


def test_after_one_cid_directory_is_read_its_neighbours_come_from_memory_each_with_its_own_record(
    pinned: Path,
) -> None:
    tree, _watch = watched_tree(pinned)
    ordered = sorted(cid_for(number) for number in range(300))
    tree.listing((*BY_CID, ordered[0]))  # read from disk: its row group (64 rows here) is kept
    for cid in ordered[1:50]:
        listing = tree.listing_cached((*BY_CID, cid))
        assert listing is not None, cid
        files = {node.name: node.content for _offset, node in listing.entries(0, 100)}
        assert files["cid"] == f"{cid}\n".encode() and json.loads(files["pin.json"] or b"")["cid"] == cid
    assert tree.listing_cached((*BY_CID, ordered[-1])) is None  # another row group: read on a worker thread


def test_a_neighbour_kept_in_memory_shows_a_change_once_the_watch_sees_it(pinned: Path) -> None:
    tree, watch = watched_tree(pinned)
    ordered = sorted(cid_for(number) for number in range(300))
    assert files_of(tree, ordered[0])["status"] == b"stored\n"
    assert files_of(tree, ordered[5])["status"] == b"stored\n"  # made from the kept row group
    add_pins(pinned, "b", [PinRequest(ordered[5], "failed"), PinRequest(ordered[40], "failed")])  # another process
    watch.check()
    assert files_of(tree, ordered[5])["status"] == b"failed\n"  # made before the change
    assert files_of(tree, ordered[40])["status"] == b"failed\n"  # not made before: its row group is gone
    assert json.loads(files_of(tree, ordered[40])["pin.json"])["status"] == "failed"
    assert files_of(tree, ordered[41])["status"] == b"stored\n"


# -- the duty and the adapter: what the kernel is told --


@dataclass
class Recorder:
    """Invalidations as the kernel would get them."""

    entries: list[tuple[int, str]]
    inodes: list[int]

    def entry(self, parent: int, name: str) -> None:
        self.entries.append((parent, name))

    def inode(self, inode: int) -> None:
        self.inodes.append(inode)


@dataclass
class FakeContext:
    uid: int = os.getuid()
    gid: int = os.getgid()
    pid: int = 1
    umask: int = 0o022


CTX: Any = FakeContext()


async def walk(ops: PinfsOperations, *names: str) -> int:
    inode = pyfuse3.ROOT_INODE
    for name in names:
        inode = (await ops.lookup(inode, name.encode(), CTX)).st_ino
    return inode


def mount_model(root: Path) -> tuple[PinfsOperations, KernelCache, Recorder]:
    records = RecordCache()
    tree = PinTree(root, StoreCache(), records)
    ops = PinfsOperations(tree, ControlRegistry(root))
    recorder = Recorder([], [])
    kernel = KernelCache(tree, ops.inodes, VersionWatch(root, tree.cache, records), notifier=recorder)
    ops.after_command = kernel.sync
    return ops, kernel, recorder


@pytest.mark.trio
async def test_a_pin_through_a_control_file_is_told_to_the_kernel_before_close_returns(pinned: Path) -> None:
    ops, kernel, recorder = mount_model(pinned)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kernel, pinned)
        await trio.testing.wait_all_tasks_blocked()  # the duty runs: sync() waits for its round
        await kernel.sync()  # the first round: the version is current, leases are long from now on
        status = await walk(ops, "backends", "b", "by-cid", cid_for(7), "status")
        other = await walk(ops, "backends", "b", "by-cid", cid_for(8), "status")
        attributes = await ops.getattr(status, CTX)
        assert attributes.entry_timeout > 30 and attributes.attr_timeout > 30  # leased: the kernel keeps it
        control = await walk(ops, "backends", "b", ".control", "pin")
        handle = (await ops.open(control, os.O_WRONLY, CTX)).fh
        await ops.write(handle, 0, f"{cid_for(7)} status=failed\n".encode())
        await ops.flush(handle)  # close(): returns once the kernel has been told
        await ops.release(handle)
        by_cid = ops.inodes.held(("backends", "b", "by-cid"))
        assert (by_cid, cid_for(7)) in recorder.entries and status in recorder.inodes
        assert other not in recorder.inodes and (by_cid, cid_for(8)) not in recorder.entries  # only what changed
        node = await ops.getattr(status, CTX)
        assert node.st_size == len(b"failed\n")
        handle = (await ops.open(status, os.O_RDONLY, CTX)).fh
        assert await ops.read(handle, 0, 100) == b"failed\n"
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_changes_seen_while_a_round_gathers_do_not_start_it_but_a_waiting_command_does(
    pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit writes its data file and then its log entry, and inotify wakes the duty for each. The
    second must not start a round beside the command that made the commit (it loaded the version
    again, and the command's close() waited it out before its own round); a command waiting does."""
    monkeypatch.setattr(kernel_module, "MIN_INTERVAL", 60.0)  # gathering ends only when a command waits
    _ops, kernel, _recorder = mount_model(pinned)
    kernel.use_inotify = False  # the test plays inotify's part (``wake``)
    kernel.poll_seconds = 60.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kernel, pinned)
        await trio.testing.wait_all_tasks_blocked()
        await kernel.sync()
        rounds = kernel.rounds
        for _event in ("the data file", "the log entry"):
            kernel.wake()
            await trio.testing.wait_all_tasks_blocked()
        assert kernel.rounds == rounds  # still gathering
        with trio.fail_after(10):  # a hang guard: the command's wait ends the gathering at once
            await kernel.sync()
        assert kernel.rounds == rounds + 1
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_an_answer_made_before_a_change_gets_no_lifetime(pinned: Path) -> None:
    ops, kernel, _recorder = mount_model(pinned)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kernel, pinned)
        await trio.testing.wait_all_tasks_blocked()  # the duty runs: sync() waits for its round
        await kernel.sync()
        path = ("backends", "b", "by-cid", cid_for(7), "status")
        node = await trio.to_thread.run_sync(ops.tree.resolve, path)  # on its way to the kernel...
        add_pins(pinned, "b", [PinRequest(cid_for(7), "failed")])
        await kernel.sync()  # ...when the change is seen
        assert ops.tree.kernel_timeout(node) == 0
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_an_outside_change_is_told_to_the_kernel_without_anyone_asking(pinned: Path) -> None:
    ops, kernel, recorder = mount_model(pinned)
    kernel.poll_seconds = 0.05
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kernel, pinned)
        await trio.testing.wait_all_tasks_blocked()  # the duty runs: sync() waits for its round
        await kernel.sync()
        await walk(ops, "backends", "b", "by-cid", cid_for(3))
        by_cid = ops.inodes.held(("backends", "b", "by-cid"))
        await trio.to_thread.run_sync(lambda: remove_pins(pinned, "b", [cid_for(3)]))
        with trio.fail_after(10):  # a hang guard: inotify or the poll see it in milliseconds
            while (by_cid, cid_for(3)) not in recorder.entries:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_change_of_a_listed_cid_whose_names_were_let_go_is_told_by_name(
    pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a big listing most blocks keep only lookup counts (issue #12): the kernel is still told of
    a changed CID it holds from one, by name, and the files below it by number."""
    monkeypatch.setattr(adapter_module, "READDIR_BATCH", 16)
    ops, kernel, recorder = mount_model(pinned)
    ops.inodes.listings.kept.limit = 1
    listed: dict[str, int] = {}

    def reply(_token: object, name: bytes, attributes: pyfuse3.EntryAttributes, _next: int) -> bool:
        listed[name.decode()] = attributes.st_ino
        return True

    monkeypatch.setattr(adapter_module.pyfuse3, "readdir_reply", reply)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kernel, pinned)
        await trio.testing.wait_all_tasks_blocked()
        await kernel.sync()
        by_cid = await walk(ops, "backends", "b", "by-cid")
        handle = await ops.opendir(by_cid, CTX)
        await ops.readdir(handle, 0, None)  # type: ignore[arg-type]
        await ops.releasedir(handle)
        changed = min(listed)  # block 0: its names were let go when the next block was listed
        status = (await ops.lookup(listed[changed], b"status", CTX)).st_ino  # block 0 read again...
        await ops.getattr(listed[sorted(listed)[100]], CTX)  # ...and let go once more for another
        epoch = ops.inodes.listings.epoch(listed[changed])
        assert epoch is not None and len(listed) == 300 and epoch.named_blocks == 1
        assert epoch.kept_names(0) is None
        untouched = sorted(listed)[200]  # in a block that also let its names go, not changed
        await trio.to_thread.run_sync(lambda: add_pins(pinned, "b", [PinRequest(changed, "failed")]))
        await kernel.sync()
        assert (by_cid, changed) in recorder.entries and status in recorder.inodes
        assert (by_cid, untouched) not in recorder.entries  # held maybe, but not changed: not told
        nursery.cancel_scope.cancel()


SPELLED = cid_for("spelled", version=0)  # Qm…, looked up in other spellings (issue #16)


@pytest.mark.trio
@pytest.mark.parametrize(
    "other",
    [standard_forms(SPELLED)[-1], spelled(SPELLED, "z"), spelled(SPELLED, "B"), spelled(SPELLED, "k")],
    ids=["bafy", "z", "B", "k"],
)
async def test_a_change_is_told_for_every_spelling_the_kernel_holds(pinned: Path, other: str) -> None:
    stored = SPELLED
    add_pins(pinned, "b", [PinRequest(stored, "pending")])
    ops, kernel, recorder = mount_model(pinned)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kernel, pinned)
        await trio.testing.wait_all_tasks_blocked()
        await kernel.sync()
        status = await walk(ops, "backends", "b", "by-cid", other, "status")
        handle = (await ops.open(status, os.O_RDONLY, CTX)).fh
        assert await ops.read(handle, 0, 100) == b"pending\n"
        await ops.release(handle)
        await walk(ops, "backends", "b", "by-status", "pending", other)
        await walk(ops, "cids", other, "b")
        control = await walk(ops, "backends", "b", ".control", "unpin")
        handle = (await ops.open(control, os.O_WRONLY, CTX)).fh
        await ops.write(handle, 0, f"{stored}\n".encode())
        await ops.flush(handle)
        await ops.release(handle)
        by_cid = ops.inodes.held(("backends", "b", "by-cid"))
        assert (by_cid, other) in recorder.entries and status in recorder.inodes
        assert (ops.inodes.held(("backends", "b", "by-status", "pending")), other) in recorder.entries
        assert (ops.inodes.held(("cids", other)), "b") in recorder.entries
        with pytest.raises(pyfuse3.FUSEError):
            await walk(ops, "backends", "b", "by-cid", other)
        nursery.cancel_scope.cancel()
