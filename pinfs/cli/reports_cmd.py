"""``pinfs health``, ``status`` and ``insights``: reports over every backend (also ``pinfs daemon
intelligent health|status|insights``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pinfs.cli.output import counts_text, emit, exit_status, root_of
from pinfs.data.fsutil import atomic_write_bytes
from pinfs.errors import PinfsError

# health, status and insights exit alike (issue #16).
REPORT_EXIT = (
    "Exit status: 0 when every backend could be read (degraded ones included), 1 when one cannot be "
    "(its pins or its config are unreadable), 2 for bad usage."
)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
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
            f"({counts_text(entry['by_status'])}); parquet {_size(files['parquet'])}, car {_size(files['car'])}; "
            f"last sync {entry['last_sync'] or 'never'}, last migration {entry['last_migration'] or 'never'}"
        )
        if entry.get("error"):
            lines.append(f"  error: {entry['error']}")
        if detailed:
            driver = entry.get("driver", {})
            lines.append(f"  storage: {driver.get('location') or driver.get('reason')}")
            if "verification" in entry:
                lines.append(f"  verification: {counts_text(entry['verification'])}; car {entry.get('car')}")
            if "storage" in entry:
                lines.append(f"  stored CARs: {_storage_text(entry['storage'])}")
            for item in entry.get("failure_reasons", []):
                lines.append(f"  {item['count']} failed: {item['reason']}")
    lines.append(f"total: {report['total']} pins ({counts_text(report['by_status'])})")
    return "\n".join(lines)


def _storage_text(storage: dict[str, int]) -> str:
    text = f"{storage['bytes']} B in {storage['cars']} CARs"
    if storage["cars_without_size"]:
        text += f" ({storage['cars_without_size']} of unknown size until verified)"
    return text


def _insights_text(report: dict[str, Any]) -> str:
    lines = [f"{report['total_pins']} pins ({counts_text(report['by_status'])})"]
    for name, item in report["by_backend"].items():
        stored = f"; stored CARs {_storage_text(item['storage'])}" if "storage" in item else ""
        lines.append(f"  {name} ({item['type']}): {item['count']} ({counts_text(item['by_status'])}){stored}")
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
