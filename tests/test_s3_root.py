"""A data root on S3, shared by several hosts (issue #13), against a real SeaweedFS (``tests/seaweed.py``).

Each test works under its own prefix of one bucket. A "host" is a process with its own local cache
directory (``PINFS_CACHE_DIR``): nothing is shared between hosts but the bucket.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.request import Request, urlopen

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import cid_for
from mounting import force_unmount
from seaweed import BUCKET, Seaweed, new_seaweed

from pinfs.data import readcache, rootfs
from pinfs.data.pieces import OpenParquet
from pinfs.data.schema import STORE_COLUMNS
from pinfs.fs import warmup

CLI_TIMEOUT = 120


# The hosts' local caches made by this module's tests: removed when they are done.
_HOST_CACHES: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _remove_host_caches() -> Iterator[None]:
    """Each host's cache is a directory of its own under /tmp; none outlives the module (they were
    left behind, ~19 a run)."""
    yield
    for directory in _HOST_CACHES:
        shutil.rmtree(directory, ignore_errors=True)
    _HOST_CACHES.clear()


def host(server: Seaweed, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of one host using the root ``s3://BUCKET/prefix``: its own local cache."""
    cache = tempfile.mkdtemp(prefix="pinfs-host-")
    _HOST_CACHES.append(cache)
    return server.env(prefix, PINFS_CACHE_DIR=cache, **extra)


def pinfs(env: dict[str, str], *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pinfs", *args], env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pinfs {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def pinfs_json(env: dict[str, str], *args: str) -> dict:
    return json.loads(pinfs(env, *args, "--json", check=True).stdout)


def put(server: Seaweed, prefix: str, key: str, data: bytes) -> None:
    server.client().put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=data)


def get(server: Seaweed, prefix: str, key: str) -> bytes:
    return server.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read()


