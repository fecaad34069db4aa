"""The mount's tree model alone (no FUSE): paths, listings, attributes and bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import cid_for, make_backend, store_records

from pinfs.data import schema
from pinfs.data.backends import get_backend
from pinfs.data.pieces import FilePiece
from pinfs.data.snapshots import StoreCache
from pinfs.data.store import PinStore
from pinfs.errors import CorruptData, NotFound
from pinfs.fs import tree as tree_module
from pinfs.fs.control import BACKEND_COMMANDS, ROOT_COMMANDS
from pinfs.fs.tree import (
    ListingCursor,
    NameListing,
    Node,
    NodeKind,
    PinTree,
    PositionalListing,
    StreamListing,
    merge_sorted_unique,
)
from pinfs.fs.versions import RecordCache


def add_pins(root: Path, name: str, cids: list[str], status: str = "pending", **extra: object) -> None:
    make_backend(root, name)
    backend = get_backend(root, name)
    records = [schema.make_record(cid, name, backend.type, status=status, **extra) for cid in cids]  # type: ignore[arg-type]
    store_records(backend, records)


def names(tree: PinTree, *path: str) -> list[str]:
    listing = tree.listing(tuple(path))
    found, offset = [], 0
    while batch := listing.entries(offset, 7):
        found += [node.name for _next, node in batch]
        offset = batch[-1][0]
    return found


@pytest.fixture
def tree(root: Path) -> PinTree:
    return PinTree(root, StoreCache())


def test_root_lists_exactly_the_contract_entries(tree: PinTree) -> None:
    assert sorted(names(tree)) == sorted(
        ["README", "health.json", "status.json", "insights.json", "insights.svg", ".control", "backends", "cids"]
    )


def test_control_directories_list_their_commands(root: Path, tree: PinTree) -> None:
    make_backend(root, "s3-main")
    assert names(tree, ".control") == sorted(ROOT_COMMANDS)
    assert names(tree, "backends", "s3-main", ".control") == sorted(BACKEND_COMMANDS)
    node = tree.resolve(("backends", "s3-main", ".control", "pin"))
    assert node.kind is NodeKind.CONTROL and node.mode & 0o777 == 0o600
    with pytest.raises(NotFound):
        tree.resolve((".control", "pin"))  # pin/unpin exist only per backend


def test_backends_follow_their_directories(root: Path, tree: PinTree) -> None:
    assert names(tree, "backends") == []
    directory = make_backend(root, "local-a")
    assert names(tree, "backends") == ["local-a"]
    directory.rmdir()
    assert names(tree, "backends") == []
    with pytest.raises(NotFound):
        tree.resolve(("backends", "local-a"))


def test_backend_directory_lists_only_files_that_exist(root: Path, tree: PinTree) -> None:
    make_backend(root, "s3-main")
    assert names(tree, "backends", "s3-main") == [".control", "by-cid", "by-status", "summary.json"]
    add_pins(root, "s3-main", [cid_for(1)])
    assert "pin_mappings.parquet" in names(tree, "backends", "s3-main")


def test_by_cid_lists_every_cid_sorted(root: Path, tree: PinTree) -> None:
    cids = [cid_for(i) for i in range(30)] + [cid_for(99, version=0)]
    add_pins(root, "s3-main", cids)
    assert names(tree, "backends", "s3-main", "by-cid") == sorted(cids)


def test_record_files_hold_value_and_newline_with_exact_size(root: Path, tree: PinTree) -> None:
    cid = cid_for(1)
    add_pins(root, "s3-main", [cid], status="stored", metadata={"source": "x"})
    base = ("backends", "s3-main", "by-cid", cid)
    status = tree.resolve((*base, "status"))
    assert status.content == b"stored\n" and status.size == len(b"stored\n")
    assert tree.resolve((*base, "cid")).content == f"{cid}\n".encode()
    assert tree.resolve((*base, "car_file_path")).content == f"/s3-bucket/cars/{cid}.car\n".encode()
    assert json.loads(tree.resolve((*base, "metadata.json")).content or b"") == {"source": "x"}
    pin = json.loads(tree.resolve((*base, "pin.json")).content or b"")
    assert pin["cid"] == cid and pin["status"] == "stored" and pin["metadata"] == {"source": "x"}


def test_absent_or_malformed_cid_is_not_found(root: Path, tree: PinTree) -> None:
    add_pins(root, "s3-main", [cid_for(1)])
    for name in (cid_for(2), "not-a-cid", "..", "README"):
        with pytest.raises(NotFound):
            tree.resolve(("backends", "s3-main", "by-cid", name))
    with pytest.raises(NotFound):
        tree.resolve(("backends", "s3-main", "by-cid", cid_for(2), "status"))


def test_by_status_links_point_into_by_cid(root: Path, tree: PinTree) -> None:
    add_pins(root, "s3-main", [cid_for(1)], status="stored")
    add_pins(root, "s3-main", [cid_for(2)], status="failed")
    assert names(tree, "backends", "s3-main", "by-status") == ["failed", "pending", "stored"]
    assert names(tree, "backends", "s3-main", "by-status", "stored") == [cid_for(1)]
    link = tree.resolve(("backends", "s3-main", "by-status", "stored", cid_for(1)))
    assert link.kind is NodeKind.SYMLINK and link.target == f"../../by-cid/{cid_for(1)}"
    assert link.size == len(link.target)
    with pytest.raises(NotFound):
        tree.resolve(("backends", "s3-main", "by-status", "stored", cid_for(2)))


def test_cids_lists_each_cid_once_across_backends(root: Path, tree: PinTree) -> None:
    add_pins(root, "a", [cid_for(i) for i in range(0, 20)])
    add_pins(root, "b", [cid_for(i) for i in range(10, 30)])
    assert names(tree, "cids") == sorted({cid_for(i) for i in range(30)})
    assert names(tree, "cids", cid_for(15)) == ["a", "b"]
    link = tree.resolve(("cids", cid_for(15), "b"))
    assert link.target == f"../../backends/b/by-cid/{cid_for(15)}"
    with pytest.raises(NotFound):
        tree.resolve(("cids", cid_for(5), "b"))
    with pytest.raises(NotFound):
        tree.resolve(("cids", cid_for(31)))


def test_cid_lookup_reads_at_most_one_row_group(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cids = [cid_for(i) for i in range(6000)]  # three row groups
    add_pins(root, "big", cids)
    reads: list[int] = []
    original = FilePiece.read_group

    def counting(self: FilePiece, index: int, columns: object) -> object:
        reads.append(index)
        return original(self, index, columns)  # type: ignore[arg-type]

    monkeypatch.setattr(FilePiece, "read_group", counting)
    tree = PinTree(root, StoreCache())
    tree.resolve(("backends", "big", "by-cid", cids[4321]))
    tree.resolve(("cids", cids[17]))
    assert len(reads) == 2


def test_listing_is_pinned_to_the_version_opened(root: Path, tree: PinTree) -> None:
    add_pins(root, "s3-main", [cid_for(i) for i in range(10)])
    listing = tree.listing(("backends", "s3-main", "by-cid"))
    first = listing.entries(0, 5)
    add_pins(root, "s3-main", [cid_for(i) for i in range(10, 20)])
    rest = listing.entries(first[-1][0], 100)
    assert len(first) + len(rest) == 10
    assert len(names(tree, "backends", "s3-main", "by-cid")) == 20


def test_positional_listing_skips_names_with_a_slash() -> None:
    cids = ["a", "m/b", "c", "m/d", "m/e", "f"]
    listing = PositionalListing(len(cids), lambda start, stop: pa.array(cids[start:stop]), lambda cid: _node(cid))
    assert [(offset, node.name) for offset, node in listing.entries(0, 2)] == [(1, "a")]
    assert [(offset, node.name) for offset, node in listing.entries(1, 2)] == [(3, "c")]
    assert [(offset, node.name) for offset, node in listing.entries(3, 2)] == [(6, "f")]
    assert listing.entries(6, 2) == []


def test_stream_listing_resumes_inside_a_batch_and_restarts_backwards() -> None:
    opened: list[int] = []

    def stream() -> Iterator[str]:
        opened.append(1)
        return iter(f"n{i:03}" for i in range(50))

    listing = StreamListing(stream, _node)
    first = listing.entries(0, 10)
    assert [node.name for _o, node in first][:2] == ["n000", "n001"]
    again = listing.entries(4, 10)  # the kernel took only four entries
    assert [node.name for _o, node in again][0] == "n004" and len(opened) == 1
    listing.entries(40, 10)
    assert [node.name for _o, node in listing.entries(0, 1)] == ["n000"] and len(opened) == 1  # still recent
    assert [node.name for _o, node in listing.entries(49, 5)] == ["n049"]
    assert listing.entries(50, 5) == []


def test_positional_listing_blocks_hold_every_name_and_list_the_nameable() -> None:
    cids = ["a", "m/b", "c", ".", "", "f"]
    listing = PositionalListing(len(cids), lambda start, stop: pa.array(cids[start:stop]), _node, template=_node("d"))
    block = listing.block(0, 6)
    assert (block.offsets, block.names, block.column.to_pylist()) == ([1, 3, 6], ["a", "c", "f"], cids)
    block = listing.block(2, 3)
    assert (block.start, block.stop, block.offsets, block.names) == (2, 5, [3], ["c"])
    assert listing.block(6, 2).column.to_pylist() == []  # shorter than asked: the end


def test_by_cid_and_cids_listings_give_names_and_one_template(root: Path, tree: PinTree) -> None:
    cids = sorted(cid_for(i) for i in range(30))
    add_pins(root, "s3-main", cids)
    for path in (("backends", "s3-main", "by-cid"), ("cids",)):
        listing = tree.listing(path)
        assert listing.template is not None and listing.template.is_dir
        assert isinstance(listing, NameListing) and listing.version is not None
        first, rest = listing.block(0, 20), listing.block(20, 20)
        assert first.names + rest.names == cids and first.offsets + rest.offsets == list(range(1, 31))
        assert first.column.to_pylist() == first.names and len(rest.column) == 10
        assert tree.listing(path).version == listing.version  # the same version, listed again
    assert tree.listing(("backends", "s3-main", "by-status", "pending")).template is None  # symlink sizes vary


class FakeClock:
    """The record cache's clock, moved by the test instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_resolve_cached_answers_only_what_was_resolved_lately(root: Path) -> None:
    clock = FakeClock()
    tree = PinTree(root, StoreCache(), RecordCache(clock=clock))
    add_pins(root, "s3-main", [cid_for(1)], status="stored")
    status = ("backends", "s3-main", "by-cid", cid_for(1), "status")
    assert tree.resolve_cached(status) is None  # never resolved: the caller must go to a thread
    assert tree.resolve(status).content == b"stored\n"
    assert tree.resolve_cached(status) == tree.resolve(status)
    # the other files of the CID come from the same record, without another lookup
    assert tree.resolve_cached((*status[:4], "cid")).content == f"{cid_for(1)}\n".encode()  # type: ignore[union-attr]
    assert tree.resolve_cached(status[:4]).is_dir  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        tree.resolve_cached((*status[:4], "nonsense"))  # known not to be there: answered from memory
    assert tree.resolve_cached(("backends", "s3-main", "by-cid", cid_for(2))) is None  # never looked up
    tree.forget_rendered()  # a control command ran: nothing unleased is fresh any more
    assert tree.resolve_cached(status) is None and tree.resolve_cached((*status[:4], "cid")) is None
    tree.resolve(status)
    clock.now += tree_module.FRESH_SECONDS + 0.01
    assert tree.resolve_cached(status) is None and tree.resolve_cached((*status[:4], "cid")) is None


