"""``pinfs sync`` and ``pinfs verify``: put pins' content CARs on their backends and check them there
(also ``pinfs daemon intelligent sync``). Their options are declared in ``pinfs.commands``."""

from __future__ import annotations

import argparse
from typing import Any

from pinfs.cli.options import add_options, options_of
from pinfs.cli.output import counts_text, emit, exit_status, make_progress, root_of
from pinfs.commands import COMMANDS

# Per-pin lines of sync and verify in text (the report, --json, keeps up to ops.sync.MAX_DETAILS).
TEXT_DETAILS = 1000


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    sync = subparsers.add_parser(
        "sync",
        parents=[common],
        help="put the content CARs of pins not yet stored on their backends",
        description="Sync pins that are not 'stored' (failed first, then oldest): find each pin's content CAR "
        "(ROOT/cars/<cid>.car or another backend holding it), check it, put it on the backend, mark it stored. "
        "Syncing a filesystem backend also backs up every backend's pin mappings into it.",
    )
    add_options(sync, COMMANDS["sync"])
    sync.set_defaults(handler=run_sync)

    verify = subparsers.add_parser(
        "verify",
        parents=[common],
        help="check that stored pins' CARs are on their backends",
        description="Check stored pins not verified for --older-than days: the CAR exists on the backend with "
        "its recorded size (--deep: and its hashes). Bad ones become 'failed' so the next sync heals them.",
    )
    add_options(verify, COMMANDS["verify"])
    verify.set_defaults(handler=run_verify)


# -- handlers --


def run_sync(args: argparse.Namespace) -> int:
    from pinfs.ops.sync import sync

    report = sync(root_of(args), options_of(args, COMMANDS["sync"]), make_progress(args))
    emit(args, report, _sync_text)
    return exit_status(report)


def run_verify(args: argparse.Namespace) -> int:
    from pinfs.ops.verify import verify

    report = verify(root_of(args), options_of(args, COMMANDS["verify"]), make_progress(args))
    emit(args, report, _verify_text)
    return exit_status(report)


# -- human text --


def _sync_text(report: dict[str, Any]) -> str:
    lines = []
    prefix = "(dry run) " if report.get("dry_run") else ""
    for entry in report["backends"]:
        head = f"{prefix}{entry['backend']} ({entry['type']}): {entry['state']}"
        if entry["state"] in ("synced", "dry-run"):
            head += f" - {counts_text(entry['counts'])}"
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
        head = f"{entry['backend']} ({entry['type']}): {entry['state']} - {counts_text(entry['counts'])}"
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
