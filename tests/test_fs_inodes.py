"""The inode table alone (no FUSE, no tree): path inodes, listing epochs, their counts and memory."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyfuse3
import pytest
from helpers import cid_for, spelled

from pinfs.data.cids import cid_key, standard_forms
from pinfs.fs import inodes as inodes_module
from pinfs.fs.inodes import COMPACT_HELD, EPOCH_MASK, InodeTable, ListingInodes, NamesNeeded, is_listing_inode

DIRECTORY = ("backends", "b", "by-cid")
NAMES = [f"n{i:04}" for i in range(40)]


def block_of(start: int, size: int = 16) -> pa.Array:
    return pa.array(NAMES[start : start + size])


def list_all(listings: ListingInodes, version: object = "v1", size: int = 16) -> dict[str, int]:
    """What one full readdirplus of NAMES does to the table: name -> inode."""
    epoch = listings.open(DIRECTORY, version, size)
    given = {
        name: epoch.hold(position, block_of(position - position % size, size)) for position, name in enumerate(NAMES)
    }
    listings.close(epoch)
    return given


def expect_enoent(table: InodeTable, inode: int) -> None:
    with pytest.raises(pyfuse3.FUSEError):
        table.path_of(inode)


def test_path_and_listing_inodes_are_in_disjoint_ranges() -> None:
    table = InodeTable()
    given = list_all(table.listings)
    assert all(is_listing_inode(inode) and 1 << 62 <= inode < 1 << 63 for inode in given.values())
    path_inode = table.inode_of(("README",))
    assert not is_listing_inode(path_inode) and path_inode < 1 << 60
    assert [table.path_of(given[name])[-1] for name in NAMES] == NAMES


def test_a_lookup_finds_the_listed_number_only_in_the_current_epoch() -> None:
    table = InodeTable()
    given = list_all(table.listings)
    assert table.inode_of((*DIRECTORY, "n0017")) == given["n0017"]
    assert table.inode_of((*DIRECTORY, "n0017x")) == InodeTable.hash_path((*DIRECTORY, "n0017x"))
    assert table.inode_of((*DIRECTORY, "a")) == InodeTable.hash_path((*DIRECTORY, "a"))  # before every block
    table.remember(given["n0017"], (*DIRECTORY, "n0017"))
    table.forget(given["n0017"], 1)
    assert table.path_of(given["n0017"]) == (*DIRECTORY, "n0017")  # one lookup still held


def test_every_forget_brings_the_table_back_to_empty() -> None:
    table = InodeTable()
    first = list_all(table.listings)
    assert list_all(table.listings) == first  # the same version: the same numbers, counted twice
    assert len(table) == 40 and table.listings.epochs == 1
    for inode in first.values():
        table.forget(inode, 2)
    assert len(table) == 0 and table.listings.epochs == 0
    expect_enoent(table, first["n0000"])


def test_a_superseded_epoch_compacts_and_counts_each_position_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inodes_module, "COMPACT_HELD", 2)
    listings = ListingInodes()
    old = listings.open(DIRECTORY, "v1", 16)  # a handle left open on the old version
    inodes = {position: old.hold(position, block_of(position - position % 16)) for position in range(40)}
    list_all(listings, version="v2")  # the directory listed again in a new version
    assert old.superseded and old.blocks == 3  # the kernel still holds every entry: nothing compacted
    for position in range(1, 16):
        listings.forget(inodes[position], 1)  # the new listing replaced these entries
    assert old.blocks == 2 and old.held == 25  # block 0 kept its one held name as a string
    for position in (0, 1):  # the handle still open on the old version lists them again
        old.hold(position, block_of(0))
    for position in range(16, 40):
        listings.forget(inodes[position], 1)
    assert old.blocks == 1 and old.held == 3  # position 0 is in block 0 and kept as a string
    listings.forget(inodes[1], 1)  # block 0 compacts: position 0 is counted once, with both lookups
    assert old.blocks == 0 and old.held == 1 and listings.path_of(inodes[0])[-1] == "n0000"
    listings.forget(inodes[0], 2)
    listings.close(old)
    assert listings.epochs == 1 and listings.epoch(inodes[0]) is None


def test_a_superseded_block_with_few_names_left_keeps_only_those() -> None:
    listings = ListingInodes()
    given = list_all(listings, size=64)
    for name in NAMES[: 40 - COMPACT_HELD // 8]:
        listings.forget(given[name], 1)
    list_all(listings, version="v2", size=64)
    epoch = listings.epoch(given["n0039"])
    assert epoch is not None and epoch.blocks == 0 and epoch.held == COMPACT_HELD // 8
    assert listings.path_of(given["n0039"]) == (*DIRECTORY, "n0039")


def test_blocks_past_the_kept_ones_let_their_names_go_and_read_them_again() -> None:
    """Issue #12: the names of every held block cost ~63 bytes a name (10M pins: ~630 MB); only the
    blocks used last keep them."""
    listings = ListingInodes(kept_blocks=2)
    reads: list[int] = []

    def reader(start: int, stop: int) -> pa.Array:
        reads.append(start)
        return pa.array(NAMES[start:stop])

    epoch = listings.open(DIRECTORY, "v1", 10, reader)
    given = {
        name: epoch.hold(position, pa.array(NAMES[position - position % 10 :][:10]))
        for position, name in enumerate(NAMES)
    }
    listings.close(epoch)
    assert epoch.blocks == 4 and epoch.named_blocks == 2 and len(listings) == 40
    with pytest.raises(NamesNeeded) as caught:
        listings.path_of(given["n0003"])
    caught.value.restore(caught.value.read())
    assert listings.path_of(given["n0003"]) == (*DIRECTORY, "n0003") and reads == [0]
    assert epoch.named_blocks == 2  # block 0 in, block 2 out
    with pytest.raises(NamesNeeded):
        listings.find(DIRECTORY, "n0025")
    assert listings.may_hold(DIRECTORY, "n0025") and listings.may_hold(DIRECTORY, "n0003")
    assert not listings.may_hold(DIRECTORY, "n0003x") and not listings.may_hold(("other",), "n0003")
    table = InodeTable()
    table.listings = listings
    assert table.held((*DIRECTORY, "n0025")) is None and table.may_hold((*DIRECTORY, "n0025"))
    assert table.held((*DIRECTORY, "n0003")) == given["n0003"]
    list_all(listings, version="v2", size=10)  # superseded: blocks with names compact to strings...
    assert epoch.superseded and epoch.blocks == 2 and epoch.named_blocks == 0  # ...the others keep counts
    assert epoch.held == 40 and listings.path_of(given["n0003"]) == (*DIRECTORY, "n0003")
    for inode in given.values():
        listings.forget(inode, 1)
    assert listings.epoch(given["n0000"]) is None and len(listings.kept) == 0  # v2 (no reader) keeps its own


def test_a_lookup_count_past_a_byte_is_counted_exactly() -> None:
    listings = ListingInodes()
    epoch = listings.open(DIRECTORY, "v1", 16)
    inode = epoch.hold(3, block_of(0))
    for _ in range(299):
        listings.hold_again(inode)
    listings.close(epoch)
    listings.forget(inode, 45)
    listings.forget(inode, 254)
    assert listings.path_of(inode)[-1] == "n0003" and len(listings) == 1
    listings.forget(inode, 1)
    assert len(listings) == 0 and listings.epochs == 0


def test_epoch_numbers_wrap_around_past_those_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    listings = ListingInodes()
    monkeypatch.setattr(listings, "_numbers", itertools.count(EPOCH_MASK))
    held = listings.open(("a",), None, 16)
    held.hold(0, block_of(0))
    listings.close(held)
    monkeypatch.setattr(listings, "_numbers", itertools.count(EPOCH_MASK))  # the counter came round again
    other = listings.open(("b",), None, 16)
    assert held.number == EPOCH_MASK and other.number not in (0, EPOCH_MASK)
    assert listings.path_of(held.base) == ("a", "n0000")


def test_names_in_other_spellings_are_indexed_by_cid_identity_while_the_kernel_holds_them() -> None:
    table = InodeTable()
    cid = cid_for("indexed", version=0)  # Qm…
    z, upper, v1 = spelled(cid, "z"), spelled(cid, "B"), standard_forms(cid)[-1]
    held = [
        ("backends", "b", "by-cid", z),
        ("backends", "b", "by-cid", z, "status"),
        ("backends", "b", "by-status", "stored", upper),
        ("cids", upper, "b"),
        ("backends", "b", "by-cid", cid),  # standard spellings are not indexed: they follow from the CID
        ("cids", v1),
        ("backends", "b", "by-status", "stored"),
    ]
    for path in [*held, held[0]]:  # by-cid/z… looked up twice
        table.remember(table.inode_of(path), path)
    assert sorted(table.aliases(cid_key(cid))) == sorted([z, upper])
    assert table.aliases(cid_key(cid_for("another"))) == ()

    def forget(path: tuple[str, ...], count: int = 1) -> None:
        inode = table.held(path)
        assert inode is not None
        table.forget(inode, count)

    forget(held[0])
    forget(held[1])
    assert sorted(table.aliases(cid_key(cid))) == sorted([z, upper])  # by-cid/z… is held once more
    forget(held[0])
    assert table.aliases(cid_key(cid)) == (upper,)
    forget(held[2])
    forget(held[3])
    assert table.aliases(cid_key(cid)) == ()


def test_a_cid_name_may_be_held_while_a_path_at_or_below_it_is_known_or_a_listing_keeps_it() -> None:
    table = InodeTable()
    cid, listed, other = cid_for("held"), cid_for("listed"), cid_for("nowhere")
    by_cid = ("backends", "b", "by-cid")
    paths = [(*by_cid, cid), (*by_cid, cid, "status"), ("cids", cid, "b")]
    for path in paths:
        table.remember(table.inode_of(path), path)
    epoch = table.listings.open(by_cid, "v1", 4)
    names = pa.array(sorted([listed, other]), pa.string())
    for position in range(len(names)):
        epoch.hold(position, names)
    table.listings.close(epoch)
    assert table.may_name(cid, [by_cid]) and table.may_name(listed, [by_cid])
    assert not table.may_name(other, [("backends", "b", "by-status", "failed")])  # listed elsewhere only
    for path in paths:
        inode = table.held(path)
        assert inode is not None
        table.forget(inode, 1)
    assert not table.may_name(cid, [by_cid])
