"""The Hugging Face driver (huggingface_hub) against the Hub stand-in of tests/hubstandin.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from helpers import assert_no_secret, make_backend, run_pinfs
from hubstandin import TOKEN, HubStandIn
from s3server import content_car, fs_config, pin_record, put_pins, read_pin

from pinfs.ops import reports
from pinfs.ops.sync import SyncOptions, sync
from pinfs.ops.verify import VerifyOptions, verify

ENV = "PINFS_TEST_HF_TOKEN"


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # never the user's cache or stored token


def stage(root: Path, cid: str, data: bytes) -> None:
    (root / "cars").mkdir(exist_ok=True)
    (root / "cars" / f"{cid}.car").write_bytes(data)


def by_name(report: dict) -> dict[str, dict]:
    return {entry["backend"]: entry for entry in report["backends"]}


def pending(root: Path, name: str, seeds: list[str]) -> list[tuple[str, bytes]]:
    pins = [content_car(seed) for seed in seeds]
    for cid, data in pins:
        stage(root, cid, data)
    put_pins(root, name, [pin_record(root, name, cid) for cid, _ in pins])
    return pins


def test_one_commit_of_cars_through_lfs_and_none_when_nothing_moved(root: Path, hub: HubStandIn) -> None:
    make_backend(root, "hf-pins", hub.config("hf-pins", "user/one-commit"))
    pins = pending(root, "hf-pins", ["hf 1", "hf 2"])
    report = sync(root, SyncOptions(backends=["hf-pins"]))
    assert report["ok"], report
    repo = hub.state.repos[("dataset", "user/one-commit")]
    for cid, data in pins:
        assert repo.files[f"cars/{cid}.car"] == data and f"cars/{cid}.car" in repo.lfs
        assert read_pin(root, "hf-pins", cid)["status"] == "stored"
    assert [c["summary"] for c in repo.commits] == ["pinfs sync hf-pins: 2 CARs", "pinfs sync: pin mappings (1 file)"]
    assert repo.files["pin_mappings.car"] == (root / "backends/hf-pins/pin_mappings.car").read_bytes()
    assert sync(root, SyncOptions(backends=["hf-pins"]))["ok"]
    assert len(repo.commits) == 2
    checked = verify(root, VerifyOptions(backends=["hf-pins"], older_than_days=0, deep=True))
    assert checked["ok"] and checked["totals"]["good"] == 2


def test_the_hub_heals_a_filesystem_backend(root: Path, tmp_path: Path, hub: HubStandIn) -> None:
    make_backend(root, "hf-pins", hub.config("hf-pins", "user/heal"))
    [(cid, data)] = pending(root, "hf-pins", ["hf heal"])
    assert sync(root, SyncOptions(backends=["hf-pins"]))["ok"]
    (root / "cars" / f"{cid}.car").unlink()
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid)])
    healed = sync(root, SyncOptions(backends=["fs-a"]))
    assert by_name(healed)["fs-a"]["moved"][0]["from"].startswith("backend hf-pins")
    assert (tmp_path / "store-a" / "fs-a" / "cars" / f"{cid}.car").read_bytes() == data


def test_a_car_missing_from_the_repo_fails_verify(root: Path, hub: HubStandIn) -> None:
    make_backend(root, "hf-pins", hub.config("hf-pins", "user/lost"))
    [(cid, _)] = pending(root, "hf-pins", ["hf lost"])
    assert sync(root, SyncOptions(backends=["hf-pins"]))["ok"]
    repo = hub.state.repos[("dataset", "user/lost")]
    repo.files[f"cars/{cid}.car"] = b"not the CAR"  # someone replaced it
    repo.lfs.discard(f"cars/{cid}.car")
    report = verify(root, VerifyOptions(backends=["hf-pins"], older_than_days=0))
    assert report["totals"]["failed"] == 1
    assert "bytes" in read_pin(root, "hf-pins", cid)["metadata"]["last_error"]


def test_a_bad_token_fails_the_pins_and_never_shows(
    root: Path, tmp_path: Path, hub: HubStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "hf_WrongToken9876543210"
    monkeypatch.setenv(ENV, wrong)
    make_backend(root, "hf-pins", hub.config("hf-pins", "user/auth"))
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    [(cid, _)] = pending(root, "hf-pins", ["hf auth"])
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid)])
    caplog.set_level(logging.DEBUG)
    report = sync(root, SyncOptions())
    assert by_name(report)["fs-a"]["counts"]["moved"] == 1
    record = read_pin(root, "hf-pins", cid)
    assert record["status"] == "failed" and "401" in record["metadata"]["last_error"]
    assert ("dataset", "user/auth") not in hub.state.repos
    cli = run_pinfs(root, "status", "--detailed", "--json")
    for secret in (wrong, TOKEN):
        assert_no_secret(secret, root, json.dumps(report), cli.stdout, cli.stderr, json.dumps(reports.health(root)))
        assert secret not in caplog.text


def test_the_cli_syncs_to_the_hub(root: Path, hub: HubStandIn) -> None:
    make_backend(root, "hf-pins", hub.config("hf-pins", "user/cli", repo_type="model"))
    [(cid, data)] = pending(root, "hf-pins", ["hf cli"])
    result = run_pinfs(root, "sync", "--json")
    assert result.returncode == 0, result.stderr
    assert hub.state.repos[("model", "user/cli")].files[f"cars/{cid}.car"] == data


def test_a_dry_run_creates_no_repository(root: Path, hub: HubStandIn) -> None:
    make_backend(root, "hf-pins", hub.config("hf-pins", "user/dry"))
    [(cid, _)] = pending(root, "hf-pins", ["hf dry"])
    report = sync(root, SyncOptions(backends=["hf-pins"], dry_run=True))
    assert [item["cid"] for item in by_name(report)["hf-pins"]["would_move"]] == [cid]
    assert ("dataset", "user/dry") not in hub.state.repos
