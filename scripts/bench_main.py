"""pinfs benchmark: pinfs next to baselines, on the same generated data, in one run.

Run through ``scripts/bench [--pins N] [--backends K] [--quick] [--s3] [--json]``. See ``--help`` and
the module docstrings of ``bench_gen`` (data), ``bench_floorfs`` (baseline C), ``bench_probe``
(fresh-process baselines A, B and the migrate reference), ``bench_store`` (exports, and lookups and
table loads after 10,000 single-pin writes: issue #12), ``bench_s3`` (``--s3``: a root on a local
SeaweedFS, issue #13) and ``bench_cache`` (kernel caching, issue #19).

Runs: ``--quick`` (10k pins x 2 backends, a few minutes, for development; the test suite runs it),
the default 1M x 3, and ``--pins 10000000 --backends 1`` (no legacy pins.json is generated above 2M
pins, so baseline B and the migrate rows are left out, and issue #19's rows too).

Method, in short:

* Data: K backends x N pins, generated once into ``.bench-cache/`` (keyed by N, K). The cache is only
  read: write measurements (migrate, control-file pins) work on copies in ``.bench-cache/work-<pid>``.
* Cold per-file timings: ``time.perf_counter`` around ``open``/``read``/``close`` (or ``stat``,
  ``listdir``) from this process. Each cold round is a fresh mount process. Within one mount several cold
  samples are taken, each on a CID never touched in that mount and from a row group of its backend not
  touched in that mount (row groups tracked per backend), so neither the kernel's dentry cache nor
  the mount's row-group cache answers. The first sample of a mount also pays for opening the backend's
  snapshot (parquet footer); it is reported separately. The OS page cache holds the files (warm
  disk) for pinfs and for every baseline alike.
* Baselines A and B run in a fresh process each; their figure is the work alone (imports and
  interpreter start excluded), which favours them. Migrate and its reference are whole-process wall
  times (both start an interpreter), each with its own peak RSS (``wait4``), run in turn.
* Every mount this process starts is unmounted in ``finally`` (``fusermount3 -u``, then ``-uz``), also
  on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_cache
import bench_gen
import bench_s3
import bench_store
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bench_gen import say

from pinfs.data.backends import get_backend
from pinfs.data.snapshots import StoreCache
from pinfs.data.store import PinStore

PROJECT = Path(__file__).resolve().parent.parent
SCRIPTS = PROJECT / "scripts"
PY = sys.executable
RECORD_OTHER_FILES = ("cid", "car_file_path", "backend_name", "created_at", "metadata.json", "pin.json")


# -- plan --


@dataclass
class Plan:
    mounts: int  # fresh pinfs mounts for cold samples
    first_mounts: int  # more fresh mounts that take only mount ready and the first cold cat
    cold_per_mount: int  # further cold samples per mount (cat and cids each)
    warm_reps: int  # warm cat repetitions in total
    listing_runs: int  # full "ls by-cid" runs (each followed by an RSS reading)
    baseline_reps: int  # baselines A and B
    migrate_reps: int
    regen_reps: int
    batch_reps: int
    single_reps: int
    floor_sample: int  # entries of the tmpfs tree (baseline D)


QUICK = Plan(
    mounts=2,
    first_mounts=1,
    cold_per_mount=4,
    warm_reps=60,
    listing_runs=2,
    baseline_reps=2,
    migrate_reps=1,
    regen_reps=1,
    batch_reps=1,
    single_reps=2,
    floor_sample=200_000,
)
FULL = Plan(
    mounts=5,
    first_mounts=10,
    cold_per_mount=8,
    warm_reps=300,
    listing_runs=3,
    baseline_reps=3,
    migrate_reps=2,
    regen_reps=2,
    batch_reps=2,
    single_reps=10,
    floor_sample=200_000,
)
# Above bench_gen.LEGACY_MAX pins (10M x 1): no legacy pins.json, so no baseline B and no migrate rows;
# fewer mounts and listings (a listing of 10M entries takes most of a minute).
BIG = Plan(
    mounts=3,
    first_mounts=4,
    cold_per_mount=8,
    warm_reps=300,
    listing_runs=2,
    baseline_reps=1,
    migrate_reps=0,
    regen_reps=1,
    batch_reps=2,
    single_reps=10,
    floor_sample=200_000,
)


# -- statistics and formatting --


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)])


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "MB":
        return f"{value:.0f} MB"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.0f} us"


# -- mounts: started here, always taken down here --


class Mounts:
    def __init__(self) -> None:
        self.active: list[tuple[Path, subprocess.Popen[bytes]]] = []

    def start(
        self,
        command: list[str],
        mountpoint: Path,
        log_path: Path,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen[bytes], float]:
        """Start a mount process (with ``env``, else this one's); return it and the seconds until the
        mount point answered ``ls``."""
        mountpoint.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=PROJECT, env=env)
        self.active.append((mountpoint, process))
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:4]} exited {process.returncode}:\n{log_path.read_text()[-2000:]}")
            if os.path.ismount(mountpoint):
                try:
                    os.listdir(mountpoint)
                    break
                except OSError:
                    pass
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"{mountpoint} not ready within {timeout} s")
            time.sleep(0.002)
        return process, time.perf_counter() - started

    def stop(self, mountpoint: Path) -> None:
        for entry in [entry for entry in self.active if entry[0] == mountpoint]:
            self.active.remove(entry)
            _take_down(*entry)

    def stop_all(self) -> None:
        while self.active:
            _take_down(*self.active.pop())


def _is_mounted(mountpoint: Path) -> bool:
    target = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
            return any(len(line.split()) > 4 and line.split()[4] == target for line in table)
    except OSError:
        return os.path.ismount(target)


def _take_down(mountpoint: Path, process: subprocess.Popen[bytes]) -> None:
    try:
        if _is_mounted(mountpoint):
            done = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, timeout=60)
            if done.returncode != 0 and _is_mounted(mountpoint):
                subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True, timeout=60)
    finally:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# -- timed file operations (from this process, os calls) --


def t_cat(path: Path) -> tuple[float, bytes]:
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    data = os.read(fd, 1 << 16)
    os.close(fd)
    return time.perf_counter() - started, data


def t_stat(path: Path) -> float:
    started = time.perf_counter()
    os.stat(path)
    return time.perf_counter() - started


def t_ls(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    count = len(os.listdir(path))
    return time.perf_counter() - started, count


def t_ls_cid(path: Path) -> tuple[float, list[str]]:
    """``ls cids/<cid>``: look the directory up, then list it."""
    started = time.perf_counter()
    os.stat(path)
    names = os.listdir(path)
    return time.perf_counter() - started, names


def t_write(path: Path, data: bytes) -> float:
    """``echo … > control``: open with truncation, write everything, close (the command runs on close)."""
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return time.perf_counter() - started


def run_measured(command: list[str]) -> tuple[float, str, float]:
    """``run_timed``, and the child's own peak RSS in MB (its rusage, from ``wait4``: the figure of
    that process alone, not of every child this one has had)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, cwd=PROJECT)
        assert process.stdout is not None
        out = process.stdout.read()
        _pid, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        if process.returncode != 0:
            errors.seek(0)
            stderr = errors.read().decode(errors="replace")
            raise RuntimeError(f"{' '.join(command[:6])} exited {process.returncode}:\n{stderr[-3000:]}")
    return elapsed, out.decode(), usage.ru_maxrss / 1024


