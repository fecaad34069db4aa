"""Backend discovery and configs, CAR path templates and CID validation (CONTRACT §1)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from helpers import _base58, cid_for, make_backend

from pinfs.data.backends import discover_backends, get_backend, type_from_name
from pinfs.data.cids import cid_problem, is_valid_cid, validate_cid
from pinfs.data.schema import car_path_for
from pinfs.errors import InvalidInput, NotFound


def _names(root: Path) -> list[str]:
    return [backend.name for backend in discover_backends(root)[0]]


# -- discovery --


def test_directory_is_a_backend(root: Path) -> None:
    make_backend(root, "plain")
    assert _names(root) == ["plain"]


def test_config_in_backends_dir_is_a_backend(root: Path) -> None:
    (root / "backends" / "cfg-only.yaml").write_text("type: s3\nbucket: b\n")
    backends, problems = discover_backends(root)
    assert [(b.name, b.type) for b in backends] == [("cfg-only", "s3")]
    assert problems == []


def test_config_in_backend_configs_dir_is_a_backend(root: Path) -> None:
    (root / "backend_configs").mkdir()
    (root / "backend_configs" / "other.yaml").write_text("type: github\n")
    backends, _ = discover_backends(root)
    assert [(b.name, b.type) for b in backends] == [("other", "github")]


def test_directory_and_config_are_one_backend(root: Path) -> None:
    make_backend(root, "both", config={"type": "ftp"})
    backends, _ = discover_backends(root)
    assert [(b.name, b.type) for b in backends] == [("both", "ftp")]


def test_backend_configs_dir_config_applies_to_directory(root: Path) -> None:
    make_backend(root, "data")
    (root / "backend_configs").mkdir()
    (root / "backend_configs" / "data.yaml").write_text("type: storacha\n")
    assert get_backend(root, "data").type == "storacha"


# -- types --


def test_type_from_config_wins_over_name(root: Path) -> None:
    make_backend(root, "my-s3", config={"type": "filesystem"})
    assert get_backend(root, "my-s3").type == "filesystem"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sshfs-x", "sshfs"),
        ("sftp", "unknown"),
        ("my-s3", "s3"),
        ("s3", "s3"),
        ("backup_ftp", "ftp"),
        ("hf-models", "huggingface"),
        ("github-main", "github"),
        ("mys3", "unknown"),
        ("s3x", "unknown"),
    ],
)
def test_type_from_name_matches_whole_words(name: str, expected: str) -> None:
    assert type_from_name(name) == expected


def test_type_from_name_when_config_has_no_type(root: Path) -> None:
    make_backend(root, "sshfs-x", config={"storage_path": "/mnt/x"})
    assert get_backend(root, "sshfs-x").type == "sshfs"


# -- settings --


def test_setting_at_top_level(root: Path) -> None:
    make_backend(root, "s3-a", config={"type": "s3", "bucket": "top"})
    assert get_backend(root, "s3-a").setting("bucket") == "top"


def test_setting_under_config_key(root: Path) -> None:
    make_backend(root, "s3-b", config={"type": "s3", "config": {"bucket": "nested", "region": "eu"}})
    backend = get_backend(root, "s3-b")
    assert (backend.setting("bucket"), backend.setting("region")) == ("nested", "eu")


def test_enabled_false_is_read(root: Path) -> None:
    make_backend(root, "off", config={"enabled": False})
    assert get_backend(root, "off").enabled is False


# -- bad entries --


def test_invalid_directory_name_is_reported_not_listed(root: Path) -> None:
    make_backend(root, "good")
    (root / "backends" / "Bad Name").mkdir()
    backends, problems = discover_backends(root)
    assert [b.name for b in backends] == ["good"]
    assert len(problems) == 1 and "Bad Name" in problems[0].location


def test_invalid_config_name_is_reported(root: Path) -> None:
    (root / "backends" / "UPPER.yaml").write_text("type: s3\n")
    backends, problems = discover_backends(root)
    assert backends == [] and "UPPER" in problems[0].reason


def test_symlinked_backend_directory_is_reported_not_followed(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "backends" / "linked")
    backends, problems = discover_backends(root)
    assert backends == []
    assert "symlink" in problems[0].reason


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "Upper", "-lead", "x" * 65, "a\n", "a\0b"])
def test_get_backend_refuses_bad_names(root: Path, name: str) -> None:
    with pytest.raises(InvalidInput):
        get_backend(root, name)


def test_get_backend_of_unknown_name_is_not_found(root: Path) -> None:
    with pytest.raises(NotFound):
        get_backend(root, "nothing-here")


def test_broken_yaml_is_reported_on_that_backend_only(root: Path) -> None:
    make_backend(root, "good", config={"type": "s3"})
    make_backend(root, "broken")
    (root / "backends" / "broken.yaml").write_text("type: [unclosed\n  : :")
    backends = {b.name: b for b in discover_backends(root)[0]}
    assert set(backends) == {"broken", "good"}
    assert backends["broken"].config_error and "broken.yaml" in backends["broken"].config_error
    assert backends["good"].config_error is None and backends["good"].type == "s3"


def test_config_that_is_not_a_mapping_is_reported(root: Path) -> None:
    make_backend(root, "listy")
    (root / "backends" / "listy.yaml").write_text("- a\n- b\n")
    assert "mapping" in get_backend(root, "listy").config_error


# -- CAR path templates --


@pytest.mark.parametrize(
    ("backend_type", "expected"),
    [
        ("s3", "/s3-bucket/cars/{cid}.car"),
        ("github", "/github-repo/cars/{cid}.car"),
        ("storacha", "/storacha/{cid}.car"),
        ("huggingface", "/hf-repo/cars/{cid}.car"),
        ("ftp", "/ftp-storage/cars/{cid}.car"),
        ("sshfs", "/sshfs-mount/cars/{cid}.car"),
        ("filesystem", "/my-back/cars/{cid}.car"),
        ("unknown", "/my-back/cars/{cid}.car"),
    ],
)
def test_car_path_template(backend_type: str, expected: str) -> None:
    cid = cid_for(1)
    assert car_path_for(backend_type, "my-back", cid) == expected.format(cid=cid)


# -- CIDs --

_DIGEST = hashlib.sha256(b"x").digest()
_V1_BYTES = bytes([1, 0x55, 0x12, 0x20]) + _DIGEST


@pytest.mark.parametrize(
    "cid",
    [
        cid_for(1, version=0),  # CIDv0 Qm…
        cid_for(1),  # CIDv1 base32 b…
        "z" + _base58(_V1_BYTES),  # CIDv1 base58btc
        "f" + _V1_BYTES.hex(),  # CIDv1 base16
        "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",  # a well-known real CIDv0
    ],
)
def test_valid_cids(cid: str) -> None:
    assert cid_problem(cid) is None
    assert validate_cid(cid) == cid


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "Qm123",
        cid_for(1)[:-4],  # truncated
        " " + cid_for(1),
        cid_for(1) + "\n",
        "f" + (bytes([1, 0x55, 0x12, 0x1F]) + _DIGEST[:31]).hex(),  # sha2-256 with a 31-byte digest
        "f" + (bytes([1, 0x55, 0x12, 0x20]) + _DIGEST[:31]).hex(),  # length says 32, digest has 31
        "b" + "a" * 300,
        None,
        42,
    ],
)
def test_invalid_cids(text: object) -> None:
    assert not is_valid_cid(text)
    with pytest.raises(InvalidInput):
        validate_cid(text)
