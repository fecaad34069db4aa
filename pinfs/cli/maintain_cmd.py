"""``pinfs maintain``: lay out, checkpoint and vacuum the backends' tables (``pinfs.ops.maintain``)."""

from __future__ import annotations

import argparse
from typing import Any

from pinfs.cli.output import emit, exit_status, make_progress, root_of
from pinfs.ops.maintain import MAINTAIN_EVERY, MaintainOptions, maintain


def _hours(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number of hours: {text!r}")
    return int(text)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "maintain",
        parents=[common],
        help="split or merge data files, checkpoint the log and vacuum old files of each backend's table",
        description="Maintain each backend's Delta table (ROOT/backends/<b>/pin_mappings.delta): data files that "
        "grew past twice their target size are split and small ones merged, the pins of the insert file (new pins "
        "since the last merge) are merged into the files of their CID ranges, a log checkpoint is written, log "
        "entries older than the last few dozen versions are deleted (but what reading the version of the parquet "
        "export takes), and data files no version younger than the retention (2 minutes) needs are deleted, but "
        "those of the versions that long readers (a mount's open listings, an export, on any host) recorded in "
        "pin_mappings.delta/_pinfs_readers. Readers and writers go on meanwhile. "
        f"This also runs by itself after every {MAINTAIN_EVERY}th commit of a table.",
    )
    parser.add_argument("--backend", action="append", default=[], metavar="NAME", help="only this backend (repeatable)")
    parser.add_argument(
        "--retention-hours",
        type=_hours,
        default=None,
        metavar="HOURS",
        help="delete files unreferenced for this long instead of the table's 2 minutes (0: all of them now, but "
        "those of recorded readers; another tool still reading an old version may then fail)",
    )
    parser.set_defaults(handler=run_maintain)


def run_maintain(args: argparse.Namespace) -> int:
    options = MaintainOptions(backends=args.backend, retention_hours=args.retention_hours)
    report = maintain(root_of(args), options, make_progress(args))
    emit(args, report, _describe)
    return exit_status(report)


def _describe(report: dict[str, Any]) -> str:
    lines = []
    for entry in report["backends"]:
        if "error" in entry:
            lines.append(f"{entry['backend']}: error: {entry['error']}")
        elif "skipped" in entry:
            lines.append(f"{entry['backend']}: skipped: {entry['skipped']}")
        else:
            lines.append(
                f"{entry['backend']}: version {entry['version']}, {entry['pins']} pins in {entry['files']} files; "
                f"{entry['files_rewritten']} files laid out again, {entry.get('inserts_merged', 0)} inserted pins "
                f"merged into their ranges, {entry.get('log_entries_removed', 0)} old log files and "
                f"{entry['vacuumed']} old data files deleted"
                + ("; table properties brought up to date" if entry.get("properties_upgraded") else "")
                + _readers(entry.get("versions_read") or [])
            )
    return "\n".join(lines) or "no backends found"


def _readers(versions: list[int]) -> str:
    """The versions kept for readers, if any (a listing open in a mount, an export, on any host)."""
    if not versions:
        return ""
    return f"; kept the files of version{'s' if len(versions) > 1 else ''} {', '.join(map(str, versions))} for readers"
