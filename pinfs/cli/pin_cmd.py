"""``pinfs pin add|rm|ls|get`` and ``pinfs find``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pinfs.cli.options import add_options
from pinfs.cli.output import emit, root_of
from pinfs.commands import COMMANDS
from pinfs.data.schema import STATUSES
from pinfs.errors import describe

CID_HELP = (
    "a CID: CIDv0 (Qm...) or CIDv1 in any multibase; every spelling of one CID (Qm... and bafybei..., "
    "upper or lower case) is that one CID"
)
IDENTITY = (
    "A CID is matched by its identity (codec and multihash), however it is spelled: 'Qm...' and its "
    "CIDv1 'bafybei...', another multibase or another case of base32 are the same CID, and a backend "
    "keeps the spelling first written."
)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    pin = subparsers.add_parser(
        "pin",
        help="add, remove, list and show pins",
        description="Add, remove, list and show the pins of the data root's backends. " + IDENTITY,
    )
    actions = pin.add_subparsers(dest="pin_command", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        parents=[common],
        help="pin CIDs in a backend (one write for all)",
        description="Pin CIDs in one backend, in one write: new ones are added (status pending unless --status "
        "says otherwise), pinned ones get the status and metadata given, and one pinned already with "
        "nothing new is reported unchanged. " + IDENTITY,
    )
    add.add_argument("cids", nargs="+", metavar="CID", help=CID_HELP)
    add_options(add, COMMANDS["pin"])
    add.set_defaults(handler=run_add)

    remove = actions.add_parser(
        "rm",
        parents=[common],
        help="unpin CIDs from a backend (all or nothing)",
        description="Unpin CIDs from one backend, in one write. If one of them is not pinned there, nothing "
        "changes and the command says which (exit 1). " + IDENTITY,
    )
    remove.add_argument("cids", nargs="+", metavar="CID", help=CID_HELP)
    add_options(remove, COMMANDS["unpin"])
    remove.set_defaults(handler=run_remove)

    listing = actions.add_parser(
        "ls",
        parents=[common],
        help="list pins (streamed; --json gives JSON lines)",
        description="List pins, a backend at a time in CID order, streamed: one tab-separated line per pin "
        "(CID, status, backend, CAR path), or with --json one JSON object per line.",
    )
    listing.add_argument("--backend", metavar="NAME", help="only this backend's pins (default: every backend)")
    listing.add_argument("--status", choices=STATUSES, help="only pins with this status")
    listing.set_defaults(handler=run_list)

    get = actions.add_parser(
        "get",
        parents=[common],
        help="show a pin's record in each backend holding it",
        description="Show the record of a CID in each backend holding it (or in --backend only); exit 1 when "
        "none does. " + IDENTITY,
    )
    get.add_argument("cid", metavar="CID", help=CID_HELP)
    get.add_argument("--backend", metavar="NAME", help="look only in this backend")
    get.set_defaults(handler=run_get)

    find = subparsers.add_parser(
        "find",
        parents=[common],
        help="every backend holding a CID, and where",
        description="Every backend holding a CID: its status there and where its CAR lives; exit 1 when no "
        "backend holds it. " + IDENTITY,
    )
    find.add_argument("cid", metavar="CID", help=CID_HELP)
    find.set_defaults(handler=run_get, backend=None)


def run_add(args: argparse.Namespace) -> int:
    from pinfs.data.cids import validate_cid
    from pinfs.ops.pins import PinRequest, add_pins, parse_meta, parse_status

    metadata = dict(parse_meta(item, "--meta: ") for item in args.meta)
    status = parse_status(args.status) if args.status else None
    requests = [PinRequest(validate_cid(cid), status, dict(metadata)) for cid in args.cids]
    report = add_pins(root_of(args), args.backend, requests)
    emit(
        args,
        report,
        lambda r: (
            f"{r['backend']}: {len(r['added'])} added, {len(r['updated'])} updated, "
            f"{len(r['unchanged'])} unchanged; {r['total']} pins"
        ),
    )
    return _exports_status(args, report)


def _exports_status(args: argparse.Namespace, report: dict[str, Any]) -> int:
    """Exit 1, with the report's one line on stderr, when the pins were committed but the exports
    could not be written after them (issue #15: ``committed`` and ``exports`` in the JSON say so)."""
    if report.get("ok", True):
        return 0
    print(f"pinfs {args.command}: error: {report.get('error')}", file=sys.stderr)
    return 1


def run_remove(args: argparse.Namespace) -> int:
    from pinfs.data.cids import validate_cid
    from pinfs.ops.pins import remove_pins

    cids = [validate_cid(cid) for cid in args.cids]
    report = remove_pins(root_of(args), args.backend, cids)
    emit(args, report, _removed_text)
    return _exports_status(args, report)


def _removed_text(report: dict[str, Any]) -> str:
    if report.get("already_removed") is not None:
        version = report["already_removed"]
        return f"{report['backend']}: already removed (table version {version}); {report['total']} pins"
    return f"{report['backend']}: {len(report['removed'])} removed; {report['total']} pins"


def run_list(args: argparse.Namespace) -> int:
    from pinfs.ops.pins import iter_pins

    count = 0
    broken: list[str] = []

    def report_broken(backend: Any, error: BaseException) -> None:  # said at once, the others still listed
        broken.append(backend.name)
        sys.stdout.flush()
        print(f"pinfs pin ls: error: backend {backend.name}: {describe(error)}", file=sys.stderr)

    for record in iter_pins(root_of(args), args.backend, args.status, on_error=report_broken):
        if args.json:
            sys.stdout.write(json.dumps(record) + "\n")
        else:
            sys.stdout.write(
                f"{record['cid']}\t{record['status']}\t{record['backend_name']}\t{record['car_file_path']}\n"
            )
        count += 1
    if not args.json and count == 0:
        print("no pins", file=sys.stderr)
    return 1 if broken else 0


def run_get(args: argparse.Namespace) -> int:
    from pinfs.data.cids import validate_cid
    from pinfs.ops.pins import find_cid

    report = find_cid(root_of(args), validate_cid(args.cid), args.backend)
    emit(args, report, _describe_holders)
    return 0


def _describe_holders(report: dict[str, Any]) -> str:
    lines = [report["cid"]]
    for holder in report["backends"]:
        spelled = f" as {holder['cid']}," if holder["cid"] != report["cid"] else ""  # issue #16: one CID
        lines.append(
            f"  {holder['backend']} ({holder['type']}): {holder['status']}{spelled} at {holder['car_file_path']}"
        )
    lines.extend(f"  {item['backend']}: error: {item['error']}" for item in report["errors"])
    return "\n".join(lines)
