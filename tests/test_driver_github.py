"""The GitHub driver (git itself) against real git servers on 127.0.0.1: smart HTTP with basic auth
(``git http-backend``), ``git daemon`` and ``file://``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from gitserver import TOKEN, GitServers, blob, commit_count, files_at, git
from helpers import assert_no_secret, make_backend, run_pinfs
from s3server import content_car, fs_config, pin_record, put_pins, read_pin

from pinfs.ops import reports
from pinfs.ops.sync import SyncOptions, sync
from pinfs.ops.verify import VerifyOptions, verify

ENV = "PINFS_TEST_GITHUB_TOKEN"


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, TOKEN)


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


@pytest.mark.parametrize("transport", ["http", "daemon", "file"])
def test_one_commit_of_cars_per_sync_and_none_when_nothing_moved(
    root: Path,
    git_servers: GitServers,
    transport: str,
) -> None:
    repo = git_servers.new_repo(f"pins-{transport}")
    extra = {"token_env": ENV} if transport == "http" else {}
    make_backend(root, "github-repo", GitServers.config("github-repo", repo[transport], **extra))
    pins = pending(root, "github-repo", ["gh 1", "gh 2", "gh 3"])
    report = sync(root, SyncOptions(backends=["github-repo"]))
    assert report["ok"], report
    assert sorted(files_at(repo["path"])) == sorted([f"cars/{cid}.car" for cid, _ in pins] + ["pin_mappings.car"])
    for cid, data in pins:
        assert blob(repo["path"], f"cars/{cid}.car") == data
        assert read_pin(root, "github-repo", cid)["status"] == "stored"
    # the three CARs are one commit; the backend's pin_mappings.car (written after them) the other
    log = git("-C", repo["path"], "log", "--format=%s", "main").splitlines()
    assert log == ["pinfs sync: pin mappings (1 file)", "pinfs sync github-repo: 3 CARs"]
    again = sync(root, SyncOptions(backends=["github-repo"]))
    assert again["ok"] and commit_count(repo["path"]) == 2
    checked = verify(root, VerifyOptions(backends=["github-repo"], older_than_days=0, deep=True))
    assert checked["ok"] and checked["totals"]["good"] == 3


def test_git_heals_a_filesystem_backend(root: Path, tmp_path: Path, git_servers: GitServers) -> None:
    repo = git_servers.new_repo("heal")
    make_backend(root, "github-repo", GitServers.config("github-repo", repo["daemon"]))
    [(cid, data)] = pending(root, "github-repo", ["heal me"])
    assert sync(root, SyncOptions(backends=["github-repo"]))["ok"]
    (root / "cars" / f"{cid}.car").unlink()
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid)])
    healed = sync(root, SyncOptions(backends=["fs-a"]))
    assert by_name(healed)["fs-a"]["moved"][0]["from"].startswith("backend github-repo")
    assert (tmp_path / "store-a" / "fs-a" / "cars" / f"{cid}.car").read_bytes() == data


def test_a_commit_pushed_by_someone_else_is_kept(root: Path, tmp_path: Path, git_servers: GitServers) -> None:
    repo = git_servers.new_repo("shared")
    make_backend(root, "github-repo", GitServers.config("github-repo", repo["file"]))
    pending(root, "github-repo", ["first"])
    assert sync(root, SyncOptions(backends=["github-repo"]))["ok"]
    other = tmp_path / "other"
    git("clone", "--quiet", repo["file"], str(other))
    (other / "README.md").write_text("kept\n")
    git("-C", str(other), "add", "README.md")
    git("-C", str(other), "-c", "user.name=x", "-c", "user.email=x@y", "commit", "--quiet", "-m", "readme")
    git("-C", str(other), "push", "--quiet", "origin", "HEAD:main")
    [(cid, _)] = pending(root, "github-repo", ["second"])
    assert sync(root, SyncOptions(backends=["github-repo"]))["ok"]
    files = files_at(repo["path"])
    assert "README.md" in files and f"cars/{cid}.car" in files


def test_a_bad_token_fails_the_pins_and_never_shows(
    root: Path,
    tmp_path: Path,
    git_servers: GitServers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "ghp_WrongToken9876543210"
    monkeypatch.setenv(ENV, wrong)
    repo = git_servers.new_repo("auth")
    make_backend(root, "github-repo", GitServers.config("github-repo", repo["http"], token_env=ENV))
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    [(cid, _)] = pending(root, "github-repo", ["auth"])
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid)])
    caplog.set_level(logging.DEBUG)
    report = sync(root, SyncOptions())
    assert by_name(report)["fs-a"]["counts"]["moved"] == 1
    record = read_pin(root, "github-repo", cid)
    assert record["status"] == "failed" and "Authentication failed" in record["metadata"]["last_error"]
    assert git("-C", repo["path"], "for-each-ref") == ""  # nothing was pushed
    cli = run_pinfs(root, "status", "--detailed", "--json")
    for secret in (wrong, TOKEN):
        assert_no_secret(secret, root, json.dumps(report), cli.stdout, cli.stderr, json.dumps(reports.health(root)))
        assert secret not in caplog.text


def test_files_above_the_limit_are_refused_before_anything_is_sent(root: Path, git_servers: GitServers) -> None:
    repo = git_servers.new_repo("limit")
    make_backend(root, "github-repo", GitServers.config("github-repo", repo["file"], max_file_bytes=200))
    [(big, _)] = pending(root, "github-repo", ["y" * 400])
    [(small, _)] = pending(root, "github-repo", ["small"])
    report = sync(root, SyncOptions(backends=["github-repo"]))
    assert report["ok"] is False
    assert "more than the 200 bytes github takes" in read_pin(root, "github-repo", big)["metadata"]["last_error"]
    assert read_pin(root, "github-repo", small)["status"] == "stored"
    assert f"cars/{big}.car" not in files_at(repo["path"])


def test_unreachable_server_fails_the_pins(root: Path) -> None:
    make_backend(root, "github-repo", GitServers.config("github-repo", "http://127.0.0.1:1/x.git"))
    [(cid, _)] = pending(root, "github-repo", ["down"])
    report = sync(root, SyncOptions())
    assert report["ok"] is False
    record = read_pin(root, "github-repo", cid)
    assert record["status"] == "failed" and "cannot reach the repository" in record["metadata"]["last_error"]
