"""``pinfs migrate`` (also ``pinfs backend migrate-pin-mappings``)."""

from __future__ import annotations

import argparse
from typing import Any

from pinfs.cli.output import emit, exit_status, make_progress, root_of

DESCRIPTION = """\
Import each backend's legacy pins.json into pin_mappings.parquet and write pin_mappings.car.
pins.json is never modified: it is backed up first as pins.json.backup.<UTC stamp>. A CID already in
the parquet keeps its row unless --force. Entries that cannot be imported (invalid CIDs, ...) are kept
with their reason in pins.rejected.json. Running it again changes nothing."""


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
        "--backend-filter", action="append", default=[], metavar="NAME", help="only this backend (repeatable)"
    )
    parser.add_argument("--verbose", action="store_true", help="list the CIDs added, updated and rejected")
    parser.add_argument("--force", action="store_true", help="replace parquet rows that differ from pins.json")
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
        if entry["ok"]:
            return f"{name}: ok ({entry.get('pins', 0)} pins, parquet and CAR agree)"
        listed = "\n".join(f"  - {problem}" for problem in entry["problems"])
        return f"{name}: {entry['problem_count']} problem(s)\n{listed}"
    if mode == "restore":
        return f"{prefix}{name}: restore {entry['pins']} pins from {entry['restored_from']}"
    parts = [f"{entry['added']} added", f"{entry['updated']} updated", f"{entry['unchanged']} unchanged"]
    if entry["rejected"]:
        parts.append(f"{entry['rejected']} rejected (see pins.rejected.json)")
    car = (
        f"; CAR {'written' if not prefix else 'would be written'} ({entry['car_reason']})"
        if entry["car_written"]
        else ""
    )
    text = f"{prefix}{name}: {', '.join(parts)}; {entry['total']} pins{car}"
    for key in ("added_cids", "updated_cids"):
        text += "".join(f"\n  {key.split('_')[0]} {cid}" for cid in entry.get(key, []))
    for item in entry.get("rejected_entries", []):
        text += f"\n  rejected {item['location']}: {item['reason']}"
    return text
