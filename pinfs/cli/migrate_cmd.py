"""``pinfs migrate`` (also ``pinfs backend migrate-pin-mappings``)."""

from __future__ import annotations

import argparse
from typing import Any

from pinfs.cli.output import emit, exit_status, make_progress, root_of

DESCRIPTION = """\
Import each backend's legacy pins.json (or, without one, its newest pins.json.backup.*) into
pin_mappings.parquet and write pin_mappings.car. pins.json is never modified: it is backed up first
as pins.json.backup.<UTC stamp>, and that backup is recorded as what was imported. A later run imports
what changed in pins.json since: new CIDs are added, a pin removed through pinfs is not brought back,
a changed entry is applied only with --force, a pin gone from pins.json is kept. --force re-imports
every entry (a pin keeps its car_file_path and pinfs' own fields). Entries that cannot be imported
(invalid CIDs, ...) are kept with their reason in pins.rejected.json. Running it again changes
nothing."""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "migrate",
        parents=[common],
        help="migrate legacy pins.json files to parquet + CAR (also: verify, restore)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="report exactly what would change; write nothing")
    parser.add_argument(
        "--backend-filter",
        action="append",
        default=[],
        metavar="NAME",
        help="only the backend of this name, or else every backend whose name contains it, in any case (repeatable)",
    )
    parser.add_argument("--verbose", action="store_true", help="list the CIDs added, updated and rejected")
    parser.add_argument(
        "--force",
        action="store_true",
        help="re-import every pins.json entry, also changed ones and ones removed through pinfs",
    )
    parser.add_argument(
        "--force-car-regeneration", action="store_true", help="rebuild pin_mappings.car from the parquet"
    )
    parser.add_argument(
        "--restore-from-backup",
        action="store_true",
        help="rebuild the parquet from the newest pins.json.backup.* (the current parquet is kept as a backup)",
    )
    parser.add_argument(
        "--verify-only",
        action="store_true",
        help="check parquet schema and values, CAR validity and agreement; exit 1 if anything is wrong",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pinfs.ops.migrate import MigrateOptions, migrate

    options = MigrateOptions(
        backends=args.backend_filter,
        dry_run=args.dry_run,
        verbose=args.verbose,
        force=args.force,
        force_car_regeneration=args.force_car_regeneration,
        restore_from_backup=args.restore_from_backup,
        verify_only=args.verify_only,
    )
    report = migrate(root_of(args), options, make_progress(args))
    emit(args, report, describe)
    return exit_status(report)


def describe(report: dict[str, Any]) -> str:
    prefix = "[dry run] " if report["dry_run"] else ""
    lines = [_line(entry, report["mode"], prefix) for entry in report["backends"]]
    if not report["backends"]:
        lines.append("no backends found")
    lines.extend(f"warning: {p['location']}: {p['reason']}" for p in report["problems"])
    lines.append(("ok" if report["ok"] else "FAILED") + f" ({report['mode']})")
    return "\n".join(lines)


def _line(entry: dict[str, Any], mode: str, prefix: str) -> str:
    name = entry["backend"]
    if "error" in entry:
        return f"{name}: error: {entry['error']}"
    # A broken config (e.g. a symlink pointing outside the root) is only a warning for migration; say so
    # in the text output too, not only in --json.
    warning = f"\n  warning: {entry['warning']}" if entry.get("warning") and mode != "verify-only" else ""
    return _entry_line(entry, mode, prefix) + warning


def _entry_line(entry: dict[str, Any], mode: str, prefix: str) -> str:
    name = entry["backend"]
    if mode == "verify-only":
        if entry["ok"] and entry.get("note"):
            return f"{name}: ok ({entry['note']})"
        if entry["ok"]:
            return f"{name}: ok ({entry.get('pins', 0)} pins, parquet and CAR agree)"
        listed = "\n".join(f"  - {problem}" for problem in entry["problems"])
        return f"{name}: {entry['problem_count']} problem(s)\n{listed}"
    if mode == "restore":
        return f"{prefix}{name}: restore {entry['pins']} pins from {entry['restored_from']}"
    if entry.get("note"):
        return f"{prefix}{name}: {entry['note']}; {entry['total']} pins"
    counts = [f"{entry['added']} added", f"{entry['updated']} updated", f"{entry['unchanged']} unchanged"]
    if entry["rejected"]:
        counts.append(f"{entry['rejected']} rejected (see pins.rejected.json)")
    clauses = [", ".join(counts), *_kept(entry), f"{entry['total']} pins"]
    car = (
        f"; CAR {'written' if not prefix else 'would be written'} ({entry['car_reason']})"
        if entry["car_written"]
        else ""
    )
    text = f"{prefix}{name}: {'; '.join(clauses)}{car}"
    for key, word in _LISTED:
        text += "".join(f"\n  {word} {cid}" for cid in entry.get(f"{key}_cids", []))
    for item in entry.get("rejected_entries", []):
        text += f"\n  rejected {item['location']}: {item['reason']}"
    return text


_LISTED = (
    ("added", "added"),
    ("updated", "updated"),
    ("removed_in_pinfs", "not brought back"),
    ("changed_in_legacy", "changed, not applied"),
    ("gone_from_legacy", "gone from pins.json, kept"),
)


def _kept(entry: dict[str, Any]) -> list[str]:
    """What was not imported, and why (issue #14: always say what happened)."""
    parts = []
    if entry.get("removed_in_pinfs"):
        parts.append(f"{entry['removed_in_pinfs']} removed through pinfs (not brought back)")
    if entry.get("changed_in_legacy"):
        parts.append(f"{entry['changed_in_legacy']} changed in pins.json (not applied; --force applies them)")
    if entry.get("gone_from_legacy"):
        parts.append(f"{entry['gone_from_legacy']} gone from pins.json (kept)")
    if parts and entry.get("since"):
        parts[0] = f"since {entry['since']}: {parts[0]}"
    return parts
