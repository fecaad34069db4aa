"""``pinfs migrate`` through the real command line (CONTRACT §1 and §3): legacy shapes, quarantine,
backups, dry runs, idempotence, filters, force, restore and verify-only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import cid_for, file_digests, make_backend, run_pinfs, run_pinfs_json

from pinfs.data.backends import get_backend
from pinfs.ops.migrate import MigrateOptions, migrate
from pinfs.ops.migrate_verify import verify_backend
from pinfs.ops.pins import PinRequest, add_pins

CIDS = [cid_for(i) for i in range(3)]


def _parquet_cids(directory: Path) -> list[str]:
    return pq.read_table(directory / "pin_mappings.parquet", columns=["cid"]).column("cid").to_pylist()


def _entry(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(entry for entry in report["backends"] if entry["backend"] == name)


def _migrated(root: Path, name: str = "s3-main", pins: Any = None) -> Path:
    """A backend migrated in-process (setup for tests about later runs)."""
    directory = make_backend(root, name, pins_json=CIDS if pins is None else pins)
    assert migrate(root, MigrateOptions(backends=[name]))["ok"]
    return directory


def _backups(directory: Path, prefix: str = "pins.json.backup.") -> list[Path]:
    return sorted(directory.glob(prefix + "*"))


# -- legacy shapes --


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (CIDS, CIDS),
        ([{"cid": CIDS[0], "status": "pinned"}, {"cid": CIDS[1]}], CIDS[:2]),
        ([{"hash": CIDS[0]}, {"hash": CIDS[2]}], [CIDS[0], CIDS[2]]),
        ({"pins": CIDS}, CIDS),
        ({"pins": [{"cid": CIDS[1]}]}, [CIDS[1]]),
        ({CIDS[0]: {"status": "pinned"}, CIDS[1]: "queued"}, CIDS[:2]),
        ([], []),
        ("", []),
    ],
    ids=[
        "strings",
        "objects-cid",
        "objects-hash",
        "pins-object",
        "pins-object-objects",
        "cid-map",
        "empty-list",
        "empty-file",
    ],
)
def test_legacy_shape_migrates_end_to_end(root: Path, document: Any, expected: list[str]) -> None:
    directory = make_backend(root, "s3-main")
    (directory / "pins.json").write_text(document if isinstance(document, str) else json.dumps(document))
    report = run_pinfs_json(root, "migrate")
    entry = _entry(report, "s3-main")
    assert (report["ok"], entry["added"], entry["rejected"]) == (True, len(expected), 0)
    assert _parquet_cids(directory) == sorted(expected)
    assert (directory / "pin_mappings.car").is_file()


def test_legacy_statuses_are_mapped(root: Path) -> None:
    pins = {CIDS[0]: {"status": "pinned"}, CIDS[1]: {"status": "queued"}, CIDS[2]: {"status": "odd"}}
    directory = make_backend(root, "s3-main", pins_json=pins)
    run_pinfs(root, "migrate", check=True)
    rows = {r["cid"]: r for r in pq.read_table(directory / "pin_mappings.parquet").to_pylist()}
    assert [rows[c]["status"] for c in CIDS] == ["stored", "pending", "pending"]
    assert json.loads(rows[CIDS[2]]["metadata"])["legacy_status"] == "odd"
    assert rows[CIDS[0]]["car_file_path"] == f"/s3-bucket/cars/{CIDS[0]}.car"


def test_invalid_cids_are_quarantined_with_reasons(root: Path) -> None:
    directory = make_backend(root, "s3-main", pins_json=[CIDS[0], "not-a-cid", {"cid": "Qm123"}, CIDS[1]])
    report = run_pinfs_json(root, "migrate")
    assert _entry(report, "s3-main")["rejected"] == 2
    assert _parquet_cids(directory) == sorted(CIDS[:2])
    rejected = json.loads((directory / "pins.rejected.json").read_text())["rejected"]
    assert len(rejected) == 2
    assert all(item["reason"] and item["location"] for item in rejected)
    assert "not-a-cid" in json.dumps(rejected) and "Qm123" in json.dumps(rejected)


def test_pins_json_is_kept_and_backed_up(root: Path) -> None:
    directory = make_backend(root, "s3-main", pins_json=CIDS)
    original = (directory / "pins.json").read_bytes()
    run_pinfs(root, "migrate", check=True)
    assert (directory / "pins.json").read_bytes() == original
    backups = _backups(directory)
    assert len(backups) == 1 and backups[0].read_bytes() == original


# -- dry run and idempotence --


def test_dry_run_writes_nothing(root: Path) -> None:
    make_backend(root, "s3-main", pins_json=[*CIDS, "bad"])
    make_backend(root, "b2", pins_json={"pins": CIDS[:1]})
    before = file_digests(root)
    report = run_pinfs_json(root, "migrate", "--dry-run")
    assert _entry(report, "s3-main")["added"] == 3 and _entry(report, "s3-main")["rejected"] == 1
    assert file_digests(root) == before


def test_dry_run_after_a_migration_writes_nothing(root: Path) -> None:
    directory = _migrated(root)
    (directory / "pins.json").write_text(json.dumps([*CIDS, cid_for("new")]))
    before = file_digests(root)
    report = run_pinfs_json(root, "migrate", "--dry-run")
    assert _entry(report, "s3-main")["added"] == 1
    assert file_digests(root) == before


def test_second_run_changes_nothing(root: Path) -> None:
    directory = make_backend(root, "s3-main", pins_json=[*CIDS, "bad"])
    run_pinfs(root, "migrate", check=True)
    after_first = file_digests(root)
    report = run_pinfs_json(root, "migrate")
    entry = _entry(report, "s3-main")
    assert (entry["added"], entry["unchanged"], entry["backup"], entry["car_written"]) == (0, 3, False, False)
    assert file_digests(root) == after_first
    assert len(_backups(directory)) == 1


# -- backend filter --


def test_backend_filter_is_repeatable_and_exact(root: Path) -> None:
    for name in ("alpha", "alpha-2", "beta"):
        make_backend(root, name, pins_json=CIDS)
    report = run_pinfs_json(root, "migrate", "--backend-filter", "alpha", "--backend-filter", "beta")
    assert sorted(entry["backend"] for entry in report["backends"]) == ["alpha", "beta"]
    assert (root / "backends/alpha/pin_mappings.parquet").is_file()
    assert (root / "backends/beta/pin_mappings.parquet").is_file()
    assert not (root / "backends/alpha-2/pin_mappings.parquet").exists()


def test_backend_filter_unknown_name_exits_2_and_writes_nothing(root: Path) -> None:
    make_backend(root, "alpha", pins_json=CIDS)
    before = file_digests(root)
    result = run_pinfs(root, "migrate", "--backend-filter", "alpha", "--backend-filter", "nope")
    assert result.returncode == 2  # an unknown backend is bad input (issue #16)
    assert "nope" in result.stderr and "Traceback" not in result.stderr
    assert file_digests(root) == before


def test_backend_filter_bad_name_exits_2(root: Path) -> None:
    make_backend(root, "alpha", pins_json=CIDS)
    result = run_pinfs(root, "migrate", "--backend-filter", "../alpha")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert not (root / "backends/alpha/pin_mappings.parquet").exists()


# -- force --


def _status_of(directory: Path, cid: str) -> str:
    table = pq.read_table(directory / "pin_mappings.parquet")
    return table.filter(pc.equal(table.column("cid"), cid)).column("status")[0].as_py()


def test_existing_row_is_kept_without_force(root: Path) -> None:
    directory = _migrated(root, pins=[{"cid": CIDS[0], "status": "pinned"}])
    (directory / "pins.json").write_text(json.dumps([{"cid": CIDS[0], "status": "failed"}]))
    report = run_pinfs_json(root, "migrate")
    assert (_entry(report, "s3-main")["changed_in_legacy"], _entry(report, "s3-main")["added"]) == (1, 0)
    assert _status_of(directory, CIDS[0]) == "stored"


def test_force_replaces_differing_rows(root: Path) -> None:
    # Explicit timestamps: an entry without one gets pins.json's mtime, which rewriting the file changes.
    same = {"cid": CIDS[1], "created_at": "2026-01-01T00:00:00+00:00"}
    first = {"cid": CIDS[0], "created_at": "2026-01-01T00:00:00+00:00", "status": "pinned"}
    directory = _migrated(root, pins=[first, same])
    (directory / "pins.json").write_text(json.dumps([{**first, "status": "failed"}, same]))
    report = run_pinfs_json(root, "migrate", "--force")
    assert (_entry(report, "s3-main")["updated"], _entry(report, "s3-main")["unchanged"]) == (1, 1)
    assert _status_of(directory, CIDS[0]) == "failed"


def test_force_car_regeneration_repairs_the_car(root: Path) -> None:
    directory = _migrated(root)
    car = directory / "pin_mappings.car"
    car.write_bytes(b"")
    report = run_pinfs_json(root, "migrate", "--force-car-regeneration")
    assert _entry(report, "s3-main")["car_reason"] == "forced"
    assert verify_backend(get_backend(root, "s3-main"))["ok"]


def test_force_car_regeneration_rewrites_a_current_car(root: Path) -> None:
    directory = _migrated(root)
    inode = (directory / "pin_mappings.car").stat().st_ino
    run_pinfs(root, "migrate", "--force-car-regeneration", check=True)
    assert (directory / "pin_mappings.car").stat().st_ino != inode


# -- restore --


def test_restore_rebuilds_parquet_from_newest_backup(root: Path) -> None:
    directory = _migrated(root)
    add_pins(root, "s3-main", [PinRequest(cid_for("added-later"))])
    report = run_pinfs_json(root, "migrate", "--restore-from-backup")
    assert _entry(report, "s3-main")["restored_from"] == str(_backups(directory)[-1])
    assert _parquet_cids(directory) == sorted(CIDS)
    assert verify_backend(get_backend(root, "s3-main"))["ok"]


def test_restore_uses_the_newest_of_several_backups(root: Path) -> None:
    directory = _migrated(root, pins=CIDS[:1])
    (directory / "pins.json").write_text(json.dumps(CIDS))
    migrate(root, MigrateOptions())
    assert len(_backups(directory)) == 2
    (directory / "pins.json").write_text(json.dumps(CIDS[2:]))  # pins.json itself is not the source
    run_pinfs(root, "migrate", "--restore-from-backup", check=True)
    assert _parquet_cids(directory) == sorted(CIDS)


def test_restore_keeps_previous_parquet_reversibly(root: Path) -> None:
    directory = _migrated(root)
    add_pins(root, "s3-main", [PinRequest(cid_for("added-later"), "stored")])
    parquet = directory / "pin_mappings.parquet"
    previous = parquet.read_bytes()
    run_pinfs(root, "migrate", "--restore-from-backup", check=True)
    kept = _backups(directory, "pin_mappings.parquet.backup.")
    assert len(kept) == 1 and kept[0].read_bytes() == previous
    assert cid_for("added-later") not in _parquet_cids(directory)
    shutil.copyfile(kept[0], parquet)  # undone by copying it back: imported at the next write or export
    run_pinfs(root, "car", "regenerate", check=True)
    assert run_pinfs_json(root, "find", cid_for("added-later"))["backends"][0]["backend"] == "s3-main"
    assert cid_for("added-later") in _parquet_cids(directory)


def test_restore_without_backup_fails(root: Path) -> None:
    make_backend(root, "s3-main")
    report = run_pinfs(root, "migrate", "--restore-from-backup", "--json")
    assert report.returncode == 1
    assert "backup" in _entry(json.loads(report.stdout), "s3-main")["error"]


# -- verify-only --


def test_verify_only_passes_on_a_good_root(root: Path) -> None:
    _migrated(root, "s3-main")
    _migrated(root, "gh-b", pins={"pins": CIDS[:2]})
    before = file_digests(root)
    report = run_pinfs_json(root, "migrate", "--verify-only")
    assert report["ok"] and all(entry["ok"] for entry in report["backends"])
    assert file_digests(root) == before


def _verify_failure(root: Path) -> dict[str, Any]:
    before = file_digests(root)
    result = run_pinfs(root, "migrate", "--verify-only", "--json")
    assert result.returncode == 1
    assert file_digests(root) == before
    report = json.loads(result.stdout)
    assert _entry(report, "good")["ok"] is True
    return _entry(report, "s3-main")


def _rewrite_parquet(directory: Path, change) -> None:
    path = directory / "pin_mappings.parquet"
    pq.write_table(change(pq.read_table(path)), path)


def test_verify_only_reports_missing_column(root: Path) -> None:
    _migrated(root, "good")
    directory = _migrated(root)
    _rewrite_parquet(directory, lambda table: table.drop_columns(["created_at"]))
    entry = _verify_failure(root)
    assert not entry["ok"] and any("created_at" in problem for problem in entry["problems"])


def test_verify_only_reports_bad_status(root: Path) -> None:
    _migrated(root, "good")
    directory = _migrated(root)

    def bad_status(table: pa.Table) -> pa.Table:
        statuses = ["weird"] + table.column("status").to_pylist()[1:]
        return table.set_column(table.schema.get_field_index("status"), "status", pa.array(statuses, pa.string()))

    _rewrite_parquet(directory, bad_status)
    entry = _verify_failure(root)
    assert any("weird" in problem for problem in entry["problems"])


def _flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_only_reports_car_with_one_flipped_byte(root: Path) -> None:
    _migrated(root, "good")
    directory = _migrated(root)
    car = directory / "pin_mappings.car"
    _flip(car, car.stat().st_size // 2)
    entry = _verify_failure(root)
    assert any("pin_mappings.car" in problem for problem in entry["problems"])


def test_verify_detects_a_flipped_byte_anywhere_in_the_car(root: Path) -> None:
    directory = _migrated(root, pins=CIDS[:1])  # one pin: a small CAR, every byte of it tried
    car = directory / "pin_mappings.car"
    original = car.read_bytes()
    backend = get_backend(root, "s3-main")
    undetected = []
    for position in range(len(original)):
        _flip(car, position)
        if verify_backend(backend)["ok"]:
            undetected.append(position)
        car.write_bytes(original)
    assert undetected == []


def test_verify_text_report_names_backend_and_problem(root: Path) -> None:
    directory = _migrated(root)
    (directory / "pin_mappings.car").unlink()
    result = run_pinfs(root, "migrate", "--verify-only")
    assert result.returncode == 1
    assert "s3-main" in result.stdout and "pin_mappings.car: missing" in result.stdout


# -- spellings and odd backends --


def test_seed_spelling_backend_migrate_pin_mappings(root: Path) -> None:
    directory = make_backend(root, "s3-main", pins_json=CIDS)
    report = run_pinfs_json(root, "backend", "migrate-pin-mappings", "--backend-filter", "s3-main")
    assert report["mode"] == "migrate" and _entry(report, "s3-main")["added"] == 3
    assert _parquet_cids(directory) == sorted(CIDS)


def test_backend_with_only_a_parquet_of_an_older_release_is_converted_with_its_pins(root: Path) -> None:
    directory = make_backend(root, "only-parquet")
    table = pa.Table.from_pylist(
        [
            {
                "cid": c,
                "car_file_path": f"/x/{c}.car",
                "backend_name": "only-parquet",
                "created_at": "2026-01-01T00:00:00+00:00",
                "status": "stored",
                "metadata": "{}",
            }
            for c in sorted(CIDS)
        ]
    )
    pq.write_table(table, directory / "pin_mappings.parquet")
    make_backend(root, "other", pins_json=CIDS[:1])
    report = run_pinfs_json(root, "migrate")
    entry = _entry(report, "only-parquet")
    assert entry["added"] == 0 and "converted" in entry  # issue #12: its Delta table is made from it
    assert (directory / "pin_mappings.delta" / "_delta_log").is_dir()
    exported = pq.read_table(directory / "pin_mappings.parquet").select(list(table.column_names))
    assert exported.to_pylist() == table.to_pylist()  # the same pins, exported in the store's schema
    again = run_pinfs_json(root, "migrate")
    assert "converted" not in _entry(again, "only-parquet")
    before = {k: v for k, v in file_digests(root).items() if "only-parquet" in k and "lock" not in k}
    run_pinfs_json(root, "migrate")
    assert {k: v for k, v in file_digests(root).items() if "only-parquet" in k and "lock" not in k} == before


def test_backend_with_only_a_config_does_not_fail_migration(root: Path) -> None:
    (root / "backends" / "s3-cfg.yaml").write_text("type: s3\nbucket: x\n")
    make_backend(root, "other", pins_json=CIDS)
    report = run_pinfs_json(root, "migrate")
    assert report["ok"] and _entry(report, "s3-cfg")["ok"]
    assert not (root / "backends" / "s3-cfg").exists()


def test_corrupt_pins_json_is_reported_and_others_still_migrate(root: Path) -> None:
    broken = make_backend(root, "broken")
    (broken / "pins.json").write_text('[{"cid": ')
    make_backend(root, "fine", pins_json=CIDS)
    result = run_pinfs(root, "migrate", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert not _entry(report, "broken")["ok"] and "pins.json" in _entry(report, "broken")["error"]
    assert _entry(report, "fine")["ok"]
    assert _parquet_cids(root / "backends" / "fine") == sorted(CIDS)
    assert not (broken / "pin_mappings.parquet").exists()


def test_dangling_pins_json_symlink_is_reported_not_skipped(root: Path) -> None:
    directory = make_backend(root, "linked")
    (directory / "pins.json").symlink_to(root.parent / "nowhere.json")
    make_backend(root, "fine", pins_json=[cid_for("fine")])
    report = migrate(root, MigrateOptions())
    entries = {entry["backend"]: entry for entry in report["backends"]}
    assert report["ok"] is False
    assert entries["linked"]["ok"] is False and "pins.json" in entries["linked"]["error"]
    assert entries["fine"]["ok"] is True and entries["fine"]["added"] == 1


def test_verify_only_names_a_file_not_sorted_by_cid(root: Path) -> None:
    directory = make_backend(root, "unsorted")
    cids = sorted(cid_for(i) for i in range(3))[::-1]
    columns = {
        "cid": cids,
        "car_file_path": [f"/x/{cid}.car" for cid in cids],
        "backend_name": ["unsorted"] * 3,
        "created_at": ["2026-01-01T00:00:00+00:00"] * 3,
        "status": ["stored"] * 3,
        "metadata": ["{}"] * 3,
    }
    pq.write_table(pa.table(columns), directory / "pin_mappings.parquet")
    entry = verify_backend(get_backend(root, "unsorted"))
    assert entry["ok"] is False
    assert any("not sorted by cid" in problem for problem in entry["problems"])
