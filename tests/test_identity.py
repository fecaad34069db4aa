"""One identity per CID (issue #16, item 1): a CIDv0 and its CIDv1, every multibase of a CIDv1 and
every mix of cases of base32 are one CID, in the CLI, the store, the mount's tree and migration."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import cid_for, make_backend, run_pinfs, run_pinfs_json, spelled

from pinfs.data.backends import get_backend
from pinfs.data.cids import cid_key, identity_columns, is_standard, spelling_duplicates, standard_forms
from pinfs.data.snapshots import StoreCache
from pinfs.data.store import PinStore
from pinfs.fs.tree import NodeKind, PinTree

V0 = cid_for("content", version=0)  # Qm…
V1 = standard_forms(V0)[1]  # bafybei…: the same CID as CIDv1 base32
RAW = cid_for("raw leaf")  # bafkrei…: a CIDv1 with no CIDv0


def mixed_case(cid: str) -> str:
    return cid[:6] + cid[6:12].upper() + cid[12:]


# -- the identity itself --


@pytest.mark.parametrize(
    "other", [V1, spelled(V0, "z"), spelled(V0, "B"), spelled(V0, "k"), mixed_case(V1)], ids=["v1", "z", "B", "k", "Aa"]
)
def test_every_spelling_has_the_key_of_the_cidv0(other: str) -> None:
    assert other != V0
    assert cid_key(other) == cid_key(V0) == V1


def test_different_cids_have_different_keys() -> None:
    assert cid_key(RAW) != cid_key(V0)
    assert standard_forms(RAW) == (RAW,)
    assert standard_forms(spelled(V0, "z")) == (V0, V1)


def test_standard_spellings_are_told_without_decoding() -> None:
    assert is_standard(V0) and is_standard(V1) and is_standard(RAW)
    assert not any(is_standard(text) for text in (spelled(V0, "z"), spelled(V0, "B"), mixed_case(RAW)))


def test_identity_columns_make_one_cid_one_text_and_leave_lone_spellings_alone() -> None:
    lone = pa.chunked_array([[RAW, V0]])
    assert identity_columns(lone)[0] is lone  # no bafybei… and no alias: nothing to convert
    left, right = identity_columns(pa.chunked_array([[V0, RAW]]), pa.chunked_array([[V1, mixed_case(RAW)]]))
    assert left.to_pylist() == right.to_pylist()
    assert spelling_duplicates(pa.chunked_array([[V0, RAW, V1]])) in ([(V0, V1)], [(V1, V0)])


# -- the command line --


def test_pin_add_of_another_spelling_of_a_pinned_cid_is_unchanged(root: Path) -> None:
    make_backend(root, "b1")
    run_pinfs(root, "pin", "add", V0, "--backend", "b1", check=True)
    result = run_pinfs(root, "pin", "add", V1, "--backend", "b1", check=True)
    assert result.stdout == "b1: 0 added, 0 updated, 1 unchanged; 1 pins\n"
    assert [record["cid"] for record in PinStore(get_backend(root, "b1")).snapshot().iter_records()] == [V0]


def test_two_spellings_in_one_pin_add_are_one_pin_spelled_the_first_way(root: Path) -> None:
    make_backend(root, "b1")
    base58 = spelled(RAW, "z")
    report = run_pinfs_json(root, "pin", "add", RAW, base58, "--backend", "b1")
    assert (report["added"], report["total"]) == ([RAW], 1)


def test_find_by_cidv1_finds_the_pinned_cidv0_and_shows_it_as_stored(root: Path) -> None:
    make_backend(root, "b1")
    run_pinfs(root, "pin", "add", V0, "--backend", "b1", check=True)
    result = run_pinfs(root, "find", V1, check=True)
    assert result.stdout == f"{V1}\n  b1 (unknown): pending as {V0}, at /b1/cars/{V0}.car\n"
    report = run_pinfs_json(root, "pin", "get", V1.upper())
    assert [holder["cid"] for holder in report["backends"]] == [V0]


def test_a_cid_first_written_in_another_base_keeps_that_spelling_and_is_found_by_any(root: Path) -> None:
    make_backend(root, "b1")
    base58 = spelled(RAW, "z")
    run_pinfs(root, "pin", "add", base58, "--backend", "b1", check=True)
    assert run_pinfs_json(root, "find", RAW)["backends"][0]["cid"] == base58
    assert run_pinfs_json(root, "find", mixed_case(RAW))["backends"][0]["cid"] == base58
    report = run_pinfs_json(root, "pin", "add", spelled(RAW, "B"), "--backend", "b1", "--status", "failed")
    assert (report["added"], report["updated"], report["total"]) == ([], [base58], 1)


def test_a_mixed_case_base32_cid_is_the_same_cid(root: Path) -> None:
    make_backend(root, "b1")
    run_pinfs(root, "pin", "add", RAW, "--backend", "b1", check=True)
    result = run_pinfs(root, "pin", "add", mixed_case(RAW), "--backend", "b1", check=True)
    assert result.stdout == "b1: 0 added, 0 updated, 1 unchanged; 1 pins\n"


def test_pin_rm_by_another_spelling_removes_the_pin(root: Path) -> None:
    make_backend(root, "b1")
    run_pinfs(root, "pin", "add", V0, RAW, "--backend", "b1", check=True)
    report = run_pinfs_json(root, "pin", "rm", spelled(V0, "k"), "--backend", "b1")
    assert (report["removed"], report["total"]) == ([V0], 1)
    result = run_pinfs(root, "find", V1)
    assert (result.returncode, result.stderr) == (1, f"pinfs find: error: {V1} is not pinned in any backend\n")


def test_spellings_survive_the_data_files_being_laid_out_again(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store records which of its data files hold other spellings; a split, a merge and a maintain
    rewrite the files and must carry that along."""
    monkeypatch.setenv("PINFS_FILE_ROWS", "8")
    make_backend(root, "b1")
    others = [cid_for(index) for index in range(40)]
    base58 = spelled(RAW, "z")
    run_pinfs(root, "pin", "add", *others[:20], base58, "--backend", "b1", check=True, env={"PINFS_FILE_ROWS": "8"})
    run_pinfs(root, "pin", "add", *others[20:], "--backend", "b1", check=True, env={"PINFS_FILE_ROWS": "8"})
    run_pinfs(root, "pin", "rm", *others[:30], "--backend", "b1", check=True, env={"PINFS_FILE_ROWS": "8"})
    run_pinfs(root, "maintain", check=True, env={"PINFS_FILE_ROWS": "8"})
    assert run_pinfs_json(root, "find", RAW)["backends"][0]["cid"] == base58
    files = list((root / "backends" / "b1" / "pin_mappings.delta").glob("*.parquet"))
    assert len(files) > 1


