"""Real git servers for tests, on 127.0.0.1, one set per test module: smart HTTP (``git http-backend``
behind ``githttp.py`` with basic auth), ``git daemon``, and plain ``file://`` URLs.

``GitServers.new_repo(name)`` makes a bare repository under the served root (filters allowed, so
partial clones work) and returns its URLs for the three transports.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import Service, free_port, port_open

TOKEN = "ghp_TestToken0123456789abcdef"  # what the tests look for in every report, file and log


@dataclass
class GitServers:
    root: Path
    http_port: int
    daemon_port: int
    services: list[Service]

    def new_repo(self, name: str) -> dict[str, str]:
        path = self.root / f"{name}.git"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(path))
        for key, value in (("uploadpack.allowFilter", "true"), ("uploadpack.allowAnySHA1InWant", "true")):
            git("-C", str(path), "config", key, value)
        (path / "git-daemon-export-ok").touch()
        return {
            "file": path.as_uri(),
            "http": f"http://127.0.0.1:{self.http_port}/{name}.git",
            "daemon": f"git://127.0.0.1:{self.daemon_port}/{name}.git",
            "path": str(path),
        }

    @staticmethod
    def config(name: str, url: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "type": "github", "config": {"repo_url": url, "branch": "main", **extra}}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True, timeout=60).stdout


def files_at(repo: str, branch: str = "main") -> list[str]:
    return git("-C", repo, "ls-tree", "-r", "--name-only", branch).split()


def commit_count(repo: str, branch: str = "main") -> int:
    return int(git("-C", repo, "rev-list", "--count", branch).strip())


def blob(repo: str, path: str, branch: str = "main") -> bytes:
    return subprocess.run(
        ["git", "-C", repo, "cat-file", "blob", f"{branch}:{path}"], check=True, capture_output=True
    ).stdout


@pytest.fixture(scope="module")
def git_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServers]:
    base = tmp_path_factory.mktemp("git")
    root = base / "repos"
    root.mkdir()
    http_port, daemon_port = free_port(), free_port()
    helper = Path(__file__).with_name("githttp.py")
    services = [
        Service(
            "git http",
            [sys.executable, str(helper), str(http_port), str(root), "x-access-token", TOKEN],
            base / "http.log",
        ),
        Service(
            "git daemon",
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--listen=127.0.0.1",
                f"--port={daemon_port}",
                f"--base-path={root}",
                "--enable=receive-pack",
                "--informative-errors",
                str(root),
            ],
            base / "daemon.log",
        ),
    ]
    try:
        services[0].wait_until(lambda: port_open(http_port), 20)
        services[1].wait_until(lambda: port_open(daemon_port), 20)
        yield GitServers(root, http_port, daemon_port, services)
    finally:
        for service in services:
            service.stop()