def test_resolve_cached_keeps_a_bounded_number_of_records(root: Path) -> None:
    tree = PinTree(root, StoreCache(), RecordCache(maxsize=3))
    add_pins(root, "s3-main", [cid_for(i) for i in range(5)])
    for i in range(5):
        tree.resolve(("backends", "s3-main", "by-cid", cid_for(i)))
    assert tree.resolve_cached(("backends", "s3-main", "by-cid", cid_for(4))) is not None
    assert tree.resolve_cached(("backends", "s3-main", "by-cid", cid_for(0))) is None
    assert len(tree.records) <= 3


def test_generated_files_are_not_kept_fresh(root: Path, tree: PinTree) -> None:
    add_pins(root, "s3-main", [cid_for(1)])
    tree.resolve(("backends", "s3-main", "summary.json"))
    assert tree.resolve_cached(("backends", "s3-main", "summary.json")) is None


def test_merge_sorted_unique() -> None:
    assert list(merge_sorted_unique([iter("acd"), iter("bcd"), iter("")])) == list("abcd")


def test_summary_of_a_legacy_backend_says_legacy(root: Path, tree: PinTree) -> None:
    make_backend(root, "old", pins_json={"pins": {cid_for(1): "pinned", cid_for(2): "queued"}})
    summary = json.loads(tree.render(("backends", "old", "summary.json")))
    assert summary["source"] == "legacy" and summary["count"] == 2
    assert summary["by_status"] == {"stored": 1, "pending": 1, "failed": 0}
    assert names(tree, "backends", "old", "by-cid") == sorted([cid_for(1), cid_for(2)])


