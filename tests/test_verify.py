"""Tests for pinfs.ops.verify: missing, resized and corrupt CARs found, healed by the next sync."""

from __future__ import annotations

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
    s3_server,
)

from pinfs.errors import InvalidInput
from pinfs.ops import reports
from pinfs.ops.sync import SyncOptions, sync
from pinfs.ops.verify import VerifyOptions, verify


def by_name(report: dict) -> dict[str, dict]:
    return {entry["backend"]: entry for entry in report["backends"]}


def place(storage: Path, backend: str, cid: str, data: bytes) -> Path:
    path = storage / backend / "cars" / f"{cid}.car"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def stored_fs(root: Path, tmp_path: Path) -> tuple[Path, list[tuple[str, bytes]]]:
    """fs-a and fs-b both hold three pins stored (CARs in place, sizes recorded, never verified)."""
    pins = [content_car(i) for i in range(3)]
    for name in ("fs-a", "fs-b"):
        make_backend(root, name, fs_config(name, tmp_path / f"store-{name}"))
        for cid, data in pins:
            place(tmp_path / f"store-{name}", name, cid, data)
        put_pins(
            root, name, [pin_record(root, name, cid, "stored", metadata={"size": len(data)}) for cid, data in pins]
        )
    return root, pins


def test_good_pins_get_verified_at_and_are_not_due_again(stored_fs, count_commits: list[Path]) -> None:
    root, pins = stored_fs
    count_commits.clear()
    report = verify(root, VerifyOptions())
    assert report["ok"], report
    assert report["totals"]["checked"] == 6 and report["totals"]["good"] == 6
    assert len(count_commits) == 2  # one commit per backend
    for cid, _ in pins:
        assert read_pin(root, "fs-a", cid)["verified_at"]
    again = verify(root, VerifyOptions())
    assert again["totals"]["checked"] == 0 and by_name(again)["fs-a"]["state"] == "skipped"
    assert by_name(again)["fs-a"]["counts"]["skipped"] == 3
    forced = verify(root, VerifyOptions(backends=["fs-a"], older_than_days=0))
    assert forced["totals"]["checked"] == 3
    health = {e["backend"]: e for e in reports.health(root)["backends"]}
    assert health["fs-a"]["state"] == "ok" and health["fs-a"]["verification"]["verified"] == 3


def test_only_pins_older_than_the_threshold_are_checked(root: Path, tmp_path: Path) -> None:
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "s"))
    recent, old = content_car("recent"), content_car("old")
    for cid, data in (recent, old):
        place(tmp_path / "s", "fs-a", cid, data)
    put_pins(
        root,
        "fs-a",
        [
            pin_record(root, "fs-a", recent[0], "stored", verified_at=ago(days=1)),
            pin_record(root, "fs-a", old[0], "stored", verified_at=ago(days=10)),
            pin_record(root, "fs-a", cid_for("pending"), "pending"),
        ],
    )
    report = verify(root, VerifyOptions(older_than_days=7))
    entry = by_name(report)["fs-a"]
    assert entry["counts"] == {"checked": 1, "good": 1, "failed": 0, "skipped": 1}
    assert read_pin(root, "fs-a", old[0])["verified_at"] > ago(minutes=1)


def test_deleted_car_is_caught_and_healed_by_the_next_sync(stored_fs, tmp_path: Path) -> None:
    root, pins = stored_fs
    cid, data = pins[1]
    (tmp_path / "store-fs-a" / "fs-a" / "cars" / f"{cid}.car").unlink()
    report = verify(root, VerifyOptions(backends=["fs-a"]))
    assert report["ok"] is False
    entry = by_name(report)["fs-a"]
    assert entry["counts"]["failed"] == 1 and entry["failed"][0]["cid"] == cid
    record = read_pin(root, "fs-a", cid)
    assert record["status"] == "failed" and "missing" in record["metadata"]["last_error"]
    assert read_pin(root, "fs-a", pins[0][0])["status"] == "stored"
    assert {e["backend"]: e for e in reports.health(root)["backends"]}["fs-a"]["state"] == "degraded"
    healed = sync(root, SyncOptions(backends=["fs-a"]))
    moved = by_name(healed)["fs-a"]["moved"]
    assert [m["cid"] for m in moved] == [cid] and "backend fs-b" in moved[0]["from"]
    assert (tmp_path / "store-fs-a" / "fs-a" / "cars" / f"{cid}.car").read_bytes() == data
    assert read_pin(root, "fs-a", cid)["status"] == "stored"


