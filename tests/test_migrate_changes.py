"""Issue #14: migration that never resurrects, strands or clobbers, through the real command line.

A later migrate imports what changed in pins.json since the pins.json it last imported; a backend with
only a backup migrates from it; ``--force`` keeps where a pin lives; empty backends are not failures;
``--backend-filter`` matches names; every command that health or an error suggests works; the newest
backup is chosen by time whatever its stamp; the CLI and the control files offer the same options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from helpers import cid_for, file_digests, make_backend, run_pinfs, run_pinfs_json
from s3server import content_car, fs_config, pin_record, put_pins

from pinfs.cli import build_parser, rewrite_aliases
from pinfs.data.legacy_files import list_backups
from pinfs.data.runstate import STATE_NAME
from pinfs.fs.control import ControlRegistry

C = [cid_for(f"c{i}") for i in range(6)]
PROJECT = Path(__file__).resolve().parent.parent


def _rows(root: Path, name: str) -> dict[str, dict[str, Any]]:
    table = pq.read_table(root / "backends" / name / "pin_mappings.parquet")
    return {row["cid"]: row for row in table.to_pylist()}


def _only(report: dict[str, Any]) -> dict[str, Any]:
    assert len(report["backends"]) == 1, report
    return report["backends"][0]


def _write_pins_json(directory: Path, document: Any) -> None:
    (directory / "pins.json").write_text(json.dumps(document))


def _migrated(root: Path, document: Any, name: str = "s3-main") -> Path:
    directory = make_backend(root, name, pins_json=document)
    run_pinfs(root, "migrate", check=True)
    return directory


# -- 1. what changed since the last import --


def test_a_pin_removed_through_pinfs_is_not_brought_back(root: Path) -> None:
    _migrated(root, C[:3])
    run_pinfs(root, "pin", "rm", C[1], "--backend", "s3-main", check=True)

    result = run_pinfs(root, "migrate")

    assert result.returncode == 0, result.stderr
    assert "0 added" in result.stdout and "1 removed through pinfs (not brought back)" in result.stdout
    assert set(_rows(root, "s3-main")) == {C[0], C[2]}
    entry = _only(run_pinfs_json(root, "migrate"))
    assert (entry["added"], entry["removed_in_pinfs"], entry["total"]) == (0, 1, 2)


def test_an_empty_line_to_the_migrate_control_file_does_not_bring_it_back(root: Path) -> None:
    _migrated(root, C[:2])
    run_pinfs(root, "pin", "rm", C[0], "--backend", "s3-main", check=True)
    controls = ControlRegistry(root)

    report = controls.parse((None, "migrate"), b"\n").run()

    assert report["ok"] and _only(report)["removed_in_pinfs"] == 1
    assert set(_rows(root, "s3-main")) == {C[1]}


def test_a_cid_a_legacy_writer_adds_later_is_imported(root: Path) -> None:
    directory = _migrated(root, C[:2])
    run_pinfs(root, "pin", "rm", C[0], "--backend", "s3-main", check=True)
    _write_pins_json(directory, C[:3])  # ipfs_kit_py appends C2; the file's mtime changes

    entry = _only(run_pinfs_json(root, "migrate", "--verbose"))

    assert (entry["added_cids"], entry["removed_in_pinfs_cids"], entry["changed_in_legacy"]) == ([C[2]], [C[0]], 0)
    assert set(_rows(root, "s3-main")) == {C[1], C[2]}


def test_a_changed_entry_is_applied_only_with_force(root: Path) -> None:
    directory = _migrated(root, [{"cid": C[0], "status": "pinned"}, {"cid": C[1]}])
    _write_pins_json(directory, [{"cid": C[0], "status": "failed"}, {"cid": C[1]}])

    plain = run_pinfs(root, "migrate")
    assert plain.returncode == 0
    assert "1 changed in pins.json (not applied; --force applies them)" in plain.stdout
    assert _rows(root, "s3-main")[C[0]]["status"] == "stored"

    _write_pins_json(directory, [{"cid": C[0], "status": "failed"}, {"cid": C[1]}, {"cid": C[2]}])
    forced = _only(run_pinfs_json(root, "migrate", "--force"))
    assert (forced["added"], forced["updated"], forced["unchanged"]) == (1, 1, 1)
    assert _rows(root, "s3-main")[C[0]]["status"] == "failed"


def test_force_reimports_everything_even_a_pin_removed_through_pinfs(root: Path) -> None:
    _migrated(root, C[:3])
    run_pinfs(root, "pin", "rm", C[1], "--backend", "s3-main", check=True)

    entry = _only(run_pinfs_json(root, "migrate", "--force"))

    assert (entry["added"], entry["removed_in_pinfs"]) == (1, 0)
    assert set(_rows(root, "s3-main")) == set(C[:3])


def test_a_pin_gone_from_pins_json_is_kept_and_said(root: Path) -> None:
    directory = _migrated(root, C[:3])
    _write_pins_json(directory, C[:2])

    result = run_pinfs(root, "migrate")

    assert "1 gone from pins.json (kept)" in result.stdout
    assert set(_rows(root, "s3-main")) == set(C[:3])


def test_entries_without_a_timestamp_are_not_changed_by_a_rewrite(root: Path) -> None:
    directory = _migrated(root, C[:2])
    os.utime(directory / "pins.json", (1, 1))
    _write_pins_json(directory, C[:2])  # same entries, new mtime: their default created_at differs

    entry = _only(run_pinfs_json(root, "migrate"))

    assert (entry["added"], entry["changed_in_legacy"], entry["unchanged"]) == (0, 0, 2)


def test_the_record_names_the_backup_and_its_sha256(root: Path) -> None:
    directory = _migrated(root, C[:2])
    record = json.loads((directory / STATE_NAME).read_text())["legacy_import"]
    backup = directory / record["backup"]

    assert backup.read_bytes() == (directory / "pins.json").read_bytes()
    assert record["sha256"] == hashlib.sha256(backup.read_bytes()).hexdigest()


def test_a_second_run_writes_nothing(root: Path) -> None:
    _migrated(root, C[:2])
    run_pinfs(root, "pin", "rm", C[0], "--backend", "s3-main", check=True)
    run_pinfs(root, "migrate", check=True)
    before = file_digests(root)

    run_pinfs(root, "migrate", check=True)

    assert file_digests(root) == before


def test_a_missing_record_backup_fails_with_advice_that_works(root: Path) -> None:
    directory = _migrated(root, C[:2])
    for backup in list_backups(directory):
        backup.unlink()
    _write_pins_json(directory, C[:3])

    result = run_pinfs(root, "migrate")

    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    advice = re.search(r"run '(pinfs [^']+)'", result.stdout)
    assert advice and "--force" in advice.group(1)
    assert run_pinfs(root, *shlex.split(advice.group(1))[1:]).returncode == 0
    assert set(_rows(root, "s3-main")) == set(C[:3])


def test_a_store_migrated_by_an_earlier_pinfs_compares_with_its_newest_backup(root: Path) -> None:
    directory = _migrated(root, C[:2])
    (directory / STATE_NAME).unlink()  # an earlier pinfs kept no record, only its backups
    run_pinfs(root, "pin", "rm", C[0], "--backend", "s3-main", check=True)

    entry = _only(run_pinfs_json(root, "migrate"))

    assert (entry["added"], entry["removed_in_pinfs"]) == (0, 1)
    assert entry["since"] == list_backups(directory)[-1].name


# -- 2. a backend with only a backup --


def test_a_backend_with_only_a_backup_migrates_from_it_and_is_then_writable(root: Path) -> None:
    directory = make_backend(root, "s3-main")
    (directory / "pins.json.backup.20261127_102432").write_text(json.dumps(C[:2]))
    refused = run_pinfs(root, "pin", "add", C[2], "--backend", "s3-main")
    assert refused.returncode == 1
    advice = re.search(r"run '(pinfs [^']+)'", refused.stderr)
    assert advice, refused.stderr

    migrated = run_pinfs(root, *shlex.split(advice.group(1))[1:], "--json")

    assert migrated.returncode == 0, migrated.stderr
    assert _only(json.loads(migrated.stdout))["added"] == 2
    assert run_pinfs(root, "pin", "add", C[2], "--backend", "s3-main").returncode == 0
    assert set(_rows(root, "s3-main")) == set(C[:3])
    assert not (directory / "pins.json").exists()  # the backup is the source: nothing new is made of it
    assert [path.name for path in list_backups(directory)] == ["pins.json.backup.20261127_102432"]


# -- 3. --force keeps where a pin lives --


def test_force_keeps_car_file_path_verified_at_and_sync_metadata(root: Path) -> None:
    directory = _migrated(root, [{"cid": C[0], "status": "pinned", "metadata": {"name": "a"}}])
    stored = pin_record(
        root,
        "s3-main",
        C[0],
        "stored",
        metadata={"name": "a", "synced_at": "2026-11-01T00:00:00.000000+00:00", "size": 10},
        verified_at="2026-11-02T00:00:00.000000+00:00",
    )
    stored["car_file_path"] = f"/real/place/{C[0]}.car"
    put_pins(root, "s3-main", [stored])
    _write_pins_json(directory, [{"cid": C[0], "status": "queued", "metadata": {"name": "b"}}])

    entry = _only(run_pinfs_json(root, "migrate", "--force"))

    row = _rows(root, "s3-main")[C[0]]
    assert entry["updated"] == 1
    assert row["car_file_path"] == f"/real/place/{C[0]}.car"
    assert row["verified_at"] == "2026-11-02T00:00:00.000000+00:00"
    assert json.loads(row["metadata"]) == {"name": "b", "synced_at": "2026-11-01T00:00:00.000000+00:00", "size": 10}
    assert row["status"] == "pending"  # pins.json's word, as --force asks


# -- 4. empty and config-only backends --


@pytest.mark.parametrize("kind", ["directory only", "config only"])
def test_nothing_to_migrate_verify_or_regenerate_is_not_a_failure(root: Path, kind: str) -> None:
    if kind == "directory only":
        make_backend(root, "empty")
    else:
        (root / "backends" / "empty.yaml").write_text("name: empty\ntype: s3\n")
    before = file_digests(root)

    for args in (
        ("migrate",),
        ("migrate", "--verify-only"),
        ("migrate", "--force-car-regeneration"),
        ("car", "regenerate"),
    ):
        result = run_pinfs(root, *args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "pinfs migrate" not in result.stdout  # no advice to run what would write nothing

    assert file_digests(root) == before
    verified = _only(run_pinfs_json(root, "migrate", "--verify-only"))
    assert (verified["ok"], verified["note"]) == (True, "no pins: nothing to verify")


# -- 5. --backend-filter --


def test_backend_filter_selects_every_name_containing_it_in_any_case(root: Path) -> None:
    for name in ("s3-main", "s3-backup", "local-fs"):
        make_backend(root, name, pins_json=C[:1])

    report = run_pinfs_json(root, "migrate", "--backend-filter", "S3")

    assert [entry["backend"] for entry in report["backends"]] == ["s3-backup", "s3-main"]
    assert not (root / "backends/local-fs/pin_mappings.parquet").exists()


def test_backend_filter_matching_nothing_exits_2_and_lists_the_backends(root: Path) -> None:
    make_backend(root, "alpha", pins_json=C[:1])
    make_backend(root, "beta", pins_json=C[:1])

    result = run_pinfs(root, "migrate", "--backend-filter", "gamma")

    assert result.returncode == 2  # an unknown backend is bad input (issue #16)
    assert result.stderr.strip() == "pinfs migrate: error: no backend matches 'gamma' (backends: alpha, beta)"


def test_migrate_control_word_backend_is_a_filter_too(root: Path) -> None:
    for name in ("s3-main", "s3-backup", "local-fs"):
        make_backend(root, name, pins_json=C[:1])

    report = ControlRegistry(root).parse((None, "migrate"), b"backend=s3").run()

    assert [entry["backend"] for entry in report["backends"]] == ["s3-backup", "s3-main"]


# -- 6. advice that works --


def _suggestions(report: dict[str, Any]) -> list[str]:
    texts = [reason for entry in report["backends"] for reason in entry.get("reasons", [])]
    return sorted({match for text in texts for match in re.findall(r"run '(pinfs [^']+)'", text)})


def test_every_command_health_suggests_runs_and_clears_its_reason(root: Path, tmp_path: Path) -> None:
    make_backend(root, "legacy", pins_json=C[:1])
    (make_backend(root, "backup-only") / "pins.json.backup.20261127T102459.703189Z").write_text(json.dumps(C[:1]))
    make_backend(root, "fs-failed", fs_config("fs-failed", tmp_path / "store"))
    cid, car = content_car("failed")
    (root / "cars").mkdir()
    (root / "cars" / f"{cid}.car").write_bytes(car)
    put_pins(root, "fs-failed", [pin_record(root, "fs-failed", cid, "failed")])
    make_backend(root, "no-car", pins_json=C[:2])
    run_pinfs(root, "migrate", "--backend-filter", "no-car", check=True)
    (root / "backends" / "no-car" / "pin_mappings.car").unlink()
    make_backend(root, "hf-x", {"name": "hf-x", "type": "huggingface"})
    put_pins(root, "hf-x", [pin_record(root, "hf-x", C[3], "failed")])

    before = run_pinfs_json(root, "health")
    suggestions = _suggestions(before)

    assert suggestions == [
        "pinfs car regenerate --backend no-car",
        "pinfs migrate --backend-filter backup-only",
        "pinfs migrate --backend-filter legacy",
        "pinfs sync --backend fs-failed",
    ]
    hf = next(entry for entry in before["backends"] if entry["backend"] == "hf-x")  # no repo_id: no sync advice
    assert any("fix its storage setting (below)" in reason for reason in hf["reasons"])
    assert any(reason.startswith("storage: ") and "repo_id" in reason for reason in hf["reasons"])
    for suggestion in suggestions:
        result = run_pinfs(root, *shlex.split(suggestion)[1:])
        assert result.returncode == 0, (suggestion, result.stdout, result.stderr)
    assert _suggestions(run_pinfs_json(root, "health")) == []


def _readme_commands() -> set[tuple[str, ...]]:
    """Every ``pinfs …`` command line the README shows (in code blocks and inline code), as its words
    up to the first option or argument."""
    text = (PROJECT / "README.md").read_text()
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    inline = re.findall(r"`(pinfs [^`]*)`", text)
    return {
        tuple(re.match(r"pinfs((?: [a-z][a-z-]*)*)", line).group(1).split())  # type: ignore[union-attr]
        for line in [*lines, *inline]
        if line.startswith("pinfs ")
    }


def test_every_command_the_readme_shows_exists() -> None:
    parser = build_parser()
    commands = _readme_commands()
    assert ("migrate",) in commands and ("car", "regenerate") in commands
    for shown in commands:
        words = rewrite_aliases(shown)
        known: list[str] = []
        for word in words:  # the longest prefix that names a (sub)command; the rest are arguments
            if not _is_command(parser, [*known, word]):
                break
            known.append(word)
        assert known == words, f"README shows 'pinfs {' '.join(shown)}', which is not a command"


def _is_command(parser: argparse.ArgumentParser, words: list[str]) -> bool:
    try:
        parser.parse_args([*words, "--help"])
    except SystemExit as exit_:
        return exit_.code == 0
    return False


# -- 7. the newest backup --


@pytest.mark.parametrize(("zone", "newest"), [("Etc/GMT+5", "legacy"), ("Etc/GMT-5", "ours")])
def test_the_newest_backup_is_chosen_by_time_whatever_its_stamp(
    root: Path, monkeypatch: pytest.MonkeyPatch, zone: str, newest: str
) -> None:
    directory = make_backend(root, "s3-main")
    # 10:24:59 UTC (ours) and 10:24:32 local: at UTC-5 the legacy one is 15:24:32 UTC, at UTC+5 05:24:32.
    (directory / "pins.json.backup.20261127T102459.703189Z").write_text(json.dumps([C[0]]))
    (directory / "pins.json.backup.20261127_102432").write_text(json.dumps([C[1]]))

    monkeypatch.setenv("TZ", zone)  # for the pinfs process only: this one never calls tzset
    result = run_pinfs(root, "migrate", "--json")

    assert result.returncode == 0, result.stderr
    assert set(_rows(root, "s3-main")) == {C[1] if newest == "legacy" else C[0]}


def test_backups_with_the_same_time_are_ordered_by_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        legacy = tmp_path / "pins.json.backup.20261127_102432"
        ours = tmp_path / "pins.json.backup.20261127T102432Z"
        for path, mtime in ((legacy, 200), (ours, 100)):
            path.write_text("[]")
            os.utime(path, (mtime, mtime))
        assert list_backups(tmp_path) == [ours, legacy]
        os.utime(ours, (300, 300))
        assert list_backups(tmp_path) == [legacy, ours]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
