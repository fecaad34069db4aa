"""The ``pinfs`` command line: argparse, thin over ``pinfs.ops``.

Each ``*_cmd`` module registers its subcommands on the shared parser and handles them by calling one
operation and printing its report (``--json``: the report as JSON on stdout; otherwise human text).

One rule for every command (issue #16): exit 0 when it did what was asked, 1 when the operation failed
(including a report that says a backend failed or cannot be read), 2 for bad usage or invalid input (an
unknown option, a malformed CID or name, a backend that does not exist). An error is one line on stderr
(``pinfs COMMAND: error: …``), never a traceback; with ``--json`` it is also a JSON object on stdout,
``{"error": "…", "code": N, "command": "…"}`` (``code`` is the exit status), so a script always reads JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pinfs import __version__
from pinfs.cli import (
    car_cmd,
    completion_cmd,
    maintain_cmd,
    migrate_cmd,
    mount_cmd,
    pin_cmd,
    query_cmd,
    reports_cmd,
    sync_cmd,
)
from pinfs.cli.completion_cmd import autocomplete
from pinfs.cli.mount_helper import helper_argv
from pinfs.data.tables import settle_pandas_probe
from pinfs.errors import InvalidInput, PinfsError, describe

# Each module defines ``register(subparsers, common)``; order is the order shown in --help. They are
# imported here, not found by name, so that one that cannot be imported fails loudly (issue #18).
COMMAND_MODULES = (
    migrate_cmd,
    pin_cmd,
    car_cmd,
    sync_cmd,
    reports_cmd,
    maintain_cmd,
    query_cmd,
    mount_cmd,
    completion_cmd,
)

# The seed's spellings, rewritten to ours before parsing (CONTRACT §3). ``backend`` and ``daemon`` are
# also commands of their own, for ``--help`` and for a spelling that is not complete (issue #16).
ALIASES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("backend", "migrate-pin-mappings"): ("migrate",),
    ("daemon", "intelligent"): (),
}
DAEMON_COMMANDS = ("health", "insights", "status", "sync")

EPILOG = """\
The data root is ~/.ipfs_kit unless --root DIR or $PINFS_ROOT says otherwise.
Also accepted: 'pinfs backend migrate-pin-mappings ...' (= migrate) and
'pinfs daemon intelligent health|insights|status|sync ...'.
'pinfs COMMAND --help' says what a command does and what each of its options means.

