"""The argparse options of the commands declared in ``pinfs.commands``, and the options dataclass they
make: the command line's half of "every command declared once" (issue #18); ``pinfs.fs.control`` is
the other half.

What it must not do: declare an option itself (``pinfs.commands`` does) or run an operation.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pinfs.commands import Command, Option
from pinfs.errors import InvalidInput


def add_options(parser: argparse.ArgumentParser, command: Command) -> None:
    """Add each of ``command``'s options to ``parser``, as ``--<word>``."""
    for option in command.options:
        parser.add_argument(option.cli_flag, **_argument(option))


def _argument(option: Option) -> dict[str, Any]:
    if option.metavar is None:
        return {"action": "store_true", "help": option.help}
    argument: dict[str, Any] = {"metavar": option.metavar, "help": option.help, "default": option.default}
    if option.repeatable:
        argument["action"] = "append"
        argument["default"] = list(option.default or [])
    if option.parse is not None:
        argument["type"] = _argparse_type(option.parse)
    if option.choices is not None:
        argument["choices"], argument["metavar"] = option.choices, None  # argparse shows {a,b,c}
    if option.required:
        argument["required"] = True
    return argument


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` for argparse, whose usage error then says which option and why (exit 2)."""

    def parsed(text: str) -> Any:
        try:
            return parse(text)
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(f"{text[:60]!r}: {exc}") from None

    parsed.__name__ = parse.__name__  # argparse names the type in some messages
    return parsed


def options_of(args: argparse.Namespace, command: Command) -> Any:
    """The operation's options dataclass, from the parsed command line."""
    assert command.options_class is not None, f"{command.name} takes lines, not options"
    return command.options_class(**{option.field: getattr(args, option.dest) for option in command.options})
