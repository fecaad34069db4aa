"""``pinfs migrate`` (also ``pinfs backend migrate-pin-mappings``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pinfs.cli.options import add_options, options_of
from pinfs.cli.output import emit, exit_status, make_progress, root_of
from pinfs.commands import COMMANDS

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
    add_options(parser, COMMANDS["migrate"])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pinfs.ops.migrate import migrate

    options = options_of(args, COMMANDS["migrate"])
    report = migrate(root_of(args), options, make_progress(args))
    emit(args, report, describe)
    return exit_status(report)


def describe(report: dict[str, Any]) -> str:
    prefix = "[dry run] " if report["dry_run"] else ""
    lines = [_line(entry, report["mode"], prefix) for entry in report["backends"]]
    if not report["backends"]:
        lines.append("no backends found")
    lines.extend(f"warning: {p['location']}: {p['reason']}" for p in report["problems"])
    lines.append(_verdict(report))
    return "\n".join(lines)


def _verdict(report: dict[str, Any]) -> str:
    """The last line: ok, or which backends failed and how to go on without them (issue #16)."""
    mode = report["mode"]
    if report["ok"]:
        return f"ok ({mode})"
    broken = [entry["backend"] for entry in report["backends"] if not entry["ok"]]
    done = len(report["backends"]) - len(broken)
    others = (
        "there were no others"
        if not done
        else "the other backend went through"
        if done == 1
        else (f"the other {done} went through")
    )
    what = "have problems" if mode == "verify-only" else "failed"
    skips = " ".join(f"--skip-backend {name}" for name in broken)
    return (
        f"FAILED ({mode}): {', '.join(broken)} {what} (see above); {others}. Fix what is said above and run "
        f"this again, or leave them out: pinfs migrate {skips} (or pick backends with --backend-filter NAME)"
    )


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
        return _restore_line(entry, prefix)
    if entry.get("note"):
        return f"{prefix}{name}: {entry['note']}; {entry['total']} pins"
    would = entry.get("would_write")  # a dry run: what it would write (issue #16)
    counts = [f"{entry['added']} added", f"{entry['updated']} updated", f"{entry['unchanged']} unchanged"]
    if entry["rejected"] and would is not None:
        kept = "would be kept in pins.rejected.json" if would["rejected"] else "as in pins.rejected.json"
        counts.append(f"{entry['rejected']} rejected ({kept})")
    elif entry["rejected"]:
        counts.append(f"{entry['rejected']} rejected (see pins.rejected.json)")
    clauses = [", ".join(counts), *_kept(entry), f"{entry['total']} pins"]
    car = ""
    if would is not None and would["car"]:
        car = f"; CAR would be written ({entry['car_reason']})"
    elif entry["car_written"]:
        car = f"; CAR written ({entry['car_reason']})"
    text = f"{prefix}{name}: {'; '.join(clauses)}{car}"
    for key, word in _LISTED:
        text += "".join(f"\n  {word} {cid}" for cid in entry.get(f"{key}_cids", []))
    for item in entry.get("rejected_entries", []):
        text += f"\n  rejected {item['location']} {_shown(item['entry'])}: {item['reason']}"
    return text


def _shown(value: Any) -> str:
    """A rejected value as it was written, cut short (issue #16: say what was rejected, not only where)."""
    text = json.dumps(value)  # ASCII escapes: a lone surrogate from pins.json cannot break the output
    return text if len(text) <= 100 else text[:99] + "…"


def _restore_line(entry: dict[str, Any], prefix: str) -> str:
    """What a restore does, or would do: the pins it drops are named (issue #16)."""
    key = "would_" if prefix else ""
    verb = "would restore" if prefix else "restored"
    text = f"{prefix}{entry['backend']}: {verb} {entry['pins']} pins from {entry['restored_from']}"
    dropped, count = entry.get(f"{key}drop", []), entry.get(f"{key}drop_count", 0)
    text += f"; {'would drop' if prefix else 'dropped'} {count} pin{'s' if count != 1 else ''} not in it"
    text += f", {'would add' if prefix else 'added'} {entry.get(f'{key}add_count', 0)}"
    if prefix and entry.get("would_keep_current_as"):
        text += f"; the current pins would be kept as {entry['would_keep_current_as']}"
    elif entry.get("previous_parquet_kept_as"):
        text += f"; the previous pins are kept as {entry['previous_parquet_kept_as']}"
    text += "".join(f"\n  {'would drop' if prefix else 'dropped'} {cid}" for cid in dropped[:TEXT_DROPS])
    if count > min(len(dropped), TEXT_DROPS):
        text += f"\n  … and {count - min(len(dropped), TEXT_DROPS)} more (use --json)"
    return text


TEXT_DROPS = 1000  # pins a restore names in text (--json lists up to MAX_LISTED_DROPS)


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