def run_timed(command: list[str], timeout: float = 3600, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT, timeout=timeout, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return elapsed, done.stdout


# -- the generated data, as the bench sees it --


class Data:
    """Per backend: sorted CIDs and statuses, and row-group starts; CIDs held by every backend."""

    def __init__(self, cache: Path, seed: int) -> None:
        self.cache = cache
        self.root = cache / "root"
        self.meta = json.loads((cache / "meta.json").read_text())
        self.names = [entry["name"] for entry in self.meta["backends"]]
        self.n = self.meta["n"]
        self.cids: list[pa.Array] = []
        self.statuses: list[pa.Array] = []
        self.starts: list[list[int]] = []
        for name in self.names:
            path = self.root / "backends" / name / "pin_mappings.parquet"
            table = pq.read_table(path, columns=["cid", "status"])
            self.cids.append(table.column("cid").combine_chunks())
            self.statuses.append(table.column("status").combine_chunks())
            starts, position = [], 0
            snapshot = PinStore(get_backend(self.root, name), StoreCache()).snapshot()
            for piece in snapshot.pieces:  # the table's data files in CID order, and their row groups
                for group in piece.row_groups():
                    starts.append(position)
                    position += group.length
            self.starts.append(starts + [position])
        shared = pa.array(self.meta["shared_sample"], pa.string())
        positions = [pc.index_in(shared, value_set=cids).to_pylist() for cids in self.cids]
        self.shared = [
            (cid, tuple(self.group_of(b, positions[b][i]) for b in range(len(self.names))))
            for i, cid in enumerate(shared.to_pylist())
            if all(positions[b][i] is not None for b in range(len(self.names)))
        ]
        self.rng = random.Random(seed)

    def group_of(self, backend: int, position: int) -> int:
        starts = self.starts[backend]
        low, high = 0, len(starts) - 2
        while low < high:
            middle = (low + high + 1) // 2
            if starts[middle] <= position:
                low = middle
            else:
                high = middle - 1
        return low

    def groups(self, backend: int) -> int:
        return len(self.starts[backend]) - 1

    def pick(self, backend: int, touched: set[tuple[int, int]]) -> tuple[str, str]:
        """A CID of ``backend`` from a row group not in ``touched`` (which it joins), and its status."""
        free = [g for g in range(self.groups(backend)) if (backend, g) not in touched]
        group = self.rng.choice(free) if free else self.rng.randrange(self.groups(backend))
        touched.add((backend, group))
        position = self.rng.randrange(self.starts[backend][group], self.starts[backend][group + 1])
        return self.cids[backend][position].as_py(), self.statuses[backend][position].as_py()

    def pick_shared(self, touched: set[tuple[int, int]]) -> str:
        """A CID every backend holds, each from a row group not in ``touched``."""
        candidates = [
            (cid, groups) for cid, groups in self.shared if not any((b, g) in touched for b, g in enumerate(groups))
        ]
        cid, groups = self.rng.choice(candidates or self.shared)
        touched.update(enumerate(groups))
        return cid

    def status_count(self, backend: int, status: str) -> int:
        return int(pc.sum(pc.equal(self.statuses[backend], status)).as_py())


def new_cids(rng: random.Random, count: int) -> list[str]:
    return bench_gen.random_cids(rng, count)


# -- results --


@dataclass
class Results:
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)
            say(f"PROBLEM: {message}")


