from __future__ import annotations

import os
from collections import defaultdict

# Before huggingface_hub is imported anywhere: Xet's CAS cannot run locally (tests/hubstandin.py).
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
from pathlib import Path

import pytest
from ftpserver import ftp_server, ftps_server  # noqa: F401 (fixtures of the driver tests)
from gitserver import git_servers  # noqa: F401
from hubstandin import hub  # noqa: F401
from ipfsnode import ipfs_node  # noqa: F401
from requirements import missing
from storachaserver import storacha  # noqa: F401

from pinfs.data.snapshots import DEFAULT_CACHE


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a test marked ``slow`` first, then the others by their number of tests, most first.
    scripts/test gives each worker a file at a time in this order (``--dist loadfile
    --no-loadscope-reorder``): xdist's own order (by number of tests) left the few minute-long tests
    for last, and one worker ran them alone for two minutes while the other had finished."""
    by_file: dict[Path, list[pytest.Item]] = defaultdict(list)
    for item in items:
        by_file[item.path].append(item)

    def weight(path: Path) -> tuple[bool, int]:
        tests = by_file[path]
        return (not any(test.get_closest_marker("slow") for test in tests), -len(tests))

    items[:] = [item for path in sorted(by_file, key=weight) for item in by_file[path]]


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


@pytest.fixture
def count_commits(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every commit to a backend's table (a creation included), by the backend's directory."""
    from pinfs.data.delta import DeltaPins

    committed: list[Path] = []
    original_commit, original_create = DeltaPins.commit, DeltaPins.create

    def commit(self: DeltaPins, *args: object, **kwargs: object) -> None:
        original_commit(self, *args, **kwargs)
        committed.append(self.directory.parent)

    def create(self: DeltaPins, *args: object, **kwargs: object) -> None:
        original_create(self, *args, **kwargs)
        committed.append(self.directory.parent)

    monkeypatch.setattr(DeltaPins, "commit", commit)
    monkeypatch.setattr(DeltaPins, "create", create)
    return committed


# The SeaweedFS server of tests/seaweed.py, as a module-scoped fixture for every test module.
from seaweed import seaweed  # noqa: E402, F401
