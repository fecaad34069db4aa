"""Migrate records its runs in the backend's run state (``.pinfs-state.json``), so status shows the
last migration that really happened; runs that write nothing record nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import cid_for, file_digests, make_backend, run_pinfs, run_pinfs_json

from pinfs.data.backends import get_backend
from pinfs.data.runstate import STATE_NAME, read_state
from pinfs.ops.migrate import MigrateOptions, migrate

CIDS = [cid_for(i) for i in range(3)]


def migrate_state(root: Path, name: str) -> dict[str, Any] | None:
    return read_state(get_backend(root, name)).get("migrate")


def last_migration(root: Path, name: str) -> str | None:
    report = run_pinfs_json(root, "status")
    return {entry["backend"]: entry for entry in report["backends"]}[name]["last_migration"]


def test_a_migration_is_recorded_and_shown_by_status(root: Path) -> None:
    directory = make_backend(root, "s3-main", pins_json={"pins": {cid: "pinned" for cid in CIDS}})
    make_backend(root, "untouched", pins_json=None)
    run_pinfs(root, "migrate", check=True)
    state = migrate_state(root, "s3-main")
    assert state is not None
    assert state["ok"] is True and state["mode"] == "migrate" and state["error"] is None
    assert state["finished_at"] and state["counts"]["added"] == 3 and state["counts"]["total"] == 3
    assert state["backup_path"].startswith(str(directory / "pins.json.backup."))
    assert last_migration(root, "s3-main") == state["finished_at"]
    # a backend with nothing to migrate was left alone: no state file written for it
    assert not (root / "backends" / "untouched" / STATE_NAME).exists()
    assert last_migration(root, "untouched") is None


def test_runs_that_write_nothing_record_nothing(root: Path) -> None:
    make_backend(root, "s3-main", pins_json=CIDS)
    before = file_digests(root)
    run_pinfs(root, "migrate", "--dry-run", check=True)
    assert file_digests(root) == before
    run_pinfs(root, "migrate", check=True)
    first = migrate_state(root, "s3-main")
    after_first = file_digests(root)
    run_pinfs(root, "migrate", check=True)  # nothing new: not even the state file changes
    run_pinfs(root, "migrate", "--verify-only", check=True)
    assert file_digests(root) == after_first
    assert migrate_state(root, "s3-main") == first
    # new pins in pins.json: a real migration again, recorded
    (root / "backends" / "s3-main" / "pins.json").write_text(json.dumps([*CIDS, cid_for("new")]))
    run_pinfs(root, "migrate", check=True)
    second = migrate_state(root, "s3-main")
    assert second is not None and first is not None
    assert second["finished_at"] > first["finished_at"] and second["counts"]["added"] == 1


def test_restore_is_recorded_as_a_migration(root: Path) -> None:
    make_backend(root, "s3-main", pins_json=CIDS)
    migrate(root, MigrateOptions())
    report = migrate(root, MigrateOptions(restore_from_backup=True))
    assert report["ok"], report
    state = migrate_state(root, "s3-main")
    assert state is not None and state["mode"] == "restore" and state["ok"] is True
    assert state["restored_from"] and state["counts"]["pins"] == 3


def test_a_failed_migration_keeps_the_time_of_the_last_good_one(root: Path) -> None:
    directory = make_backend(root, "s3-main", pins_json=CIDS)
    migrate(root, MigrateOptions())
    good = migrate_state(root, "s3-main")
    assert good is not None
    (directory / "pins.json").write_text("{ this is not json")
    report = migrate(root, MigrateOptions())
    assert report["ok"] is False
    failed = migrate_state(root, "s3-main")
    assert failed is not None
    assert failed["ok"] is False and failed["error"] and failed["failed_at"] > good["finished_at"]
    assert failed["finished_at"] == good["finished_at"]
    assert last_migration(root, "s3-main") == good["finished_at"]
