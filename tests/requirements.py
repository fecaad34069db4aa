"""What some tests need from the machine (FUSE, a local S3 server, root), and what happens without it.

A test that needs something missing is skipped, unless ``PINFS_REQUIRE`` names it (comma-separated:
``fuse``, ``s3``, ``root``): then it fails, saying what is missing. ``scripts/test`` (and so CI) sets
``PINFS_REQUIRE=fuse,s3,root``, so a run cannot pass by skipping tests (issue #14); a developer on a
machine without FUSE may run ``PINFS_REQUIRE= ./scripts/test`` to skip them knowingly.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_VARIABLE = "PINFS_REQUIRE"


def required(what: str) -> bool:
    return what in {word.strip() for word in os.environ.get(REQUIRE_VARIABLE, "").split(",")}


def missing(what: str, problem: str) -> NoReturn:
    """Skip the running test because ``what`` is missing, or fail it when PINFS_REQUIRE requires it."""
    if required(what):
        pytest.fail(f"{REQUIRE_VARIABLE} requires {what}, but {problem}", pytrace=False)
    pytest.skip(f"{problem} (set {REQUIRE_VARIABLE}={what} to make this a failure)")


def needs(what: str, problem: str | None) -> pytest.MarkDecorator:
    """A mark for tests that need ``what``; ``problem`` says why it is missing here (None: it is not).
    Checked before each test by ``conftest.pytest_runtest_setup``."""
    return pytest.mark.needs(what, problem)
