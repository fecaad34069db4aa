"""The FTP driver against real pyftpdlib servers on 127.0.0.1: plain FTP and FTPS."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
from ftpserver import PASSWORD, FtpServer
from helpers import assert_no_secret, make_backend, run_pinfs
from mounting import mounted, needs_fuse, write_errno
from s3server import content_car, fs_config, pin_record, put_pins, read_pin

from pinfs.data.backends import get_backend
from pinfs.ops import reports
from pinfs.ops.drivers import driver_for
from pinfs.ops.sync import SyncOptions, sync
from pinfs.ops.verify import VerifyOptions, verify

ENV = "PINFS_TEST_FTP_PASSWORD"


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, PASSWORD)


def stage(root: Path, cid: str, data: bytes) -> None:
    (root / "cars").mkdir(exist_ok=True)
    (root / "cars" / f"{cid}.car").write_bytes(data)


def by_name(report: dict) -> dict[str, dict]:
    return {entry["backend"]: entry for entry in report["backends"]}


def test_sync_puts_cars_and_pin_mappings(root: Path, ftp_server: FtpServer) -> None:
    make_backend(root, "ftp-box", ftp_server.config("ftp-box"))
    pins = [content_car(f"ftp {i}") for i in range(2)]
    for cid, data in pins:
        stage(root, cid, data)
    put_pins(root, "ftp-box", [pin_record(root, "ftp-box", cid) for cid, _ in pins])
    report = sync(root, SyncOptions(backends=["ftp-box"]))
    assert report["ok"], report
    base = ftp_server.directory / "pins"
    for cid, data in pins:
        assert (base / "ftp-storage" / "cars" / f"{cid}.car").read_bytes() == data
        assert read_pin(root, "ftp-box", cid)["status"] == "stored"
    assert (base / "pin_mappings.car").read_bytes() == (root / "backends/ftp-box/pin_mappings.car").read_bytes()
    assert not [p for p in base.rglob("*") if ".pinfs-tmp." in p.name]  # STOR went to a temp name, then RNTO
    checked = verify(root, VerifyOptions(backends=["ftp-box"], older_than_days=0, deep=True))
    assert checked["ok"] and checked["totals"]["good"] == 2


def test_ftps_with_the_server_certificate(root: Path, tmp_path: Path, ftps_server: FtpServer) -> None:
    make_backend(root, "ftp-tls", ftps_server.config("ftp-tls"))
    cid, data = content_car("ftps")
    stage(root, cid, data)
    put_pins(root, "ftp-tls", [pin_record(root, "ftp-tls", cid)])
    assert sync(root, SyncOptions(backends=["ftp-tls"]))["ok"]
    assert (ftps_server.directory / "pins/ftp-storage/cars" / f"{cid}.car").read_bytes() == data
    # and it is a heal source for another backend
    (root / "cars" / f"{cid}.car").unlink()
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid)])
    healed = sync(root, SyncOptions(backends=["fs-a"]))
    assert by_name(healed)["fs-a"]["moved"][0]["from"].startswith("backend ftp-tls")


def test_ftps_refuses_an_unknown_certificate(root: Path, tmp_path: Path, ftps_server: FtpServer) -> None:
    config = ftps_server.config("ftp-tls")
    del config["config"]["ca_file"]  # the self-signed certificate is not trusted
    make_backend(root, "ftp-tls", config)
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    cid, data = content_car("untrusted")
    stage(root, cid, data)
    for name in ("ftp-tls", "fs-a"):
        put_pins(root, name, [pin_record(root, name, cid)])
    report = sync(root, SyncOptions())
    assert report["ok"] is False
    assert by_name(report)["fs-a"]["counts"]["moved"] == 1  # the others still sync
    record = read_pin(root, "ftp-tls", cid)
    assert record["status"] == "failed" and "CERTIFICATE_VERIFY_FAILED" in record["metadata"]["last_error"]


@pytest.mark.parametrize(
    ("password", "reason"),
    [("wrong-Secret-0815", "login refused"), (None, f"environment variable {ENV}")],
)
def test_refused_login_or_missing_password_fails_the_pins_and_never_shows_the_secret(
    root: Path,
    tmp_path: Path,
    ftp_server: FtpServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    password: str | None,
    reason: str,
) -> None:
    if password is None:
        monkeypatch.delenv(ENV)
    else:
        monkeypatch.setenv(ENV, password)
    make_backend(root, "ftp-box", ftp_server.config("ftp-box"))
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    cid, data = content_car("login")
    stage(root, cid, data)
    for name in ("ftp-box", "fs-a"):
        put_pins(root, name, [pin_record(root, name, cid)])
    caplog.set_level(logging.DEBUG)
    report = sync(root, SyncOptions())
    assert by_name(report)["fs-a"]["counts"]["moved"] == 1
    record = read_pin(root, "ftp-box", cid)
    assert record["status"] == "failed" and reason in record["metadata"]["last_error"]
    cli = run_pinfs(root, "status", "--detailed", "--json")
    health = json.dumps(reports.health(root))
    secrets = [s for s in (password, PASSWORD) if s]
    for secret in secrets:
        assert_no_secret(secret, root, json.dumps(report), cli.stdout, cli.stderr, health, caplog.text)


def test_size_limit_from_the_config_refuses_the_car_before_sending(root: Path, ftp_server: FtpServer) -> None:
    make_backend(root, "ftp-small", ftp_server.config("ftp-small", base_path="/small", max_file_bytes=100))
    cid, data = content_car("x" * 500)
    stage(root, cid, data)
    put_pins(root, "ftp-small", [pin_record(root, "ftp-small", cid)])
    report = sync(root, SyncOptions(backends=["ftp-small"]))
    record = read_pin(root, "ftp-small", cid)
    assert record["status"] == "failed" and "more than the 100 bytes" in record["metadata"]["last_error"]
    assert report["ok"] is False
    assert not (ftp_server.directory / "small" / "ftp-storage").exists()


def test_describe_never_holds_the_password(root: Path, ftp_server: FtpServer) -> None:
    make_backend(root, "ftp-box", ftp_server.config("ftp-box"))
    driver = driver_for(get_backend(root, "ftp-box"), root)
    assert PASSWORD not in driver.describe() and driver.describe().startswith("ftp://pinfs@127.0.0.1")


@needs_fuse
@pytest.mark.mount
def test_no_secret_in_any_file_of_the_mount(
    root: Path, tmp_path: Path, ftp_server: FtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-Secret-0815"
    monkeypatch.setenv(ENV, wrong)  # the mount process inherits it
    make_backend(root, "ftp-env", ftp_server.config("ftp-env", base_path="/mount-env"))
    literal = ftp_server.config("ftp-literal", base_path="/mount-literal")
    literal["config"]["password"] = PASSWORD  # a password written in the config itself
    del literal["config"]["password_env"]
    make_backend(root, "ftp-literal", literal)
    cids = {}
    for name in ("ftp-env", "ftp-literal"):
        cid, data = content_car(f"mount {name}")
        stage(root, cid, data)
        put_pins(root, name, [pin_record(root, name, cid)])
        cids[name] = cid
    with mounted(root, tmp_path / "mnt") as mount:
        assert write_errno(mount.path(".control", "sync"), b"\n") == errno.EIO  # ftp-env's login is refused
        for name in ("ftp-env", "ftp-literal"):
            assert write_errno(mount.path("backends", name, ".control", "verify"), b"older-than=0 deep\n") in (
                None,
                errno.EIO,
            )
        texts = [path.read_text() for path in sorted(_files(mount.mountpoint))]
    assert read_pin(root, "ftp-literal", cids["ftp-literal"])["status"] == "stored"
    assert "login refused" in read_pin(root, "ftp-env", cids["ftp-env"])["metadata"]["last_error"]
    assert any("login refused" in text for text in texts)  # the reason is there, the secrets are not
    for secret in (wrong, PASSWORD):
        assert_no_secret(secret, root, *texts)


def _files(top: Path) -> list[Path]:
    """Every JSON and text file of the mount, leaving out the pin-mapping data files and CAR listings."""
    found = []
    for path in top.rglob("*"):
        if path.is_symlink() or not path.is_file() or path.suffix in (".parquet", ".car"):
            continue
        found.append(path)
    return found