def test_corrupt_parquet_is_reported_and_other_backends_work(root: Path, tree: PinTree) -> None:
    add_pins(root, "good", [cid_for(1)])
    (make_backend(root, "bad") / "pin_mappings.parquet").write_bytes(b"not parquet at all")
    summary = json.loads(tree.render(("backends", "bad", "summary.json")))
    assert {"backend", "type", "count", "by_status", "source"} <= summary.keys()
    assert "not a readable parquet" in summary["error"]
    with pytest.raises(CorruptData):
        tree.listing(("backends", "bad", "by-cid"))
    assert names(tree, "cids") == [cid_for(1)]
    assert names(tree, "backends") == ["bad", "good"]


def test_reports_are_json_objects_naming_every_backend(tree: PinTree, root: Path) -> None:
    make_backend(root, "solo", pins_json=[cid_for("solo")])
    for name in ("health.json", "status.json", "insights.json"):
        document = json.loads(tree.render((name,)))
        assert isinstance(document, dict) and "solo" in json.dumps(document)


def _node(name: str) -> Node:
    return Node((name,), NodeKind.DIRECTORY)


def test_symlinked_parquet_is_not_served_and_the_backend_still_lists(tree: PinTree, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(b"secret")
    (make_backend(root, "linked") / "pin_mappings.parquet").symlink_to(outside)
    assert "pin_mappings.parquet" not in names(tree, "backends", "linked")
    assert "summary.json" in names(tree, "backends", "linked")
    with pytest.raises(CorruptData, match="symlink"):
        tree.resolve(("backends", "linked", "pin_mappings.parquet"))
    assert "symlink" in json.loads(tree.render(("backends", "linked", "summary.json")))["error"]


def test_by_cid_blocks_are_slices_of_the_cached_columns_and_a_rewrite_is_a_new_version(
    root: Path, tree: PinTree
) -> None:
    add_pins(root, "s3-main", [cid_for(i) for i in range(30)])
    snapshot = PinStore(get_backend(root, "s3-main"), tree.cache).snapshot()
    column = snapshot.cid_column(3, 9)
    assert column.to_pylist() == sorted(cid_for(i) for i in range(30))[3:9]
    cached = snapshot._group(snapshot.pieces[0], 0, ["cid"]).column("cid").chunk(0)
    assert column.chunk(0).buffers()[2].address == cached.buffers()[2].address  # the same bytes, not a copy
    listing = tree.listing(("backends", "s3-main", "by-cid"))
    add_pins(root, "s3-main", [cid_for(30)])
    assert tree.listing(("backends", "s3-main", "by-cid")).version != listing.version  # type: ignore[union-attr]


def test_a_listing_cursor_reads_each_block_once_and_knows_the_end(root: Path, tree: PinTree) -> None:
    add_pins(root, "s3-main", [cid_for(i) for i in range(20)])
    listing = tree.listing(("backends", "s3-main", "by-cid"))
    assert isinstance(listing, NameListing)
    cursor = ListingCursor(listing, 8)
    assert cursor.cached(0) is None and not cursor.at_end(0)
    first = cursor.fetch(3)  # the block holding position 3 starts at 0
    assert first is not None and (first.start, first.stop) == (0, 8)
    assert cursor.cached(7) is first and cursor.cached(8) is None
    last = cursor.fetch(17)
    assert last is not None and (last.start, last.stop) == (16, 20)
    assert cursor.at_end(20) and not cursor.at_end(19)  # a short block is the end of this version
    assert cursor.fetch(20) is None
    listed = [name for block in (first, cursor.fetch(8), last) if block for name in block.names]
    assert listed == sorted(cid_for(i) for i in range(20))
