"""End to end: sync, verify and regenerate-car through a real mount's control files (issue 5), the
mount's reports against the CLI's, and the mount's scheduled duties (``--sync-interval``,
``--verify-interval``).

One moto S3 server for the module. Control-file tests share one mount (``ops``), each with its own
backends and naming them with ``backend=`` so they never act on each other's; the unreachable-S3 test
and the scheduled-duty tests run whole-root operations, so each has its own root and mount.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ago, file_digests, make_backend, run_pinfs
from mounting import Mount, force_unmount, mounted, needs_fuse, sh, start_mount, write_errno
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

from pinfs.data.car import read_pin_mappings_car
from pinfs.fs.mount import is_mounted

pytestmark = [pytest.mark.mount, needs_fuse]

# Declared for the mounts whose duties are meant to find failures (the duty logs them as warnings).
DUTY_WARNINGS = ("scheduled verify",)


# -- helpers --


def stage(root: Path, cid: str, data: bytes) -> None:
    """Put a content CAR where sync looks first: ROOT/cars/<cid>.car."""
    (root / "cars").mkdir(exist_ok=True)
    (root / "cars" / f"{cid}.car").write_bytes(data)


def place(storage: Path, backend: str, cid: str, data: bytes) -> Path:
    """Put a content CAR at its place on a filesystem backend's storage."""
    path = storage / backend / "cars" / f"{cid}.car"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_control(path: Path, line: str) -> int | None:
    """``echo line > path``, returning the errno the write or close failed with, or None."""
    return write_errno(path, (line + "\n").encode())


def control_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["backend"]: entry for entry in report["backends"]}


def wait_for(condition: Any, timeout: float = 3.0) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def status_file(mount: Mount, backend: str, cid: str) -> str:
    try:
        return mount.path("backends", backend, "by-cid", cid, "status").read_text()
    except OSError:
        return ""


def in_by_status(mount: Mount, backend: str, status: str, cid: str) -> bool:
    return cid in os.listdir(mount.path("backends", backend, "by-status", status))


def data_digests(root: Path) -> dict[str, str]:
    return {name: digest for name, digest in file_digests(root).items() if not name.endswith(".pinfs.lock")}


def mount_report(mount: Mount, name: str) -> dict[str, Any]:
    return json.loads(mount.path(name).read_text())


def cli_report(root: Path, *args: str) -> dict[str, Any]:
    result = run_pinfs(root, *args, "--json")  # exit 1 when a backend is degraded: still a report
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def without_report_time(value: Any) -> Any:
    """A report without the time it was made (``checked_at``/``generated_at``)."""
    if isinstance(value, dict):
        return {k: without_report_time(v) for k, v in value.items() if k not in ("checked_at", "generated_at")}
    if isinstance(value, list):
        return [without_report_time(item) for item in value]
    return value


# -- one shared mount for the control-file tests --


class Env:
    """The shared root of the control-file tests. It does not start S3: only the tests that use S3
    ask for the ``s3_server`` fixture (issue #14: no other test depends on it)."""

    def __init__(self, root: Path, storage: Path) -> None:
        self.root, self.storage = root, storage
        self.s3: S3Server | None = None

    def fs_backend(self, name: str) -> Path:
        """A filesystem backend ``name`` storing under ``storage/<name>``; returns its storage path."""
        storage = self.storage / name
        make_backend(self.root, name, fs_config(name, storage))
        return storage

    def s3_backend(self, s3: S3Server, name: str) -> str:
        """An S3 backend ``name`` on the moto server, under its own prefix; returns the prefix."""
        self.s3 = s3
        make_backend(self.root, name, s3.config(name, prefix=name))
        return name

    def s3_keys(self, prefix: str) -> set[str]:
        assert self.s3 is not None
        listing = self.s3.client().list_objects_v2(Bucket=self.s3.bucket, Prefix=f"{prefix}/")
        return {item["Key"] for item in listing.get("Contents", [])}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    base = tmp_path_factory.mktemp("ops")
    root = base / "ipfs_kit"
    (root / "backends").mkdir(parents=True)
    return Env(root, base / "storage")


