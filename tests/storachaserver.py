"""A local Storacha service for tests: ``tests/npm/storacha/server.mjs`` (the real service handlers
of @storacha/upload-api in its in-memory test context) on 127.0.0.1, one per test module.

``new_space()`` makes an agent key, a space and the space's delegation to the agent
(``space.mjs``, what ``storacha key create`` / ``space create`` / ``delegation create --base64`` make)
and provisions the space on the service.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import NPM_DIR, Service, npm_tool

PRINCIPAL_ENV = "PINFS_TEST_STORACHA_KEY"
PROOF_ENV = "PINFS_TEST_STORACHA_PROOF"


@dataclass
class StorachaService:
    url: str
    did: str
    service: Service

    def new_space(self, provision: bool = True) -> dict[str, str]:
        made = subprocess.run(
            ["node", str(npm_tool("storacha", "space.mjs"))], capture_output=True, text=True, check=True, timeout=60
        )
        space = json.loads(made.stdout)
        if provision:
            self.post("/test/provision", {"space": space["space"]})
        return space

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=20) as response:
            return json.loads(response.read())

    def uploads(self) -> dict[str, list[str]]:
        with urllib.request.urlopen(f"{self.url}/test/uploads", timeout=20) as response:
            return json.loads(response.read())

    def config(self, name: str, space: str, **extra: Any) -> dict[str, Any]:
        settings = {
            "space_did": space,
            "service_url": self.url,
            "service_did": self.did,
            "principal_env": PRINCIPAL_ENV,
            "proof_env": PROOF_ENV,
            "client_dir": str(NPM_DIR / "storacha"),  # the client installed with the test server
            **extra,
        }
        return {"name": name, "type": "storacha", "config": settings}


def start_storacha(directory: Path) -> StorachaService:
    server = npm_tool("storacha", "server.mjs")
    service = Service("storacha service", ["node", str(server)], directory / "storacha.log", cwd=server.parent)
    try:
        service.wait_until(lambda: service.output().startswith("{"), 60)
        ready = json.loads(service.output().splitlines()[0])
    except BaseException:
        service.stop()
        raise
    return StorachaService(ready["url"], ready["did"], service)


@pytest.fixture(scope="module")
def storacha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorachaService]:
    service = start_storacha(tmp_path_factory.mktemp("storacha"))
    try:
        yield service
    finally:
        service.service.stop()
