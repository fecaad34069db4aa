"""What every command prints (issue #20): --json everywhere, progress bars on a terminal and only there."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from helpers import cid_for, make_backend, run_on_terminal, run_pinfs
from s3server import fs_config, pin_record, put_pins

from pinfs.cli import build_parser
from pinfs.cli.completion_cmd import _parsers


def leaf_commands() -> list[argparse.ArgumentParser]:
    return [
        parser
        for parser in _parsers(build_parser())
        if not any(action.__class__.__name__ == "_SubParsersAction" for action in parser._actions)
    ]


def test_every_command_has_json() -> None:
    leaves = leaf_commands()
    assert len(leaves) >= 15
    missing = [parser.prog for parser in leaves if "--json" not in parser._option_string_actions]
    assert missing == []


@pytest.fixture
def work(root: Path, tmp_path: Path) -> Path:
    """fs-a: 3 stored pins never verified and 2 pending ones whose content is nowhere (sync fails them)."""
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "storage"))
    (tmp_path / "storage").mkdir()
    put_pins(
        root,
        "fs-a",
        [pin_record(root, "fs-a", cid_for(i), "stored") for i in range(3)]
        + [pin_record(root, "fs-a", cid_for(f"p{i}"), "pending") for i in range(2)],
    )
    make_backend(root, "old", pins_json=[cid_for("old")])
    return root


@pytest.mark.parametrize(
    ("args", "label"),
    [
        (("migrate",), "migrate"),
        (("sync", "--backend", "fs-a"), "sync fs-a"),
        (("verify", "--older-than", "0"), "verify fs-a"),
        (("car", "regenerate"), "regenerate-car"),
    ],
)
def test_progress_bars_on_a_terminal_only(work: Path, args: tuple[str, ...], label: str) -> None:
    _status, stdout, terminal = run_on_terminal(work, *args)
    assert f"{label}:" in terminal and "|" in terminal, terminal  # tqdm: "label:  40%|####  | 2/5"
    assert stdout.strip()  # the report itself still goes to stdout
    piped = run_pinfs(work, *args)  # a second run: it may find less to do, but reports all the same
    assert piped.stdout.strip() and piped.returncode in (0, 1)
    assert piped.stderr == ""  # no bar, no carriage returns, when stderr is not a terminal
    _status, stdout_json, terminal_json = run_on_terminal(work, *args, "--json")
    assert label not in terminal_json  # --json: for scripts, even on a terminal
    json.loads(stdout_json)