def test_size_mismatch_and_deep_corruption(stored_fs, tmp_path: Path) -> None:
    root, pins = stored_fs
    (cid0, data0), (cid1, data1), _ = pins
    place(tmp_path / "store-fs-a", "fs-a", cid0, data0 + b"extra")  # wrong size
    place(tmp_path / "store-fs-a", "fs-a", cid1, data1[:-3] + b"XYZ")  # same size, bad hash
    shallow = verify(root, VerifyOptions(backends=["fs-a"]))
    assert [f["cid"] for f in by_name(shallow)["fs-a"]["failed"]] == [cid0]
    assert "bytes" in read_pin(root, "fs-a", cid0)["metadata"]["last_error"]
    assert read_pin(root, "fs-a", cid1)["status"] == "stored"
    deep = verify(root, VerifyOptions(backends=["fs-a"], older_than_days=0, deep=True))
    assert [f["cid"] for f in by_name(deep)["fs-a"]["failed"]] == [cid1]
    assert "corrupt" in read_pin(root, "fs-a", cid1)["metadata"]["last_error"]


def test_s3_deleted_object_is_caught(root: Path, tmp_path: Path, s3_server: S3Server) -> None:  # noqa: F811
    prefix = f"v-{tmp_path.name}"
    make_backend(root, "s3-main", s3_server.config("s3-main", prefix=prefix))
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "s"))
    cid, data = content_car("s3")
    place(tmp_path / "s", "fs-a", cid, data)
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid, "stored")])
    put_pins(root, "s3-main", [pin_record(root, "s3-main", cid)])
    assert sync(root, SyncOptions(backends=["s3-main"]))["ok"]
    assert verify(root, VerifyOptions(backends=["s3-main"], older_than_days=0, deep=True))["ok"]
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=f"{prefix}/s3-bucket/cars/{cid}.car")
    report = verify(root, VerifyOptions(backends=["s3-main"], older_than_days=0))
    assert by_name(report)["s3-main"]["counts"]["failed"] == 1
    assert read_pin(root, "s3-main", cid)["status"] == "failed"
    assert sync(root, SyncOptions(backends=["s3-main"]))["ok"]
    assert read_pin(root, "s3-main", cid)["status"] == "stored"


def test_unsupported_and_unreachable_change_nothing(root: Path) -> None:
    make_backend(root, "tape-vault", {"name": "tape-vault", "type": "tape"})
    make_backend(
        root,
        "s3-down",
        {"type": "s3", "bucket": "b", "endpoint": "http://127.0.0.1:1", "access_key": "a", "secret_key": "b"},
    )
    for name in ("tape-vault", "s3-down"):
        put_pins(root, name, [pin_record(root, name, cid_for(name), "stored")])
    before = {k: v for k, v in file_digests(root).items() if "pin_mappings" in k}
    report = verify(root, VerifyOptions())
    entries = by_name(report)
    assert entries["tape-vault"]["state"] == "unsupported"
    assert entries["s3-down"]["state"] == "error" and "unreachable" in entries["s3-down"]["error"]
    assert report["ok"] is False
    assert {k: v for k, v in file_digests(root).items() if "pin_mappings" in k} == before


def test_bad_days_are_refused(root: Path) -> None:
    with pytest.raises(InvalidInput):
        verify(root, VerifyOptions(older_than_days=-1))


def test_cli_verify(stored_fs, tmp_path: Path) -> None:
    root, pins = stored_fs
    report = run_pinfs_json(root, "verify", "--backend", "fs-a", "--deep")
    assert report["deep"] and report["totals"]["good"] == 3
    (tmp_path / "store-fs-a" / "fs-a" / "cars" / f"{pins[0][0]}.car").unlink()
    failed = run_pinfs(root, "verify", "--older-than", "0")
    assert failed.returncode == 1 and "FAILED" in failed.stdout and "missing" in failed.stdout
    assert run_pinfs(root, "verify", "--older-than", "-2").returncode == 2
    assert run_pinfs(root, "verify", "--older-than", "soon").returncode == 2
