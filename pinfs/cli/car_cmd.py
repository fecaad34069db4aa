"""``pinfs car show FILE`` and ``pinfs car regenerate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pinfs.cli.options import add_options, options_of
from pinfs.cli.output import emit, exit_status, make_progress, root_of
from pinfs.commands import COMMANDS
from pinfs.errors import NotFound


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    car = subparsers.add_parser(
        "car",
        help="read and rebuild pin_mappings.car files",
        description="Read a pin_mappings.car file in any of its forms, or rebuild backends' pin_mappings.car "
        "from their pins.",
    )
    actions = car.add_subparsers(dest="car_command", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        parents=[common],
        help="print a pin_mappings.car (CARv1 or legacy JSON) as the legacy JSON form",
        description="Print a pin_mappings.car file, a CARv1 or the legacy JSON form, as the legacy JSON form "
        '({"format": "pin_mappings_car", "version", "pin_mappings": [...]}); every block hash is checked.',
    )
    show.add_argument("file", type=Path, metavar="FILE", help="the pin_mappings.car file to read")
    show.set_defaults(handler=run_show)
    regenerate = actions.add_parser(
        "regenerate",
        parents=[common],
        help="rebuild pin_mappings.car from the parquet",
        description="Write pin_mappings.car (and pin_mappings.parquet) of each backend again from its pins "
        "(the Delta table), e.g. when health says an export is missing or behind.",
    )
    add_options(regenerate, COMMANDS["regenerate-car"])
    regenerate.set_defaults(handler=run_regenerate)


def run_show(args: argparse.Namespace) -> int:
    from pinfs.data.car import read_pin_mappings_car, to_legacy_json

    if not args.file.is_file():
        raise NotFound(f"{args.file}: no such file")
    document = to_legacy_json(read_pin_mappings_car(args.file))
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def run_regenerate(args: argparse.Namespace) -> int:
    from pinfs.ops.carops import regenerate_car

    report = regenerate_car(root_of(args), options_of(args, COMMANDS["regenerate-car"]), make_progress(args))
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
            lines.append(f"{entry['backend']}: {entry['records']} pins, {entry['bytes']} bytes")
    return "\n".join(lines) or "no backends found"