# -- sessions --


def pinfs_mount_command(mountpoint: Path, root: Path, cache_mb: int) -> list[str]:
    return [PY, "-m", "pinfs", "mount", str(mountpoint), "--root", str(root), "--cache-mb", str(cache_mb)]


def session_pinfs(data: Data, plan: Plan, mounts: Mounts, run: Path, res: Results, cache_mb: int) -> None:
    k = len(data.names)
    failed_expected = data.status_count(0, "failed")
    warm_per_mount = max(1, plan.warm_reps // plan.mounts)
    for round_index in range(plan.mounts):
        mountpoint = run / f"pinfs-{round_index}"
        say(f"pinfs mount {round_index + 1}/{plan.mounts}: cold lookups")
        process, ready = mounts.start(
            pinfs_mount_command(mountpoint, data.root, cache_mb), mountpoint, run / "pinfs-mount.log"
        )
        res.add("ready", ready)
        if round_index == 0:
            res.notes["rss_mb_mount_ready"] = round(rss_mb(process.pid), 1)
        touched = untouched_at_mount(data)
        backends = mountpoint / "backends"
        catted: list[tuple[int, str]] = []

        def cold_cat(
            backend: int,
            key: str,
            touched: set[tuple[int, int]] = touched,
            backends: Path = backends,
            catted: list[tuple[int, str]] = catted,
        ) -> None:
            cid, status = data.pick(backend, touched)
            elapsed, content = t_cat(backends / data.names[backend] / "by-cid" / cid / "status")
            res.check(content == f"{status}\n".encode(), f"cat status of {cid}: {content!r}, expected {status}")
            res.add(key, elapsed)
            catted.append((backend, cid))

        def cold_cids(key: str, touched: set[tuple[int, int]] = touched, mountpoint: Path = mountpoint) -> None:
            cid = data.pick_shared(touched)
            elapsed, names = t_ls_cid(mountpoint / "cids" / cid)
            res.check(sorted(names) == sorted(data.names), f"ls cids/{cid}: {names}")
            res.add(key, elapsed)

        cold_cat(0, "cat_cold_first")
        if round_index == 0:
            res.notes["rss_mb_after_first_lookup"] = round(rss_mb(process.pid), 1)
        cold_cids("cids_cold_first")
        for index in range(plan.cold_per_mount):
            cold_cat(index % k, "cat_cold_more")
            cold_cids("cids_cold_more")
        # warm: the same file again and again (kernel has the name; pinfs has the row group)
        backend, cid = catted[0]
        path = backends / data.names[backend] / "by-cid" / cid / "status"
        for _ in range(warm_per_mount):
            res.add("cat_warm", t_cat(path)[0])
        # warm stat: files of CIDs whose record pinfs has cached, names the kernel has not seen yet
        for backend, cid in catted:
            for name in RECORD_OTHER_FILES:
                res.add("stat_warm", t_stat(backends / data.names[backend] / "by-cid" / cid / name))
        # by-status/failed: first listing in the mount, then again
        failed_dir = backends / data.names[0] / "by-status" / "failed"
        elapsed, count = t_ls(failed_dir)
        res.check(count == failed_expected, f"ls by-status/failed: {count} entries, expected {failed_expected}")
        res.add("ls_failed_cold", elapsed)
        for _ in range(2):
            res.add("ls_failed_warm", t_ls(failed_dir)[0])
        if round_index == plan.mounts - 1:
            _listing_and_rss(data, plan, process, mountpoint, touched, res)
        mounts.stop(mountpoint)
    fresh_mount_lookups(data, data.root, mounts, run, res, cache_mb, plan.first_mounts, ("ready", "cat_cold_first"))


def untouched_at_mount(data: Data, mounted: Sequence[str] | None = None) -> set[tuple[int, int]]:
    """The row groups a fresh mount of the backends ``mounted`` (all of ``data``'s by default) has read
    before it answers, as ``Data.pick`` counts them: the first of the first backend by name, by its one
    warm-up lookup (``pinfs.fs.warmup.warm_up_lookup``). Cold samples are taken elsewhere."""
    first = min(mounted if mounted is not None else data.names)
    return {(data.names.index(first), 0)}


def fresh_mount_lookups(
    data: Data,
    root: Path,
    mounts: Mounts,
    run: Path,
    res: Results,
    cache_mb: int,
    rounds: int,
    keys: tuple[str, str],
    mounted: Sequence[str] | None = None,
) -> None:
    """Fresh mounts of ``root`` (holding the backends ``mounted``, all of ``data``'s by default) that
    take only mount ready and the first cold ``cat status`` of a CID of ``data``'s first backend, as
    the samples ``keys`` (ready, cat). The rows at their lines vary from mount to mount on a shared
    2-core machine by more than a few mounts settle."""
    for index in range(rounds):
        say(f"fresh mount {index + 1}/{rounds} of {root}: ready and the first cold lookup only")
        mountpoint = run / f"{keys[0]}-{index}"
        command = pinfs_mount_command(mountpoint, root, cache_mb)
        _process, ready = mounts.start(command, mountpoint, run / f"{keys[0]}-mount.log")
        try:
            res.add(keys[0], ready)
            cid, status = data.pick(0, untouched_at_mount(data, mounted))
            elapsed, content = t_cat(mountpoint / "backends" / data.names[0] / "by-cid" / cid / "status")
            res.check(content == f"{status}\n".encode(), f"{root}: cat status of {cid}: {content!r}, expected {status}")
            res.add(keys[1], elapsed)
        finally:
            mounts.stop(mountpoint)


def _listing_and_rss(
    data: Data,
    plan: Plan,
    process: subprocess.Popen[bytes],
    mountpoint: Path,
    touched: set[tuple[int, int]],
    res: Results,
) -> None:
    """Full ``ls by-cid`` runs, each after cold lookups in every backend; the mount's RSS after each."""
    by_cid = mountpoint / "backends" / data.names[0] / "by-cid"
    readings = []
    for run_index in range(plan.listing_runs):
        for backend in range(len(data.names)):
            for _ in range(5):
                cid, _status = data.pick(backend, touched)
                t_cat(mountpoint / "backends" / data.names[backend] / "by-cid" / cid / "status")
        if run_index == 0:
            res.notes["rss_mb_before_first_listing"] = round(rss_mb(process.pid), 1)
        say(f"pinfs: ls by-cid ({data.n} entries), run {run_index + 1}/{plan.listing_runs}")
        elapsed, count = t_ls(by_cid)
        res.check(count == data.n, f"ls by-cid: {count} entries, expected {data.n}")
        res.add("ls_by_cid_first" if run_index == 0 else "ls_by_cid", elapsed)
        readings.append(rss_mb(process.pid))
    res.add("rss", readings[0])
    res.add("rss_growth", readings[-1] - readings[0])
    res.notes["rss_readings_mb"] = [round(value, 1) for value in readings]


def session_floor(data: Data, plan: Plan, mounts: Mounts, run: Path, res: Results) -> None:
    """Baseline C: the minimal pyfuse3 filesystem with as many by-cid entries."""
    mountpoint = run / "floor"
    command = [PY, str(SCRIPTS / "bench_floorfs.py"), str(mountpoint), str(data.n)]
    for _ in range(2):
        _process, ready = mounts.start(command, mountpoint, run / "floor-mount.log")
        res.add("C_ready", ready)
        mounts.stop(mountpoint)
    process, ready = mounts.start(command, mountpoint, run / "floor-mount.log")
    res.add("C_ready", ready)
    say("baseline C (minimal pyfuse3 filesystem): lookups, stat, listing")
    by_cid = mountpoint / "by-cid"
    touched: set[tuple[int, int]] = set()
    cids = [data.pick(0, touched)[0] for _ in range(plan.mounts * (1 + plan.cold_per_mount))]
    for cid in cids:
        res.add("C_cat_cold", t_cat(by_cid / cid / "status")[0])
    for _ in range(max(1, plan.warm_reps // plan.mounts) * plan.mounts):
        res.add("C_cat_warm", t_cat(by_cid / cids[0] / "status")[0])
    for cid in cids:
        for name in RECORD_OTHER_FILES:
            res.add("C_stat_warm", t_stat(by_cid / cid / name))
    for run_index in range(plan.listing_runs):
        elapsed, count = t_ls(by_cid)
        res.check(count == data.n, f"floor ls by-cid: {count} entries, expected {data.n}")
        res.add("C_ls_by_cid_first" if run_index == 0 else "C_ls_by_cid", elapsed)
    res.add("C_rss", rss_mb(process.pid))
    mounts.stop(mountpoint)


def session_tmpfs(data: Data, plan: Plan, res: Results) -> None:
    """Baseline D: the same tree on tmpfs (/dev/shm), for a sample of entries when N is large."""
    base = Path("/dev/shm")
    if not base.is_dir():
        say("baseline D skipped: no /dev/shm")
        return
    sample = min(data.n, plan.floor_sample)
    tree = Path(os.path.join(base, f"pinfs-bench-{os.getpid()}"))
    say(f"baseline D (tmpfs): building {sample} of {data.n} entries")
    res.notes["tmpfs_entries"] = sample
    try:
        by_cid = tree / "by-cid"
        by_cid.mkdir(parents=True)
        cids = (
            data.cids[0].slice(0, sample).to_pylist()
            if sample == data.n
            else data.rng.sample(data.cids[0].to_pylist(), sample)
        )
        for index, cid in enumerate(cids):
            entry = by_cid / cid
            entry.mkdir()
            names = ("status", *RECORD_OTHER_FILES) if index < 2000 else ("status",)
            for name in names:
                with open(entry / name, "wb") as handle:
                    handle.write(b"stored\n")
        touched = cids[:2000]
        for cid in touched[:200]:
            res.add("D_cat_cold", t_cat(by_cid / cid / "status")[0])
        for _ in range(plan.warm_reps):
            res.add("D_cat_warm", t_cat(by_cid / touched[0] / "status")[0])
        for cid in touched[:200]:
            for name in RECORD_OTHER_FILES:
                res.add("D_stat_warm", t_stat(by_cid / cid / name))
        for _ in range(plan.listing_runs):
            elapsed, _count = t_ls(by_cid)
            res.add("D_ls_by_cid", elapsed * data.n / sample)  # scaled to N entries
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def session_fresh_baselines(data: Data, plan: Plan, res: Results) -> None:
    """Baselines A (pandas) and B (json.load), each run in a fresh process."""
    parquet = data.root / "backends" / data.names[0] / "pin_mappings.parquet"
    legacy = data.cache / "legacy" / "pins.json"
    touched: set[tuple[int, int]] = set()
    probes = [("A", "parquet", parquet)] + ([("B", "json", legacy)] if legacy.is_file() else [])
    for index in range(plan.baseline_reps):
        cid, status = data.pick(0, touched)
        say(f"baselines {' and '.join(key for key, _kind, _path in probes)}, run {index + 1}/{plan.baseline_reps}")
        for key, kind, path in probes:
            wall, out = run_timed([PY, str(SCRIPTS / "bench_probe.py"), kind, str(path), cid])
            answer = json.loads(out)
            expected = status if kind == "parquet" else {"stored": "pinned", "pending": "queued"}.get(status, status)
            res.check(answer["answer"] == expected, f"baseline {key} answered {answer['answer']!r} for {cid}")
            res.add(key, answer["seconds"])
            res.add(f"{key}_process", wall)


def session_writes(data: Data, plan: Plan, mounts: Mounts, run: Path, work: Path, res: Results, cache_mb: int) -> None:
    """Migrate, CAR regeneration and control-file pins, on copies of backend 0 (the cache stays pristine)."""
    name = data.names[0]
    source = data.root / "backends"
    legacy = data.cache / "legacy" / "pins.json"
    for index in range(plan.migrate_reps):
        root = work / f"migrate-{index}"
        (root / "backends" / name).mkdir(parents=True)
        shutil.copyfile(source / f"{name}.yaml", root / "backends" / f"{name}.yaml")
        shutil.copyfile(legacy, root / "backends" / name / "pins.json")
        say(f"pinfs migrate of {data.n} legacy pins, run {index + 1}/{plan.migrate_reps}")
        command = [PY, "-m", "pinfs", "migrate", "--root", str(root), "--backend-filter", name, "--json"]
        elapsed, out, rss = run_measured(command)
        report = json.loads(out)
        entry = report["backends"][0]
        res.check(report["ok"] and entry["added"] == data.n, f"migrate: {json.dumps(entry)[:300]}")
        res.add("migrate", elapsed)
        res.add("migrate_rss", rss)
        shutil.rmtree(root)
        reference = work / "reference.parquet"
        probe = [PY, str(SCRIPTS / "bench_probe.py"), "jsonwrite", str(legacy), str(reference)]
        wall, _out, reference_rss = run_measured(probe)
        res.add("migrate_reference", wall)
        res.add("migrate_reference_rss", reference_rss)
        reference.unlink()
    root = bench_store.link_copy(data.root, name, work / "writes")
    for index in range(plan.regen_reps):
        say(f"pinfs migrate --force-car-regeneration ({data.n} pins), run {index + 1}/{plan.regen_reps}")
        elapsed, out = run_timed(
            [
                PY,
                "-m",
                "pinfs",
                "migrate",
                "--root",
                str(root),
                "--backend-filter",
                name,
                "--force-car-regeneration",
                "--json",
            ]
        )
        report = json.loads(out)
        res.check(report["ok"] and report["backends"][0]["car_written"], f"regenerate: {out[:300]}")
        res.add("regen", elapsed)
    mountpoint = run / "writes"
    mounts.start(pinfs_mount_command(mountpoint, root, cache_mb), mountpoint, run / "writes-mount.log")
    control = mountpoint / "backends" / name / ".control" / "pin"
    rng = random.Random(7)
    for index in range(plan.batch_reps):
        cids = new_cids(rng, 10_000)
        text = "".join(f"{cid} status=pending meta.bench=batch{index}\n" for cid in cids)
        say(f"echo '<10k pins>' > .control/pin, run {index + 1}/{plan.batch_reps}")
        res.add("pin_batch", t_write(control, text.encode()))
        _check_pinned(mountpoint, name, cids[0], res)
    for index in range(plan.single_reps):
        cid = new_cids(rng, 1)[0]
        say(f"echo '<1 pin>' > .control/pin, run {index + 1}/{plan.single_reps}")
        res.add("pin_single", t_write(control, f"{cid} status=stored meta.bench=single\n".encode()))
        _check_pinned(mountpoint, name, cid, res, "stored")
    mounts.stop(mountpoint)


def _check_pinned(mountpoint: Path, backend: str, cid: str, res: Results, status: str = "pending") -> None:
    path = mountpoint / "backends" / backend / "by-cid" / cid / "status"
    try:
        content = path.read_bytes()
    except OSError as exc:
        content = repr(exc).encode()
    res.check(content == f"{status}\n".encode(), f"after pinning {cid}: status file says {content!r}")


# -- the report --


@dataclass
class RowSpec:
    key: str
    what: str
    baseline: str | None  # sample key of the baseline
    baseline_name: str
    target: str
    met: Callable[[float, float | None], bool]  # (pinfs median, ratio pinfs/baseline) -> met?
    floor: str | None = None  # sample key of the tmpfs figure
    unit: str = "s"


def row_specs(k: int, cache_mb: int, n: int) -> list[RowSpec]:
    """The rows of the main sessions. Targets of issue #12 where it gives one for the size (a cold
    lookup <= 10 ms at 1M and <= 20 ms at 10M; one pin <= 30 ms at 1M and <= 50 ms at 10M; a 10k batch
    <= 1 s at 1M); where it gives one only at 1M, scaled linearly with the pins, and said so."""
    cids_limit = 0.020 + 0.005 * k
    rss_limit = cache_mb + 200
    millions = max(n / 1_000_000, 1.0)
    cold_limit = 0.010 if n <= 1_000_000 else 0.020
    single_limit = 0.030 if n <= 1_000_000 else 0.050

    def scaled(limit: float, unit: str = "s") -> str:
        return f"<= {limit:g} {unit}" if millions == 1 else f"<= {limit * millions:g} {unit} ({limit:g} {unit} per 1M)"

    return [
        RowSpec(
            "ready", "mount ready (mountpoint answers ls)", "C_ready", "C mount ready", "<= 1 s", lambda m, r: m <= 1.0
        ),
        RowSpec(
            "cat_cold_first",
            "cat by-cid/<cid>/status, cold, first after mount",
            "A",
            "A pandas",
            f"<= {cold_limit * 1e3:.0f} ms, >= 25x faster",
            lambda m, r: m <= cold_limit and r is not None and r <= 1 / 25,
            "D_cat_cold",
        ),
        RowSpec(
            "cat_cold_first",
            "  same, vs B",
            "B",
            "B json.load",
            f"<= {cold_limit * 1e3:.0f} ms, >= 100x faster",
            lambda m, r: m <= cold_limit and r is not None and r <= 1 / 100,
            "D_cat_cold",
        ),
        RowSpec(
            "cat_cold_more",
            "cat status, cold, new row group, same mount",
            "A",
            "A pandas",
            "<= 20 ms, >= 25x faster",
            lambda m, r: m <= 0.020 and r is not None and r <= 1 / 25,
            "D_cat_cold",
        ),
        RowSpec(
            "cat_cold_more",
            "  same, vs B",
            "B",
            "B json.load",
            "<= 20 ms, >= 100x faster",
            lambda m, r: m <= 0.020 and r is not None and r <= 1 / 100,
            "D_cat_cold",
        ),
        RowSpec(
            "cat_warm",
            "cat status, warm (repeated)",
            "C_cat_warm",
            "C pyfuse3 floor",
            "<= 1.5x C",
            lambda m, r: r is not None and r <= 1.5,
            "D_cat_warm",
        ),
        RowSpec(
            "stat_warm",
            "stat of a per-CID file, warm",
            "C_stat_warm",
            "C pyfuse3 floor",
            "<= 1.5x C",
            lambda m, r: r is not None and r <= 1.5,
            "D_stat_warm",
        ),
        RowSpec(
            "cids_cold_first",
            f"ls cids/<cid>, cold, {k} backends, first after mount",
            None,
            "-",
            f"<= {cids_limit * 1e3:.0f} ms",
            lambda m, r: m <= cids_limit,
        ),
        RowSpec(
            "cids_cold_more",
            f"ls cids/<cid>, cold, {k} backends, same mount",
            None,
            "-",
            f"<= {cids_limit * 1e3:.0f} ms",
            lambda m, r: m <= cids_limit,
        ),
        RowSpec(
            "ls_failed_cold",
            "ls by-status/failed, first in mount",
            None,
            "-",
            scaled(1),
            lambda m, r: m <= 1.0 * millions,
        ),
        RowSpec(
            "ls_failed_warm", "ls by-status/failed, repeated", None, "-", scaled(1), lambda m, r: m <= 1.0 * millions
        ),
        RowSpec(
            "ls_by_cid_first",
            "ls by-cid (all entries), first in mount",
            "C_ls_by_cid_first",
            "C pyfuse3 floor",
            "<= 2x C",
            lambda m, r: r is not None and r <= 2.0,
            "D_ls_by_cid",
        ),
        RowSpec(
            "ls_by_cid",
            "ls by-cid (all entries), repeated",
            "C_ls_by_cid",
            "C pyfuse3 floor",
            "<= 2x C",
            lambda m, r: r is not None and r <= 2.0,
            "D_ls_by_cid",
        ),
        RowSpec(
            "rss",
            "mount RSS after lookups in all backends + ls by-cid",
            "C_rss",
            "C RSS",
            f"<= {rss_limit} MB",
            lambda m, r: m <= rss_limit,
            unit="MB",
        ),
        RowSpec(
            "rss_growth", "mount RSS growth over repeated runs", None, "-", "<= 32 MB", lambda m, r: m <= 32, unit="MB"
        ),
        RowSpec(
            "migrate",
            "pinfs migrate of pins.json (whole process)",
            "migrate_reference",
            "json.load + pyarrow write",
            "<= 1x ref",
            lambda m, r: r is not None and r <= 1.0,
        ),
        RowSpec(
            "migrate_rss",
            "  same, peak RSS",
            "migrate_reference_rss",
            "json.load + pyarrow write",
            "<= 1024 MB",
            lambda m, r: m <= 1024,
            unit="MB",
        ),
        RowSpec(
            "regen",
            "pinfs migrate --force-car-regeneration",
            None,
            "-",
            scaled(10),
            lambda m, r: m <= 10.0 * millions,
        ),
        RowSpec(
            "pin_batch",
            "echo '<10k pins>' > .control/pin",
            None,
            "-",
            scaled(1),
            lambda m, r: m <= 1.0 * millions,
        ),
        RowSpec(
            "pin_single",
            "echo '<1 pin>' > .control/pin",
            None,
            "-",
            f"<= {single_limit * 1e3:.0f} ms",
            lambda m, r: m <= single_limit,
        ),
    ]


def build_rows(
    res: Results, k: int, cache_mb: int, n: int = 1_000_000, quick: bool = False, writes: int | None = None
) -> list[dict[str, Any]]:
    """One row per spec with samples. A row judged against a baseline that was not measured (B and
    migrate's reference have no pins.json above 2M pins; a run stopped early) is not judged (met
    None), and its "  same, vs X" repetitions are left out."""
    rows = []
    specs = [
        *row_specs(k, cache_mb, n),
        *bench_store.row_specs(RowSpec, n, quick, res.notes.get("store_writes", {}).get("writes", writes)),
        *bench_s3.row_specs(RowSpec, n),
        *bench_cache.row_specs(RowSpec),
    ]
    for spec in specs:
        values = res.samples.get(spec.key, [])
        unmeasured = spec.baseline is not None and not res.samples.get(spec.baseline)
        if not values or (unmeasured and spec.what.startswith("  same")):
            continue
        row: dict[str, Any] = {
            "key": spec.key,
            "what": spec.what,
            "unit": spec.unit,
            "median": median(values),
            "p95": p95(values),
            "n": len(values),
            "baseline": spec.baseline_name if spec.baseline else None,
            "baseline_median": None,
            "baseline_p95": None,
            "baseline_n": 0,
            "ratio": None,
            "target": spec.target,
            "floor_tmpfs_median": None,
        }
        base = res.samples.get(spec.baseline or "", [])
        if base:
            row.update(baseline_median=median(base), baseline_p95=p95(base), baseline_n=len(base))
            row["ratio"] = row["median"] / row["baseline_median"] if row["baseline_median"] else None
        floor = res.samples.get(spec.floor or "", [])
        if floor:
            row["floor_tmpfs_median"] = median(floor)
        # None: judged against a baseline that was not measured (a run stopped early)
        row["met"] = None if unmeasured else bool(spec.met(row["median"], row["ratio"]))
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ["what", "pinfs median", "p95", "n", "baseline", "baseline median", "ratio", "target", "met?", "D tmpfs"]
    lines = [header]
    for row in rows:
        ratio = row["ratio"]
        if ratio is None:
            ratio_text = "-"
        elif ratio < 1:
            ratio_text = f"{ratio:.3g} ({1 / ratio:.0f}x faster)" if ratio < 0.5 else f"{ratio:.2f}"
        else:
            ratio_text = f"{ratio:.2f}"
        lines.append(
            [
                row["what"],
                fmt_value(row["median"], row["unit"]),
                fmt_value(row["p95"], row["unit"]),
                str(row["n"]),
                row["baseline"] or "-",
                fmt_value(row["baseline_median"], row["unit"]),
                ratio_text,
                row["target"],
                "?" if row["met"] is None else "yes" if row["met"] else "NO",
                fmt_value(row["floor_tmpfs_median"], row["unit"]),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append(" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            out.append("-+-".join("-" * width for width in widths))
    return "\n".join(out)


# -- main --


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pins", type=int, help="pins per backend (default 1000000; 10000 with --quick)")
    parser.add_argument("--backends", type=int, help="number of backends (default 3; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="10k pins, 2 backends, few repetitions")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument(
        "--s3", action="store_true", help="also the S3 rows: the first backend on a local SeaweedFS (issue #13)"
    )
    parser.add_argument(
        "--writes",
        type=int,
        help="single-pin writes before the after-writes rows (default 10000; 1000 above 2M pins; 200 with --quick)",
    )
    parser.add_argument("--cache", type=Path, default=PROJECT / ".bench-cache", help="data cache directory")
    parser.add_argument("--cache-mb", type=int, default=256, help="the mount's --cache-mb (RSS target)")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["pinfs", "writes", "store", "floor", "tmpfs", "baselines", "s3", "cache"],
        help="leave out one session of rows (repeatable), e.g. --skip cache (issue #19's walks, ~20 min at 1M)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--report", type=Path, help="print the table of a run saved with --save, and exit")
    args = parser.parse_args(argv)
    args.pins = args.pins or (10_000 if args.quick else 1_000_000)
    args.backends = args.backends or (2 if args.quick else 3)
    if args.pins < 10_000 or args.backends < 1:
        parser.error("--pins must be at least 10000 and --backends at least 1")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def bytecode_state() -> str:
    """Whether pinfs' modules load from current bytecode (``compiled``), as from a pip install, or
    are compiled by each process (``source``): ~0.35 s of every mount's start (scripts/lib/setup.sh)."""
    package = Path(__file__).resolve().parent.parent / "pinfs"
    stale = [
        source
        for source in package.rglob("*.py")
        if not (cached := Path(importlib.util.cache_from_source(str(source)))).exists()
        or cached.stat().st_mtime < source.stat().st_mtime
    ]
    return "compiled" if not stale else f"source ({len(stale)} modules without current bytecode)"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.report:
        return _print_saved(args.report)
    plan = QUICK if args.quick else BIG if args.pins > bench_gen.LEGACY_MAX else FULL
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    started = time.perf_counter()
    cache = bench_gen.ensure_data(args.cache, args.pins, args.backends)
    generated = time.perf_counter() - started
    data = Data(cache, args.seed)
    res = Results()
    # A shared machine's load changes every figure: said next to them (1-minute load average).
    res.notes["load_average_start"] = round(os.getloadavg()[0], 1)
    res.notes["pinfs_bytecode"] = bytecode_state()
    run = Path(os.path.join("/tmp", f"pinfs-bench-{os.getpid()}"))
    work = args.cache / f"work-{os.getpid()}"
    mounts = Mounts()
    bench = sys.modules[__name__]
    # The rows of the issues' targets first: a run stopped early (SIGTERM, Ctrl-C: e.g. a `timeout` on
    # a slow machine) still reports, and --save holds, what was measured before it stopped.
    sessions: list[tuple[str, Callable[[], None]]] = [
        ("pinfs", lambda: session_pinfs(data, plan, mounts, run, res, args.cache_mb)),
        ("writes", lambda: session_writes(data, plan, mounts, run, work, res, args.cache_mb)),
        (
            "store",
            lambda: bench_store.session_store(
                bench, data, args.quick, mounts, run, work, res, args.cache_mb, args.writes
            ),
        ),
        ("floor", lambda: session_floor(data, plan, mounts, run, res)),
        ("tmpfs", lambda: session_tmpfs(data, plan, res)),
        ("baselines", lambda: session_fresh_baselines(data, plan, res)),
    ]
    if args.s3:
        sessions.append(
            ("s3", lambda: bench_s3.session_s3(bench, data, args.quick, mounts, run, work, res, args.cache_mb))
        )
    if args.pins <= bench_gen.LEGACY_MAX:
        sessions.append(("cache", lambda: bench_cache.session_cache(bench, data, args.quick, mounts, run, work, res)))
    else:
        res.notes["cache_rows"] = "issue #19's rows are measured up to 2M pins, not here"
    sessions = [(name, session) for name, session in sessions if name not in args.skip]
    try:
        run.mkdir(parents=True)
        work.mkdir(parents=True)
        for name, session in sessions:
            try:
                session()
            except KeyboardInterrupt as exc:
                # A second signal (``timeout`` signals the whole group) must not cut the report short.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                res.check(
                    False, f"stopped ({exc or 'interrupted'}) during the {name} session: rows after it are missing"
                )
                break
            except (OSError, RuntimeError) as exc:  # e.g. a mount that died: the other sessions still run
                res.check(False, f"the {name} session failed: {exc}")
            finally:
                if args.save:
                    _save(args.save, _report(args, plan, cache, generated, started, res))
    finally:
        mounts.stop_all()
        shutil.rmtree(work, ignore_errors=True)
        if run.is_dir() and not any(_is_mounted(child) for child in run.iterdir()):
            shutil.rmtree(run, ignore_errors=True)
    report = _report(args, plan, cache, generated, started, res)
    rows = report["rows"]
    if args.save:
        _save(args.save, report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"pinfs bench: {args.backends} backends x {args.pins} pins; met? judged on the median")
        print(format_table(rows))
        if res.notes.get("tmpfs_entries", args.pins) < args.pins:
            print(f"D tmpfs: a sample of {res.notes['tmpfs_entries']} entries; 'ls by-cid' scaled to {args.pins}")
        for key, value in res.notes.items():
            print(f"note: {key} = {value}")
        for problem in res.problems:
            print(f"PROBLEM: {problem}")
    return 1 if res.problems else 0


def _report(
    args: argparse.Namespace, plan: Plan, cache: Path, generated: float, started: float, res: Results
) -> dict[str, Any]:
    res.notes["load_average_end"] = round(os.getloadavg()[0], 1)
    rows = build_rows(res, args.backends, args.cache_mb, args.pins, args.quick, args.writes)
    report = {
        "params": {
            "pins": args.pins,
            "backends": args.backends,
            "quick": args.quick,
            "s3": args.s3,
            "cache_mb": args.cache_mb,
            "plan": plan.__dict__,
            "data": str(cache),
            "generation_seconds": round(generated, 1),
            "bench_seconds": round(time.perf_counter() - started, 1),
        },
        "rows": rows,
        "notes": res.notes,
        "problems": res.problems,
        "samples": {key: [round(value, 7) for value in values] for key, values in res.samples.items()},
    }
    return report


def _print_saved(path: Path) -> int:
    """The table of a saved run, with the row specs of this code (a run stopped early, or re-judged)."""
    saved = json.loads(path.read_text())
    params = saved["params"]
    res = Results(saved["samples"], saved["notes"], saved["problems"])
    rows = build_rows(res, params["backends"], params["cache_mb"], params["pins"], params["quick"])
    print(f"pinfs bench: {params['backends']} backends x {params['pins']} pins; met? judged on the median")
    print(format_table(rows))
    for key, value in res.notes.items():
        print(f"note: {key} = {value}")
    for problem in res.problems:
        print(f"PROBLEM: {problem}")
    return 1 if res.problems else 0


def _save(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