@pytest.fixture(scope="module")
def ops(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    with mounted(env.root, tmp_path_factory.mktemp("ops-mnt") / "m") as mount:
        yield mount


# -- sync --


def test_root_sync_moves_pending_pins_to_filesystem_and_s3(
    env: Env,
    ops: Mount,
    s3_server: S3Server,  # noqa: F811
) -> None:
    storage = env.fs_backend("fs-sync")
    prefix = env.s3_backend(s3_server, "s3-sync")
    (fs_cid, fs_data), (s3_cid, s3_data) = content_car("fs-sync"), content_car("s3-sync")
    stage(env.root, fs_cid, fs_data)
    stage(env.root, s3_cid, s3_data)
    put_pins(env.root, "fs-sync", [pin_record(env.root, "fs-sync", fs_cid)])
    put_pins(env.root, "s3-sync", [pin_record(env.root, "s3-sync", s3_cid)])
    wait_for(lambda: status_file(ops, "s3-sync", s3_cid) == "pending\n")
    control = ops.path(".control", "sync")

    result = sh(f"echo 'backend=fs-sync backend=s3-sync' > {control}")

    assert result.returncode == 0, result.stderr
    state = control_json(control)
    assert state["state"] == "succeeded" and state["error"] is None
    assert state["args"] == {"backends": ["fs-sync", "s3-sync"]}
    entries = by_name(state["result"])
    assert set(entries) == {"fs-sync", "s3-sync"}
    for name, cid in (("fs-sync", fs_cid), ("s3-sync", s3_cid)):
        assert entries[name]["ok"] and entries[name]["state"] == "synced"
        assert entries[name]["counts"]["moved"] == 1 and [m["cid"] for m in entries[name]["moved"]] == [cid]
        wait_for(lambda name=name, cid=cid: status_file(ops, name, cid) == "stored\n")
        assert in_by_status(ops, name, "stored", cid) and not in_by_status(ops, name, "pending", cid)
    assert (storage / "fs-sync" / "cars" / f"{fs_cid}.car").read_bytes() == fs_data
    key = f"{prefix}/s3-bucket/cars/{s3_cid}.car"
    assert key in env.s3_keys(prefix)
    assert s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == s3_data
    pin = json.loads(ops.path("backends", "s3-sync", "by-cid", s3_cid, "pin.json").read_text())
    assert pin["status"] == "stored"
    assert json.loads(ops.path("backends", "s3-sync", "by-cid", s3_cid, "metadata.json").read_text())["size"] == len(
        s3_data
    )


def test_backend_sync_dry_run_moves_nothing_then_sync_moves(env: Env, ops: Mount) -> None:
    storage = env.fs_backend("fs-dry")
    cid, data = content_car("fs-dry")
    stage(env.root, cid, data)
    put_pins(env.root, "fs-dry", [pin_record(env.root, "fs-dry", cid)])
    control = ops.path("backends", "fs-dry", ".control", "sync")
    before = data_digests(env.root)

    assert write_control(control, "dry-run") is None

    state = control_json(control)
    assert state["state"] == "succeeded" and state["args"] == {"backends": ["fs-dry"], "dry_run": True}
    entry = by_name(state["result"])["fs-dry"]
    assert entry["state"] == "dry-run" and [item["cid"] for item in entry["would_move"]] == [cid]
    assert data_digests(env.root) == before
    assert not (storage / "fs-dry" / "cars" / f"{cid}.car").exists()
    assert status_file(ops, "fs-dry", cid) == "pending\n" and in_by_status(ops, "fs-dry", "pending", cid)

    assert write_control(control, "") is None

    state = control_json(control)
    assert state["state"] == "succeeded" and state["args"] == {"backends": ["fs-dry"]}
    assert by_name(state["result"])["fs-dry"]["counts"]["moved"] == 1
    assert (storage / "fs-dry" / "cars" / f"{cid}.car").read_bytes() == data
    wait_for(lambda: status_file(ops, "fs-dry", cid) == "stored\n")


# -- verify, then sync heals --


def test_verify_catches_a_deleted_car_and_the_next_sync_heals_it(env: Env, ops: Mount) -> None:
    pins = [content_car(f"heal-{i}") for i in range(2)]
    storages = {}
    for name in ("fs-heal-a", "fs-heal-b"):
        storages[name] = env.fs_backend(name)
        for cid, data in pins:
            place(storages[name], name, cid, data)
        # just synced: sizes recorded, verified a moment ago (so only older-than=0 looks at them)
        put_pins(
            env.root,
            name,
            [
                pin_record(env.root, name, cid, "stored", metadata={"size": len(data)}, verified_at=ago())
                for cid, data in pins
            ],
        )
    lost_cid, lost_data = pins[1]
    lost = storages["fs-heal-a"] / "fs-heal-a" / "cars" / f"{lost_cid}.car"
    lost.unlink()
    verify_control = ops.path("backends", "fs-heal-a", ".control", "verify")

    # default threshold (7 days): nothing is due, nothing is found
    assert write_control(verify_control, "") is None
    assert by_name(control_json(verify_control)["result"])["fs-heal-a"]["counts"]["checked"] == 0
    assert status_file(ops, "fs-heal-a", lost_cid) == "stored\n"

    # older-than=0: everything is checked; a missing CAR is a failed run (EIO), the pin is failed
    assert write_control(verify_control, "older-than=0") == errno.EIO

    state = control_json(verify_control)
    assert state["state"] == "failed" and state["error"]
    assert state["args"] == {"backends": ["fs-heal-a"], "older_than_days": 0.0}
    entry = by_name(state["result"])["fs-heal-a"]
    assert entry["counts"] == {"checked": 2, "good": 1, "failed": 1, "skipped": 0}
    assert [item["cid"] for item in entry["failed"]] == [lost_cid] and "missing" in entry["failed"][0]["error"]
    wait_for(lambda: in_by_status(ops, "fs-heal-a", "failed", lost_cid))
    assert status_file(ops, "fs-heal-a", lost_cid) == "failed\n"
    assert (
        "missing"
        in json.loads(ops.path("backends", "fs-heal-a", "by-cid", lost_cid, "metadata.json").read_text())["last_error"]
    )
    health = by_name(mount_report(ops, "health.json"))
    assert health["fs-heal-a"]["state"] == "degraded"

    sync_control = ops.path(".control", "sync")
    assert write_control(sync_control, "backend=fs-heal-a") is None

    state = control_json(sync_control)
    assert state["state"] == "succeeded"
    moved = by_name(state["result"])["fs-heal-a"]["moved"]
    assert [item["cid"] for item in moved] == [lost_cid] and "backend fs-heal-b" in moved[0]["from"]
    assert lost.read_bytes() == lost_data
    wait_for(lambda: status_file(ops, "fs-heal-a", lost_cid) == "stored\n")
    assert not in_by_status(ops, "fs-heal-a", "failed", lost_cid)


def test_root_verify_of_s3_and_regenerate_car_through_control_files(
    env: Env,
    ops: Mount,
    s3_server: S3Server,  # noqa: F811
) -> None:
    prefix = env.s3_backend(s3_server, "s3-verify")
    cid, data = content_car("s3-verify")
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=f"{prefix}/s3-bucket/cars/{cid}.car", Body=data)
    put_pins(env.root, "s3-verify", [pin_record(env.root, "s3-verify", cid, "stored", metadata={"size": len(data)})])
    verify_control = ops.path(".control", "verify")
    assert write_control(verify_control, "backend=s3-verify older-than=0") is None
    entry = by_name(control_json(verify_control)["result"])["s3-verify"]
    assert entry["counts"]["good"] == 1
    assert read_pin(env.root, "s3-verify", cid)["verified_at"]

    car = env.root / "backends" / "s3-verify" / "pin_mappings.car"
    car.unlink()
    regenerate = ops.path(".control", "regenerate-car")
    assert write_control(regenerate, "backend=s3-verify") is None
    assert control_json(regenerate)["state"] == "succeeded"
    records = read_pin_mappings_car(car).records
    assert [record["cid"] for record in records] == [cid] and records[0]["status"] == "stored"
    wait_for(lambda: json.loads(ops.path("backends", "s3-verify", "pin_mappings.car.json").read_text())["count"] == 1)


