"""Backups of every backend's pin mappings on writable backends (``backup: true``), health reporting
backup copies that differ from their source, and storage utilisation in status and insights."""

from __future__ import annotations

from pathlib import Path

import pytest
from ftpserver import PASSWORD, FtpServer
from helpers import cid_for, make_backend, run_pinfs, run_pinfs_json
from s3server import content_car, fs_config, pin_record, put_pins

from pinfs.ops import reports
from pinfs.ops.sync import SyncOptions, sync

ENV = "PINFS_TEST_FTP_PASSWORD"


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, PASSWORD)


def health_of(root: Path, name: str) -> dict:
    return {entry["backend"]: entry for entry in reports.health(root)["backends"]}[name]


def test_backups_go_to_a_remote_backend_that_asks_for_them(root: Path, tmp_path: Path, ftp_server: FtpServer) -> None:
    make_backend(root, "ftp-box", ftp_server.config("ftp-box", base_path="/backups-on", backup=True))
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid_for("a"), "stored")])
    put_pins(root, "ftp-box", [pin_record(root, "ftp-box", cid_for("f"), "stored")])
    report = sync(root, SyncOptions(backends=["ftp-box"]))
    assert report["ok"], report
    [backup] = report["backups"]
    assert backup["target"] == "ftp-box" and len(backup["copied"]) == 4
    copies = ftp_server.directory / "backups-on" / "pin_mappings"
    for name in ("fs-a", "ftp-box"):
        for file in ("pin_mappings.parquet", "pin_mappings.car"):
            assert (copies / name / file).read_bytes() == (root / "backends" / name / file).read_bytes()
    again = sync(root, SyncOptions(backends=["ftp-box"]))
    assert again["backups"][0]["copied"] == [] and again["backups"][0]["unchanged"] == 4


def test_no_backups_unless_asked_and_none_on_a_filesystem_that_says_no(
    root: Path, tmp_path: Path, ftp_server: FtpServer
) -> None:
    make_backend(root, "ftp-box", ftp_server.config("ftp-box", base_path="/no-backups"))
    make_backend(root, "fs-a", {**fs_config("fs-a", tmp_path / "store-a"), "backup": False})
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid_for("a"), "stored")])
    report = sync(root, SyncOptions())
    assert report["backups"] == []
    assert not (ftp_server.directory / "no-backups" / "pin_mappings").exists()
    assert not (tmp_path / "store-a" / "pin_mappings").exists()


def test_health_reports_backup_copies_that_differ_from_their_source(root: Path, tmp_path: Path) -> None:
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    make_backend(root, "fs-b", fs_config("fs-b", tmp_path / "store-b"))
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid_for("a"), "stored")])
    put_pins(root, "fs-b", [pin_record(root, "fs-b", cid_for("b"), "stored")])
    assert sync(root, SyncOptions(backends=["fs-a"]))["ok"]
    entry = health_of(root, "fs-a")
    assert entry["backups"] == {"copies": 4, "behind": [], "differ": []} and entry["state"] == "ok"
    # the source moves on: the copy is behind it until the next sync (a note)
    put_pins(root, "fs-b", [pin_record(root, "fs-b", cid_for("b2"), "stored")])
    entry = health_of(root, "fs-a")
    assert {item.split(" ")[0] for item in entry["backups"]["behind"]} == {
        "fs-b/pin_mappings.parquet",
        "fs-b/pin_mappings.car",
    }
    assert any("behind their source" in note for note in entry["notes"]) and entry["state"] == "ok"
    assert sync(root, SyncOptions(backends=["fs-a"]))["ok"]
    assert health_of(root, "fs-a")["backups"]["behind"] == []
    # a copy changed or removed on the target: degraded, with the reason
    (tmp_path / "store-a" / "pin_mappings" / "fs-b" / "pin_mappings.car").write_bytes(b"not the CAR")
    (tmp_path / "store-a" / "pin_mappings" / "fs-a" / "pin_mappings.parquet").unlink()
    entry = health_of(root, "fs-a")
    assert entry["state"] == "degraded"
    assert "backup copy pin_mappings/fs-b/pin_mappings.car is not what sync copied there" in " ".join(entry["reasons"])
    assert "backup copy pin_mappings/fs-a/pin_mappings.parquet is missing" in entry["reasons"]
    text = run_pinfs(root, "health").stdout
    assert "pin_mappings/fs-b/pin_mappings.car is not what sync copied there" in text


def test_storage_utilisation_in_status_and_insights(root: Path, tmp_path: Path) -> None:
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    pins = [content_car(f"size {i}" * (i + 1)) for i in range(3)]
    (root / "cars").mkdir()
    for cid, data in pins:
        (root / "cars" / f"{cid}.car").write_bytes(data)
    other = cid_for("stored elsewhere")  # stored by another tool: no size recorded
    put_pins(
        root, "fs-a", [pin_record(root, "fs-a", cid) for cid, _ in pins] + [pin_record(root, "fs-a", other, "stored")]
    )
    assert sync(root, SyncOptions(backends=["fs-a"]))["ok"]
    total = sum(len(data) for _, data in pins)
    expected = {"bytes": total, "cars": 4, "cars_without_size": 1}
    status = run_pinfs_json(root, "status", "--detailed")
    assert status["backends"][0]["storage"] == expected
    insights = run_pinfs_json(root, "insights")
    assert insights["by_backend"]["fs-a"]["storage"] == expected
    assert insights["storage"] == {"bytes": total, "by_backend": {"fs-a": total}}
    assert (
        f"stored CARs: {total} B in 4 CARs (1 of unknown size until verified)"
        in run_pinfs(root, "status", "--detailed").stdout
    )
    assert f"storage used by stored CARs: {total} B" in run_pinfs(root, "insights").stdout
