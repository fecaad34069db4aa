"""The ``pinfs`` command line: argparse, thin over ``pinfs.ops``.

Each ``*_cmd`` module registers its subcommands on the shared parser and handles them by calling one
operation and printing its report (``--json``: the report as JSON on stdout; otherwise human text).
Errors become one line on stderr and an exit status: 0 success, 1 the operation failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pinfs import __version__
from pinfs.cli.completion_cmd import autocomplete
from pinfs.cli.mount_helper import helper_argv
from pinfs.errors import PinfsError, describe

# Each module defines ``register(subparsers, common)``; order is the order shown in --help.
COMMAND_MODULES = (
    "pinfs.cli.migrate_cmd",
    "pinfs.cli.pin_cmd",
    "pinfs.cli.car_cmd",
    "pinfs.cli.ops_cmd",
    "pinfs.cli.maintain_cmd",
    "pinfs.cli.query_cmd",
    "pinfs.cli.mount_cmd",
    "pinfs.cli.completion_cmd",
)

# The seed's spellings, rewritten to ours before parsing (CONTRACT §3).
ALIASES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("backend", "migrate-pin-mappings"): ("migrate",),
    ("daemon", "intelligent"): (),
}

EPILOG = """\
The data root is ~/.ipfs_kit unless --root DIR or $PINFS_ROOT says otherwise.
Also accepted: 'pinfs backend migrate-pin-mappings ...' (= migrate) and
'pinfs daemon intelligent health|insights|status|sync ...'.
Exit status: 0 success, 1 the operation failed, 2 bad usage."""


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes (so they may come after the subcommand's name)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", metavar="DIR", help="data root (default: $PINFS_ROOT or ~/.ipfs_kit)")
    common.add_argument("--json", action="store_true", help="print a machine-readable JSON report on stdout")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pinfs",
        description="Browse and operate IPFS pin mappings (pin_mappings.parquet / .car) per storage backend.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pinfs {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_options()
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a command group not built yet
        module.register(subparsers, common)
    return parser


def rewrite_aliases(argv: Sequence[str]) -> list[str]:
    words = list(argv)
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


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    autocomplete(parser)  # only when the shell asks for completions (then it exits)
    # mount.fuse3 runs 'pinfs ROOT MOUNTPOINT -o OPTIONS' for 'mount -t fuse.pinfs' and fstab lines.
    helper = helper_argv(words, command_names(parser))
    args = parser.parse_args(helper if helper is not None else rewrite_aliases(words))
    try:
        return int(args.handler(args) or 0)
    except PinfsError as exc:
        print(f"pinfs {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"pinfs {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `pinfs pin ls | head`: the reader went away; that is not an error of ours.
        sys.stderr.close()
        return 0
    except OSError as exc:  # a disk full, a read-only root, a directory gone: one line naming the file
        print(f"pinfs {args.command}: error: {describe(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
