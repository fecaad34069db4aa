"""Tests for pinfs.data.legacy: every pins.json shape, rejects, hostile input, backups, pins.rejected.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinfs.data import legacy
from pinfs.data.legacy import MAX_DEPTH, read_legacy_pins
from pinfs.data.legacy_entries import LegacyPins, Rejected
from pinfs.data.legacy_files import find_legacy_source, write_rejected
from pinfs.data.schema import REQUIRED_COLUMNS, load_metadata, record_problems
from pinfs.errors import CorruptData, NotFound

V0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
V1 = "bafyreigdmqpykrgxyaxtlafqpqhzrb7qy2rh75nldvfd4tucqmqqme5yje"
V1_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
BAD = "QmNotACid"


def write_pins(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "pins.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def read(tmp_path: Path, content: object, backend: str = "s3-main", kind: str = "s3") -> LegacyPins:
    return read_legacy_pins(write_pins(tmp_path, content), backend, kind)


def by_cid(result: LegacyPins) -> dict[str, dict[str, str]]:
    return {record["cid"]: record for record in result.records}


def assert_sound(result: LegacyPins) -> None:
    for record in result.records:
        assert tuple(record)[: len(REQUIRED_COLUMNS)] == REQUIRED_COLUMNS
        assert record_problems(record) == []


# -- shapes --


@pytest.mark.parametrize("content", [b"", b"  \n\t ", "[]", "{}"])
def test_empty_files_read_as_empty(tmp_path: Path, content: object) -> None:
    result = read(tmp_path, content)
    assert (result.shape, result.records, result.rejected) == ("empty", [], [])


def test_list_of_strings(tmp_path: Path) -> None:
    result = read(tmp_path, [V0, V1, V1_RAW])
    assert result.shape == "list-of-strings"
    assert [r["cid"] for r in result.records] == [V0, V1, V1_RAW]
    assert result.records[0]["car_file_path"] == f"/s3-bucket/cars/{V0}.car"
    assert all(r["status"] == "pending" and r["metadata"] == "{}" for r in result.records)
    assert all(r["backend_name"] == "s3-main" for r in result.records)
    assert_sound(result)


def test_list_of_objects_with_every_cid_spelling(tmp_path: Path) -> None:
    entries = [{"cid": V0}, {"hash": V1}, {"CID": V1_RAW}, {"Cid": V0}, {"Hash": V1}, {"/": V1_RAW}]
    result = read(tmp_path, entries)
    assert result.shape == "list-of-objects"
    assert [r["cid"] for r in result.records] == [V0, V1, V1_RAW]
    assert [r.reason for r in result.rejected] == ["duplicate CID"] * 3


def test_ipld_link_as_cid_value(tmp_path: Path) -> None:
    result = read(tmp_path, [{"cid": {"/": V1}, "name": "linked"}])
    assert by_cid(result)[V1]["metadata"] == '{"name":"linked"}'


def test_object_fields_are_mapped(tmp_path: Path) -> None:
    entry = {
        "cid": V0,
        "name": "photo",
        "status": "pinned",
        "created_at": "2024-01-02T03:04:05Z",
        "car_file_path": "/elsewhere/x.car",
        "extra": {"nested": [1, {"deep": True}]},
    }
    record = read(tmp_path, [entry]).records[0]
    assert record["status"] == "stored"
    assert record["created_at"] == "2024-01-02T03:04:05.000000+00:00"
    assert record["car_file_path"] == "/elsewhere/x.car"
    assert load_metadata(record["metadata"]) == {"name": "photo", "extra": {"nested": [1, {"deep": True}]}}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("pinned_at", 1700000000, "2023-11-14T22:13:20.000000+00:00"),
        ("timestamp", 1700000000123, "2023-11-14T22:13:20.123000+00:00"),
        ("added_at", "2023-11-14T22:13:20+01:00", "2023-11-14T21:13:20.000000+00:00"),
    ],
)
def test_timestamp_aliases(tmp_path: Path, key: str, value: object, expected: str) -> None:
    record = read(tmp_path, [{"cid": V0, key: value}]).records[0]
    assert record["created_at"] == expected
    assert record["metadata"] == "{}"


def test_unparsable_timestamp_stays_in_metadata_and_mtime_is_used(tmp_path: Path) -> None:
    path = write_pins(tmp_path, [{"cid": V0, "created_at": "yesterday"}])
    os.utime(path, (1700000000, 1700000000))
    record = read_legacy_pins(path, "s3-main", "s3").records[0]
    assert record["created_at"] == "2023-11-14T22:13:20.000000+00:00"
    assert load_metadata(record["metadata"]) == {"created_at": "yesterday"}


def test_out_of_range_timestamp_does_not_crash(tmp_path: Path) -> None:
    result = read(tmp_path, [{"cid": V0, "created_at": "0001-01-01T00:00:00+05:00"}])
    assert load_metadata(result.records[0]["metadata"]) == {"created_at": "0001-01-01T00:00:00+05:00"}
    assert_sound(result)


def test_empty_car_path_gets_template(tmp_path: Path) -> None:
    record = read(tmp_path, [{"cid": V0, "car_file_path": ""}], "ipfs-cluster", "ipfs_cluster").records[0]
    assert record["car_file_path"] == f"/ipfs-cluster/cars/{V0}.car"
    assert record["metadata"] == "{}"


def test_pins_object_with_list(tmp_path: Path) -> None:
    result = read(tmp_path, {"version": 2, "pins": [V0, {"hash": V1, "status": "queued"}]})
    assert result.shape == "pins-object"
    assert by_cid(result)[V1]["status"] == "pending"
    assert set(by_cid(result)) == {V0, V1}
    assert result.rejected == []


def test_pins_object_with_cid_map(tmp_path: Path) -> None:
    result = read(tmp_path, {"pins": {V0: "pinned", BAD: None}})
    assert result.shape == "pins-object"
    assert by_cid(result)[V0]["status"] == "stored"
    assert [r.location for r in result.rejected] == [f"pins.json: pins key '{BAD}'"]


def test_pins_object_with_bad_inner_value_is_rejected(tmp_path: Path) -> None:
    result = read(tmp_path, {"pins": 5})
    assert result.records == []
    assert result.rejected == [Rejected(5, "'pins' is a number, expected a list or an object", "pins.json: key 'pins'")]


def test_ipfs_pin_ls_output(tmp_path: Path) -> None:
    result = read(tmp_path, {"Keys": {V0: {"Type": "recursive"}}})
    assert result.shape == "pins-object"
    assert load_metadata(result.records[0]["metadata"]) == {"Type": "recursive"}


def test_cid_map_values(tmp_path: Path) -> None:
    content = {V0: {"status": "failed", "name": "a"}, V1: "pinning", V1_RAW: None}
    result = read(tmp_path, content, "gh", "github")
    assert result.shape == "cid-map"
    records = by_cid(result)
    assert [records[c]["status"] for c in (V0, V1, V1_RAW)] == ["failed", "pending", "pending"]
    assert records[V0]["metadata"] == '{"name":"a"}'
    assert records[V1]["car_file_path"] == f"/github-repo/cars/{V1}.car"
    assert_sound(result)


def test_cid_map_value_with_conflicting_cid_is_rejected(tmp_path: Path) -> None:
    result = read(tmp_path, {V0: {"cid": V1}, V1: {"cid": V1, "name": "same"}})
    assert [r["cid"] for r in result.records] == [V1]
    assert result.records[0]["metadata"] == '{"name":"same"}'
    assert result.rejected[0].location == f"pins.json: key '{V0}'"
    assert result.rejected[0].entry == {V0: {"cid": V1}}


def test_cid_map_bad_value_type_is_rejected(tmp_path: Path) -> None:
    result = read(tmp_path, {V0: [1, 2]})
    assert result.rejected[0].reason == "value is a list, expected an object, a status string or null"


def test_mixed_list(tmp_path: Path) -> None:
    result = read(tmp_path, [V0, {"cid": V1}, 7, None, ["x"]])
    assert result.shape == "mixed"
    assert [r["cid"] for r in result.records] == [V0, V1]
    assert [(r.entry, r.location) for r in result.rejected] == [
        (7, "pins.json: entry 2"),
        (None, "pins.json: entry 3"),
        (["x"], "pins.json: entry 4"),
    ]
    assert result.rejected[1].reason == "entry is null, expected a CID string or an object"


# -- status and metadata --


@pytest.mark.parametrize(
    ("legacy", "status"),
    [("pinned", "stored"), ("queued", "pending"), ("pinning", "pending"), ("stored", "stored"), ("failed", "failed")],
)
def test_known_statuses(tmp_path: Path, legacy: str, status: str) -> None:
    record = read(tmp_path, [{"cid": V0, "status": legacy}]).records[0]
    assert (record["status"], record["metadata"]) == (status, "{}")


@pytest.mark.parametrize("legacy", ["unpinned", "", 3, {"code": 1}])
def test_unknown_status_becomes_pending_with_legacy_status(tmp_path: Path, legacy: object) -> None:
    record = read(tmp_path, [{"cid": V0, "status": legacy}]).records[0]
    assert record["status"] == "pending"
    assert load_metadata(record["metadata"]) == {"legacy_status": legacy}


def test_own_metadata_object_and_string_are_merged(tmp_path: Path) -> None:
    entries = [
        {"cid": V0, "metadata": {"size": 10}, "name": "a"},
        {"cid": V1, "metadata": '{"size": 11}', "backend_name": "s3-main"},
        {"cid": V1_RAW, "metadata": {"name": "inner"}, "name": "outer", "backend_name": "other"},
    ]
    records = by_cid(read(tmp_path, entries))
    assert load_metadata(records[V0]["metadata"]) == {"size": 10, "name": "a"}
    assert load_metadata(records[V1]["metadata"]) == {"size": 11}
    assert load_metadata(records[V1_RAW]["metadata"]) == {
        "metadata": {"name": "inner"},
        "name": "outer",
        "backend_name": "other",
    }


# -- rejects --


@pytest.mark.parametrize(
    ("entry", "reason_start"),
    [
        (BAD, "invalid CID: "),
        ("", "invalid CID: empty CID"),
        (f" {V0}", "invalid CID: CID contains whitespace"),
        ({"cid": 42}, "'cid' is a number, expected a CID string"),
        ({"hash": BAD}, "invalid CID: "),
        ({"name": "no cid"}, "object has no 'cid' or 'hash' field"),
        (True, "entry is a boolean"),
    ],
)
def test_bad_entries_are_rejected_with_a_reason(tmp_path: Path, entry: object, reason_start: str) -> None:
    result = read(tmp_path, [V0, entry])
    assert [r["cid"] for r in result.records] == [V0]
    assert len(result.rejected) == 1
    rejected = result.rejected[0]
    assert rejected.reason.startswith(reason_start)
    assert "\n" not in rejected.reason
    assert (rejected.entry, rejected.location) == (entry, "pins.json: entry 1")


def test_duplicates_first_wins(tmp_path: Path) -> None:
    result = read(tmp_path, [{"cid": V0, "status": "pinned"}, {"hash": V0, "status": "failed"}, V0])
    assert [(r["cid"], r["status"]) for r in result.records] == [(V0, "stored")]
    assert [(r.reason, r.location) for r in result.rejected] == [
        ("duplicate CID", "pins.json: entry 1"),
        ("duplicate CID", "pins.json: entry 2"),
    ]


def test_huge_strings_are_cut_in_rejected_entry(tmp_path: Path) -> None:
    result = read(tmp_path, ["x" * 100_000, {"cid": BAD, "blob": "y" * 100_000}])
    first, second = result.rejected
    assert first.entry == "x" * 200 + "…"
    assert isinstance(second.entry, str) and len(second.entry) <= 2001
    json.dumps([first.entry, second.entry])


def test_lone_surrogate_rejects_the_entry(tmp_path: Path) -> None:
    result = read(tmp_path, '[{"cid": "' + V0 + '", "name": "\\ud800"}]')
    assert result.records == []
    assert "not valid Unicode" in result.rejected[0].reason


def test_non_standard_constants_are_kept_as_text(tmp_path: Path) -> None:
    result = read(tmp_path, '[{"cid": "' + V0 + '", "a": NaN, "b": 1e999}]')
    assert load_metadata(result.records[0]["metadata"]) == {"a": "NaN", "b": "1e999"}


# -- whole-file failures --


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe[]", "not UTF-8"),
        ("[1, 2", "not JSON"),
        ("not json", "not JSON"),
        ("42", "top-level JSON a number"),
        ('"QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"', "top-level JSON a string"),
        ("null", "top-level JSON null"),
    ],
)
def test_unusable_files_raise_corrupt_data(tmp_path: Path, content: object, message: str) -> None:
    path = write_pins(tmp_path, content)
    with pytest.raises(CorruptData, match=message) as info:
        read_legacy_pins(path, "s3-main", "s3")
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5_000, 200_000])
def test_deep_nesting_raises_corrupt_data(tmp_path: Path, depth: int) -> None:
    with pytest.raises(CorruptData, match="nested deeper"):
        read(tmp_path, "[" * depth + "]" * depth)


def test_deep_nesting_inside_an_entry(tmp_path: Path) -> None:
    deep = '{"a":' * 100 + "1" + "}" * 100
    with pytest.raises(CorruptData, match="nested deeper"):
        read(tmp_path, '[{"cid": "' + V0 + '", "x": ' + deep + "}]")


def test_nesting_at_the_limit_is_accepted(tmp_path: Path) -> None:
    inner = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)
    result = read(tmp_path, '[{"cid": "' + V0 + '", "x": ' + inner + "}]")
    assert len(result.records) == 1


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    assert read(tmp_path, b"\xef\xbb\xbf" + json.dumps([V0]).encode()).records[0]["cid"] == V0


def test_directory_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "pins.json").mkdir()
    with pytest.raises(CorruptData, match="not a regular file"):
        read_legacy_pins(tmp_path / "pins.json", "b", "s3")
    with pytest.raises(NotFound):
        read_legacy_pins(tmp_path / "absent.json", "b", "s3")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pins.json"
    os.mkfifo(fifo)
    with pytest.raises(CorruptData, match="not a regular file"):
        read_legacy_pins(fifo, "b", "s3")


def test_file_is_never_modified(tmp_path: Path) -> None:
    path = write_pins(tmp_path, [V0, BAD])
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    read_legacy_pins(path, "b", "s3")
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


# -- find_legacy_source --


def test_find_prefers_pins_json(tmp_path: Path) -> None:
    (tmp_path / "pins.json").write_text("[]")
    (tmp_path / "pins.json.backup.20990101T000000.000000Z").write_text("[]")
    assert find_legacy_source(tmp_path) == tmp_path / "pins.json"


def test_find_picks_newest_backup(tmp_path: Path) -> None:
    names = [
        "pins.json.backup.20261124T190923.123456Z",
        "pins.json.backup.20261124T190923.999999Z",
        "pins.json.backup.20250101T000000.000000Z",
        "pins.json.backup.20261124_120000",  # ipfs_kit_py's own stamp, older on the same day
        ".pins.json.backup.20991231T000000.000000Z.pinfs-tmp.1.ab",
    ]
    for name in names:
        (tmp_path / name).write_text("[]")
    assert find_legacy_source(tmp_path) == tmp_path / names[1]


def test_find_nothing(tmp_path: Path) -> None:
    (tmp_path / "pin_mappings.parquet").write_bytes(b"")
    assert find_legacy_source(tmp_path) is None


# -- write_rejected --


def test_write_rejected(tmp_path: Path) -> None:
    source = write_pins(tmp_path, [V0, BAD, {"cid": V0}])
    result = read_legacy_pins(source, "b", "s3")
    target = write_rejected(tmp_path, result.rejected, source)
    assert target == tmp_path / "pins.rejected.json"
    document = json.loads(target.read_text(encoding="utf-8"))
    assert set(document) == {"source", "written_at", "count", "rejected"}
    assert document["source"] == str(source)
    assert document["count"] == 2
    assert document["rejected"][0]["entry"] == BAD
    assert document["rejected"][1] == {
        "entry": {"cid": V0},
        "reason": "duplicate CID",
        "location": "pins.json: entry 2",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pins.json", "pins.rejected.json"]


def test_write_rejected_nothing_to_write(tmp_path: Path) -> None:
    assert write_rejected(tmp_path, [], tmp_path / "pins.json") is None
    assert list(tmp_path.iterdir()) == []


def test_write_rejected_with_surrogates(tmp_path: Path) -> None:
    target = write_rejected(tmp_path, [Rejected("\ud800", "bad", "pins.json: entry 0")], tmp_path / "pins.json")
    assert target is not None
    assert json.loads(target.read_bytes())["rejected"][0]["entry"] == "\ud800"


# -- property: any JSON either reads soundly or raises CorruptData --

_cid_like = st.sampled_from([V0, V1, V1_RAW, BAD, "", "pinned", "pins", "Keys", "cid"])
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20) | _cid_like
_json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8) | _cid_like, children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_json_values)
def test_any_json_reads_or_raises_corrupt_data(tmp_path: Path, value: object) -> None:
    path = write_pins(tmp_path, json.dumps(value))
    try:
        result = read_legacy_pins(path, "prop", "s3")
    except CorruptData:
        return
    assert_sound(result)
    assert len({r["cid"] for r in result.records}) == len(result.records)
    json.dumps([vars(r) for r in result.rejected], allow_nan=False)


def test_oversized_file_raises_corrupt_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(legacy, "MAX_FILE_BYTES", 100)
    with pytest.raises(CorruptData, match="more than the 100"):
        read(tmp_path, [V0] * 10)
