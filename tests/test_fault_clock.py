"""Issue #15, item 2: a clock that ran a year ahead, injected with faketime (libfaketime fakes the
times pinfs itself writes: Python's; delta-rs' own commit times do not matter here).

A pin verified under that clock is still checked by ``verify --older-than 0`` and by the next verify,
and health says so; a pins.json backup made under it does not stay "newest" for ever: backups made
after it sort after it, and ``--restore-from-backup`` restores the last one made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cid_for, make_backend, run_pinfs, run_pinfs_json
from s3server import content_car, fs_config, pin_record, put_pins, read_pin

from pinfs.data.store import PinStore

A_YEAR_AHEAD = "+365d"


def pinfs_ahead(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI under a clock a year ahead (faketime is installed by scripts/test: without it this
    fails, it does not skip)."""
    return subprocess.run(
        ["faketime", "-f", A_YEAR_AHEAD, sys.executable, "-m", "pinfs", *args, "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def verified_ahead(root: Path, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """fs1 holds three stored pins whose CARs are in its storage, verified under a clock a year ahead."""
    storage = tmp_path / "storage"
    make_backend(root, "fs1", fs_config("fs1", storage))
    cids = []
    for seed in range(3):
        cid, data = content_car(seed)
        (storage / "fs1" / "cars").mkdir(parents=True, exist_ok=True)
        (storage / "fs1" / "cars" / f"{cid}.car").write_bytes(data)
        cids.append(cid)
        put_pins(root, "fs1", [pin_record(root, "fs1", cid, "stored", metadata={"size": len(data)})])
    result = pinfs_ahead(root, "verify", "--backend", "fs1")
    assert result.returncode == 0, result.stderr
    assert all(read_pin(root, "fs1", cid)["verified_at"].startswith(str(int(ahead_year()))) for cid in cids)
    return root, storage, cids


def ahead_year() -> int:
    done = subprocess.run(["faketime", "-f", A_YEAR_AHEAD, "date", "-u", "+%Y"], capture_output=True, text=True)
    return int(done.stdout)


def test_older_than_0_checks_every_stored_pin_even_one_verified_in_the_future(verified_ahead) -> None:
    root, storage, cids = verified_ahead
    for car in (storage / "fs1" / "cars").iterdir():
        car.unlink()  # every content CAR is gone from the backend
    report = run_pinfs(root, "verify", "--backend", "fs1", "--older-than", "0", "--json")
    assert report.returncode == 1
    totals = json.loads(report.stdout)["totals"]
    assert totals["checked"] == 3 and totals["failed"] == 3 and totals["skipped"] == 0
    assert {read_pin(root, "fs1", cid)["status"] for cid in cids} == {"failed"}


def test_a_future_verified_at_is_due_and_health_says_so(verified_ahead) -> None:
    root, storage, cids = verified_ahead
    health = run_pinfs_json(root, "health")
    entry = health["backends"][0]
    assert entry["state"] == "degraded" and entry["verification"]["future"] == 3
    assert any("verified at a time still to come" in reason for reason in entry["reasons"])
    (storage / "fs1" / "cars" / f"{cids[0]}.car").unlink()
    report = run_pinfs(root, "verify", "--backend", "fs1", "--json")  # the default 7 days
    totals = json.loads(report.stdout)["totals"]
    assert totals["checked"] == 3 and totals["failed"] == 1 and totals["good"] == 2
    assert read_pin(root, "fs1", cids[0])["status"] == "failed"
    after = run_pinfs_json(root, "health")["backends"][0]
    assert after["verification"]["future"] == 0  # verified again under the real clock
    assert not any("still to come" in reason for reason in after["reasons"])


def test_a_backup_made_under_a_clock_ahead_does_not_stay_newest(root: Path) -> None:
    first, second = [cid_for("v1")], [cid_for("v1"), cid_for("v2")]
    directory = make_backend(root, "b1", pins_json=first)
    assert pinfs_ahead(root, "migrate").returncode == 0  # backup of v1, stamped a year ahead
    ahead = sorted(directory.glob("pins.json.backup.*"))
    assert len(ahead) == 1 and ahead[0].name.startswith(f"pins.json.backup.{ahead_year()}")
    (directory / "pins.json").write_text(json.dumps(second))
    migrated = run_pinfs_json(root, "migrate")  # the real clock: backup of v2
    backups = sorted(directory.glob("pins.json.backup.*"))
    assert len(backups) == 2 and backups[0] == ahead[0]
    assert json.loads(backups[-1].read_text()) == second  # the last made sorts last
    assert migrated["backends"][0]["future_backups"] == [path.name for path in backups]  # both dated ahead
    restored = run_pinfs_json(root, "migrate", "--restore-from-backup")["backends"][0]
    assert restored["restored_from"] == str(backups[-1])
    pins = {record["cid"] for record in PinStore(_backend(root)).snapshot().iter_records()}
    assert pins == set(second)
    notes = run_pinfs_json(root, "health")["backends"][0]["notes"]
    assert any("dated in the future" in note for note in notes)


def _backend(root: Path):
    from pinfs.data.backends import get_backend

    return get_backend(root, "b1")
