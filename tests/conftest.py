from __future__ import annotations

from pathlib import Path

import pytest
from requirements import missing

from pinfs.snapshots import DEFAULT_CACHE


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``needs(what, problem)`` (``requirements.needs``) skip, or fail when PINFS_REQUIRE
    names ``what``, where ``problem`` says something is missing."""
    for mark in item.iter_markers("needs"):
        what, problem = mark.args
        if problem is not None:
            missing(what, problem)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty data root."""
    data_root = tmp_path / "ipfs_kit"
    (data_root / "backends").mkdir(parents=True)
    return data_root


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test starts with an empty process-wide store cache."""
    DEFAULT_CACHE.clear()
    yield
    DEFAULT_CACHE.clear()