def test_migrate_through_the_control_file_is_the_last_migration_in_status_json(env: Env, ops: Mount) -> None:
    cids = [content_car(f"legacy-{i}")[0] for i in range(2)]
    make_backend(env.root, "fs-legacy", fs_config("fs-legacy", env.storage / "fs-legacy"), pins_json=cids)
    wait_for(lambda: by_name(mount_report(ops, "status.json")).get("fs-legacy", {}).get("source") == "legacy")
    assert by_name(mount_report(ops, "status.json"))["fs-legacy"]["last_migration"] is None
    control = ops.path("backends", "fs-legacy", ".control", "migrate")

    assert write_control(control, "") is None

    assert control_json(control)["state"] == "succeeded"
    recorded = json.loads((env.root / "backends" / "fs-legacy" / ".pinfs-state.json").read_text())["migrate"]
    assert recorded["ok"] and recorded["counts"]["added"] == 2
    wait_for(
        lambda: by_name(mount_report(ops, "status.json"))["fs-legacy"]["last_migration"] == recorded["finished_at"]
    )
    assert by_name(mount_report(ops, "status.json"))["fs-legacy"]["source"] == "table"


# -- the reports (last in the module: the tests above made the root interesting) --


@pytest.mark.parametrize(
    ("name", "command"), [("health.json", "health"), ("status.json", "status"), ("insights.json", "insights")]
)
def test_reports_through_the_mount_equal_the_cli(env: Env, ops: Mount, name: str, command: str) -> None:
    def same() -> bool:
        return without_report_time(mount_report(ops, name)) == without_report_time(cli_report(env.root, command))

    if not same():  # a report made just before the last change may be served for a moment
        time.sleep(2.5)
    assert without_report_time(mount_report(ops, name)) == without_report_time(cli_report(env.root, command))


