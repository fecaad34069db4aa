"""``pinfs completion bash|zsh``: tab completion through argcomplete, and the completers it calls.

The printed script makes the shell run ``pinfs`` itself on each TAB (with ``_ARGCOMPLETE`` set), so
completion always matches this pinfs: subcommands, flags and choices (statuses, shells) come from the
argparse parser; backend names come from the data root the line names (``--root``) or the default
one; ``umount`` offers the pinfs mounts of this machine. ``autocomplete`` is called by ``main`` before
parsing and does nothing (not even import argcomplete) unless the shell asked for completions.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

from pinfs.cli.output import emit

SHELLS = ("bash", "zsh")
BACKEND_OPTIONS = ("backend", "backend_filter")  # argparse dests that take a backend name

DESCRIPTION = """\
Print the script that makes bash or zsh complete pinfs commands, options, backend names and
statuses. Load it from your shell's start-up file:

  bash (~/.bashrc):  eval "$(pinfs completion bash)"
  zsh  (~/.zshrc, after compinit):  eval "$(pinfs completion zsh)"
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    completion = subparsers.add_parser(
        "completion",
        parents=[common],
        help="print the shell completion script (bash or zsh)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    completion.set_defaults(handler=run_completion)


def run_completion(args: argparse.Namespace) -> int:
    import argcomplete

    script = argcomplete.shellcode(["pinfs"], shell=args.shell)
    emit(args, {"ok": True, "shell": args.shell, "script": script}, lambda report: report["script"].rstrip("\n"))
    return 0


# -- completing --


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request and exit, when there is one (argcomplete's protocol)."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete

    for subparser in _parsers(parser):
        for action in subparser._actions:
            if action.dest in BACKEND_OPTIONS:
                action.completer = complete_backends  # type: ignore[attr-defined]
            elif action.dest == "mountpoint" and subparser.prog.endswith(" umount"):
                action.completer = complete_mounts  # type: ignore[attr-defined]
            elif action.dest == "mountpoint":
                action.completer = argcomplete.completers.DirectoriesCompleter()  # type: ignore[attr-defined]
    argcomplete.autocomplete(parser, always_complete_options=False)  # options once "-" is typed


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand's parser, at any depth (argparse has no public way to walk them)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _parsers(child)


def complete_backends(prefix: str, parsed_args: argparse.Namespace, **_kwargs: Any) -> list[str]:
    """The backends of the data root the command line names (``--root``), or of the default one."""
    from pinfs.data.backends import discover_backends, resolve_root
    from pinfs.errors import PinfsError

    try:
        backends, _problems = discover_backends(resolve_root(getattr(parsed_args, "root", None)))
    except (OSError, PinfsError):  # no data root (yet): nothing to offer
        return []
    return [backend.name for backend in backends if backend.name.startswith(prefix)]


def complete_mounts(prefix: str, **_kwargs: Any) -> list[str]:
    """Mount points of pinfs filesystems (``fuse.pinfs`` in the mount table)."""
    from pinfs.data.fsutil import unescape_mountinfo

    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            lines = table.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].startswith("fuse.pinfs "):
            mountpoint = unescape_mountinfo(fields[0].split()[4])
            if mountpoint.startswith(prefix):
                found.append(mountpoint)
    return found
