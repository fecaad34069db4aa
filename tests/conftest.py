from __future__ import annotations

import os

# Before huggingface_hub is imported anywhere: Xet's CAS cannot run locally (tests/hubstandin.py).
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
from pathlib import Path

import pytest
from ftpserver import ftp_server, ftps_server  # noqa: F401 (fixtures of the driver tests)
from gitserver import git_servers  # noqa: F401
from hubstandin import hub  # noqa: F401
from ipfsnode import ipfs_node  # noqa: F401
from storachaserver import storacha  # noqa: F401

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