# -- the mount's tree --


def test_by_cid_and_cids_find_a_cid_by_any_spelling(root: Path) -> None:
    for name in ("b1", "b2"):
        make_backend(root, name)
    run_pinfs(root, "pin", "add", V0, "--backend", "b1", check=True)
    run_pinfs(root, "pin", "add", V1, "--backend", "b2", check=True)
    tree = PinTree(root, StoreCache())
    cid_file = tree.resolve(("backends", "b1", "by-cid", spelled(V0, "z"), "cid"))
    assert tree.open_content(cid_file).read(0, 100) == f"{V0}\n".encode()
    assert tree.resolve(("backends", "b2", "by-cid", V0)).kind is NodeKind.DIRECTORY
    holders = tree.listing(("cids", V1.upper()))
    links = {node.name: node.target for _offset, node in holders.entries(0, 10)}
    assert links == {"b1": f"../../backends/b1/by-cid/{V0}", "b2": f"../../backends/b2/by-cid/{V1}"}


# -- migration --


def test_migration_quarantines_a_second_spelling_with_its_reason(root: Path) -> None:
    make_backend(root, "b1", pins_json=[V0, RAW, V1, mixed_case(RAW)])
    report = run_pinfs_json(root, "migrate")["backends"][0]
    assert (report["added"], report["rejected"]) == (2, 2)
    rejected = json.loads((root / "backends" / "b1" / "pins.rejected.json").read_text())["rejected"]
    assert rejected == [
        {
            "entry": V1,
            "reason": f"duplicate CID: the same CID as {V0}, spelled another way",
            "location": "pins.json: entry 2",
        },
        {
            "entry": mixed_case(RAW),
            "reason": f"duplicate CID: the same CID as {RAW}, spelled another way",
            "location": "pins.json: entry 3",
        },
    ]


def test_migration_matches_pins_json_to_the_store_by_identity(root: Path) -> None:
    directory = make_backend(root, "b1")
    run_pinfs(root, "pin", "add", V0, "--backend", "b1", "--status", "stored", check=True)
    (directory / "pins.json").write_text(json.dumps([{"cid": V1, "status": "pinned"}, RAW]))
    report = run_pinfs_json(root, "migrate")["backends"][0]
    assert (report["added"], report["unchanged"], report["total"]) == (1, 1, 2)
    assert sorted(record["cid"] for record in PinStore(get_backend(root, "b1")).snapshot().iter_records()) == sorted(
        [V0, RAW]
    )


def test_verify_only_reports_two_spellings_of_one_cid_written_by_another_tool(root: Path) -> None:
    from pinfs.data import schema
    from pinfs.data.store import PinStore as Store
    from pinfs.data.tables import records_to_table

    make_backend(root, "b1")
    backend = get_backend(root, "b1")
    rows = [schema.make_record(cid, "b1", backend.type) for cid in (V0, V1)]
    with Store(backend).transaction() as txn:
        txn.write(records_to_table(rows))
    result = run_pinfs(root, "migrate", "--verify-only")
    assert result.returncode == 1
    assert f"{V0} and {V1} are one CID spelled two ways" in result.stdout
