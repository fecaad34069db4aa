#!/usr/bin/env python3
"""Rewrite README.md's command list from the parser pinfs runs (pinfs/cli/readme.py); run it after
adding or changing a command or an option. tests/test_commands.py fails until it has been run."""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from pinfs.cli import build_parser  # noqa: E402
from pinfs.cli.readme import rewrite  # noqa: E402


def main() -> int:
    readme = PROJECT / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = rewrite(text, build_parser())
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print("README.md: command list rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
