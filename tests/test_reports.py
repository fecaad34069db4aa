"""Tests for pinfs.ops.reports (health, status, insights, backend_summary) and their CLI commands."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import ago, cid_for, make_backend, run_pinfs, run_pinfs_json
from s3server import content_car, fs_config, pin_record, put_pins

from pinfs.data.backends import get_backend
from pinfs.data.runstate import record_run
from pinfs.data.snapshots import PinSnapshot
from pinfs.data.store import PinStore
from pinfs.errors import InvalidInput, NotFound
from pinfs.ops import reports
from pinfs.ops.insights import EXAMPLES, _replication


@pytest.fixture
def populated(root: Path, tmp_path: Path) -> Path:
    """fs-a: two stored (verified now) pins; fs-b: one stored shared CID, one failed, one pending."""
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    make_backend(root, "fs-b", fs_config("fs-b", tmp_path / "store-b"))
    shared = cid_for("shared")
    put_pins(
        root,
        "fs-a",
        [
            pin_record(root, "fs-a", shared, "stored", verified_at=ago(hours=1), created_at=ago(minutes=5)),
            pin_record(root, "fs-a", cid_for("a-only"), "stored", verified_at=ago(hours=2), created_at=ago(days=3)),
        ],
    )
    put_pins(
        root,
        "fs-b",
        [
            pin_record(root, "fs-b", shared, "stored", created_at=ago(days=40)),
            pin_record(
                root,
                "fs-b",
                cid_for("b-failed"),
                "failed",
                metadata={"last_error": "CAR missing"},
                created_at=ago(days=400),
            ),
            pin_record(root, "fs-b", cid_for("b-pending"), "pending", created_at=ago(hours=5)),
        ],
    )
    return root


def by_name(entries: list[dict]) -> dict[str, dict]:
    return {entry["backend"]: entry for entry in entries}


def test_health_of_an_empty_root_is_ok(root: Path) -> None:
    report = reports.health(root)
    assert report["ok"] is True and report["state"] == "ok" and report["backends"] == []


def test_health_per_backend_states_and_reasons(populated: Path) -> None:
    report = reports.health(populated)
    entries = by_name(report["backends"])
    assert entries["fs-a"]["state"] == "ok", entries["fs-a"]
    assert entries["fs-b"]["state"] == "degraded"
    assert any("1 failed pin" in reason for reason in entries["fs-b"]["reasons"])
    assert any("never verified" in note for note in entries["fs-b"]["notes"])
    assert report["state"] == "degraded" and report["ok"] is True
    assert report["counts"] == {"ok": 1, "degraded": 1, "error": 0}


def test_stale_verification_and_stale_car_degrade(root: Path, tmp_path: Path) -> None:
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "s"))
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid_for(1), "stored", verified_at=ago(days=30))])
    entry = reports.health(root)["backends"][0]
    assert entry["state"] == "degraded"
    assert any("last verified more than 7 days ago" in r for r in entry["reasons"])
    backend = get_backend(root, "fs-a")
    with PinStore(backend).transaction() as txn:  # a commit whose exports were never made (a killed writer)
        txn.update({cid_for(2): pin_record(root, "fs-a", cid_for(2))})
    entry = reports.health(root)["backends"][0]
    assert entry["exports"] == {"parquet": "stale", "car": "stale"}
    assert any("export pending: pin_mappings.car is behind the table" in r for r in entry["reasons"])
    backend.car_path.unlink()
    entry = reports.health(root)["backends"][0]
    assert any("pin_mappings.car is missing" in r for r in entry["reasons"])


def test_a_broken_backend_is_an_error_and_never_hides_the_others(populated: Path) -> None:
    make_backend(populated, "broken")
    (populated / "backends" / "broken" / "pin_mappings.parquet").write_bytes(b"not parquet at all")
    (populated / "backends" / "bad-config.yaml").write_text("type: [unclosed")
    report = reports.health(populated)
    entries = by_name(report["backends"])
    assert entries["broken"]["state"] == "error" and "not a readable parquet" in entries["broken"]["error"]
    assert entries["bad-config"]["state"] == "error"
    assert entries["fs-a"]["state"] == "ok"
    assert report["state"] == "error" and report["ok"] is False
    status = reports.status(populated)
    assert by_name(status["backends"])["broken"]["error"]
    assert by_name(status["backends"])["fs-a"]["count"] == 2
    insights = reports.insights(populated)
    assert {e["backend"] for e in insights["errors"]} == {"broken", "bad-config"}
    assert insights["total_pins"] == 5
    summary = reports.backend_summary(populated, "broken")
    assert summary["source"] == "error" and summary["health"] == "error" and "error" in summary


def test_last_sync_error_degrades_and_shows_in_status(populated: Path) -> None:
    backend = get_backend(populated, "fs-a")
    record_run(backend, "sync", {"finished_at": ago(minutes=1), "ok": False, "error": "endpoint unreachable"})
    entry = by_name(reports.health(populated)["backends"])["fs-a"]
    assert entry["state"] == "degraded" and any("endpoint unreachable" in r for r in entry["reasons"])
    status = by_name(reports.status(populated)["backends"])["fs-a"]
    assert status["last_sync_ok"] is False and status["last_sync"]


def test_legacy_backend_is_degraded_and_says_legacy(root: Path) -> None:
    make_backend(root, "s3-old", pins_json=[{"cid": cid_for(1), "status": "pinned"}])
    summary = reports.backend_summary(root, "s3-old")
    assert summary["source"] == "legacy" and summary["count"] == 1
    assert summary["by_status"] == {"stored": 1, "pending": 0, "failed": 0}
    assert summary["health"] == "degraded"
    assert any("not migrated" in r for r in summary["reasons"])


def test_status_counts_files_and_types(populated: Path) -> None:
    report = reports.status(populated)
    assert report["ok"] and report["total"] == 5
    assert report["by_status"] == {"stored": 3, "pending": 1, "failed": 1}
    assert report["by_type"]["filesystem"]["count"] == 5
    entry = by_name(report["backends"])["fs-b"]
    parquet = populated / "backends" / "fs-b" / "pin_mappings.parquet"
    assert entry["files"]["parquet"]["size"] == parquet.stat().st_size
    assert entry["files"]["car"]["size"] > 0 and entry["files"]["pins_json"] is None
    assert entry["source"] == "table" and entry["last_sync"] is None


def test_status_detailed_redacts_secrets(root: Path) -> None:
    config = {"name": "s3-x", "type": "s3", "config": {"bucket": "b", "secret_key": "hunter2", "access_key": "AK"}}
    make_backend(root, "s3-x", config)
    report = reports.status(root, detailed=True)
    text = json.dumps(report)
    assert "hunter2" not in text and "AK" not in text.replace("AKE", "")
    entry = report["backends"][0]
    assert entry["config"]["config"]["bucket"] == "b"
    assert entry["driver"]["available"] is True and "s3://b" in entry["driver"]["location"]


def test_insights(populated: Path) -> None:
    report = reports.insights(populated)
    assert report["ok"] and report["total_pins"] == 5
    assert report["by_backend"]["fs-b"]["by_status"] == {"stored": 1, "pending": 1, "failed": 1}
    assert report["age"]["buckets"] == {
        "<1h": 1,
        "1h-1d": 1,
        "1d-7d": 1,
        "7d-30d": 0,
        "30d-365d": 1,
        ">365d": 1,
        "unknown": 0,
    }
    assert report["failures"]["top_reasons"] == [{"reason": "CAR missing", "count": 1}]
    replication = report["replication"]
    assert replication["cids"] == 4 and replication["held_by_several"] == 1 and replication["held_by_one"] == 3
    assert replication["examples_several"] == [cid_for("shared")]
    assert replication["stored"]["held_by_several"] == 1 and replication["stored"]["cids"] == 2
    assert report["verification"]["by_backend"] == {"fs-a": 0, "fs-b": 1}
    waiting = report["age"]["by_status"]
    assert {name: {k: v for k, v in item["buckets"].items() if v} for name, item in waiting.items()} == {
        "pending": {"1h-1d": 1},
        "failed": {">365d": 1},
    }
    assert [(item["backend"], item["finished_at"]) for item in report["last_syncs"]] == [("fs-a", None), ("fs-b", None)]


def test_insights_last_syncs_come_from_the_run_records(populated: Path) -> None:
    finished = ago(hours=3)
    record_run(get_backend(populated, "fs-b"), "sync", {"finished_at": finished, "ok": False, "error": "unreachable"})
    last = {item["backend"]: item for item in reports.insights(populated)["last_syncs"]}
    assert last["fs-b"] == {
        "backend": "fs-b",
        "finished_at": finished,
        "ok": False,
        "state": None,
        "error": "unreachable",
    }
    assert last["fs-a"]["finished_at"] is None


def test_backend_summary_contract_keys(populated: Path) -> None:
    summary = reports.backend_summary(populated, "fs-b")
    for key in ("backend", "type", "count", "by_status", "source"):
        assert key in summary
    assert summary["count"] == 3 and summary["source"] == "table" and summary["health"] == "degraded"
    assert set(summary["by_status"]) == {"stored", "pending", "failed"}
    with pytest.raises(NotFound):
        reports.backend_summary(populated, "nope")
    with pytest.raises(InvalidInput):
        reports.backend_summary(populated, "../etc")


def test_reports_read_only_columns(populated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a report read whole records")

    monkeypatch.setattr(PinSnapshot, "table", forbidden)
    monkeypatch.setattr(PinSnapshot, "iter_records", forbidden)
    monkeypatch.setattr(PinSnapshot, "lookup", forbidden)
    reports.health(populated)
    reports.status(populated, detailed=True)
    reports.insights(populated)
    reports.backend_summary(populated, "fs-a")


def test_cli_reports(populated: Path) -> None:
    health = run_pinfs_json(populated, "health")
    assert health["state"] == "degraded"
    alias = run_pinfs_json(populated, "daemon", "intelligent", "health")
    assert [(e["backend"], e["state"]) for e in alias["backends"]] == [
        (e["backend"], e["state"]) for e in health["backends"]
    ]
    status = run_pinfs_json(populated, "daemon", "intelligent", "status", "--detailed")
    assert status["total"] == 5
    insights = run_pinfs_json(populated, "insights")
    assert insights["replication"]["held_by_several"] == 1
    text = run_pinfs(populated, "health")
    assert text.returncode == 0 and "fs-b (filesystem): degraded" in text.stdout
    text = run_pinfs(populated, "status")
    assert text.returncode == 0 and "fs-a (filesystem, table): 2 pins" in text.stdout
    make_backend(populated, "broken")
    (populated / "backends" / "broken" / "pin_mappings.parquet").write_bytes(b"junk")
    assert run_pinfs(populated, "health", "--json").returncode == 1


def test_content_car_helper_is_valid() -> None:
    from pinfs.data.carv1 import verify_content_car

    cid, data = content_car("x")
    assert verify_content_car(data, cid, "test") == 1


def test_replication_counts_agree_with_a_plain_count() -> None:
    """insights' replication is counted by sorting every backend's CIDs together (fast at 3M CIDs)."""
    rng = random.Random(3)
    pools = [sorted({cid_for(rng.randrange(300)) for _ in range(200)}) for _ in range(4)] + [[]]
    report = _replication([pa.chunked_array([pa.array(pool, pa.string())], pa.string()) for pool in pools])
    counts = Counter(cid for pool in pools for cid in pool)
    assert report["cids"] == len(counts)
    assert report["copies"] == {str(n): k for n, k in sorted(Counter(counts.values()).items())}
    assert report["held_by_one"] == sum(1 for n in counts.values() if n == 1)
    assert report["held_by_several"] == sum(1 for n in counts.values() if n > 1)
    assert report["examples_several"] == sorted(cid for cid, n in counts.items() if n > 1)[:EXAMPLES]
    assert _replication([])["cids"] == 0
