"""Tests for pinfs.ops.drivers: keys, the filesystem driver and the S3 driver against a local moto server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import make_backend
from s3server import S3Server, fs_config, s3_backend_config, s3_server  # noqa: F401 (fixture)

from pinfs.data.backends import get_backend
from pinfs.errors import CorruptData, NotFound, Unsupported
from pinfs.ops.drivers import DriverError, FilesystemDriver, S3Driver, driver_for, key_for


@pytest.mark.parametrize(
    ("path", "key"),
    [("/s3-bucket/cars/x.car", "s3-bucket/cars/x.car"), ("a/b.car", "a/b.car"), ("//x//", "x")],
)
def test_key_for(path: str, key: str | None) -> None:
    if key is None:
        with pytest.raises(CorruptData):
            key_for(path)
    else:
        assert key_for(path) == key


@pytest.mark.parametrize("path", ["", "/", "/a//b", "/../etc/passwd", "/a/../../b", "/a/./b", "a\0b", "a\\b"])
def test_unsafe_keys_are_refused(path: str) -> None:
    with pytest.raises(CorruptData):
        key_for(path)


def test_filesystem_driver(root: Path, tmp_path: Path) -> None:
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store"))
    driver = driver_for(get_backend(root, "fs-a"), root)
    assert isinstance(driver, FilesystemDriver)
    driver.check()  # creates the directory of a local backend
    assert (tmp_path / "store").is_dir()
    assert driver.size("fs-a/cars/x.car") is None and not driver.exists("fs-a/cars/x.car")
    driver.put("/fs-a/cars/x.car", b"hello")
    assert driver.get("fs-a/cars/x.car") == b"hello"
    assert driver.size("fs-a/cars/x.car") == 5 and driver.exists("fs-a/cars/x.car")
    driver.put("fs-a/cars/x.car", b"replaced")
    assert (tmp_path / "store" / "fs-a" / "cars" / "x.car").read_bytes() == b"replaced"
    assert driver.list() == ["fs-a/cars/x.car"] and driver.list("fs-a/cars") == ["fs-a/cars/x.car"]
    assert sorted(p.name for p in (tmp_path / "store" / "fs-a" / "cars").iterdir()) == ["x.car"]  # no temp left
    with pytest.raises(NotFound):
        driver.get("fs-a/cars/missing.car")
    with pytest.raises(CorruptData):
        driver.put("../escape.car", b"x")
    assert not (tmp_path / "escape.car").exists()


def test_relative_storage_path_is_under_the_root(root: Path) -> None:
    make_backend(root, "local-rel", {"type": "local", "storage_path": "storage/rel"})
    driver = driver_for(get_backend(root, "local-rel"), root)
    assert driver.describe() == str(root / "storage" / "rel")


def test_sshfs_mount_point_must_exist(root: Path, tmp_path: Path) -> None:
    make_backend(root, "sshfs-box", fs_config("sshfs-box", tmp_path / "not-mounted", "sshfs"))
    driver = driver_for(get_backend(root, "sshfs-box"), root)
    with pytest.raises(DriverError, match="not a directory"):
        driver.check()
    assert not (tmp_path / "not-mounted").exists()


@pytest.mark.parametrize("kind", ["tape", "unknown"])
def test_types_without_a_driver_are_unsupported(root: Path, kind: str) -> None:
    make_backend(root, "other", {"name": "other", "type": kind})
    with pytest.raises(Unsupported):
        driver_for(get_backend(root, "other"), root)


def test_backend_without_config_is_unsupported_and_missing_settings_are_errors(root: Path) -> None:
    make_backend(root, "fs-noconf")
    with pytest.raises(Unsupported, match="no config"):
        driver_for(get_backend(root, "fs-noconf"), root)
    make_backend(root, "fs-empty", {"type": "filesystem"})
    with pytest.raises(DriverError, match="storage_path"):
        driver_for(get_backend(root, "fs-empty"), root)
    make_backend(root, "s3-nobucket", {"type": "s3", "endpoint": "http://127.0.0.1:1"})
    with pytest.raises(DriverError, match="bucket"):
        driver_for(get_backend(root, "s3-nobucket"), root)
    make_backend(root, "s3-halfkey", {"type": "s3", "bucket": "b", "access_key": "x"})
    with pytest.raises(DriverError, match="together"):
        driver_for(get_backend(root, "s3-halfkey"), root)


@pytest.mark.s3
def test_s3_driver(root: Path, s3_server: S3Server) -> None:  # noqa: F811
    make_backend(root, "s3-main", s3_server.config("s3-main", prefix="pins/main"))
    driver = driver_for(get_backend(root, "s3-main"), root)
    assert isinstance(driver, S3Driver)
    driver.check()
    key = "s3-bucket/cars/abc.car"
    assert driver.size(key) is None and not driver.exists(key)
    driver.put("/" + key, b"car bytes")
    assert driver.get(key) == b"car bytes" and driver.size(key) == 9 and driver.exists(key)
    objects = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="pins/main/")["Contents"]
    assert [o["Key"] for o in objects] == ["pins/main/s3-bucket/cars/abc.car"]
    assert driver.list() == [key] and driver.list("s3-bucket") == [key]
    with pytest.raises(NotFound):
        driver.get("s3-bucket/cars/missing.car")


@pytest.mark.s3
def test_s3_missing_bucket(root: Path, s3_server: S3Server) -> None:  # noqa: F811
    make_backend(root, "s3-x", s3_backend_config("s3-x", s3_server.endpoint, "no-such-bucket"))
    with pytest.raises(DriverError, match="does not exist"):
        driver_for(get_backend(root, "s3-x"), root).check()


def test_s3_unreachable_endpoint_fails_fast(root: Path) -> None:
    make_backend(root, "s3-down", s3_backend_config("s3-down", "http://127.0.0.1:1", "bucket"))
    driver = driver_for(get_backend(root, "s3-down"), root)
    started = time.monotonic()
    with pytest.raises(DriverError, match="127.0.0.1:1"):
        driver.check()
    with pytest.raises(DriverError):
        driver.put("x/y.car", b"data")
    assert time.monotonic() - started < 30  # a hang guard: refused connections fail in well under a second


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "ftp"}, "no 'host'"),
        ({"type": "ftp", "host": "127.0.0.1", "port": "ftp"}, "not a TCP port"),
        ({"type": "ftp", "host": "127.0.0.1", "password_env": "PINFS_TEST_UNSET_VARIABLE"}, "is not set"),
        ({"type": "github"}, "no 'repo_url'"),
        ({"type": "github", "repo_url": "https://user:ghp_x@github.com/o/r.git"}, "not in repo_url"),
        ({"type": "github", "repo_url": "file:///x", "branch": "a..b"}, "not a valid branch"),
        ({"type": "huggingface", "repo_id": "no-owner"}, "not 'owner/name'"),
        ({"type": "huggingface", "repo_id": "o/n", "repo_type": "notebook"}, "repo_type must be one of"),
        ({"type": "ipfs", "api": "ftp://127.0.0.1:5001"}, "not an http(s) URL"),
        ({"type": "storacha", "space_did": "did:web:x", "principal_env": "A", "proof_env": "B"}, "not a did:key"),
        ({"type": "storacha", "space_did": "did:key:z6Mk"}, "no credential ('principal_env')"),
        ({"type": "filesystem", "storage_path": "/tmp", "max_file_bytes": -1}, "max_file_bytes"),
    ],
)
def test_misconfigured_backends_name_the_setting(root: Path, config: dict, message: str) -> None:
    make_backend(root, "b", config)
    with pytest.raises(DriverError) as caught:
        driver_for(get_backend(root, "b"), root)
    assert message in str(caught.value)


def test_a_github_repo_may_be_given_as_owner_and_name(root: Path) -> None:
    make_backend(root, "github-mirror", {"type": "github", "config": {"repo": "example/pins"}})
    assert (
        driver_for(get_backend(root, "github-mirror"), root).describe()
        == "https://github.com/example/pins.git branch main"
    )


def test_secrets_are_scrubbed_from_messages_in_every_form() -> None:
    from pinfs.ops.drivers.base import Secrets

    secrets = Secrets()
    secrets.add("s3cr3t-value")
    secrets.add("x-access-token:tok")
    text = secrets.error("login failed", "user s3cr3t-value header Basic eC1hY2Nlc3MtdG9rZW46dG9r").args[0]
    assert text == "login failed (user *** header Basic ***)"
