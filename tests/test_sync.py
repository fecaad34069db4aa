"""Tests for pinfs.ops.sync (and backups, schedule): real filesystem backends and an S3 backend on moto."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import ago, cid_for, file_digests, make_backend, run_pinfs, run_pinfs_json
from s3server import (  # noqa: F401 (s3_server is a fixture)
    S3Server,
    content_car,
    fs_config,
    pin_record,
    put_pins,
    read_pin,
    s3_backend_config,
    s3_server,
)

from pinfs.data.backends import get_backend
from pinfs.data.runstate import record_run
from pinfs.errors import InvalidInput, NotFound
from pinfs.ops import reports
from pinfs.ops.schedule import run_due_duties, seconds_until_due
from pinfs.ops.sync import SyncOptions, sync


def stage(root: Path, cid: str, data: bytes) -> Path:
    path = root / "cars" / f"{cid}.car"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def by_name(report: dict) -> dict[str, dict]:
    return {entry["backend"]: entry for entry in report["backends"]}


@pytest.fixture
def two_fs(root: Path, tmp_path: Path) -> Path:
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    make_backend(root, "fs-b", fs_config("fs-b", tmp_path / "store-b"))
    return root


def test_staged_content_is_moved_and_marked_stored_in_one_write(
    two_fs: Path, tmp_path: Path, count_commits: list[Path]
) -> None:
    root = two_fs
    pins = [content_car(i) for i in range(3)]
    for cid, data in pins:
        stage(root, cid, data)
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid) for cid, _ in pins])
    count_commits.clear()
    report = sync(root, SyncOptions(backends=["fs-a"]))
    assert report["ok"], report
    entry = by_name(report)["fs-a"]
    assert entry["state"] == "synced" and entry["counts"]["moved"] == 3 and entry["counts"]["failed"] == 0
    assert count_commits == [root / "backends" / "fs-a"]
    for cid, data in pins:
        assert (tmp_path / "store-a" / "fs-a" / "cars" / f"{cid}.car").read_bytes() == data
        record = read_pin(root, "fs-a", cid)
        assert record["status"] == "stored"
        assert record["metadata"]["size"] == len(data) and record["metadata"]["synced_at"]
        assert record["verified_at"]
    # the backend's own pin_mappings.car is on its storage too
    car = (root / "backends" / "fs-a" / "pin_mappings.car").read_bytes()
    assert (tmp_path / "store-a" / "pin_mappings.car").read_bytes() == car
    # nothing left to do: skipped, no write
    count_commits.clear()
    again = sync(root, SyncOptions(backends=["fs-a"]))
    assert by_name(again)["fs-a"]["state"] == "skipped" and count_commits == []


def test_failed_first_then_oldest(two_fs: Path) -> None:
    root = two_fs
    (old_c, old_d), (new_c, new_d), (failed_c, failed_d) = content_car("old"), content_car("new"), content_car("f")
    for cid, data in ((old_c, old_d), (new_c, new_d), (failed_c, failed_d)):
        stage(root, cid, data)
    put_pins(
        root,
        "fs-a",
        [
            pin_record(root, "fs-a", new_c, created_at=ago(hours=1)),
            pin_record(root, "fs-a", old_c, created_at=ago(days=9)),
            pin_record(root, "fs-a", failed_c, "failed", created_at=ago(minutes=1)),
        ],
    )
    dry = sync(root, SyncOptions(backends=["fs-a"], dry_run=True))
    assert [item["cid"] for item in by_name(dry)["fs-a"]["would_move"]] == [failed_c, old_c, new_c]
    real = sync(root, SyncOptions(backends=["fs-a"]))
    assert [item["cid"] for item in by_name(real)["fs-a"]["moved"]] == [failed_c, old_c, new_c]


def test_dry_run_writes_nothing(two_fs: Path, tmp_path: Path) -> None:
    root = two_fs
    cid, data = content_car("dry")
    stage(root, cid, data)
    missing = cid_for("no content anywhere")
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid), pin_record(root, "fs-a", missing)])
    before = file_digests(tmp_path)
    report = sync(root, SyncOptions(dry_run=True))
    assert file_digests(tmp_path) == before
    entry = by_name(report)["fs-a"]
    assert report["ok"] is True and report["dry_run"] is True
    assert entry["state"] == "dry-run"
    assert [item["cid"] for item in entry["would_move"]] == [cid]
    assert [item["cid"] for item in entry["would_fail"]] == [missing]
    assert not (tmp_path / "store-b").exists()  # a dry run does not even create a storage directory


def test_content_from_another_backend_to_s3(root: Path, tmp_path: Path, s3_server: S3Server) -> None:  # noqa: F811
    prefix = f"t-{tmp_path.name}"
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    make_backend(root, "s3-main", s3_server.config("s3-main", prefix=prefix))
    cid, data = content_car("shared")
    (tmp_path / "store-a" / "fs-a" / "cars").mkdir(parents=True)
    (tmp_path / "store-a" / "fs-a" / "cars" / f"{cid}.car").write_bytes(data)
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid, "stored")])
    put_pins(root, "s3-main", [pin_record(root, "s3-main", cid)])
    report = sync(root, SyncOptions(backends=["s3-main"]))
    assert report["ok"], report
    moved = by_name(report)["s3-main"]["moved"]
    assert len(moved) == 1 and "backend fs-a" in moved[0]["from"]
    client = s3_server.client()
    body = client.get_object(Bucket=s3_server.bucket, Key=f"{prefix}/s3-bucket/cars/{cid}.car")["Body"].read()
    assert body == data
    car = client.get_object(Bucket=s3_server.bucket, Key=f"{prefix}/pin_mappings.car")["Body"].read()
    assert car == (root / "backends" / "s3-main" / "pin_mappings.car").read_bytes()
    assert read_pin(root, "s3-main", cid)["status"] == "stored"


def test_corrupt_or_wrong_content_is_refused_and_marked_failed(two_fs: Path, tmp_path: Path) -> None:
    root = two_fs
    cid, data = content_car("corrupt")
    stage(root, cid, data[:-3] + b"XYZ")  # a block whose hash no longer matches
    other_cid, _ = content_car("wrong-root")
    _, unrelated = content_car("unrelated")
    stage(root, other_cid, unrelated)  # a valid CAR, but of other content
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid), pin_record(root, "fs-a", other_cid)])
    report = sync(root, SyncOptions(backends=["fs-a"]))
    assert report["ok"] is False
    entry = by_name(report)["fs-a"]
    assert entry["counts"] == {"moved": 0, "failed": 2, "skipped": 0, "unsupported": 0}
    record = read_pin(root, "fs-a", cid)
    assert record["status"] == "failed" and record["metadata"]["attempts"] == 1
    assert "hash" in record["metadata"]["last_error"] or "digest" in record["metadata"]["last_error"]
    assert "do not include" in read_pin(root, "fs-a", other_cid)["metadata"]["last_error"]
    assert not (tmp_path / "store-a" / "fs-a" / "cars" / f"{cid}.car").exists()
    # the next attempt counts, and good content then heals it
    sync(root, SyncOptions(backends=["fs-a"]))
    assert read_pin(root, "fs-a", cid)["metadata"]["attempts"] == 2
    stage(root, cid, data)
    healed = sync(root, SyncOptions(backends=["fs-a"]))
    assert by_name(healed)["fs-a"]["counts"]["moved"] == 1
    record = read_pin(root, "fs-a", cid)
    assert record["status"] == "stored" and "last_error" not in record["metadata"]


def test_unsupported_types_change_nothing(root: Path) -> None:
    make_backend(root, "tape-vault", {"name": "tape-vault", "type": "tape"})
    cid, data = content_car("gh")
    stage(root, cid, data)
    put_pins(root, "tape-vault", [pin_record(root, "tape-vault", cid)])
    before = file_digests(root / "backends" / "tape-vault")
    report = sync(root, SyncOptions())
    entry = by_name(report)["tape-vault"]
    assert entry["state"] == "unsupported" and entry["counts"]["unsupported"] == 1 and "tape" in entry["reason"]
    assert report["ok"] is True
    after = {k: v for k, v in file_digests(root / "backends" / "tape-vault").items() if "state" not in k}
    assert after == {k: v for k, v in before.items()}
    assert read_pin(root, "tape-vault", cid)["status"] == "pending"


def test_unreachable_s3_is_an_error_while_the_others_sync(two_fs: Path) -> None:
    root = two_fs
    make_backend(root, "s3-down", s3_backend_config("s3-down", "http://127.0.0.1:1", "bucket"))
    cid, data = content_car("x")
    stage(root, cid, data)
    put_pins(root, "s3-down", [pin_record(root, "s3-down", cid)])
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid)])
    report = sync(root, SyncOptions())
    assert report["ok"] is False
    entries = by_name(report)
    assert entries["s3-down"]["state"] == "error" and "unreachable" in entries["s3-down"]["error"]
    assert "127.0.0.1:1" in entries["s3-down"]["error"]
    assert entries["fs-a"]["counts"]["moved"] == 1
    record = read_pin(root, "s3-down", cid)  # the pin says why it did not move (issue #17)
    assert record["status"] == "failed" and "127.0.0.1:1" in record["metadata"]["last_error"]
    health = {e["backend"]: e for e in reports.health(root)["backends"]}
    assert health["s3-down"]["state"] == "degraded"
    assert any("last sync" in reason for reason in health["s3-down"]["reasons"])
    status = by_name(reports.status(root))
    assert status["s3-down"]["last_sync_ok"] is False and status["fs-a"]["last_sync_ok"] is True


def test_all_stored_backend_is_skipped_without_its_driver(root: Path) -> None:
    make_backend(root, "s3-down", s3_backend_config("s3-down", "http://127.0.0.1:1", "bucket"))
    put_pins(root, "s3-down", [pin_record(root, "s3-down", cid_for(1), "stored")])

    backend = get_backend(root, "s3-down")

    record_run(backend, "car_push", {"sha256": hashlib.sha256(backend.car_path.read_bytes()).hexdigest()})
    report = sync(root, SyncOptions())
    entry = by_name(report)["s3-down"]
    assert report["ok"] and entry["state"] == "skipped" and "1 pins stored" in entry["reason"]


def test_legacy_backend_must_be_migrated_first(root: Path) -> None:
    make_backend(root, "fs-old", {"type": "filesystem", "storage_path": "store"}, pins_json=[cid_for(1)])
    report = sync(root, SyncOptions())
    assert report["ok"] is False and "migrate" in by_name(report)["fs-old"]["error"]


def test_bad_backend_names_are_refused_before_anything(root: Path) -> None:
    with pytest.raises(InvalidInput):
        sync(root, SyncOptions(backends=["../x"]))
    with pytest.raises(NotFound):
        sync(root, SyncOptions(backends=["nope"]))


def test_backups_copied_once_until_a_pin_changes(two_fs: Path, tmp_path: Path) -> None:
    root = two_fs
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid_for("a"), "stored")])
    put_pins(root, "fs-b", [pin_record(root, "fs-b", cid_for("b"), "stored")])
    first = sync(root, SyncOptions(backends=["fs-a"]))
    backup = first["backups"][0]
    assert backup["ok"] and backup["target"] == "fs-a"
    assert sorted((i["backend"], i["file"]) for i in backup["copied"]) == [
        ("fs-a", "pin_mappings.car"),
        ("fs-a", "pin_mappings.parquet"),
        ("fs-b", "pin_mappings.car"),
        ("fs-b", "pin_mappings.parquet"),
    ]
    target = tmp_path / "store-a" / "pin_mappings"
    for name in ("fs-a", "fs-b"):
        for file in ("pin_mappings.parquet", "pin_mappings.car"):
            assert (target / name / file).read_bytes() == (root / "backends" / name / file).read_bytes()
    manifest = json.loads((target / "manifest.json").read_text())
    assert set(manifest["files"]) == {
        f"pin_mappings/{b}/{f}" for b in ("fs-a", "fs-b") for f in ("pin_mappings.parquet", "pin_mappings.car")
    }
    second = sync(root, SyncOptions(backends=["fs-a"]))
    assert second["backups"][0]["copied"] == [] and second["backups"][0]["unchanged"] == 4
    put_pins(root, "fs-b", [pin_record(root, "fs-b", cid_for("b2"), "stored")])
    third = sync(root, SyncOptions(backends=["fs-a"]))
    assert sorted(i["backend"] for i in third["backups"][0]["copied"]) == ["fs-b", "fs-b"]
    assert (target / "fs-b" / "pin_mappings.parquet").read_bytes() == (
        root / "backends" / "fs-b" / "pin_mappings.parquet"
    ).read_bytes()
    # a deleted copy is made again even though its hash is remembered
    (target / "fs-a" / "pin_mappings.car").unlink()
    fourth = sync(root, SyncOptions(backends=["fs-a"]))
    assert [(i["backend"], i["file"]) for i in fourth["backups"][0]["copied"]] == [("fs-a", "pin_mappings.car")]


def test_schedule_runs_due_duties(two_fs: Path) -> None:
    root = two_fs
    last: dict[str, float] = {}
    assert seconds_until_due(last, None, None, now=0) is None
    first = run_due_duties(root, last, sync_interval=60, verify_interval=None, now=1000.0)
    assert first["ran"] == {} and first["next_in"] == 60
    assert run_due_duties(root, last, 60, None, now=1030.0)["ran"] == {}
    due = run_due_duties(root, last, 60, 0, now=1061.0)
    assert set(due["ran"]) == {"sync"} and due["ran"]["sync"]["ok"] is True and due["next_in"] == 60
    both = run_due_duties(root, {"sync": 0.0, "verify": 0.0}, 10, 10, now=20.0)
    assert set(both["ran"]) == {"sync", "verify"}


def test_cli_sync(two_fs: Path, tmp_path: Path) -> None:
    root = two_fs
    cid, data = content_car("cli")
    stage(root, cid, data)
    put_pins(root, "fs-b", [pin_record(root, "fs-b", cid)])
    dry = run_pinfs_json(root, "sync", "--backend", "fs-b", "--dry-run")
    assert dry["dry_run"] and by_name(dry)["fs-b"]["would_move"][0]["cid"] == cid
    report = run_pinfs_json(root, "daemon", "intelligent", "sync", "--backend", "fs-b")
    assert by_name(report)["fs-b"]["counts"]["moved"] == 1
    assert (tmp_path / "store-b" / "fs-b" / "cars" / f"{cid}.car").read_bytes() == data
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid_for("nowhere"))])
    failed = run_pinfs(root, "sync", "--backend", "fs-a")
    assert failed.returncode == 1 and "FAILED" in failed.stdout
    assert run_pinfs(root, "sync", "--backend", "../x").returncode == 2
    assert run_pinfs(root, "sync", "--backend", "missing").returncode == 2  # bad input (issue #16)