# -- an unreachable backend: its own root and mount (the whole root is synced) --


def test_unreachable_s3_fails_the_close_with_eio_while_the_others_sync(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
) -> None:
    root = tmp_path / "ipfs_kit"
    (root / "backends").mkdir(parents=True)
    make_backend(root, "fs-up", fs_config("fs-up", tmp_path / "store"))
    make_backend(root, "s3-up", s3_server.config("s3-up", prefix=f"up-{tmp_path.name}"))
    make_backend(root, "s3-down", s3_backend_config("s3-down", "http://127.0.0.1:1", "bucket"))
    pins = {name: content_car(name) for name in ("fs-up", "s3-up", "s3-down")}
    for name, (cid, data) in pins.items():
        stage(root, cid, data)
        put_pins(root, name, [pin_record(root, name, cid)])
    with mounted(root, tmp_path / "m") as mount:
        control = mount.path(".control", "sync")

        assert write_control(control, "") == errno.EIO

        state = control_json(control)
        assert state["state"] == "failed" and state["error"].startswith("s3-down: ") and "unreachable" in state["error"]
        entries = by_name(state["result"])
        assert entries["s3-down"]["ok"] is False and entries["s3-down"]["state"] == "error"
        assert "unreachable" in entries["s3-down"]["error"] and "127.0.0.1:1" in entries["s3-down"]["error"]
        for name in ("fs-up", "s3-up"):
            assert entries[name]["ok"] and entries[name]["counts"]["moved"] == 1
            wait_for(lambda name=name: status_file(mount, name, pins[name][0]) == "stored\n")
        # the pin says why it did not move (issue #17)
        wait_for(lambda: status_file(mount, "s3-down", pins["s3-down"][0]) == "failed\n")
        assert "127.0.0.1:1" in read_pin(root, "s3-down", pins["s3-down"][0])["metadata"]["last_error"]
        health = mount_report(mount, "health.json")
        assert health["state"] == "degraded"
        states = {entry["backend"]: entry["state"] for entry in health["backends"]}
        assert states == {"fs-up": "ok", "s3-up": "ok", "s3-down": "degraded"}
        assert any("last sync" in reason for reason in by_name(health)["s3-down"]["reasons"])
        status = by_name(mount_report(mount, "status.json"))
        assert status["s3-down"]["last_sync_ok"] is False and status["fs-up"]["last_sync_ok"] is True

        # the backend's own control file fails the same way; the error is in its JSON
        own = mount.path("backends", "s3-down", ".control", "sync")
        assert write_control(own, "") == errno.EIO
        own_state = control_json(own)
        assert own_state["state"] == "failed" and "unreachable" in by_name(own_state["result"])["s3-down"]["error"]


# -- scheduled duties --


