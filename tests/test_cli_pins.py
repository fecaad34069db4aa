"""``pinfs pin add|rm|ls|get``, ``pinfs find``, ``pinfs car show|regenerate`` and the CLI basics
(CONTRACT §3), through the real command line where the CLI is what is tested."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import break_store, cid_for, file_digests, make_backend, run_pinfs, run_pinfs_json

from pinfs.cli import build_parser, main
from pinfs.data.backends import get_backend
from pinfs.data.car import FORMAT
from pinfs.data.store import PinStore
from pinfs.ops.pins import PinRequest, add_pins, find_cid

CIDS = [cid_for(i) for i in range(4)]


def _rows(root: Path, name: str = "b1") -> dict[str, dict[str, str]]:
    table = pq.read_table(root / "backends" / name / "pin_mappings.parquet")
    return {row["cid"]: row for row in table.to_pylist()}


def _assert_one_line_error(result, code: int) -> None:
    assert result.returncode == code
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


# -- basics --


def test_pinfs_help_exits_0(root: Path) -> None:
    result = run_pinfs(root, "--help")
    assert result.returncode == 0 and "migrate" in result.stdout


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


@pytest.mark.parametrize("command", _command_paths(build_parser()), ids=" ".join)
def test_subcommand_help_exits_0(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*command, "--help"])
    assert caught.value.code == 0
    assert "usage: pinfs " + " ".join(command) in capsys.readouterr().out


def test_contract_commands_are_registered() -> None:
    names = {path for path in _command_paths(build_parser())}
    expected = {("migrate",), ("pin", "add"), ("pin", "rm"), ("pin", "ls"), ("pin", "get"), ("find",), ("car", "show")}
    assert expected <= names


# -- pin add --


def test_pin_add_many_cids_with_status_and_meta(root: Path) -> None:
    make_backend(root, "b1")
    report = run_pinfs_json(root, "pin", "add", *CIDS, "--backend", "b1", "--status", "stored", "--meta", "k=v")
    assert (sorted(report["added"]), report["updated"], report["total"]) == (sorted(CIDS), [], 4)
    rows = _rows(root)
    assert sorted(rows) == sorted(CIDS)
    assert {row["status"] for row in rows.values()} == {"stored"}
    assert {row["metadata"] for row in rows.values()} == {'{"k":"v"}'}
    assert rows[CIDS[0]]["car_file_path"] == f"/b1/cars/{CIDS[0]}.car"


def test_pin_add_many_cids_is_one_commit(root: Path) -> None:
    make_backend(root, "b1")
    add_pins(root, "b1", [PinRequest(cid) for cid in CIDS])
    store = PinStore(get_backend(root, "b1"))
    assert store.table_state().version == 0  # the table was created holding the batch: one commit
    add_pins(root, "b1", [PinRequest(cid_for(f"more{i}")) for i in range(5)])
    assert store.table_state().version == 1


def test_pin_add_existing_cid_keeps_created_at(root: Path) -> None:
    make_backend(root, "b1")
    add_pins(root, "b1", [PinRequest(CIDS[0], metadata={"a": "1"})])
    created = _rows(root)[CIDS[0]]["created_at"]
    report = run_pinfs_json(root, "pin", "add", CIDS[0], "--backend", "b1", "--status", "failed", "--meta", "b=2")
    assert (report["added"], report["updated"]) == ([], [CIDS[0]])
    row = _rows(root)[CIDS[0]]
    assert (row["created_at"], row["status"]) == (created, "failed")
    assert json.loads(row["metadata"]) == {"a": "1", "b": "2"}
    assert row["updated_at"] >= created


def test_pin_add_writes_the_car(root: Path) -> None:
    make_backend(root, "b1")
    run_pinfs(root, "pin", "add", CIDS[0], "--backend", "b1", check=True)
    shown = run_pinfs_json(root, "car", "show", str(root / "backends/b1/pin_mappings.car"))
    assert [pin["cid"] for pin in shown["pin_mappings"]] == [CIDS[0]]


def test_pin_add_to_legacy_only_backend_is_refused(root: Path) -> None:
    make_backend(root, "old", pins_json=CIDS[:2])
    before = file_digests(root)
    result = run_pinfs(root, "pin", "add", CIDS[3], "--backend", "old")
    assert result.returncode != 0
    assert "migrate" in result.stderr and "Traceback" not in result.stderr
    assert not (root / "backends/old/pin_mappings.parquet").exists()
    assert {k: v for k, v in file_digests(root).items() if not k.endswith(".pinfs.lock")} == before


def test_pin_add_to_config_only_backend_creates_its_directory(root: Path) -> None:
    (root / "backends" / "s3-cfg.yaml").write_text("type: s3\nbucket: x\n")
    report = add_pins(root, "s3-cfg", [PinRequest(CIDS[0])])
    assert report["added"] == [CIDS[0]]
    assert _rows(root, "s3-cfg")[CIDS[0]]["car_file_path"] == f"/s3-bucket/cars/{CIDS[0]}.car"


def test_pin_add_invalid_cid_exits_2_with_one_line(root: Path) -> None:
    make_backend(root, "b1")
    result = run_pinfs(root, "pin", "add", CIDS[0], "not-a-cid", "--backend", "b1")
    _assert_one_line_error(result, 2)
    assert "not-a-cid" in result.stderr
    assert not (root / "backends/b1/pin_mappings.parquet").exists()


def test_pin_add_bad_meta_exits_2(root: Path) -> None:
    make_backend(root, "b1")
    _assert_one_line_error(run_pinfs(root, "pin", "add", CIDS[0], "--backend", "b1", "--meta", "novalue"), 2)


def test_pin_add_unknown_backend_exits_2(root: Path) -> None:
    _assert_one_line_error(run_pinfs(root, "pin", "add", CIDS[0], "--backend", "nope"), 2)  # bad input: issue #16


# -- pin rm --


def test_pin_rm_removes(root: Path) -> None:
    make_backend(root, "b1")
    add_pins(root, "b1", [PinRequest(cid) for cid in CIDS])
    report = run_pinfs_json(root, "pin", "rm", CIDS[0], CIDS[2], "--backend", "b1")
    assert (report["removed"], report["total"]) == ([CIDS[0], CIDS[2]], 2)
    assert sorted(_rows(root)) == sorted([CIDS[1], CIDS[3]])


def test_pin_rm_absent_cid_exits_1_and_removes_nothing(root: Path) -> None:
    make_backend(root, "b1")
    add_pins(root, "b1", [PinRequest(cid) for cid in CIDS[:2]])
    before = file_digests(root)
    result = run_pinfs(root, "pin", "rm", CIDS[0], CIDS[3], "--backend", "b1")
    _assert_one_line_error(result, 1)
    assert CIDS[3] in result.stderr
    assert file_digests(root) == before


def test_pin_rm_invalid_cid_exits_2(root: Path) -> None:
    make_backend(root, "b1")
    _assert_one_line_error(run_pinfs(root, "pin", "rm", "Qm123", "--backend", "b1"), 2)


# -- pin ls --


@pytest.fixture
def two_backends(root: Path) -> Path:
    make_backend(root, "b1")
    make_backend(root, "s3-b", config={"type": "s3"})
    add_pins(root, "b1", [PinRequest(CIDS[0], "stored"), PinRequest(CIDS[1], "failed")])
    add_pins(root, "s3-b", [PinRequest(CIDS[1], "stored"), PinRequest(CIDS[2])])
    return root


def test_pin_ls_text_lists_every_pin(two_backends: Path) -> None:
    result = run_pinfs(two_backends, "pin", "ls", check=True)
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert sorted((line[0], line[1], line[2]) for line in lines) == sorted(
        [
            (CIDS[0], "stored", "b1"),
            (CIDS[1], "failed", "b1"),
            (CIDS[1], "stored", "s3-b"),
            (CIDS[2], "pending", "s3-b"),
        ]
    )


def test_pin_ls_json_lines_filtered_by_backend_and_status(two_backends: Path) -> None:
    result = run_pinfs(two_backends, "pin", "ls", "--backend", "s3-b", "--status", "stored", "--json", check=True)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["cid"], r["backend_name"], r["status"]) for r in records] == [(CIDS[1], "s3-b", "stored")]
    assert records[0]["metadata"] == {} and records[0]["car_file_path"] == f"/s3-bucket/cars/{CIDS[1]}.car"


def test_pin_ls_filtered_by_status_across_backends(two_backends: Path) -> None:
    result = run_pinfs(two_backends, "pin", "ls", "--status", "stored", check=True)
    assert sorted(line.split("\t")[0] for line in result.stdout.splitlines()) == sorted([CIDS[0], CIDS[1]])


def test_pin_ls_bad_status_exits_2(two_backends: Path) -> None:
    assert run_pinfs(two_backends, "pin", "ls", "--status", "pinned").returncode == 2


# -- pin get and find --


def test_pin_get_shows_the_record(two_backends: Path) -> None:
    report = run_pinfs_json(two_backends, "pin", "get", CIDS[0])
    assert [(h["backend"], h["status"]) for h in report["backends"]] == [("b1", "stored")]


def test_pin_get_limited_to_one_backend(two_backends: Path) -> None:
    report = run_pinfs_json(two_backends, "pin", "get", CIDS[1], "--backend", "s3-b")
    assert [(h["backend"], h["type"]) for h in report["backends"]] == [("s3-b", "s3")]


def test_find_lists_every_backend_holding_the_cid(two_backends: Path) -> None:
    result = run_pinfs(two_backends, "find", CIDS[1], check=True)
    assert "b1" in result.stdout and "s3-b" in result.stdout and "failed" in result.stdout


def test_find_absent_cid_exits_1(two_backends: Path) -> None:
    _assert_one_line_error(run_pinfs(two_backends, "find", CIDS[3]), 1)


def test_find_invalid_cid_exits_2(two_backends: Path) -> None:
    _assert_one_line_error(run_pinfs(two_backends, "find", "hello"), 2)


def test_find_reports_an_unreadable_backend_and_goes_on(two_backends: Path) -> None:
    break_store(two_backends / "backends/b1")
    report = find_cid(two_backends, CIDS[1])
    assert [h["backend"] for h in report["backends"]] == ["s3-b"]
    assert report["errors"][0]["backend"] == "b1"


# -- car --


def test_car_show_reads_carv1(two_backends: Path) -> None:
    document = run_pinfs_json(two_backends, "car", "show", str(two_backends / "backends/b1/pin_mappings.car"))
    assert document["format"] == FORMAT and document["backend_name"] == "b1"
    assert sorted(pin["cid"] for pin in document["pin_mappings"]) == sorted(CIDS[:2])


def test_car_show_reads_legacy_json(root: Path) -> None:
    pin = {
        "cid": CIDS[0],
        "car_file_path": "/x.car",
        "backend_name": "old",
        "created_at": "2026-01-01T00:00:00+00:00",
        "status": "stored",
        "metadata": "{}",
    }
    path = root / "legacy.car"
    path.write_text(json.dumps({"format": FORMAT, "version": "1.0", "pin_mappings": [pin]}))
    document = run_pinfs_json(root, "car", "show", str(path))
    assert document["format"] == FORMAT and document["pin_mappings"][0]["cid"] == CIDS[0]
    assert document["pin_mappings"][0]["status"] == "stored"


def test_car_show_missing_file_exits_1(root: Path) -> None:
    _assert_one_line_error(run_pinfs(root, "car", "show", str(root / "nope.car")), 1)


def test_car_regenerate_rebuilds_a_deleted_car(two_backends: Path) -> None:
    car = two_backends / "backends/b1/pin_mappings.car"
    car.unlink()
    report = run_pinfs_json(two_backends, "car", "regenerate", "--backend", "b1")
    assert report["ok"] and report["backends"][0]["records"] == 2
    assert car.is_file()


def test_a_command_does_not_import_pandas(root: Path) -> None:
    """pyarrow imports pandas (~0.45 s) at its first conversion of a Python value only to ask whether it
    is a pandas object; pinfs settles that question first. Pandas still works for whoever needs it."""
    import subprocess
    import sys

    make_backend(root, "b1")
    where = f"'--backend', 'b1', '--root', {str(root)!r}"
    script = (
        "import sys\n"
        "from pinfs.cli import main\n"
        f"assert main(['pin', 'add', {cid_for('one')!r}, {cid_for('two')!r}, {where}]) == 0\n"
        f"assert main(['pin', 'rm', {cid_for('one')!r}, {where}]) == 0\n"
        "print('pandas' in sys.modules)\n"
        "import pyarrow as pa\n"
        "print(pa.table({'a': [1]}).to_pandas().shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == ["False", "(1, 1)"]
