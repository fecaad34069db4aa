"""``pinfs query SQL``: DuckDB over every backend's pins as one view ``pins`` (issue #20)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import cid_for, file_digests, make_backend, run_on_terminal, run_pinfs
from s3server import fs_config, pin_record, put_pins

from pinfs.data.backends import get_backend
from pinfs.data.schema import STORE_COLUMNS
from pinfs.ops.query import pin_files, run_query

COUNT_SQL = "SELECT backend_name, status, count(*) AS n FROM pins GROUP BY ALL ORDER BY ALL"


@pytest.fixture
def data(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """fs-a: a table of one data file (2 stored, 1 failed); big: 40 pins in data files of 8 rows; legacy:
    a pins.json never migrated (2 pins). One CID is held by all three."""
    shared = cid_for("shared")
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "a"))
    put_pins(
        root,
        "fs-a",
        [
            pin_record(root, "fs-a", shared, "stored", verified_at="2026-11-01T00:00:00.000000+00:00"),
            pin_record(root, "fs-a", cid_for("a1"), "stored"),
            pin_record(root, "fs-a", cid_for("a2"), "failed", metadata={"last_error": "CAR missing"}),
        ],
    )
    make_backend(root, "big", fs_config("big", tmp_path / "b"))
    monkeypatch.setenv("PINFS_FILE_ROWS", "8")  # 40 pins: several data files
    put_pins(root, "big", [pin_record(root, "big", cid_for(f"b{i}"), "pending") for i in range(39)])
    put_pins(root, "big", [pin_record(root, "big", shared, "pending")])
    monkeypatch.delenv("PINFS_FILE_ROWS")
    make_backend(root, "legacy", pins_json=[{"cid": shared, "status": "pinned"}, {"cid": cid_for("l1")}])
    return root


def query(root: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return run_pinfs(root, "query", *args, **kwargs)


def test_pin_files_are_the_data_files_of_the_tables_newest_version(data: Path) -> None:
    from deltalake import DeltaTable

    for name, count in (("fs-a", 1), ("big", 5)):
        files = pin_files(get_backend(data, name))
        table = DeltaTable(str(data / "backends" / name / "pin_mappings.delta"))
        holding = [
            uri for uri in table.file_uris() if pq.ParquetFile(uri).metadata.num_rows
        ]  # not an empty insert file
        ranges = [path for path in files if path.name.startswith("part-")]
        assert len(ranges) == count and sorted(map(str, files)) == sorted(holding)
    assert pin_files(get_backend(data, "legacy")) == []  # served from its pins.json instead


def test_one_view_over_every_backend(data: Path) -> None:
    result = query(data, "--json", COUNT_SQL)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"backend_name": "big", "status": "pending", "n": 40},
        {"backend_name": "fs-a", "status": "failed", "n": 1},
        {"backend_name": "fs-a", "status": "stored", "n": 2},
        {"backend_name": "legacy", "status": "pending", "n": 1},
        {"backend_name": "legacy", "status": "stored", "n": 1},
    ]
    assert result.stderr == ""


def test_columns_a_backend_lacks_are_null(data: Path) -> None:
    result = run_query(data, f"SELECT backend_name, verified_at FROM pins WHERE cid = '{cid_for('shared')}'")
    rows = sorted(result.table.to_pylist(), key=lambda row: row["backend_name"])
    assert rows == [
        {"backend_name": "big", "verified_at": None},
        {"backend_name": "fs-a", "verified_at": "2026-11-01T00:00:00.000000+00:00"},
        {"backend_name": "legacy", "verified_at": None},
    ]


def test_csv_has_a_header_and_every_row(data: Path) -> None:
    result = query(data, "--csv", "SELECT cid, status, metadata FROM pins WHERE backend_name = 'fs-a' ORDER BY cid")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["cid"] for row in rows] == sorted([cid_for("shared"), cid_for("a1"), cid_for("a2")])
    failed = next(row for row in rows if row["status"] == "failed")
    assert json.loads(failed["metadata"]) == {"last_error": "CAR missing"}


def test_piped_output_is_tab_separated_with_a_header(data: Path) -> None:
    result = query(data, "SELECT status, count(*) AS n FROM pins GROUP BY ALL ORDER BY status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["status\tn", "failed\t1", "pending\t41", "stored\t3"]


def test_a_terminal_gets_an_aligned_table(data: Path) -> None:
    """On a terminal: a header, a rule, aligned columns (numbers to the right) and the row count."""
    sql = "SELECT backend_name, count(*) AS pins FROM pins GROUP BY ALL ORDER BY 1"
    status, errors, shown = run_on_terminal(data, "query", sql, terminal="stdout", columns=120)
    assert status == 0 and errors == ""
    assert shown.splitlines() == [
        "backend_name  pins",
        "------------  ----",
        "big             40",
        "fs-a             3",
        "legacy           2",
        "(3 rows)",
    ]


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("SELEC cid FROM pins", "syntax error"),
        ("SELECT nope FROM pins", "nope"),
        ("SELECT * FROM elsewhere", "elsewhere"),
        ("", "no SQL"),
    ],
)
def test_bad_sql_is_one_line_and_exit_2(data: Path, sql: str, words: str) -> None:
    result = query(data, sql)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("pinfs query: error: ")
    assert words in result.stderr


def test_json_and_csv_together_is_bad_usage(data: Path) -> None:
    result = query(data, "--json", "--csv", "SELECT 1")
    assert result.returncode == 2 and "exclusive" in result.stderr


def test_it_writes_nothing_and_reaches_no_other_file(data: Path) -> None:
    before = file_digests(data)
    names_before = sorted(str(path) for path in data.rglob("*"))
    target = data / "backends" / "fs-a" / "pin_mappings.parquet"
    for sql in (
        f"COPY (SELECT * FROM pins) TO '{data}/out.csv'",
        f"COPY (SELECT * FROM pins WHERE false) TO '{target}' (FORMAT parquet)",
        f"SELECT * FROM read_csv('{data}/backends/legacy/pins.json')",
        f"ATTACH '{data}/x.duckdb'",
    ):
        result = query(data, sql, cwd=data)
        assert result.returncode == 2, sql
        assert "disabled" in result.stderr and len(result.stderr.splitlines()) == 1
    # A big sort, run from inside the root: DuckDB spills (if it must) outside it.
    ordered = query(data, "SELECT cid FROM pins, range(2000) ORDER BY cid DESC, range LIMIT 1", cwd=data)
    assert ordered.returncode == 0, ordered.stderr
    assert file_digests(data) == before
    assert sorted(str(path) for path in data.rglob("*")) == names_before


def test_changes_show_at_once(data: Path) -> None:
    sql = "SELECT count(*) AS n FROM pins WHERE backend_name = 'fs-a'"
    assert run_query(data, sql).table.to_pylist() == [{"n": 3}]
    put_pins(data, "fs-a", [pin_record(data, "fs-a", cid_for("new"), "pending")])
    assert run_query(data, sql).table.to_pylist() == [{"n": 4}]


def test_a_backend_that_cannot_be_read_is_left_out_loudly(data: Path) -> None:
    make_backend(data, "broken")
    (data / "backends" / "broken" / "pin_mappings.parquet").write_bytes(b"not parquet")
    result = query(data, "--json", "SELECT backend_name, count(*) AS n FROM pins GROUP BY ALL ORDER BY 1")
    assert result.returncode == 1
    assert Counter(row["backend_name"] for row in json.loads(result.stdout)) == Counter(["big", "fs-a", "legacy"])
    assert result.stderr.startswith("pinfs query: warning: backend broken left out: ")
    assert len(result.stderr.splitlines()) == 1


def test_an_empty_root_has_an_empty_view_with_the_contract_columns(root: Path) -> None:
    result = run_query(root, "SELECT * FROM pins")
    assert result.table.num_rows == 0 and result.left_out == []
    assert tuple(result.table.column_names) == STORE_COLUMNS  # one schema everywhere (issue #12)
