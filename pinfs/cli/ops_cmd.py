"""``pinfs sync``, ``verify``, ``health``, ``status`` and ``insights`` (also ``pinfs daemon intelligent …``)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from pinfs.cli.output import emit, exit_status, make_progress, root_of
from pinfs.errors import InvalidInput, PinfsError
from pinfs.fsutil import atomic_write_bytes

# health, status and insights exit alike (issue #16).
REPORT_EXIT = (
    "Exit status: 0 when every backend could be read (degraded ones included), 1 when one cannot be "
    "(its pins or its config are unreadable), 2 for bad usage."
)
# Per-pin lines of sync and verify in text (the report, --json, keeps up to ops.sync.MAX_DETAILS).
TEXT_DETAILS = 1000


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"days must be 0 or more: {text!r}")
    return value


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    sync = subparsers.add_parser(
        "sync",
        parents=[common],
        help="put the content CARs of pins not yet stored on their backends",
        description="Sync pins that are not 'stored' (failed first, then oldest): find each pin's content CAR "
        "(ROOT/cars/<cid>.car or another backend holding it), check it, put it on the backend, mark it stored. "
        "Syncing a filesystem backend also backs up every backend's pin mappings into it.",
    )
    sync.add_argument("--backend", action="append", default=[], metavar="NAME", help="only this backend (repeatable)")
    sync.add_argument("--dry-run", action="store_true", help="list what would move; write nothing")
    sync.set_defaults(handler=run_sync)

    verify = subparsers.add_parser(
        "verify",
        parents=[common],
        help="check that stored pins' CARs are on their backends",
        description="Check stored pins not verified for --older-than days: the CAR exists on the backend with "
        "its recorded size (--deep: and its hashes). Bad ones become 'failed' so the next sync heals them.",
    )
    verify.add_argument("--backend", action="append", default=[], metavar="NAME", help="only this backend (repeatable)")
    verify.add_argument(
        "--older-than", type=_days, default=7.0, metavar="DAYS", help="re-check pins verified longer ago (default 7)"
    )
    verify.add_argument("--deep", action="store_true", help="also read each CAR and check its root and hashes")
    verify.set_defaults(handler=run_verify)

    health = subparsers.add_parser(
        "health",
        parents=[common],
        help="per backend ok/degraded/error and why",
        description="Check every backend and say, per backend, ok, degraded or error, and why, with what to do: "
        "failed pins, stored pins not verified lately, exports behind the table, a storage that cannot be "
        "reached, backup copies that differ, a backend still served from pins.json. " + REPORT_EXIT,
    )
    health.set_defaults(handler=run_health)

    status = subparsers.add_parser(
        "status",
        parents=[common],
        help="per backend: type, counts, file sizes, last runs",
        description="Per backend: its type, where its pins are read from (its table, an older parquet, its "
        "legacy pins.json), counts by status, the sizes of its files and when it was last synced and "
        "migrated. " + REPORT_EXIT,
    )
    status.add_argument("--detailed", action="store_true", help="also config, driver, verification, failures")
    status.set_defaults(handler=run_status)

    insights = subparsers.add_parser(
        "insights",
        parents=[common],
        help="pin distribution, age, failures, replication",
        description="Insights over every backend: pins by status, their age, the most common failure reasons, "
        "how many backends hold each CID, storage used, pins needing verification, last syncs. " + REPORT_EXIT,
    )
    insights.add_argument(
        "--svg",
        metavar="FILE",
        help="also draw them as an SVG picture into FILE ('-': standard output), like MOUNT/insights.svg",
    )
    insights.set_defaults(handler=run_insights)


# -- handlers --


def run_sync(args: argparse.Namespace) -> int:
    from pinfs.ops.sync import SyncOptions, sync

    report = sync(root_of(args), SyncOptions(backends=list(args.backend), dry_run=args.dry_run), make_progress(args))
    emit(args, report, _sync_text)
    return exit_status(report)


def run_verify(args: argparse.Namespace) -> int:
    from pinfs.ops.verify import VerifyOptions, verify

    if args.older_than is None:
        raise InvalidInput("--older-than needs a number of days")
    options = VerifyOptions(backends=list(args.backend), older_than_days=args.older_than, deep=args.deep)
    report = verify(root_of(args), options, make_progress(args))
    emit(args, report, _verify_text)
    return exit_status(report)


def run_health(args: argparse.Namespace) -> int:
    from pinfs.ops.reports import health

    report = health(root_of(args))
    emit(args, report, _health_text)
    return exit_status(report)


def run_status(args: argparse.Namespace) -> int:
    from pinfs.ops.reports import status

    report = status(root_of(args), detailed=args.detailed)
    emit(args, report, lambda r: _status_text(r, args.detailed))
    return exit_status(report)


def run_insights(args: argparse.Namespace) -> int:
    from pinfs.ops.reports import insights

    report = insights(root_of(args))
    if args.svg is None:
        emit(args, report, _insights_text)
    elif args.svg == "-":
        sys.stdout.buffer.write(_svg(report))
    else:
        target = Path(args.svg)
        try:
            atomic_write_bytes(target, _svg(report))
        except OSError as exc:
            raise PinfsError(f"cannot write {target}: {exc.strerror or exc}") from None
        emit(args, {**report, "svg": str(target)}, lambda _r: f"insights drawn in {target}")
    return exit_status(report)


def _svg(report: dict[str, Any]) -> bytes:
    from pinfs.ops.insights_svg import render_svg

    return render_svg(report)


# -- human text --


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{value} {name}" for name, value in counts.items())


def _sync_text(report: dict[str, Any]) -> str:
    lines = []
    prefix = "(dry run) " if report.get("dry_run") else ""
    for entry in report["backends"]:
        head = f"{prefix}{entry['backend']} ({entry['type']}): {entry['state']}"
        if entry["state"] in ("synced", "dry-run"):
            head += f" - {_counts(entry['counts'])}"
        if entry.get("reason"):
            head += f" - {entry['reason']}"
        lines.append(head)
        moved = entry.get("moved", []) + entry.get("would_move", [])
        verb = "would move" if report.get("dry_run") else "moved"
        lines.extend(f"  {verb} {item['cid']} from {item['from']}" for item in moved[:TEXT_DETAILS])
        lines.extend(_more(len(moved), entry.get("counts", {}).get("moved", 0), entry["backend"], None))
        failed = entry.get("failed", []) + entry.get("would_fail", [])
        lines.extend(f"  FAILED {item['cid']}: {item['error']}" for item in failed[:TEXT_DETAILS])
        lines.extend(_more(len(failed), entry.get("counts", {}).get("failed", 0), entry["backend"], "failed"))
        push = entry.get("car_push")
        if push and push.get("error"):
            lines.append(f"  pin_mappings.car not pushed: {push['error']}")
    for backup in report.get("backups", []):
        if not backup["ok"]:
            lines.append(f"backups to {backup['target']}: FAILED: {backup.get('error')}")
        elif backup.get("skipped"):
            lines.append(f"backups to {backup['target']}: skipped - {backup['skipped']}")
        else:
            copied, unchanged = len(backup["copied"]), backup["unchanged"]
            lines.append(f"{prefix}backups to {backup['target']}: {copied} copied, {unchanged} unchanged")
    totals = report["totals"]
    lines.append(
        f"{prefix}total: {totals['moved']} moved, {totals['failed']} failed, {totals['skipped']} already stored, "
        f"{totals['unsupported']} unsupported, {totals['errors']} errors"
    )
    return "\n".join(lines)


def _more(listed: int, total: int, backend: str, status: str | None) -> list[str]:
    """The line that says how many pins the text left out, and where they all are (issue #16)."""
    shown = min(listed, TEXT_DETAILS)
    if total <= shown:
        return []
    if listed >= total:
        return [f"  … and {total - shown} more (use --json)"]
    where = f"; 'pinfs pin ls --backend {backend} --status {status}' lists them all" if status else ""
    return [f"  … and {total - shown} more (--json lists {listed}{where})"]


def _verify_text(report: dict[str, Any]) -> str:
    lines = []
    for entry in report["backends"]:
        head = f"{entry['backend']} ({entry['type']}): {entry['state']} - {_counts(entry['counts'])}"
        if entry.get("reason"):
            head += f" - {entry['reason']}"
        lines.append(head)
        failed = entry.get("failed", [])
        lines.extend(f"  FAILED {item['cid']}: {item['error']}" for item in failed[:TEXT_DETAILS])
        lines.extend(_more(len(failed), entry.get("counts", {}).get("failed", 0), entry["backend"], "failed"))
    totals = report["totals"]
    lines.append(
        f"total: {totals['checked']} checked, {totals['good']} good, {totals['failed']} failed, "
        f"{totals['skipped']} not due, {totals['errors']} errors"
    )
    return "\n".join(lines)


def _health_text(report: dict[str, Any]) -> str:
    lines = [f"overall: {report['state']}"]
    for entry in report["backends"]:
        lines.append(f"{entry['backend']} ({entry['type']}): {entry['state']}")
        lines.extend(f"  - {reason}" for reason in entry.get("reasons", []))
        lines.extend(f"  ({note})" for note in entry.get("notes", []))
    for problem in report.get("problems", []):
        lines.append(f"problem: {problem['location']}: {problem['reason']}")
    if not report["backends"]:
        lines.append(f"no backends under {report['root']}/backends")
    return "\n".join(lines)


def _size(info: dict[str, Any] | None) -> str:
    return "-" if not info else f"{info['size']} B"


def _status_text(report: dict[str, Any], detailed: bool) -> str:
    lines = []
    for entry in report["backends"]:
        if "by_status" not in entry:
            lines.append(f"{entry['backend']} ({entry['type']}): error: {entry.get('error')}")
            continue
        files = entry["files"]
        lines.append(
            f"{entry['backend']} ({entry['type']}, {entry['source']}): {entry['count']} pins "
            f"({_counts(entry['by_status'])}); parquet {_size(files['parquet'])}, car {_size(files['car'])}; "
            f"last sync {entry['last_sync'] or 'never'}, last migration {entry['last_migration'] or 'never'}"
        )
        if entry.get("error"):
            lines.append(f"  error: {entry['error']}")
        if detailed:
            driver = entry.get("driver", {})
            lines.append(f"  storage: {driver.get('location') or driver.get('reason')}")
            if "verification" in entry:
                lines.append(f"  verification: {_counts(entry['verification'])}; car {entry.get('car')}")
            if "storage" in entry:
                lines.append(f"  stored CARs: {_storage_text(entry['storage'])}")
            for item in entry.get("failure_reasons", []):
                lines.append(f"  {item['count']} failed: {item['reason']}")
    lines.append(f"total: {report['total']} pins ({_counts(report['by_status'])})")
    return "\n".join(lines)


def _storage_text(storage: dict[str, int]) -> str:
    text = f"{storage['bytes']} B in {storage['cars']} CARs"
    if storage["cars_without_size"]:
        text += f" ({storage['cars_without_size']} of unknown size until verified)"
    return text


def _insights_text(report: dict[str, Any]) -> str:
    lines = [f"{report['total_pins']} pins ({_counts(report['by_status'])})"]
    for name, item in report["by_backend"].items():
        stored = f"; stored CARs {_storage_text(item['storage'])}" if "storage" in item else ""
        lines.append(f"  {name} ({item['type']}): {item['count']} ({_counts(item['by_status'])}){stored}")
    lines.append("age: " + ", ".join(f"{k} {v}" for k, v in report["age"]["buckets"].items()))
    replication = report["replication"]
    lines.append(
        f"replication: {replication['cids']} distinct CIDs, {replication['held_by_one']} held by one backend, "
        f"{replication['held_by_several']} by several"
    )
    for item in report["failures"]["top_reasons"]:
        lines.append(f"  {item['count']} failed: {item['reason']}")
    lines.append(f"needing verification: {report['verification']['needing']}")
    lines.append(f"storage used by stored CARs: {report['storage']['bytes']} B")
    for error in report.get("errors", []):
        lines.append(f"error: {error['backend']}: {error['error']}")
    return "\n".join(lines)
