"""Every command declared once (issue #18): the command line, the control files, MOUNT/README and
README.md say the same thing, because they are made from one declaration (``pinfs.commands``).

The tests compare what a user sees on each side (``--help``'s options, the words a control file
takes and says it takes, the README texts), not the declarations with themselves.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import cid_for, make_backend, run_pinfs

from pinfs.cli import build_parser
from pinfs.cli.readme import rewrite
from pinfs.errors import InvalidInput
from pinfs.fs.control import BACKEND_COMMANDS, ROOT_COMMANDS, ControlRegistry
from pinfs.fs.tree import README_TEXT

PROJECT = Path(__file__).resolve().parent.parent

CLI_OF_CONTROL = {
    "migrate": ("migrate",),
    "regenerate-car": ("car", "regenerate"),
    "sync": ("sync",),
    "verify": ("verify",),
    "pin": ("pin", "add"),
    "unpin": ("pin", "rm"),
}
# A valid value for each valued word, to show that the control file takes it.
VALUES = {"backend": "s3-main", "skip-backend": "other", "older-than": "3", "status": "stored", "meta": ""}


def _cli_options(words: tuple[str, ...]) -> set[str]:
    """The options ``pinfs <words> --help`` lists, as control words (``--backend-filter``: ``backend``)."""
    parser: Any = build_parser()
    for word in words:
        sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
        parser = sub.choices[word]
    names = {option for action in parser._actions for option in action.option_strings if option.startswith("--")}
    names -= {"--help", "--root", "--json"}
    return {"backend" if name in ("--backend", "--backend-filter") else name[2:] for name in names}


def _words_taken(root: Path, control: str) -> set[str]:
    """The words a root control file says it takes when given one it does not know."""
    with pytest.raises(InvalidInput) as refused:
        ControlRegistry(root).parse((None, control), b"zzzzzzzzzzzz")
    listed = re.search(r"takes: (.*)\)$", str(refused.value))
    assert listed, str(refused.value)
    return {word.removesuffix("=<value>") for word in listed.group(1).split(", ")}


def _pin_line_words() -> set[str]:
    """The words a pin line says it takes, besides the CID."""
    with pytest.raises(InvalidInput) as refused:
        ControlRegistry(Path("/nonexistent")).parse(("b", "pin"), f"{cid_for(1)} zzzzzzzz\n".encode())
    return set(re.findall(r"\[(\w+)[.=]", str(refused.value)))


@pytest.fixture
def backends(root: Path) -> Path:
    make_backend(root, "s3-main")
    make_backend(root, "other")
    return root


@pytest.mark.parametrize("control", ROOT_COMMANDS)
def test_every_option_of_a_command_is_a_word_of_its_control_file_and_the_reverse(backends: Path, control: str) -> None:
    words = _words_taken(backends, control)

    assert words == _cli_options(CLI_OF_CONTROL[control])
    for word in words:  # each word it lists, it takes
        line = f"{word}={VALUES[word]}" if word in VALUES else word
        assert ControlRegistry(backends).parse((None, control), line.encode()).command == control


@pytest.mark.parametrize("control", [name for name in BACKEND_COMMANDS if name not in ROOT_COMMANDS])
def test_every_option_of_pin_add_and_rm_is_a_word_of_a_pin_or_unpin_line(backends: Path, control: str) -> None:
    words = _pin_line_words() if control == "pin" else set()

    assert words == _cli_options(CLI_OF_CONTROL[control]) - {"backend"}  # the file's own backend is implied
    line = " ".join([cid_for(1), *(f"{word}{'.key=x' if word == 'meta' else '=' + VALUES[word]}" for word in words)])
    prepared = ControlRegistry(backends).parse(("s3-main", control), line.encode() + b"\n")
    assert prepared.args == {"backend": "s3-main", "lines": 1}


def test_deep_is_a_verify_control_word(root: Path) -> None:
    make_backend(root, "s3-main")

    prepared = ControlRegistry(root).parse((None, "verify"), b"deep older-than=0 backend=s3-main")

    assert prepared.args == {"backends": ["s3-main"], "deep": True, "older_than_days": 0.0}
    assert prepared.run()["ok"]


@pytest.mark.parametrize("control", ROOT_COMMANDS)
def test_mount_readme_shows_every_word_of_every_control_file(backends: Path, control: str) -> None:
    section = README_TEXT.split(f".control/{control}\n", 1)[1].split("\n\n", 1)[0]

    shown = {
        line.split()[0].partition("=")[0] for line in section.splitlines() if line.startswith("      ") and line.split()
    }
    assert _words_taken(backends, control) <= shown


@pytest.mark.parametrize("days", ["soon", "-1", "inf", "nan", ""])
def test_the_command_line_and_the_control_file_refuse_the_same_days_for_the_same_reason(
    backends: Path, days: str
) -> None:
    cli = run_pinfs(backends, "verify", f"--older-than={days}")
    with pytest.raises(InvalidInput) as control:
        ControlRegistry(backends).parse((None, "verify"), f"older-than={days}".encode())

    reason = str(control.value).rpartition(": ")[2]
    assert cli.returncode == 2 and reason.startswith("expected a number of days")
    assert cli.stderr.strip().endswith(f"{days!r}: {reason}")


def test_readme_command_list_is_what_the_parser_says() -> None:
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")

    assert rewrite(readme, build_parser()) == readme, "run scripts/readme_commands.py"


def test_a_command_module_that_cannot_be_imported_fails_loudly() -> None:
    code = "import sys; sys.modules['pinfs.cli.query_cmd'] = None; from pinfs.cli import main; main(['--help'])"

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    assert result.returncode != 0
    assert "pinfs.cli.query_cmd" in result.stderr
