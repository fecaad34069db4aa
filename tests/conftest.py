from __future__ import annotations

from pathlib import Path

import pytest
from ftpserver import ftp_server, ftps_server  # noqa: F401 (fixtures of the driver tests)
from gitserver import git_servers  # noqa: F401
from ipfsnode import ipfs_node  # noqa: F401

from pinfs.snapshots import DEFAULT_CACHE


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
