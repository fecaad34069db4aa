"""Hostile input (docs/reliability.md "Quarantine" and "Isolation"): legacy pins.json of every shape,
broken parquet files, mutated CARs, bad backend names and symlinks pointing outside the data root.

Whatever the input: only PinfsError subclasses (CorruptData, InvalidInput, NotFound) come out, never a
traceback; a valid pin is never dropped silently; nothing outside the root is read or written; one bad
backend never stops the others.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cid_for, make_backend, run_pinfs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinfs.data.backends import discover_backends, get_backend, validate_backend_name
from pinfs.data.car import decode_pin_mappings_car, encode_pin_mappings_car
from pinfs.data.schema import make_record
from pinfs.data.store import PinStore
from pinfs.errors import CorruptData, InvalidInput, PinfsError
from pinfs.ops.migrate import MigrateOptions, migrate
from pinfs.ops.pins import PinRequest, add_pins, parse_pin_lines, parse_unpin_lines

VALID = [cid_for(n) for n in range(6)] + [cid_for("v0", version=0)]
INVALID = ["", "Qm", "not-a-cid", "bafy" + "a" * 300, " " + VALID[0], "\x00", "b" * 70, "💥"]


def _fresh_root() -> tuple[tempfile.TemporaryDirectory[str], Path]:
    holder = tempfile.TemporaryDirectory()
    root = Path(holder.name) / "root"
    (root / "backends").mkdir(parents=True)
    return holder, root


def _parquet_cids(path: Path) -> list[str]:
    return pq.read_table(path, columns=["cid"]).column("cid").to_pylist()


# -- pins.json through migration --

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars | st.sampled_from(VALID + INVALID),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
cid_values = st.sampled_from(VALID + INVALID) | st.integers() | st.none() | st.just({"/": VALID[1]})
entries = st.one_of(
    st.sampled_from(VALID + INVALID),
    st.none(),
    st.integers(),
    json_values,
    st.fixed_dictionaries(
        {"cid": cid_values},
        optional={
            "status": json_values,
            "created_at": json_values,
            "metadata": json_values,
            "name": st.text(max_size=2000),
            "car_file_path": json_values,
            "\udc80": st.just(1),
        },
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(entries, max_size=12), wrap=st.sampled_from(["list", "pins", "map"]))
def test_migration_of_any_entries_never_raises_and_never_drops_a_valid_pin(items: list[Any], wrap: str) -> None:
    holder, root = _fresh_root()
    with holder:
        directory = make_backend(root, "b1")
        if wrap == "map":
            document: Any = {f"k{i}" if not isinstance(item, str) else item: item for i, item in enumerate(items)}
        else:
            document = items if wrap == "list" else {"pins": items}
        raw = json.dumps(document, ensure_ascii=True).encode()
        (directory / "pins.json").write_bytes(raw)
        report = migrate(root, MigrateOptions(verbose=True))  # must not raise at all
        (entry,) = report["backends"]
        assert entry["ok"], entry
        assert (directory / "pins.json").read_bytes() == raw  # never modified
        stored = set(_parquet_cids(directory / "pin_mappings.parquet"))
        rejected = entry["rejected_entries"]
        assert all(item["reason"] and item["location"].startswith("pins.json: ") for item in rejected)
        assert entry["found"] == entry["added"] + entry["rejected"]
        if wrap != "map":
            # every list entry is a record or rejected at its own index, with a reason
            rejected_at = {item["location"].rsplit(" ", 1)[-1] for item in rejected}
            for index, item in enumerate(items):
                cid = item if isinstance(item, str) else item.get("cid") if isinstance(item, dict) else None
                if isinstance(cid, dict):
                    cid = cid.get("/")
                assert (cid in stored) or str(index) in rejected_at, (index, item)
        else:  # every key of a cid-map is a record or rejected under its own key
            for key in document:
                shown = repr(key)[1:-1][:150]  # locations show the key cut to 200 characters
                assert key in stored or any(shown in item["location"] for item in rejected), key
        if rejected:
            quarantined = json.loads((directory / "pins.rejected.json").read_text())
            assert quarantined["count"] == len(rejected)
        assert migrate(root, MigrateOptions(verify_only=True))["ok"]


@settings(max_examples=80, deadline=None)
@given(document=json_values)
def test_migration_of_any_json_document_is_a_report_not_an_exception(document: Any) -> None:
    holder, root = _fresh_root()
    with holder:
        directory = make_backend(root, "b1")
        (directory / "pins.json").write_text(json.dumps(document))
        (entry,) = migrate(root, MigrateOptions())["backends"]
        assert entry["ok"] or ("pins.json" in entry["error"] and "\n" not in entry["error"])


@pytest.mark.parametrize(
    "content",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 5000 + "1" + "}" * 5000,
        '["' + "x" * 3_000_000 + '"]',
        "\xff\xfe garbage",
        "null",
        '"just a string"',
        json.dumps({VALID[0]: {"cid": VALID[1]}}),
        json.dumps([VALID[0], VALID[0], {"cid": VALID[0]}, {"hash": VALID[0]}]),
    ],
)
def test_hand_made_hostile_pins_json_fails_one_backend_only(root: Path, content: str) -> None:
    make_backend(root, "bad").joinpath("pins.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    make_backend(root, "good", pins_json=[VALID[2]])
    report = migrate(root, MigrateOptions(verbose=True))
    by_name = {entry["backend"]: entry for entry in report["backends"]}
    assert by_name["good"]["ok"] and by_name["good"]["added"] == 1
    bad = by_name["bad"]
    if not bad["ok"]:
        assert "pins.json" in bad["error"] and "\n" not in bad["error"]
    else:  # readable: duplicates quarantined, the first occurrence kept
        assert bad["added"] + bad["rejected"] == bad["found"]


# -- broken parquet files --


def _good_table(names: list[str]) -> pa.Table:
    rows = [make_record(cid, "b", "unknown", status="stored") for cid in sorted(names)]
    return pa.Table.from_pylist(rows).cast(pa.schema([pa.field(k, pa.string()) for k in rows[0]]))


def _write_case(directory: Path, case: str) -> None:
    target = directory / "pin_mappings.parquet"
    table = _good_table(VALID[:4])
    if case == "truncated":
        pq.write_table(table, target)
        target.write_bytes(target.read_bytes()[:-100])
    elif case == "empty":
        target.write_bytes(b"")
    elif case == "garbage":
        target.write_bytes(b"PAR1" + os.urandom(200) + b"PAR1")
    elif case == "missing-column":
        pq.write_table(table.drop_columns(["status"]), target)
    elif case == "wrong-type":
        pq.write_table(table.set_column(4, "status", pa.array([1, 2, 3, 4])), target)
    elif case == "nulls":
        pq.write_table(table.set_column(0, "cid", pa.array([VALID[0], None, VALID[2], VALID[3]])), target)
    elif case == "duplicates":
        pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), target)
    elif case == "bad-values":
        pq.write_table(table.set_column(4, "status", pa.array(["stored", "weird", "stored", "stored"])), target)
    else:
        raise AssertionError(case)


CORRUPT_CASES = ["truncated", "empty", "garbage", "missing-column", "wrong-type", "nulls", "duplicates"]


@pytest.mark.parametrize("case", CORRUPT_CASES)
def test_broken_parquet_is_corrupt_data_naming_the_file(root: Path, case: str) -> None:
    directory = make_backend(root, "b")
    _write_case(directory, case)
    store = PinStore(get_backend(root, "b"))
    with pytest.raises(CorruptData) as caught:
        snapshot = store.snapshot()
        snapshot.count_by_status()
        list(snapshot.iter_records())
    assert str(directory / "pin_mappings.parquet") in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(CorruptData):  # writers refuse to build on it too (nothing is overwritten)
        add_pins(root, "b", [PinRequest(VALID[5])])


def test_unsorted_parquet_and_extra_columns_are_served_sorted(root: Path) -> None:
    directory = make_backend(root, "b")
    table = _good_table(VALID[:4])
    table = table.take([3, 1, 0, 2]).append_column("extra_int", pa.array([1, 2, 3, 4]))
    pq.write_table(table, directory / "pin_mappings.parquet")
    snapshot = PinStore(get_backend(root, "b")).snapshot()
    assert list(snapshot.iter_cids()) == sorted(VALID[:4])
    assert snapshot.lookup(VALID[2])["cid"] == VALID[2]


def test_verify_only_lists_one_line_per_problem_and_exits_1(root: Path) -> None:
    for case in [*CORRUPT_CASES, "bad-values"]:
        _write_case(make_backend(root, case), case)
    unsorted = make_backend(root, "unsorted")
    pq.write_table(_good_table(VALID[:4]).take([2, 0, 1, 3]), unsorted / "pin_mappings.parquet")
    make_backend(root, "good")
    add_pins(root, "good", [PinRequest(VALID[6], "stored")])
    result = run_pinfs(root, "migrate", "--verify-only")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stdout.splitlines()
    assert "good: ok (1 pins, parquet and CAR agree)" in lines
    for name in [*CORRUPT_CASES, "bad-values", "unsorted"]:
        head = next(i for i, line in enumerate(lines) if line.startswith(f"{name}: "))
        assert "problem(s)" in lines[head], lines[head]
        problems = [line for line in lines[head + 1 :] if line.startswith("  - ")]
        assert problems and all(str(root) in line for line in problems[:1])
    assert any("unsorted/pin_mappings.parquet: rows are not sorted by cid" in line for line in lines)
    assert any("bad-values/pin_mappings.parquet: row 1: status 'weird'" in line for line in lines)
    status = run_pinfs(root, "status", "--json")  # the good backend is still reported
    assert "Traceback" not in status.stderr
    good = next(entry for entry in json.loads(status.stdout)["backends"] if entry["backend"] == "good")
    assert good["count"] == 1


# -- mutated CARs --

RECORDS = [make_record(cid, "b", "s3", status="stored", metadata={"n": i}) for i, cid in enumerate(VALID)]
VALID_CAR = encode_pin_mappings_car(sorted(RECORDS, key=lambda r: r["cid"]), "b", "2026-01-01T00:00:00+00:00", 3)
EXPECTED = decode_pin_mappings_car(VALID_CAR).records


def _decode_bounded(data: bytes) -> None:
    started = time.monotonic()
    try:
        car = decode_pin_mappings_car(data, "mutant.car")
    except CorruptData as exc:
        assert "\n" not in str(exc) and str(exc).startswith("mutant.car: ")
    else:
        assert car.records == EXPECTED
    assert time.monotonic() - started < 10  # a hang guard: a mutant decodes or fails in milliseconds


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete", "truncate", "huge-varint"]),
        st.integers(0, len(VALID_CAR) - 1),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(changes=mutations)
def test_any_mutation_of_a_car_decodes_correctly_or_is_corrupt_data(changes: list[tuple[str, int, int]]) -> None:
    data = bytearray(VALID_CAR)
    for kind, position, value in changes:
        position %= max(len(data), 1)
        if not data and kind in ("flip", "set", "delete", "truncate"):
            continue
        if kind == "flip":
            data[position] ^= 1 << (value % 8)
        elif kind == "set":
            data[position : position + 1] = bytes([value])
        elif kind == "insert":
            data[position:position] = bytes([value])
        elif kind == "delete":
            del data[position : position + 1 + value % 8]
        elif kind == "truncate":
            del data[position:]
        else:
            data[position:position] = b"\xff" * 8 + b"\x7f"
    _decode_bounded(bytes(data))


def test_huge_declared_lengths_fail_fast_with_bounded_memory() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    header_end = VALID_CAR[0] + 1
    cases = [
        b"\xff\xff\xff\xff\x0f" + VALID_CAR[1:],  # header claims 4 GiB
        VALID_CAR[:header_end] + b"\xff\xff\xff\xff\xff\xff\xff\x7f" + VALID_CAR[header_end + 1 :],  # a section
        VALID_CAR + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # an 11-byte varint
        VALID_CAR[:header_end] + b"\x80\x00",  # non-minimal varint
    ]
    for data in cases:
        with pytest.raises(CorruptData):
            decode_pin_mappings_car(data, "huge.car")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: < 64 MiB more


def test_cbor_inside_a_block_claiming_a_huge_array_is_corrupt_data() -> None:
    import hashlib

    from pinfs.data.carv1 import DAG_CBOR_SHA256_PREFIX, car_parts  # forging needs the codec's own pieces

    block = b"\x9b" + (1 << 40).to_bytes(8, "big")  # an array of 2^40 items, correctly hashed
    cid = DAG_CBOR_SHA256_PREFIX + hashlib.sha256(block).digest()
    with pytest.raises(CorruptData, match="not DAG-CBOR"):
        decode_pin_mappings_car(b"".join(car_parts([cid], [(cid, block)])), "forged.car")


def test_an_entry_linking_back_to_the_root_is_a_cycle() -> None:
    import hashlib

    import libipld

    from pinfs.data.carv1 import DAG_CBOR_SHA256_PREFIX, car_parts

    # A root listing itself cannot be built (its CID hashes its own bytes), so link to a block that
    # claims to be the root: the decoder must refuse the loop, not follow it.
    entry = libipld.encode_dag_cbor([])
    entry_cid = DAG_CBOR_SHA256_PREFIX + hashlib.sha256(entry).digest()
    root = {
        "format": "pin_mappings_car",
        "version": "2.0",
        "backend_name": "b",
        "created_at": "x",
        "count": 0,
        "entries": [entry_cid, entry_cid],
    }
    root_block = libipld.encode_dag_cbor(root)
    root_cid = DAG_CBOR_SHA256_PREFIX + hashlib.sha256(root_block).digest()
    data = b"".join(car_parts([root_cid], [(root_cid, root_block), (entry_cid, entry)]))
    assert decode_pin_mappings_car(data).records == []  # a repeated empty chunk is harmless
    looped = {**root, "entries": [root_cid]}  # now pointing at a *different* root: missing block / cycle
    block = libipld.encode_dag_cbor(looped)
    cid = DAG_CBOR_SHA256_PREFIX + hashlib.sha256(block).digest()
    with pytest.raises(CorruptData):
        decode_pin_mappings_car(b"".join(car_parts([cid], [(cid, block), (root_cid, root_block)])))


def test_broken_car_on_disk_is_reported_by_verify_only(root: Path) -> None:
    make_backend(root, "b")
    add_pins(root, "b", [PinRequest(VALID[0], "stored")])
    car = root / "backends/b/pin_mappings.car"
    car.write_bytes(car.read_bytes()[:-7])
    result = run_pinfs(root, "migrate", "--verify-only")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"  - {car}: " in result.stdout


# -- backend names, config paths and symlinks --


@pytest.mark.parametrize("name", ["..", "../etc", "a/b", "/abs", "Üni", "a" * 65, "-x", ".hidden", "a\nb", "a b"])
def test_bad_backend_names_are_usage_errors_in_one_line(root: Path, name: str) -> None:
    make_backend(root, "good")
    for args in (
        ["pin", "add", VALID[0], f"--backend={name}"],
        ["migrate", f"--backend-filter={name}"],
        ["sync", f"--backend={name}"],
        ["pin", "ls", f"--backend={name}"],
    ):
        result = run_pinfs(root, *args)
        if args[0] == "migrate" and name == "-x":  # a filter may be part of a name (s3-x): it matches none
            assert (result.returncode, result.stderr) == (
                2,  # an unknown backend is bad input (issue #16)
                "pinfs migrate: error: no backend matches '-x' (backends: good)\n",
            )
            continue
        assert result.returncode == 2, (args, result.stderr)
        assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
        assert "invalid backend name" in result.stderr and "Traceback" not in result.stderr
    assert not (root / "etc").exists() and not (root.parent / "x").exists()


def test_nul_in_a_backend_name_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        validate_backend_name("good\x00../../etc")


CANARY_ATIME = 1_000_000


def _canary(outside: Path) -> dict[str, bytes]:
    """Files outside the root whose atime (< mtime, so relatime would update it on a read) and content
    prove that nothing read or wrote them."""
    outside.mkdir(parents=True, exist_ok=True)
    contents = {"pins.json": json.dumps([VALID[4]]).encode(), "canary.yaml": b"type: filesystem\nstorage_path: /tmp\n"}
    for name, data in contents.items():
        (outside / name).write_bytes(data)
        os.utime(outside / name, (CANARY_ATIME, time.time()))
    return contents


def _untouched(outside: Path, contents: dict[str, bytes]) -> None:
    assert sorted(p.name for p in outside.iterdir()) == sorted(contents)
    for name, data in contents.items():
        assert os.stat(outside / name).st_atime == CANARY_ATIME, f"{name} outside the root was read"
        assert (outside / name).read_bytes() == data


def test_symlinked_parquet_and_car_are_refused_not_read(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    contents = _canary(outside)
    linked = make_backend(root, "linked-files", config={"type": "filesystem", "storage_path": str(tmp_path / "st")})
    (linked / "pin_mappings.parquet").symlink_to(outside / "pins.json")
    (linked / "pin_mappings.car").symlink_to(outside / "canary.yaml")
    make_backend(root, "good", pins_json=[VALID[0]])
    run_pinfs(root, "migrate", "--backend-filter", "good", check=True)

    with pytest.raises(CorruptData, match="symlink"):
        PinStore(get_backend(root, "linked-files")).snapshot()
    verify = run_pinfs(root, "migrate", "--verify-only")
    assert verify.returncode == 1 and "pin_mappings.parquet: is a symlink; refusing to follow it" in verify.stdout
    for command in (
        ["sync", "--backend", "linked-files"],
        ["status", "--json"],
        ["car", "show", str(linked / "pin_mappings.car")],
    ):
        other = run_pinfs(root, *command)
        assert "Traceback" not in other.stderr, command
    copied = tmp_path / "st" / "pin_mappings" / "linked-files"
    assert not copied.exists() or not any(copied.iterdir())  # the backup refused the links
    assert (tmp_path / "st" / "pin_mappings" / "good" / "pin_mappings.car").is_file()  # the others were copied
    _untouched(outside, contents)


def test_symlinks_pointing_outside_the_root_are_reported_never_followed(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    contents = _canary(outside)
    backends = root / "backends"
    (backends / "linked-dir").symlink_to(outside, target_is_directory=True)
    make_backend(root, "linked-json").joinpath("pins.json").symlink_to(outside / "pins.json")
    (backends / "linked-config.yaml").symlink_to(outside / "canary.yaml")
    (root / "backend_configs").mkdir()
    (root / "backend_configs" / "linked-config2.yaml").symlink_to(outside / "canary.yaml")
    (backends / "Bad..Name").mkdir()
    make_backend(root, "good", pins_json=[VALID[0]])

    result = run_pinfs(root, "migrate")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"linked-json: error: {backends}/linked-json/pins.json: is a symlink; refusing to follow it" in (
        result.stdout
    )
    assert f"warning: {backends}/linked-dir: backend directory is a symlink; ignored" in result.stdout
    assert "config is a symlink pointing outside the data root" in result.stdout
    assert f"warning: {backends}/Bad..Name: invalid backend name" in result.stdout
    assert "good: 1 added" in result.stdout
    assert not list((backends / "linked-json").glob("pins.json.backup.*"))  # nothing copied in

    for args in (["pin", "add", VALID[1], "--backend", "linked-dir"], ["pin", "ls", "--backend", "linked-dir"]):
        refused = run_pinfs(root, *args)
        assert refused.returncode in (1, 2) and "symlink" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr

    status = run_pinfs(root, "status", "--json")
    assert "Traceback" not in status.stderr
    report = json.loads(status.stdout)
    names = {entry["backend"]: entry for entry in report["backends"]}
    assert names["good"]["count"] == 1 and "linked-dir" not in names
    for command in (["health", "--json"], ["insights", "--json"], ["sync"], ["verify"], ["pin", "ls"]):
        other = run_pinfs(root, *command)
        assert "Traceback" not in other.stderr, command
    # the mount's and the reports' legacy view refuse the symlinked pins.json too
    with pytest.raises(CorruptData, match="symlink"):
        PinStore(get_backend(root, "linked-json")).snapshot()
    assert {b.name for b in discover_backends(root)[0]} >= {"good", "linked-json", "linked-config"}
    _untouched(outside, contents)


# -- control-file lines, parse level --


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(max_size=300)
    | st.lists(
        st.sampled_from(
            [
                *VALID,
                *INVALID,
                "status=stored",
                "status=bogus",
                "meta.k=v",
                "meta.=x",
                "meta.k",
                "=",
                "\n",
                " ",
                "\t",
                "x" * 5000,
            ]
        ),
        max_size=8,
    ).map(" ".join)
)
def test_control_line_parsers_give_a_result_or_invalid_input(text: str) -> None:
    for parse in (parse_pin_lines, parse_unpin_lines):
        try:
            result = parse(text)
        except InvalidInput as exc:
            assert str(exc) and "\n" not in str(exc)
        except PinfsError as exc:  # pragma: no cover - reported with its type
            raise AssertionError(f"{parse.__name__} raised {type(exc).__name__}: {exc}") from None
        else:
            assert isinstance(result, list)


def test_symlinked_backends_folder_is_reported_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "ipfs_kit"
    outside = tmp_path / "outside"
    contents = _canary(outside)
    (outside / "stolen").mkdir()
    root.mkdir()
    (root / "backends").symlink_to(outside, target_is_directory=True)
    (root / "backend_configs").symlink_to(outside, target_is_directory=True)
    result = run_pinfs(root, "migrate", "--json")
    report = json.loads(result.stdout)
    assert report["backends"] == []
    assert {problem["reason"] for problem in report["problems"]} == {"is a symlink; refusing to follow it"}
    refused = run_pinfs(root, "pin", "ls", "--backend", "stolen")
    assert refused.returncode != 0 and "symlink" in refused.stderr and "Traceback" not in refused.stderr
    (outside / "stolen").rmdir()
    _untouched(outside, contents)
