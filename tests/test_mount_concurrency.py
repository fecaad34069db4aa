"""Writers through the mount's control files and through the CLI at once, while the mount is listed.

Issue 7's concurrency promise with the mount in the mix: no lost update, and no reader ever sees a
half-written file (a listing entry whose pin.json does not parse, or a parquet pandas cannot read).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import cid_for, make_backend
from mounting import mounted, needs_fuse, write_control

from pinfs.ops.migrate import MigrateOptions, migrate
from pinfs.ops.pins import PinRequest, add_pins

pytestmark = [pytest.mark.mount, needs_fuse]

ROUNDS = 12  # per writer; each round adds three pins and removes one of them


def control_writer(control: Path, tag: str, acks: list[tuple[str, list[str]]]) -> None:
    for round_number in range(ROUNDS):
        cids = [cid_for(f"{tag}-{round_number}-{i}") for i in range(3)]
        write_control(control / "pin", "\n".join(cids) + "\n")
        acks.append(("add", cids))
        write_control(control / "unpin", cids[0] + "\n")
        acks.append(("rm", cids[:1]))


def cli_writer(root: Path, tag: str, acks: list[tuple[str, list[str]]]) -> None:
    pinfs = [sys.executable, "-m", "pinfs"]
    for round_number in range(ROUNDS // 3):
        cids = [cid_for(f"{tag}-{round_number}-{i}") for i in range(3)]
        subprocess.run([*pinfs, "pin", "add", *cids, "--backend", "shared", "--root", str(root)], check=True)
        acks.append(("add", cids))
        subprocess.run([*pinfs, "pin", "rm", cids[0], "--backend", "shared", "--root", str(root)], check=True)
        acks.append(("rm", cids[:1]))


def lister(by_cid: Path, stop: threading.Event, problems: list[str], reads: list[int]) -> None:
    while not stop.is_set():
        for name in os.listdir(by_cid)[:20]:
            try:
                record = json.loads((by_cid / name / "pin.json").read_text())
            except FileNotFoundError:
                continue  # unpinned between the listing and the read: fine
            except (ValueError, OSError) as exc:
                problems.append(f"{name}: {exc!r}")
                continue
            if record.get("cid") != name:
                problems.append(f"{name}: pin.json names {record.get('cid')!r}")
        reads[0] += 1


def _expected(acks: dict[str, list[tuple[str, list[str]]]]) -> set[str]:
    expected = {cid_for("before")}
    for tag_acks in acks.values():
        for kind, cids in tag_acks:
            (expected.update if kind == "add" else expected.difference_update)(cids)
    return expected


def _listing_within_two_seconds(directory: Path, expected: set[str]) -> set[str]:
    """The listing once it shows ``expected`` (CLI writes show in the mount within 2 s), or the last one."""
    deadline = time.monotonic() + 2.5
    while True:
        listed = set(os.listdir(directory))
        if listed == expected or time.monotonic() > deadline:
            return listed
        time.sleep(0.1)


def test_control_file_and_cli_writers_with_a_lister_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ipfs_kit"
    make_backend(root, "shared")
    add_pins(root, "shared", [PinRequest(cid_for("before"), "stored")])
    # Two mounts of the same root: one control file runs one command at a time (a second gets EBUSY),
    # so two concurrent writers through control files are two mount processes, as two users would have.
    with mounted(root, tmp_path / "mnt-a") as mount, mounted(root, tmp_path / "mnt-b") as other:
        acks: dict[str, list[tuple[str, list[str]]]] = {tag: [] for tag in ("fuse1", "fuse2", "cli1", "cli2")}
        stop, problems, reads = threading.Event(), [], [0]
        by_cid = mount.path("backends", "shared", "by-cid")
        watcher = threading.Thread(target=lister, args=(by_cid, stop, problems, reads))
        watcher.start()
        threads = [
            threading.Thread(
                target=control_writer, args=(mount.path("backends", "shared", ".control"), "fuse1", acks["fuse1"])
            ),
            threading.Thread(
                target=control_writer, args=(other.path("backends", "shared", ".control"), "fuse2", acks["fuse2"])
            ),
            threading.Thread(target=cli_writer, args=(root, "cli1", acks["cli1"])),
            threading.Thread(target=cli_writer, args=(root, "cli2", acks["cli2"])),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        stop.set()
        watcher.join(timeout=30)
        listed = _listing_within_two_seconds(by_cid, _expected(acks))
    expected = _expected(acks)
    assert problems == []
    assert reads[0] > 3
    final = set(pq.read_table(root / "backends/shared/pin_mappings.parquet").column("cid").to_pylist())
    assert final == expected
    assert listed == expected
    assert len(final) == 1 + 2 * ROUNDS * 2 + 2 * (ROUNDS // 3) * 2
    assert migrate(root, MigrateOptions(verify_only=True))["ok"]
