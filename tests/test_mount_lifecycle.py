"""The mount's life under load and signals (issue 7): memory stays flat over many lookups and many
control-file runs, and SIGINT or SIGTERM in the middle of a command unmounts only after it finished."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cid_for, make_backend, store_records
from mounting import force_unmount, needs_fuse, start_mount, stop_with, write_control

from pinfs.data import schema
from pinfs.data.backends import get_backend
from pinfs.fs.mount import is_mounted
from pinfs.ops.migrate import MigrateOptions, migrate

pytestmark = [pytest.mark.mount, needs_fuse]

PINS = 25_000  # x 4 lookups each (a directory and three of its files): 100k
ROUND = 5_000  # CIDs per round: every round looks up paths the mount has not seen before
PER_CID_FILES = ("status", "cid", "pin.json")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def drop_kernel_caches() -> None:
    """Make the kernel forget dentries and inodes, so the mount gets FORGETs (needs root; best effort)."""
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("2\n")


def build(root: Path, backend: str, count: int) -> list[str]:
    make_backend(root, backend)
    cids = [cid_for(f"{backend}-{i}") for i in range(count)]
    records = [schema.make_record(cid, backend, "filesystem") for cid in cids]
    store_records(get_backend(root, backend), records)
    return cids


def lookup_round(by_cid: Path, cids: list[str]) -> int:
    for cid in cids:
        for name in PER_CID_FILES:
            os.stat(by_cid / cid / name)
    return len(cids) * (len(PER_CID_FILES) + 1)


@pytest.mark.slow
def test_100k_lookups_and_400_control_runs_leave_memory_flat(tmp_path: Path) -> None:
    root = tmp_path / "ipfs_kit"
    cids = build(root, "many", PINS)
    make_backend(root, "tiny")
    mountpoint = tmp_path / "m"
    mount = start_mount(root, mountpoint, "--cache-mb", "4")
    try:
        by_cid = mount.path("backends", "many", "by-cid")
        lookups = lookup_round(by_cid, cids[:ROUND])  # warm: the read cache fills up to its bound
        drop_kernel_caches()
        baseline = rss_kib(mount.process.pid)
        for start in range(ROUND, PINS, ROUND):
            lookups += lookup_round(by_cid, cids[start : start + ROUND])
            drop_kernel_caches()
        after_lookups = rss_kib(mount.process.pid)
        pin = mount.path("backends", "tiny", ".control", "pin")
        unpin = mount.path("backends", "tiny", ".control", "unpin")
        # Warm-up: the first commits make delta-rs' runtime and its allocations (tens of MB, once), and
        # fill the mount's bounded caches of versions and records.
        for run in range(200):
            write_control(pin, f"{cid_for(run)}\n")
            write_control(unpin, f"{cid_for(run)}\n")
        before_controls = rss_kib(mount.process.pid)
        for run in range(200):
            write_control(pin, f"{cid_for(run)}\n")
            write_control(unpin, f"{cid_for(run)}\n")
        after_controls = rss_kib(mount.process.pid)
        assert lookups >= 100_000
        # Allocator noise, not growth per request: had the kernel's FORGETs not freed the inode table,
        # the 100k new paths of these rounds would hold ~20 MB.
        assert after_lookups - baseline < 8 * 1024, (baseline, after_lookups)
        assert after_controls - before_controls < 16 * 1024, (before_controls, after_controls)
        assert pq.read_table(root / "backends/tiny/pin_mappings.parquet").num_rows == 0
    finally:
        force_unmount(mountpoint, mount.process)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_command_unmounts_after_it_finished(tmp_path: Path, signum: int) -> None:
    root = tmp_path / "ipfs_kit"
    build(root, "big", 60_000)  # regenerating its CAR takes a noticeable moment
    mountpoint = tmp_path / "m"
    mount = start_mount(root, mountpoint)
    car = root / "backends/big/pin_mappings.car"
    outcome: list[BaseException | None] = []

    def regenerate() -> None:
        try:
            write_control(mount.path("backends", "big", ".control", "regenerate-car"), "\n")
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    try:
        writer = threading.Thread(target=regenerate)
        writer.start()
        deadline = time.monotonic() + 10
        while not car.exists() and not any(root.glob("backends/big/.pin_mappings.car.pinfs-tmp.*")):
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.005)
        assert stop_with(mount, signum, timeout=60) == 0
        writer.join(timeout=30)
        assert not is_mounted(mountpoint)
        assert not list(root.glob("backends/big/.*pinfs-tmp*"))  # no job left half done
        assert migrate(root, MigrateOptions(verify_only=True))["ok"]  # the CAR it wrote is whole and current
    finally:
        force_unmount(mountpoint, mount.process)


@pytest.mark.parametrize(("chosen", "expected"), [(None, "jemalloc"), ("system", "system")])
def test_the_mount_gives_arrow_jemalloc_unless_the_user_chose_a_pool(chosen: str | None, expected: str) -> None:
    """Issue #6: with mimalloc the mount's RSS sat far above its read cache (README, Performance)."""
    if expected == "jemalloc":
        try:
            pa.jemalloc_memory_pool()
        except NotImplementedError:
            pytest.skip("this pyarrow was built without jemalloc")
    env = {key: value for key, value in os.environ.items() if key != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    code = (
        "from pinfs.fs.mount import warm_up_arrow; import pyarrow as pa; warm_up_arrow(); "
        "print(pa.default_memory_pool().backend_name)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == expected


def test_the_mount_collects_garbage_again_after_start_up_with_start_up_objects_frozen() -> None:
    """The mount command turns Python's cyclic collector off for its start-up and on again once warmed
    up, with what exists by then frozen (``pinfs.fs.collector``): a collection left off would never
    free a reference cycle in a mount that runs for months. In a process of its own (the collector is
    process-wide)."""
    code = (
        "import gc; from pinfs.fs.collector import pause_collector_for_start_up, freeze_start_up_objects; "
        "pause_collector_for_start_up(); off = gc.isenabled(); import pyarrow; "
        "freeze_start_up_objects(); print(off, gc.isenabled(), gc.get_freeze_count() > 1000)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "True"]
