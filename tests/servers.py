"""Starting and stopping the real servers the driver tests talk to, all on 127.0.0.1.

``Service`` is a subprocess in its own session, always stopped (terminate, then kill). ``npm_tool``
finds a program of a test server installed from npm by ``scripts/test`` into ``tests/npm/<name>/``;
when it is missing the test FAILS (never skips): CI must not pass without the server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

NPM_DIR = Path(__file__).parent / "npm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def npm_tool(package: str, relative: str) -> Path:
    """``tests/npm/<package>/<relative>``; fails the test when scripts/test has not installed it."""
    path = NPM_DIR / package / relative
    if not path.exists():
        pytest.fail(f"{path} is missing: run ./scripts/test (it installs the npm test servers)", pytrace=False)
    return path


class Service:
    """A server process with its output in a log file (shown when it fails to start)."""

    def __init__(self, name: str, command: list[str], log: Path, env: dict[str, str] | None = None, **kw) -> None:
        self.name = name
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            command,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            **kw,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:g}s:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._out.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
