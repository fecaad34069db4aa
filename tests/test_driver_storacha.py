"""The Storacha driver (@storacha/client through pinfs's Node helper) against a local Storacha
service: the real upload-api handlers (tests/npm/storacha/server.mjs) on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from helpers import assert_no_secret, make_backend, run_pinfs
from s3server import content_car, fs_config, pin_record, put_pins, read_pin
from storachaserver import PRINCIPAL_ENV, PROOF_ENV, StorachaService

from pinfs.ops import reports
from pinfs.ops.sync import SyncOptions, sync
from pinfs.ops.verify import VerifyOptions, verify

pytestmark = pytest.mark.npm  # its server comes from tests/npm/, installed by scripts/test


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


@pytest.fixture
def space(storacha: StorachaService, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    made = storacha.new_space()
    monkeypatch.setenv(PRINCIPAL_ENV, made["principal"])
    monkeypatch.setenv(PROOF_ENV, made["proof"])
    return made


def test_sync_uploads_the_cars_to_the_space(root: Path, storacha: StorachaService, space: dict[str, str]) -> None:
    make_backend(root, "storacha-main", storacha.config("storacha-main", space["space"]))
    pins = pending(root, "storacha-main", ["st 1", "st 2"])
    report = sync(root, SyncOptions(backends=["storacha-main"]))
    assert report["ok"], report
    assert sorted(storacha.uploads()[space["space"]]) == sorted(cid for cid, _ in pins)
    for cid, _ in pins:
        assert read_pin(root, "storacha-main", cid)["status"] == "stored"
    checked = verify(root, VerifyOptions(backends=["storacha-main"], older_than_days=0))
    assert checked["ok"] and checked["totals"]["good"] == 2


def test_an_upload_missing_from_the_space_fails_verify(
    root: Path, storacha: StorachaService, space: dict[str, str]
) -> None:
    make_backend(root, "storacha-main", storacha.config("storacha-main", space["space"]))
    [(cid, _)] = pending(root, "storacha-main", ["st uploaded"])
    assert sync(root, SyncOptions(backends=["storacha-main"]))["ok"]
    put_pins(root, "storacha-main", [pin_record(root, "storacha-main", content_car("never")[0], "stored")])
    report = verify(root, VerifyOptions(backends=["storacha-main"], older_than_days=0))
    assert report["totals"] == {"checked": 2, "good": 1, "failed": 1, "skipped": 0, "errors": 0}


def test_an_unprovisioned_space_fails_the_pins_and_no_secret_shows(
    root: Path,
    tmp_path: Path,
    storacha: StorachaService,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    made = storacha.new_space(provision=False)
    monkeypatch.setenv(PRINCIPAL_ENV, made["principal"])
    monkeypatch.setenv(PROOF_ENV, made["proof"])
    make_backend(root, "storacha-main", storacha.config("storacha-main", made["space"]))
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    [(cid, _)] = pending(root, "storacha-main", ["st refused"])
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid)])
    caplog.set_level(logging.DEBUG)
    report = sync(root, SyncOptions())
    assert by_name(report)["fs-a"]["counts"]["moved"] == 1
    record = read_pin(root, "storacha-main", cid)
    assert record["status"] == "failed" and "put failed" in record["metadata"]["last_error"]
    cli = run_pinfs(root, "status", "--detailed", "--json")
    for secret in (made["principal"], made["proof"]):
        assert_no_secret(secret, root, json.dumps(report), cli.stdout, cli.stderr, json.dumps(reports.health(root)))
        assert secret not in caplog.text


def test_a_missing_proof_or_a_proof_for_another_space_fails_the_pins(
    root: Path, storacha: StorachaService, space: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = storacha.new_space()
    make_backend(root, "storacha-main", storacha.config("storacha-main", other["space"]))
    [(cid, _)] = pending(root, "storacha-main", ["st wrong space"])
    sync(root, SyncOptions())
    assert "the proof is for space" in read_pin(root, "storacha-main", cid)["metadata"]["last_error"]
    monkeypatch.delenv(PROOF_ENV)
    sync(root, SyncOptions())
    assert f"environment variable {PROOF_ENV}" in read_pin(root, "storacha-main", cid)["metadata"]["last_error"]