Exit status: 0 done, 1 the operation failed, 2 bad usage or invalid input (an unknown option, a
malformed CID or name, a backend that does not exist). Errors are one line on stderr; with --json,
an error is also a JSON object on stdout: {"error": "...", "code": N, "command": "..."}."""


class UsageError(Exception):
    """argparse's complaint about the command line, raised instead of exiting (see ``PinfsParser``)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class PinfsParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors come back to ``main`` (which also prints them as JSON with
    ``--json``) instead of exiting from inside argparse. Subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes (so they may come after the subcommand's name)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", metavar="DIR", help="the data root (default: $PINFS_ROOT, else ~/.ipfs_kit)")
    common.add_argument(
        "--json",
        action="store_true",
        help='print a machine-readable JSON report on stdout (an error too, as {"error", "code"})',
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = PinfsParser(
        prog="pinfs",
        description="Browse and operate IPFS pin mappings (pin_mappings.parquet / .car) per storage backend.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pinfs {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_options()
    for module in COMMAND_MODULES:
        module.register(subparsers, common)
    _register_seed_spellings(subparsers, common)
    return parser


def _register_seed_spellings(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``pinfs backend`` and ``pinfs daemon [intelligent]``: what the seed's spellings stand for. A
    complete spelling never reaches these parsers (``rewrite_aliases`` makes it ours first)."""
    backend = subparsers.add_parser(
        "backend",
        parents=[common],
        help="the seed's spelling of migrate: 'pinfs backend migrate-pin-mappings ...'",
        description="'pinfs backend migrate-pin-mappings [OPTIONS]' is 'pinfs migrate [OPTIONS]', as the tool "
        "pinfs replaces spelled it; see 'pinfs migrate --help' for the options.",
    )
    backend.add_argument(
        "action", choices=["migrate-pin-mappings"], metavar="ACTION", help="migrate-pin-mappings (= pinfs migrate)"
    )
    daemon = subparsers.add_parser(
        "daemon",
        help="the seed's spelling of health, insights, status and sync: 'pinfs daemon intelligent health'",
        description="'pinfs daemon intelligent health|insights|status|sync [OPTIONS]' is 'pinfs health' (or "
        "insights, status, sync) with those options, as the tool pinfs replaces spelled it.",
    )
    spellings = daemon.add_subparsers(dest="daemon_command", metavar="ACTION", required=True)
    intelligent = spellings.add_parser(
        "intelligent",
        parents=[common],
        help="health, insights, status or sync",
        description="'pinfs daemon intelligent COMMAND [OPTIONS]' is 'pinfs COMMAND [OPTIONS]' for COMMAND "
        "health, insights, status or sync; see 'pinfs COMMAND --help'.",
    )
    intelligent.add_argument("action", choices=DAEMON_COMMANDS, metavar="COMMAND", help=", ".join(DAEMON_COMMANDS))
    for parser in (backend, daemon, intelligent):
        parser.set_defaults(handler=_seed_spelling)


def _seed_spelling(args: argparse.Namespace) -> int:
    raise InvalidInput(f"write 'pinfs {args.command} ...' in full; see 'pinfs {args.command} --help'")


def rewrite_aliases(argv: Sequence[str]) -> list[str]:
    """The seed's spellings as ours: ``backend migrate-pin-mappings`` is ``migrate``, ``daemon
    intelligent health`` is ``health``; anything else (``daemon intelligent --help``) is left alone."""
    words = list(argv)
    if words[:2] == ["daemon", "intelligent"] and (len(words) < 3 or words[2] not in DAEMON_COMMANDS):
        return words
    for alias, replacement in ALIASES.items():
        if tuple(words[: len(alias)]) == alias:
            return list(replacement) + words[len(alias) :]
    return words


def command_names(parser: argparse.ArgumentParser) -> set[str]:
    """The subcommands' names, and the first words of the seed's spellings."""
    names = {alias[0] for alias in ALIASES}
    for action in parser._subparsers._group_actions if parser._subparsers else ():  # argparse keeps them here
        names.update(getattr(action, "choices", None) or ())
    return names


def command_of(args: argparse.Namespace) -> str:
    """The command's words, e.g. ``pin add``, for messages."""
    words = [args.command, getattr(args, "pin_command", None), getattr(args, "car_command", None)]
    return " ".join(word for word in words if word)


def fail(command: str, message: str, code: int, as_json: bool) -> int:
    """Report an error: one line on stderr, and with ``--json`` a JSON object on stdout (issue #16)."""
    message = (message.strip().splitlines() or ["failed"])[0]  # a library's multi-line message: its first line
    print(f"pinfs{' ' + command if command else ''}: error: {message}", file=sys.stderr)
    if as_json:
        with contextlib.suppress(BrokenPipeError):
            print(json.dumps({"error": message, "code": code, "command": command}))
    return code


def _parse(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Namespace:
    """``parse_args``, but an unknown option is blamed on the subcommand it was given to (argparse
    leaves that to the top-level parser, whose usage line says nothing about the subcommand)."""
    args, extra = parser.parse_known_args(words)
    if extra:
        raise UsageError(_innermost(parser, args), f"unrecognized arguments: {' '.join(extra)}")
    return args


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the subcommand ``args`` were parsed by."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                return _innermost(chosen, args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    autocomplete(parser)  # only when the shell asks for completions (then it exits)
    # mount.fuse3 runs 'pinfs ROOT MOUNTPOINT -o OPTIONS' for 'mount -t fuse.pinfs' and fstab lines.
    helper = helper_argv(words, command_names(parser))
    as_json = "--json" in words
    try:
        args = _parse(parser, helper if helper is not None else rewrite_aliases(words))
    except UsageError as exc:
        exc.parser.print_usage(sys.stderr)
        return fail(exc.parser.prog.removeprefix("pinfs").strip(), exc.message, 2, as_json)
    command = command_of(args)
    settle_pandas_probe()  # the commands never hand pyarrow a pandas object: not imported for asking
    try:
        code = int(args.handler(args) or 0)
    except PinfsError as exc:
        return fail(command, str(exc), exc.exit_code, as_json)
    except KeyboardInterrupt:
        return fail(command, "interrupted", 130, as_json)
    except BrokenPipeError:
        # `pinfs pin ls | head`: the reader went away; that is not an error of ours.
        sys.stderr.close()
        return 0
    except OSError as exc:  # a disk full, a read-only root, a directory gone: one line naming the file
        return fail(command, describe(exc), 1, as_json)
    except Exception as exc:  # a bug of ours: still one line (PINFS_DEBUG=1 shows the traceback)
        if os.environ.get("PINFS_DEBUG"):
            raise
        return fail(command, f"internal error: {type(exc).__name__}: {exc} (PINFS_DEBUG=1 shows where)", 1, as_json)
    warn_root_problems(args, command)
    return code


# Commands whose report shows the entries under the root that are not usable backends, or that do not
# look at the root's backends at all: no separate warning for them.
_PROBLEMS_SHOWN_OR_NOT_LOOKED_AT = frozenset(
    {"migrate", "health", "car show", "completion", "mount", "umount", "backend", "daemon"}
)


def warn_root_problems(args: argparse.Namespace, command: str) -> None:
    """Once per command, on stderr: what under the root looks like a backend but cannot be one (an
    invalid directory name, a symlink), which every command leaves out (issue #16)."""
    if command in _PROBLEMS_SHOWN_OR_NOT_LOOKED_AT or not hasattr(args, "root"):
        return
    from pinfs.data.backends import discover_backends, resolve_root

    try:
        problems = discover_backends(resolve_root(args.root))[1]
    except (OSError, PinfsError):
        return
    for problem in problems:
        print(f"pinfs {command}: warning: {problem.location}: {problem.reason}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