def keys(server: Seaweed, prefix: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
    return sorted(item["Key"][len(prefix) + 1 :] for page in pages for item in page.get("Contents", []))


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# -- every command --


def test_legacy_pins_and_backups_on_s3_migrate_and_every_command_works(seaweed: Seaweed) -> None:
    prefix = uuid.uuid4().hex
    env = host(seaweed, prefix)
    put(seaweed, prefix, "backends/b1/pins.json", json.dumps([cid_for(n) for n in range(5)]).encode())
    put(seaweed, prefix, "backends/old/pins.json.backup.20261101_120000", json.dumps([cid_for("b")]).encode())
    put(seaweed, prefix, "backends/s3-main.yaml", b"type: s3\nbucket: elsewhere\n")
    report = pinfs_json(env, "migrate")
    entries = {entry["backend"]: entry for entry in report["backends"]}
    assert entries["b1"]["added"] == 5 and entries["old"]["added"] == 1
    assert "backends/b1/pins.json" in keys(seaweed, prefix)  # kept, and backed up
    assert any(key.startswith("backends/b1/pins.json.backup.") for key in keys(seaweed, prefix))
    pinfs(env, "pin", "add", cid_for("new"), "--backend", "b1", "--status", "stored", check=True)
    pinfs(env, "pin", "rm", cid_for(0), "--backend", "b1", check=True)
    listed = [line.split("\t")[0] for line in pinfs(env, "pin", "ls", "--backend", "b1", check=True).stdout.split()]
    assert cid_for("new") in listed and cid_for(0) not in listed
    assert pinfs_json(env, "find", cid_for("b"))["backends"][0]["backend"] == "old"
    assert pinfs_json(env, "status")["total"] == 6
    assert pinfs_json(env, "migrate", "--verify-only")["ok"]
    assert pinfs_json(env, "maintain")["ok"]
    rows = json.loads(
        pinfs(
            env, "query", "SELECT backend_name, count(*) AS n FROM pins GROUP BY ALL ORDER BY 1", "--json", check=True
        ).stdout
    )
    assert rows == [{"backend_name": "b1", "n": 5}, {"backend_name": "old", "n": 1}]
    health = pinfs_json(env, "health")
    assert {entry["backend"]: entry["state"] for entry in health["backends"]}["b1"] == "ok"
    export = Path(tempfile.mkdtemp()) / "export.parquet"
    export.write_bytes(get(seaweed, prefix, "backends/b1/pin_mappings.parquet"))
    assert sorted(pd.read_parquet(export)["cid"]) == sorted([cid_for(n) for n in range(1, 5)] + [cid_for("new")])
    assert any(key.startswith("backends/b1/pin_mappings.delta/_delta_log/") for key in keys(seaweed, prefix))


def test_wrong_credentials_are_one_clear_line(seaweed: Seaweed) -> None:
    env = host(seaweed, uuid.uuid4().hex, AWS_SECRET_ACCESS_KEY="wrong")
    line = one_line_error(pinfs(env, "status"))
    assert "access denied" in line and "AWS_SECRET_ACCESS_KEY" in line


def test_an_unreachable_endpoint_is_one_clear_line(seaweed: Seaweed) -> None:
    env = host(seaweed, uuid.uuid4().hex, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    line = one_line_error(pinfs(env, "pin", "ls"))
    assert "cannot reach http://127.0.0.1:9" in line


# -- a store that ignores conditional puts --


class _IgnoresConditions(BaseHTTPRequestHandler):
    """Forwards every request to SeaweedFS, but answers 200 where it refused a conditional put (412):
    a store that ignores If-None-Match and If-Match, as some S3-compatible stores did. With
    ``ignore_conditions`` off, a store that honours them, whose PUTs take ``put_seconds`` (and are
    counted in ``puts``)."""

    upstream = ""
    ignore_conditions = True
    put_seconds = 0.0
    puts: list[str] = []

    def do_any(self) -> None:
        if self.command == "PUT":
            self.puts.append(self.path)
            time.sleep(self.put_seconds)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        request = Request(self.upstream + self.path, data=body, method=self.command)
        for name, value in self.headers.items():  # Host too: the client signed the host it called
            if name.lower() != "content-length":
                request.add_header(name, value)
        try:
            with urlopen(request, timeout=30) as answer:
                status, headers, payload = answer.status, answer.headers, answer.read()
        except Exception as exc:  # urllib raises HTTPError for 4xx/5xx: it carries the answer
            status, headers, payload = exc.code, exc.headers, exc.read()  # type: ignore[attr-defined]
        if status == 412 and self.command == "PUT" and self.ignore_conditions:
            status, payload = 200, b""
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        length = headers.get("Content-Length") if self.command == "HEAD" else None  # a HEAD's is the object's
        self.send_header("Content-Length", length or str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = do_any

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _proxy(seaweed: Seaweed, **behaviour: object) -> Iterator[str]:
    handler = type("Handler", (_IgnoresConditions,), {"upstream": seaweed.endpoint, "puts": [], **behaviour})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def ignoring_proxy(seaweed: Seaweed) -> Iterator[str]:
    with _proxy(seaweed) as endpoint:
        yield endpoint


def test_a_store_that_ignores_conditional_puts_is_refused_before_anything_is_written(
    seaweed: Seaweed, ignoring_proxy: str
) -> None:
    prefix = uuid.uuid4().hex
    put(seaweed, prefix, "backends/b1/pins.json", json.dumps([cid_for(1)]).encode())
    env = host(seaweed, prefix, AWS_ENDPOINT_URL=ignoring_proxy)
    assert pinfs(env, "pin", "ls").returncode == 0  # reading is fine
    migrated = pinfs(env, "migrate")
    assert migrated.returncode == 1 and "refusing to write there" in migrated.stdout  # in b1's entry
    make_backend_config = b"type: filesystem\n"
    put(seaweed, prefix, "backends/b2.yaml", make_backend_config)
    line = one_line_error(pinfs(env, "pin", "add", cid_for(2), "--backend", "b2"))
    assert "accepted a second put with If-None-Match" in line and "refusing to write" in line
    assert [key for key in keys(seaweed, prefix) if "pin_mappings" in key] == []


# -- several hosts --


def _mount(env: dict[str, str], mountpoint: Path) -> subprocess.Popen[bytes]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = open(mountpoint.parent / f"{mountpoint.name}.log", "wb")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen([sys.executable, "-m", "pinfs", "mount", str(mountpoint)], env=env, stderr=log)
    deadline = time.monotonic() + 60
    while not os.path.ismount(mountpoint):
        assert process.poll() is None, (mountpoint.parent / f"{mountpoint.name}.log").read_text()
        assert time.monotonic() < deadline, "mount not ready"
        time.sleep(0.05)
    return process


@pytest.mark.slow
def test_two_hosts_with_a_mount_and_a_cli_each_lose_nothing(seaweed: Seaweed, tmp_path: Path) -> None:
    prefix = uuid.uuid4().hex
    hosts = [host(seaweed, prefix), host(seaweed, prefix)]
    put(seaweed, prefix, "backends/shared.yaml", b"type: filesystem\n")
    pinfs(hosts[0], "pin", "add", cid_for("seed"), "--backend", "shared", check=True)
    mounts = [tmp_path / "host-a", tmp_path / "host-b"]
    processes = [_mount(env, mountpoint) for env, mountpoint in zip(hosts, mounts, strict=True)]
    expected: set[str] = {cid_for("seed")}
    removed: set[str] = set()
    errors: list[str] = []
    lock = threading.Lock()

    def through_mount(index: int) -> None:
        control = mounts[index] / "backends" / "shared" / ".control"
        for batch in range(8):
            cids = [cid_for(f"m{index}-{batch}-{n}") for n in range(100)]
            (control / "pin").write_text("".join(f"{cid}\n" for cid in cids))
            (control / "unpin").write_text(f"{cids[0]}\n")
            with lock:
                expected.update(cids)
                removed.add(cids[0])

    def through_cli(index: int) -> None:
        for batch in range(4):
            cids = [cid_for(f"c{index}-{batch}-{n}") for n in range(100)]
            result = pinfs(hosts[index], "pin", "add", *cids, "--backend", "shared")
            if result.returncode:
                errors.append(result.stderr)
            removed_now = pinfs(hosts[index], "pin", "rm", cids[1], "--backend", "shared")
            if removed_now.returncode:
                errors.append(removed_now.stderr)
            with lock:
                expected.update(cids)
                removed.add(cids[1])

    try:
        workers = [threading.Thread(target=through_mount, args=(i,)) for i in range(2)]
        workers += [threading.Thread(target=through_cli, args=(i,)) for i in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=600)
        assert not errors, errors[:2]
        listed = pinfs(hosts[1], "pin", "ls", "--backend", "shared", check=True).stdout.split("\n")
        cids = [line.split("\t")[0] for line in listed if line]
        assert len(cids) == len(set(cids)), "a pin is there twice"
        assert set(cids) == expected - removed
        # Each mount shows what the other host wrote within 3 s.
        last = cid_for("m1-7-99")
        deadline = time.monotonic() + 3
        while not (mounts[0] / "backends" / "shared" / "by-cid" / last).exists():
            assert time.monotonic() < deadline, "host A's mount did not show host B's pin within 3 s"
            time.sleep(0.1)
    finally:
        for mountpoint, process in zip(mounts, processes, strict=True):
            force_unmount(mountpoint, process)


@pytest.mark.slow
def test_another_hosts_maintenance_keeps_the_version_a_mount_is_listing(seaweed: Seaweed, tmp_path: Path) -> None:
    """A mount's listing records its version on the bucket (``pinfs.data.readers``): a host that pins and
    maintains meanwhile, deleting every unreferenced file at once, keeps that version's files."""
    prefix = uuid.uuid4().hex
    file_rows = {"PINFS_FILE_ROWS": "64"}
    reader, writer = host(seaweed, prefix, **file_rows), host(seaweed, prefix, **file_rows)
    put(seaweed, prefix, "backends/shared.yaml", b"type: filesystem\n")
    cids = [cid_for(f"s3-{index}") for index in range(4096 + 300)]  # past the mount's first block of names
    pinfs(writer, "pin", "add", *cids, "--backend", "shared", check=True)
    mountpoint = tmp_path / "reader"
    process = _mount(reader, mountpoint)
    try:
        listing = os.scandir(mountpoint / "backends" / "shared" / "by-cid")
        with listing:
            first = [next(listing).name for _ in range(100)]
            new = [cid_for(f"s3-new-{index}") for index in range(200)]
            pinfs(writer, "pin", "add", *new, "--backend", "shared", check=True)
            pinfs(writer, "maintain", "--retention-hours", "0", check=True)
            rest = [entry.name for entry in listing]
        assert first + rest == sorted(cids)
    finally:
        force_unmount(mountpoint, process)


# -- faults --


# A hang guard for one read in the mount while the store is down or hung: a request waits at most
# ANSWER_SECONDS per attempt (pinfs.data.s3client), so a read answers within ~20 s even from a hung server.
STORE_DOWN_GUARD = 60


def _timed_read(path: Path) -> tuple[float, str | OSError]:
    started = time.monotonic()
    try:
        text: str | OSError = path.read_text()
    except OSError as exc:
        text = exc
    return time.monotonic() - started, text


def _until_readable(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return path.read_text()
        except OSError:
            assert time.monotonic() < deadline, f"{path} did not answer again once the store was back"
            time.sleep(0.5)


@pytest.mark.slow
def test_the_server_stopped_mid_write_loses_no_acknowledged_pin(tmp_path: Path) -> None:
    """The store hangs (SIGSTOP: connections are accepted, nothing answers), then is back; then it dies
    (SIGKILL) while a host writes through its mount, and is started again. Every acknowledged pin is
    there afterwards; the CLI says what happened in one line, and so does the failed write's control
    file (once the store is back: while it is down, nothing under a backend can be looked up); meanwhile
    every backend on the store answers EIO within the timeouts, never hangs, and the rest of the mount
    (README, health.json saying why) answers."""
    server = new_seaweed(tmp_path / "seaweed")
    try:
        prefix = uuid.uuid4().hex
        env = host(server, prefix)
        put(server, prefix, "backends/b1.yaml", b"type: filesystem\n")
        put(server, prefix, "backends/b2.yaml", b"type: filesystem\n")
        pinfs(env, "pin", "add", cid_for("before"), "--backend", "b1", check=True)
        pinfs(env, "pin", "add", cid_for("other"), "--backend", "b2", check=True)
        mountpoint = tmp_path / "m"
        process = _mount(env, mountpoint)
        status = {
            b: mountpoint / "backends" / b / "by-cid" / cid_for(c) / "status"
            for b, c in (("b1", "before"), ("b2", "other"))
        }
        try:
            # A hung store: each backend's read fails (EIO) within the timeouts, then answers again.
            os.killpg(server.process.pid, signal.SIGSTOP)
            try:
                time.sleep(1.5)  # what the mount knew of the store expires (pinfs.data.rootfs.S3_METADATA_SECONDS)
                for path in status.values():
                    elapsed, text = _timed_read(path)
                    assert isinstance(text, OSError) and text.errno == errno.EIO, text
                    assert elapsed < STORE_DOWN_GUARD, f"a read waited {elapsed:.0f} s on a hung store"
                assert "control" in (mountpoint / "README").read_text()  # the rest of the mount answers
            finally:
                os.killpg(server.process.pid, signal.SIGCONT)
            assert _until_readable(status["b1"]) == "pending\n"

            # The store dies while the mount writes batch after batch to b1.
            control = mountpoint / "backends" / "b1" / ".control" / "pin"
            acknowledged: list[str] = []
            failures: list[OSError] = []
            failed_at_open: list[bool] = []

            def write_batches() -> None:
                for batch in range(1000):
                    cids = [cid_for(f"during-{batch}-{n}") for n in range(20)]
                    try:
                        handle = control.open("w")
                    except OSError as exc:  # the store died before this write could start a run
                        failures.append(exc)
                        failed_at_open.append(True)
                        return
                    try:
                        with handle:
                            handle.write("".join(f"{cid}\n" for cid in cids))
                    except OSError as exc:
                        failures.append(exc)
                        failed_at_open.append(False)
                        return  # the control file's last run is this failed one (checked below)
                    acknowledged.extend(cids)

            writer = threading.Thread(target=write_batches)
            writer.start()
            deadline = time.monotonic() + 60
            while len(acknowledged) < 60:  # a few batches in: the next one is under way
                assert writer.is_alive() and time.monotonic() < deadline, failures
                time.sleep(0.05)
            server.stop()
            while not failures:
                assert time.monotonic() < deadline + 60, "no write failed with the store gone"
                time.sleep(0.05)
            writer.join(timeout=120)
            assert not writer.is_alive() and failures[0].errno == errno.EIO, failures[0]
            line = one_line_error(pinfs(env, "pin", "add", cid_for("refused"), "--backend", "b1"))
            assert "cannot reach" in line
            for path in status.values():  # every backend on the dead store: EIO, at once
                elapsed, text = _timed_read(path)
                assert isinstance(text, OSError) and text.errno == errno.EIO, text
                assert elapsed < STORE_DOWN_GUARD, f"a read waited {elapsed:.0f} s on a stopped store"
            assert "control" in (mountpoint / "README").read_text()
            health = json.loads(_timed_read(mountpoint / "health.json")[1])  # type: ignore[arg-type]
            assert health["state"] == "error" and "cannot reach" in json.dumps(health), health

            server.start()
            assert _until_readable(status["b1"]) == "pending\n"
            assert _until_readable(status["b2"]) == "pending\n"
            last_run = json.loads(control.read_text())  # the write that failed says why
            if failed_at_open[0]:  # no run started: the last one is the batch before, which went in
                assert last_run["state"] == "succeeded", last_run
            else:
                assert last_run["state"] == "failed" and "cannot reach" in last_run["error"], last_run
            listed = pinfs(env, "pin", "ls", "--backend", "b1", check=True).stdout
            missing = {cid_for("before"), *acknowledged} - {line.split("\t")[0] for line in listed.splitlines()}
            assert not missing, f"{len(missing)} acknowledged pins lost"
            for cid in acknowledged[-3:]:  # and the mount shows them
                assert _until_readable(mountpoint / "backends" / "b1" / "by-cid" / cid / "status") == "pending\n"
        finally:
            force_unmount(mountpoint, process)
    finally:
        server.stop()


# -- the local read cache: bounded, least recently used first --

CACHE_MB = 1
PINS_PER_BACKEND = 4000  # a data file of ~0.45 MB: a few of them fill a cache of CACHE_MB


def _copies(env: dict[str, str]) -> set[Path]:
    """The object copies in a host's read cache (not the temporary files of downloads under way)."""
    objects = Path(env["PINFS_CACHE_DIR"]) / "objects"
    return {path for path in objects.glob("*/*") if path.is_file() and not path.name.startswith(".")}


def _age(env: dict[str, str], seconds: float = 3600) -> None:
    """Make every copy in a host's read cache last used ``seconds`` ago (its mtime is its last use), as if
    the reads so far had been made an hour ago."""
    for path in _copies(env):
        _last_used(path, seconds)


def _last_used(path: Path, seconds_ago: float) -> None:
    when = time.time() - seconds_ago
    os.utime(path, (when, when))


def _backends_with_pins(server: Seaweed, prefix: str, count: int) -> dict[str, list[str]]:
    """``count`` backends of PINS_PER_BACKEND pins each, as legacy pins.json files, migrated."""
    pins = {f"b{k}": [cid_for(f"{k}-{n}") for n in range(PINS_PER_BACKEND)] for k in range(count)}
    for name, cids in pins.items():
        put(server, prefix, f"backends/{name}/pins.json", json.dumps(cids).encode())
    pinfs_json(host(server, prefix), "migrate")  # another host: this one's cache starts empty
    return pins


def _listed(env: dict[str, str], backend: str) -> list[str]:
    lines = pinfs(env, "pin", "ls", "--backend", backend, check=True).stdout.splitlines()
    return sorted(line.split("\t")[0] for line in lines if line)


def test_the_read_cache_stays_within_its_bound_and_fetches_again_what_it_dropped(seaweed: Seaweed) -> None:
    prefix = uuid.uuid4().hex
    pins = _backends_with_pins(seaweed, prefix, 6)
    env = host(seaweed, prefix, PINFS_DISK_CACHE_MB=str(CACHE_MB))
    data_files = [
        seaweed.client().head_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["ContentLength"]
        for key in keys(seaweed, prefix)
        if "pin_mappings.delta/part-" in key
    ]
    assert sum(data_files) > 2 * (CACHE_MB << 20), data_files  # more than the cache holds
    largest = 0
    for name in [*pins, "b0", "b1"]:  # b0 and b1 again at the end: dropped by then, they are fetched again
        _age(env)  # what was read before was read an hour ago: the oldest go first
        assert _listed(env, name) == sorted(pins[name])
        sizes = [path.stat().st_size for path in _copies(env)]
        largest = max(largest, *sizes)
        assert sum(sizes) <= (CACHE_MB << 20) + largest, sizes  # the bound, plus the copy just made
    assert len(_copies(env)) < len(data_files)


def test_a_file_open_on_the_mount_stays_readable_when_its_cached_copy_is_dropped(
    seaweed: Seaweed, tmp_path: Path
) -> None:
    prefix = uuid.uuid4().hex
    pins = _backends_with_pins(seaweed, prefix, 4)
    env = host(seaweed, prefix, PINFS_DISK_CACHE_MB=str(CACHE_MB))
    export = get(seaweed, prefix, "backends/b0/pin_mappings.parquet")
    mountpoint = tmp_path / "m"
    process = _mount(env, mountpoint)
    try:
        before = _copies(env)
        with open(mountpoint / "backends" / "b0" / "pin_mappings.parquet", "rb") as handle:
            start = handle.read(4096)
            opened = [path for path in _copies(env) - before if path.stat().st_size == len(export)]
            assert len(opened) == 1, opened  # the export's copy, which the mount holds open
            _age(env)  # the reader has held it for an hour
            for name in sorted(pins)[1:]:  # another process of this host reads the other backends
                assert _listed(env, name) == sorted(pins[name])
            assert opened[0] not in _copies(env)  # dropped from the cache while open
            assert start + handle.read() == export
        with open(mountpoint / "backends" / "b0" / "pin_mappings.parquet", "rb") as again:
            assert again.read() == export  # opened anew: fetched again
    finally:
        force_unmount(mountpoint, process)


def _copy_used(directory: Path, name: str, seconds_ago: float, size: int = 100) -> Path:
    path = directory / name
    path.write_bytes(b"x" * size)
    _last_used(path, seconds_ago)
    return path


def test_a_prune_drops_the_least_recently_used_copies_first_and_never_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PINFS_CACHE_DIR", str(tmp_path))
    shard = tmp_path / "objects" / "ab"
    shard.mkdir(parents=True)
    old = _copy_used(shard, "old.parquet", 3600)
    used_again = _copy_used(shard, "used-again.parquet", 7200)
    middle = _copy_used(shard, "middle.parquet", 1800)
    fresh = _copy_used(shard, "fresh.parquet", 1)  # a reader may have just been handed its path
    dead_download = _copy_used(shard, ".dead.parquet.123.tmp", 2 * 3600)
    live_download = _copy_used(shard, ".live.parquet.456.tmp", 5)
    assert readcache.use(used_again)  # read now: the most recently used
    assert readcache.prune(limit=250) == 200  # 400 bytes: the two oldest uses go, to 90 % of the bound
    left = sorted(path.name for path in shard.iterdir())
    assert left == [".live.parquet.456.tmp", "fresh.parquet", "used-again.parquet"]
    assert not old.exists() and not middle.exists() and not dead_download.exists() and live_download.exists()
    _last_used(used_again, 60)
    assert readcache.prune(limit=10) == 100  # over the bound, but the fresh copy stays
    assert fresh.exists() and not used_again.exists()
    assert not readcache.use(used_again)  # gone: local_copy downloads it again


def test_a_bad_read_cache_bound_is_one_clear_line(seaweed: Seaweed) -> None:
    env = host(seaweed, uuid.uuid4().hex, PINFS_DISK_CACHE_MB="2GB")
    line = one_line_error(pinfs(env, "status"), code=2)
    assert "PINFS_DISK_CACHE_MB='2GB'" in line and "MB" in line


# -- reads by ranges, and the write check made after the mount answers (issue #13's speed targets) --


def _use_host(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Make this process the host ``env`` describes (its endpoint, keys and read cache)."""
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP")
    for name in (*names, "PINFS_CACHE_DIR"):
        monkeypatch.setenv(name, env[name])
    rootfs.forget_metadata()


def _sorted_pins(count: int) -> pa.Table:
    cids = sorted(cid_for(f"ranged-{n}") for n in range(count))
    columns = {name: [f"{name}-{n}" for n in range(count)] for name in STORE_COLUMNS}
    columns.update(cid=cids, status=["stored" if n % 3 else "pending" for n in range(count)])
    return pa.table({name: pa.array(columns[name], pa.string()) for name in STORE_COLUMNS})


def test_a_cold_data_file_read_by_ranges_gives_what_its_downloaded_copy_gives(
    seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = uuid.uuid4().hex
    _use_host(monkeypatch, host(seaweed, prefix))
    table = _sorted_pins(4000)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=500, sorting_columns=[pq.SortingColumn(0)])
    content = sink.getvalue().to_pybytes()
    key = "backends/b1/pin_mappings.delta/part-ranged.parquet"
    put(seaweed, prefix, key, content)
    path = rootfs.S3Path(BUCKET, f"{prefix}/{key}")
    rootfs.read_cold_files_by_ranges()  # as the mount reads
    try:
        ranged = OpenParquet(path)
        assert ranged.groups is not None and len(ranged.groups) == 8
        assert ranged.read_group(5, None) == table.slice(2500, 500)  # one row group, read by ranges
        assert OpenParquet(path).read_group(2, None) == table.slice(1000, 500)  # opened again: ...
        deadline = time.monotonic() + 30
        while not (copies := [p for p in (Path(os.environ["PINFS_CACHE_DIR"]) / "objects").glob("*/*.parquet")]):
            assert time.monotonic() < deadline, "the data file was not downloaded in the background"
            time.sleep(0.05)
        assert copies[0].read_bytes() == content  # ... then fetched whole, for the next reads
        assert OpenParquet(path).read(None) == table  # which read the local copy
    finally:
        rootfs.read_cold_files_by_ranges(False)
    assert OpenParquet(path).read_group(7, None) == table.slice(3500, 500)  # a command's read: the copy


def test_a_write_waits_for_the_conditional_put_check_another_thread_is_making(
    seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = uuid.uuid4().hex
    puts: list[str] = []
    with _proxy(seaweed, ignore_conditions=False, put_seconds=0.2, puts=puts) as endpoint:
        _use_host(monkeypatch, host(seaweed, prefix, AWS_ENDPOINT_URL=endpoint))
        monkeypatch.setattr(rootfs, "_CHECKED", {})  # this process has not checked the bucket yet
        root = rootfs.S3Path(BUCKET, prefix)
        checker = threading.Thread(target=rootfs.require_writable, args=(root,))  # the mount's, after ready
        checker.start()
        deadline = time.monotonic() + 30
        while not puts:
            assert time.monotonic() < deadline, "the check made no put"
            time.sleep(0.01)
        rootfs.require_writable(root / "backends" / "b1" / "pin_mappings.delta")  # a write's check
        assert not checker.is_alive()  # it returned once the check under way was done ...
        assert len(puts) == 4, puts  # ... and made no second one (4 probe puts: one check)
        checker.join()


def test_a_mount_on_a_store_that_ignores_conditional_puts_answers_reads_and_refuses_writes(
    seaweed: Seaweed, ignoring_proxy: str, tmp_path: Path
) -> None:
    prefix = uuid.uuid4().hex
    put(seaweed, prefix, "backends/b1.yaml", b"type: filesystem\n")
    pinfs(host(seaweed, prefix), "pin", "add", cid_for(1), "--backend", "b1", check=True)  # on the store itself
    before = keys(seaweed, prefix)
    env = host(seaweed, prefix, AWS_ENDPOINT_URL=ignoring_proxy)
    mountpoint = tmp_path / "m"
    process = _mount(env, mountpoint)
    try:
        backend = mountpoint / "backends" / "b1"
        assert (backend / "by-cid" / cid_for(1) / "status").read_text() == "pending\n"
        time.sleep(warmup.S3_WRITES_DELAY_SECONDS + 1)  # the mount's own check has failed by now
        with pytest.raises(OSError) as refused:
            (backend / ".control" / "pin").write_text(f"{cid_for(2)}\n")
        assert refused.value.errno == errno.EIO
        last_run = json.loads((backend / ".control" / "pin").read_text())
        assert last_run["state"] == "failed" and "accepted a second put with If-None-Match" in last_run["error"]
        assert [key for key in keys(seaweed, prefix) if not key.startswith(".pinfs-probes/")] == before
    finally:
        force_unmount(mountpoint, process)


@pytest.mark.parametrize("how", ["read_bytes", "local_copy"])
def test_an_object_replaced_while_it_is_read_comes_out_as_one_version(
    seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """An export is replaced in place by other hosts. pyarrow's reader asks for the object's size, then
    reads ranges: one replaced in between came out cut (a CAR whose last section ran past its end, in
    the SIGKILL loop). A read gives exactly one version, whole."""
    prefix = uuid.uuid4().hex
    _use_host(monkeypatch, host(seaweed, prefix))
    key = "backends/b1/pin_mappings.car"
    old, new = b"old version " * 1000, b"the new, longer version " * 1000
    put(seaweed, prefix, key, old)
    path = rootfs.S3Path(BUCKET, f"{prefix}/{key}")
    filesystem = rootfs.s3_filesystem()
    opened_once = threading.Event()

    class ReplacedAfterTheFirstOpen:
        """The store as pinfs sees it, with the object replaced right after the first look at it."""

        def __getattr__(self, name: str) -> object:
            return getattr(filesystem, name)

        def open_input_file(self, where: str) -> pa.NativeFile:
            return self._replaced_after(filesystem.open_input_file(where))

        def open_input_stream(self, where: str) -> pa.NativeFile:
            opened = filesystem.open_input_stream(where)  # it asks for the size as it opens
            if not opened_once.is_set():
                opened_once.set()
                put(seaweed, prefix, key, new)
            return opened

        def _replaced_after(self, opened: pa.NativeFile) -> pa.NativeFile:
            if not opened_once.is_set():
                opened.size()  # the reader has asked for the object's size
                opened_once.set()
                put(seaweed, prefix, key, new)
            return opened

    monkeypatch.setattr(rootfs, "s3_filesystem", ReplacedAfterTheFirstOpen)
    read = path.read_bytes() if how == "read_bytes" else rootfs.local_copy(path).read_bytes()
    assert opened_once.is_set()
    assert read in (old, new)


def test_the_log_on_s3_is_cleaned_up_by_count_and_keeps_the_exported_version(
    seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pinfs.data import delta
    from pinfs.data.backends import get_backend
    from pinfs.data.exports import read_record, refresh_exports
    from pinfs.data.schema import make_record
    from pinfs.data.snapshots import StoreCache
    from pinfs.data.store import PinStore
    from pinfs.ops.maintain import maintain_backend

    prefix = uuid.uuid4().hex
    _use_host(monkeypatch, host(seaweed, prefix))
    monkeypatch.setattr(delta, "LOG_VERSIONS_KEPT", 6)
    put(seaweed, prefix, "backends/b1.yaml", b"type: filesystem\n")
    backend = get_backend(rootfs.S3Path(BUCKET, prefix), "b1")
    store = PinStore(backend)
    for index in range(30):
        record = make_record(cid_for(f"s3-{index}"), "b1", "filesystem", status="stored")
        store.write(lambda txn, record=record: txn.update({record["cid"]: record}))
        if index == 4:
            refresh_exports(backend)
    exported = read_record(backend)["parquet"]["version"]

    def log_versions() -> set[int]:
        names = [key.rsplit("/", 1)[1] for key in keys(seaweed, prefix) if "/_delta_log/" in key]
        return {int(name[:20]) for name in names if name[:20].isdigit()}

    assert len(log_versions()) >= 30
    assert maintain_backend(backend, all_inserts=False)["log_entries_removed"] > 10
    versions = log_versions()
    assert exported in versions and max(versions) - min(v for v in versions if v > exported) < 6 + 4
    fresh = PinStore(backend, StoreCache())
    assert fresh.snapshot().count == 30 and fresh.table.load(exported).count == 5
