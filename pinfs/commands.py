"""Every command that has a control file, declared once (issue #18): its options, their control words,
CLI flags, parsers, help and defaults.

What it is for: ``COMMANDS`` is the single description from which the rest is generated: the argparse
options of ``pinfs migrate``/``sync``/``verify``/``car regenerate``/``pin add``/``pin rm``
(``pinfs.cli.options``), the control-file word parser (``pinfs.fs.control``) and the control-file section
of ``MOUNT/README`` (``control_readme``). A new option is one ``Option`` here; a new command is one
``Command`` here, one control file name in ``ROOT_COMMANDS``/``BACKEND_COMMANDS`` and one CLI parser that
calls ``add_options``; then run ``scripts/readme_commands.py`` (README.md's list). The one line limit
(``pinfs.ops.pins.MAX_LINE_BYTES``) and the one days parser (``pinfs.ops.verify.parse_days``) live
with the operations, which check their own input too; the CLI and the control files get them here.

What it must not do: import ``pinfs.cli`` or ``pinfs.fs`` (both import it), or do any work of the
operations: it names them, and ``pinfs.ops`` validates again what it is given.

Threading: plain data, no state; ``Option.check`` touches the data root (worker threads only).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinfs.data.backends import get_backend, validate_backend_name
from pinfs.data.schema import STATUSES
from pinfs.ops.carops import RegenerateOptions, regenerate_car
from pinfs.ops.common import match_backends
from pinfs.ops.migrate import MigrateOptions, migrate
from pinfs.ops.pins import MAX_LINE_BYTES, add_pins, parse_pin_lines, parse_unpin_lines, remove_pins
from pinfs.ops.sync import SyncOptions, sync
from pinfs.ops.verify import VerifyOptions, parse_days, verify

__all__ = ["MAX_LINE_BYTES", "COMMANDS", "ROOT_COMMANDS", "BACKEND_COMMANDS", "Command", "Option"]


@dataclass(frozen=True)
class Option:
    """One option of a command: ``--<word>`` on the command line and ``<word>`` (a flag) or
    ``<word>=<value>`` in its control file, setting ``field`` of the operation's options."""

    word: str  # the control word, and the CLI flag's name unless ``flag`` says otherwise
    field: str  # what it sets in the operation's options dataclass
    help: str  # the CLI help, also the control word's line in MOUNT/README
    metavar: str | None = None  # the value's name (``DAYS``); None: a flag, no value
    parse: Callable[[str], Any] | None = None  # text -> value; raises InvalidInput
    default: Any = None  # the CLI default (a repeatable option: [])
    repeatable: bool = False
    flag: str | None = None  # the CLI flag when it is not ``--<word>`` (migrate's ``--backend-filter``)
    choices: tuple[str, ...] | None = None
    required: bool = False  # on the command line
    # The control side only: a check against the data root, so that a name that does not exist fails
    # the write (EINVAL) instead of the run; the CLI leaves it to the operation, which raises the same.
    check: Callable[[Path, str], object] | None = None
    readme_word: str | None = None  # how MOUNT/README shows the word, when not ``word=<metavar>``

    @property
    def cli_flag(self) -> str:
        return self.flag or f"--{self.word}"

    @property
    def dest(self) -> str:
        """argparse's name for it (``args.backend_filter``)."""
        return self.cli_flag.lstrip("-").replace("-", "_")

    @property
    def shown_word(self) -> str:
        """The word as MOUNT/README shows it: ``deep``, ``older-than=<days>``."""
        if self.readme_word is not None:
            return self.readme_word
        return self.word if self.metavar is None else f"{self.word}=<{self.metavar.lower()}>"


@dataclass(frozen=True)
class Command:
    """An operation reachable both as ``pinfs <cli>`` and as the control file ``name``.

    A words command (``parse_lines`` None) takes one line of words, turned into ``options_class`` and passed
    to ``function(root, options)``. A lines command (pin, unpin) takes one item per line, parsed by
    ``parse_lines`` and passed to ``function(root, backend, items)``; its options are the words of a
    line (``status=``, ``meta.<key>=``), and the backend is the control file's own.
    """

    name: str  # the control file's name
    cli: tuple[str, ...]  # the command's words on the command line
    function: Callable[..., dict[str, Any]]
    options: tuple[Option, ...]
    example: str  # a line to write, for MOUNT/README
    options_class: Callable[..., Any] | None = None
    parse_lines: Callable[[str, int], list[Any]] | None = None  # (text, number of its first line)
    lines: str | None = None  # what one line is, for MOUNT/README (a lines command)

    @property
    def multiline(self) -> bool:
        return self.parse_lines is not None

    def option(self, word: str) -> Option | None:
        return next((option for option in self.options if option.word == word), None)


# -- checks against the data root (one of each: issue #18) --


def _backend_exists(root: Path, name: str) -> object:
    return get_backend(root, name)  # validates the name too: the one check of it


def _filter_matches(root: Path, text: str) -> object:
    return match_backends(root, [text])


# -- the declarations --


def _backend(help: str = "only this backend (repeatable)") -> Option:
    return Option("backend", "backends", help, metavar="NAME", default=[], repeatable=True, check=_backend_exists)


COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "migrate",
            ("migrate",),
            migrate,
            options_class=MigrateOptions,
            example="dry-run backend=s3-main",
            options=(
                Option("dry-run", "dry_run", "report exactly what would change; write nothing"),
                Option(
                    "backend",
                    "backends",
                    "only the backend of this name, or else every backend whose name contains it, in any "
                    "case (repeatable)",
                    metavar="NAME",
                    default=[],
                    repeatable=True,
                    flag="--backend-filter",  # the seed's spelling (CONTRACT §3)
                    check=_filter_matches,
                    readme_word="backend=<name or part of names>",
                ),
                Option(
                    "skip-backend",
                    "skip",
                    "leave out the backend of exactly this name, e.g. one that failed before (repeatable)",
                    metavar="NAME",
                    parse=validate_backend_name,  # the one check of a name; migrate says if it exists
                    default=[],
                    repeatable=True,
                ),
                Option("verbose", "verbose", "list the CIDs added, updated and rejected, with each rejected value"),
                Option(
                    "force",
                    "force",
                    "re-import every pins.json entry, also changed ones and ones removed through pinfs",
                ),
                Option("force-car-regeneration", "force_car_regeneration", "rebuild pin_mappings.car from the parquet"),
                Option(
                    "restore-from-backup",
                    "restore_from_backup",
                    "rebuild the parquet from the newest pins.json.backup.* (the current parquet is kept as a backup)",
                ),
                Option(
                    "verify-only",
                    "verify_only",
                    "check parquet schema and values, CAR validity and agreement; exit 1 if anything is wrong",
                ),
            ),
        ),
        Command(
            "regenerate-car",
            ("car", "regenerate"),
            regenerate_car,
            options_class=RegenerateOptions,
            example="",
            options=(_backend(),),
        ),
        Command(
            "sync",
            ("sync",),
            sync,
            options_class=SyncOptions,
            example="dry-run",
            options=(_backend(), Option("dry-run", "dry_run", "list what would move; write nothing")),
        ),
        Command(
            "verify",
            ("verify",),
            verify,
            options_class=VerifyOptions,
            example="older-than=3",
            options=(
                _backend(),
                Option(
                    "older-than",
                    "older_than_days",
                    "re-check pins verified longer ago (default 7)",
                    metavar="DAYS",
                    parse=parse_days,
                    default=7.0,
                ),
                Option("deep", "deep", "also read each CAR and check its root and hashes"),
            ),
        ),
        Command(
            "pin",
            ("pin", "add"),
            add_pins,
            parse_lines=parse_pin_lines,
            lines="<cid> [status=stored|pending|failed] [meta.<key>=<value>]...",
            example="<cid> status=stored meta.source=x",
            options=(
                Option("backend", "backend", "the backend to pin in", metavar="NAME", required=True),
                Option(
                    "status",
                    "status",
                    "status to set (new pins default to pending)",
                    metavar="STATUS",
                    choices=STATUSES,
                    readme_word="status=" + "|".join(STATUSES),
                ),
                Option(
                    "meta",
                    "meta",
                    "a metadata key to set (repeatable)",
                    metavar="KEY=VALUE",
                    default=[],
                    repeatable=True,
                    readme_word="meta.<key>=<value>",
                ),
            ),
        ),
        Command(
            "unpin",
            ("pin", "rm"),
            remove_pins,
            parse_lines=parse_unpin_lines,
            lines="<cid>",
            example="<cid>",
            options=(Option("backend", "backend", "the backend to unpin from", metavar="NAME", required=True),),
        ),
    )
}
ROOT_COMMANDS: tuple[str, ...] = ("migrate", "regenerate-car", "sync", "verify")
BACKEND_COMMANDS: tuple[str, ...] = (*ROOT_COMMANDS, "pin", "unpin")


# -- MOUNT/README --

_WIDTH = 100


def control_readme() -> str:
    """The control files' section of MOUNT/README, from the declarations: each file, a line to write
    into it, and each of its words with what it does."""
    parts = ["Everything is read-only except the control files, which run commands when written:", ""]
    for name in ROOT_COMMANDS:
        parts.extend(_words_section(COMMANDS[name], f".control/{name}"))
    parts += ["In backends/<b>/.control/ the same files act on that backend only (backend= is implied), plus:", ""]
    for name in BACKEND_COMMANDS:
        if name not in ROOT_COMMANDS:
            parts.extend(_lines_section(COMMANDS[name]))
    return "\n".join(parts) + "\n"


def _words_section(command: Command, path: str) -> list[str]:
    lines = [f"  echo '{command.example}' > {path}"]
    for option in command.options:
        again = " (repeatable)" if option.repeatable and "repeatable" not in option.help else ""
        lines.extend(_described(option.shown_word, option.help + again))
    return [*lines, ""]


def _lines_section(command: Command) -> list[str]:
    what = "pin" if command.name == "pin" else "CID"
    lines = [
        f"  echo '{command.example}' > backends/<b>/.control/{command.name}",
        f"      one {what} per line, many lines are one batch:",
        f"      {command.lines}",
    ]
    for option in command.options:
        if option.word != "backend":
            lines.extend(_described(option.shown_word, option.help))
    return [*lines, ""]


def _described(word: str, help: str) -> list[str]:
    """``      word        help``, the help wrapped in its column (under the word when it is long)."""
    column = 30
    wrapped = textwrap.wrap(help, _WIDTH - column, break_on_hyphens=False)
    head = f"      {word}"
    if len(head) >= column - 1:
        return [head, *(" " * column + line for line in wrapped)]
    return [head.ljust(column) + wrapped[0], *(" " * column + line for line in wrapped[1:])]
