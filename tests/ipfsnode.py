"""A real IPFS node for tests: js-ipfs 0.66.1 (npm ``ipfs``, the Kubo RPC API) on 127.0.0.1.

Installed by scripts/test into ``tests/npm/ipfs`` (Kubo's own npm installers download a binary from
outside the registry, which this machine cannot reach). ``ipfs_node`` (module-scoped fixture) inits an
empty repo with the test profile, puts the RPC, gateway and swarm on 127.0.0.1 with ephemeral ports,
starts the daemon (ready in ~5-10 s) and always stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import Service, npm_tool

START_TIMEOUT = 60.0


@dataclass
class IpfsNode:
    api: str
    service: Service

    def rpc(self, command: str, **args: str) -> Any:
        query = "&".join(f"{key}={value}" for key, value in args.items())
        request = urllib.request.Request(f"{self.api}/api/v0/{command}?{query}", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=20) as response:
            return json.loads(response.read())

    def config(self, name: str) -> dict[str, Any]:
        return {"name": name, "type": "ipfs", "config": {"api": self.api}}


def start_ipfs_node(directory: Path) -> IpfsNode:
    jsipfs = npm_tool("ipfs", "node_modules/.bin/jsipfs")
    repo = directory / "repo"
    env = {"IPFS_PATH": str(repo)}
    subprocess.run(
        [str(jsipfs), "init", "--profile", "test", "--empty-repo"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=START_TIMEOUT,
    )
    config_path = repo / "config"
    config = json.loads(config_path.read_text())
    local = "/ip4/127.0.0.1/tcp/0"
    config["Addresses"].update(API=local, RPC=local, Gateway=local, Swarm=[local], Announce=[], Delegates=[])
    config_path.write_text(json.dumps(config, indent=2))
    service = Service("jsipfs daemon", [str(jsipfs), "daemon"], directory / "daemon.log", env=env)
    try:
        service.wait_until(lambda: "Daemon is ready" in service.output(), START_TIMEOUT)
        address = (repo / "api").read_text().strip().split("/")  # /ip4/127.0.0.1/tcp/PORT/http
    except BaseException:
        service.stop()
        raise
    return IpfsNode(f"http://{address[2]}:{address[4]}", service)


@pytest.fixture(scope="module")
def ipfs_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpfsNode]:
    node = start_ipfs_node(tmp_path_factory.mktemp("ipfs"))
    try:
        yield node
    finally:
        node.service.stop()
