"""A local S3 server for tests: ``moto_server`` on 127.0.0.1 in a subprocess, one per test module.

Use ``s3_server`` (module-scoped fixture, import it into a test module) to get an ``S3Server`` with a
bucket created; ``s3_backend_config`` turns it into a backend config. The server is always stopped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from requirements import missing

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    process: subprocess.Popen

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def config(self, name: str, prefix: str = "") -> dict[str, Any]:
        return s3_backend_config(name, self.endpoint, self.bucket, prefix)


def s3_backend_config(name: str, endpoint: str, bucket: str, prefix: str = "") -> dict[str, Any]:
    config: dict[str, Any] = {
        "bucket": bucket,
        "endpoint_url": endpoint,
        "region": REGION,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
    }
    if prefix:
        config["prefix"] = prefix
    return {"name": name, "type": "s3", "config": config}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    found = shutil.which("moto_server")
    if found:
        return [found, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def start_s3_server(bucket: str = "pinfs-test", timeout: float = 20.0) -> S3Server:
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    process = subprocess.Popen(
        _moto_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    server = S3Server(f"http://127.0.0.1:{port}", bucket, process)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with status {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start listening in time") from None
                time.sleep(0.05)
        server.client().create_bucket(Bucket=bucket)
    except BaseException:
        stop_s3_server(server)
        raise
    return server


def stop_s3_server(server: S3Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    try:
        server = start_s3_server()
    except (RuntimeError, OSError, ImportError) as exc:
        missing("s3", f"no local S3 server could be started: {exc}")
    try:
        yield server
    finally:
        stop_s3_server(server)


# -- content and pins for the daemon-operation tests (sync, verify, reports) --


def content_car(seed: object) -> tuple[str, bytes]:
    """A real one-block content CAR: ``(cid, car_bytes)`` whose root is the block's raw CID."""
    from pinfs.data.carv1 import encode_car, make_raw_block

    cid, block = make_raw_block(f"content of {seed}".encode())
    return cid, encode_car([cid], [(cid, block)])


def fs_config(name: str, storage: Path, backend_type: str = "filesystem") -> dict[str, Any]:
    return {"name": name, "type": backend_type, "config": {"storage_path": str(storage)}}


def put_pins(root: Path, name: str, records: list[dict[str, Any]]) -> None:
    """Write records (``make_record`` dicts, extra keys kept) to a backend's table in one commit, and
    its exports."""
    from pinfs.data.backends import get_backend
    from pinfs.data.exports import refresh_exports
    from pinfs.data.store import PinStore

    backend = get_backend(root, name)
    backend.directory.mkdir(parents=True, exist_ok=True)
    with PinStore(backend).transaction() as txn:
        txn.update({record["cid"]: record for record in records})
    refresh_exports(backend)


def pin_record(root: Path, name: str, cid: str, status: str = "pending", **extra: Any) -> dict[str, Any]:
    """A record for ``cid`` in backend ``name`` (type from its config), with extra columns/metadata."""
    from pinfs.data.backends import get_backend
    from pinfs.data.schema import make_record

    backend = get_backend(root, name)
    metadata = extra.pop("metadata", None)
    record = make_record(
        cid, name, backend.type, status=status, metadata=metadata, created_at=extra.pop("created_at", None)
    )
    record.update(extra)
    return record


def read_pin(root: Path, name: str, cid: str) -> dict[str, Any]:
    """The current record of ``cid`` in ``name`` with its metadata parsed, from the table's newest version
    and from the export (which must agree)."""
    import json as _json

    import pyarrow.parquet as pq

    from pinfs.data.backends import get_backend
    from pinfs.data.snapshots import StoreCache
    from pinfs.data.store import PinStore

    table = pq.read_table(root / "backends" / name / "pin_mappings.parquet")
    rows = [row for row in table.to_pylist() if row["cid"] == cid]
    assert PinStore(get_backend(root, name), StoreCache()).snapshot().lookup(cid) == (rows[0] if rows else None)
    assert len(rows) == 1, rows
    row = rows[0]
    row["metadata"] = _json.loads(row["metadata"])
    return row