def duty_root(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "ipfs_kit"
    (root / "backends").mkdir(parents=True)
    storage = tmp_path / "store"
    make_backend(root, "fs-duty", fs_config("fs-duty", storage))
    return root, storage


def test_sync_interval_syncs_a_pending_pin(tmp_path: Path) -> None:
    root, storage = duty_root(tmp_path)
    cid, data = content_car("duty-sync")
    stage(root, cid, data)
    put_pins(root, "fs-duty", [pin_record(root, "fs-duty", cid)])
    with mounted(root, tmp_path / "m", "--sync-interval", "1") as mount:
        assert status_file(mount, "fs-duty", cid) == "pending\n"
        wait_for(lambda: status_file(mount, "fs-duty", cid) == "stored\n", timeout=8)
        assert (storage / "fs-duty" / "cars" / f"{cid}.car").read_bytes() == data
        # The run is recorded just after the pins are written: give status.json a moment to say so.
        wait_for(lambda: by_name(mount_report(mount, "status.json"))["fs-duty"]["last_sync_ok"] is True, timeout=4)


def test_verify_interval_catches_a_deleted_car(tmp_path: Path) -> None:
    # The scheduled verify uses the default threshold (7 days): it sees pins never verified (as
    # migrated ones are) or verified long ago, not ones a sync just stored. Use one never verified.
    root, storage = duty_root(tmp_path)
    (cid, data), (kept_cid, kept_data) = content_car("duty-verify"), content_car("duty-kept")
    place(storage, "fs-duty", kept_cid, kept_data)
    put_pins(
        root,
        "fs-duty",
        [
            pin_record(root, "fs-duty", cid, "stored", metadata={"size": len(data)}),
            pin_record(root, "fs-duty", kept_cid, "stored", metadata={"size": len(kept_data)}),
        ],
    )
    with mounted(root, tmp_path / "m", "--verify-interval", "1", expected_log=DUTY_WARNINGS) as mount:
        wait_for(lambda: status_file(mount, "fs-duty", cid) == "failed\n", timeout=8)
        # The run has ended (its exports are written) once it is logged.
        wait_for(lambda: "scheduled verify: backend fs-duty" in mount.log(), timeout=8)
        assert cid in os.listdir(mount.path("backends", "fs-duty", "by-status", "failed"))
        assert status_file(mount, "fs-duty", kept_cid) == "stored\n"
        assert "missing" in read_pin(root, "fs-duty", cid)["metadata"]["last_error"]
        assert read_pin(root, "fs-duty", kept_cid)["verified_at"]
    assert "scheduled verify: backend fs-duty" in mount.log()


def test_sigterm_unmounts_promptly_while_duties_wait(tmp_path: Path) -> None:
    root, _ = duty_root(tmp_path)
    mountpoint = tmp_path / "m"
    mount = start_mount(root, mountpoint, "--sync-interval", "1h", "--verify-interval", "1d")
    try:
        assert os.listdir(mount.path("backends")) == ["fs-duty"]
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(timeout=10) == 0  # a hang guard: it takes well under a second
        assert not is_mounted(mountpoint)
    finally:
        force_unmount(mountpoint, mount.process)


def test_sigterm_unmounts_promptly_while_a_duty_runs(tmp_path: Path) -> None:
    # An S3 endpoint that accepts connections and never answers: the scheduled sync hangs on it (its
    # request timeout is many seconds) when SIGTERM comes.
    root, _ = duty_root(tmp_path)
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(16)
        endpoint = f"http://127.0.0.1:{stalled.getsockname()[1]}"
        make_backend(root, "s3-stalled", s3_backend_config("s3-stalled", endpoint, "bucket"))
        put_pins(root, "s3-stalled", [pin_record(root, "s3-stalled", content_car("stalled")[0])])
        mountpoint = tmp_path / "m"
        mount = start_mount(root, mountpoint, "--sync-interval", "0.2")
        try:
            stalled.settimeout(8)
            connection, _ = stalled.accept()  # the duty is running now, waiting for an answer
            connection.close()
            time.sleep(0.2)
            mount.process.send_signal(signal.SIGTERM)
            # A hang guard, below the stalled request's 20 s timeout: it takes well under a second.
            assert mount.process.wait(timeout=10) == 0
            assert not is_mounted(mountpoint)
        finally:
            force_unmount(mountpoint, mount.process)


@pytest.mark.parametrize("value", ["abc", "-5", "5x", "1e3", ""])
def test_bad_interval_is_bad_usage(tmp_path: Path, value: str) -> None:
    root, _ = duty_root(tmp_path)
    (tmp_path / "m").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pinfs", "mount", str(tmp_path / "m"), "--root", str(root), "--sync-interval", value],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "--sync-interval" in result.stderr
    assert not is_mounted(tmp_path / "m")


def test_intervals_with_units_and_background(tmp_path: Path) -> None:
    root, storage = duty_root(tmp_path)
    cid, data = content_car("duty-bg")
    stage(root, cid, data)
    put_pins(root, "fs-duty", [pin_record(root, "fs-duty", cid)])
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pinfs", "mount", str(mountpoint), "--root", str(root), "--background"]
            + ["--sync-interval", "1s", "--verify-interval", "1d"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        wait_for(lambda: (storage / "fs-duty" / "cars" / f"{cid}.car").is_file(), timeout=8)
        wait_for(lambda: (mountpoint / "backends" / "fs-duty" / "by-cid" / cid / "status").read_text() == "stored\n")
    finally:
        force_unmount(mountpoint)
