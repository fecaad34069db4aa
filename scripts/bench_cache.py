"""Issue #19's bench rows: warm reads at kernel speed, whole-tree walks, and the invalidation lag.

Called from ``bench_main`` (``session_cache`` and ``row_specs``; bench_main itself is passed in as
``bench``), or alone for these rows only: ``.venv/bin/python scripts/bench_cache.py [--quick]
[--rows warm,walk,lag]`` (1M pins for the warm rows, as bench_main's default; 10k with --quick).

Every row is judged as a ratio to baseline D, the same thing on tmpfs measured in the same run:

* warm ``cat status`` and ``stat`` of per-CID files (D: ``session_tmpfs`` of bench_main);
* repeated ``ls by-status/failed`` (30k entries at 1M pins; D: a tmpfs directory of as many symlinks);
* on a backend of its own of ``WALK_PINS`` pins (``QUICK_WALK_PINS`` with --quick): a walk that lists
  every ``by-cid/<cid>`` directory and reads its ``status`` (what ``grep -r --include=status`` does),
  cold (a fresh mount) and warm (again in that mount), per CID, and a warm
  ``find by-cid -name 'baf*' | wc -l``. D: a tmpfs tree of ``TMPFS_WALK`` such directories with their
  seven files, scaled to the backend's size. Cold: at most 0.5 ms per CID.
* the invalidation lag: while another process commits ``PINS_PER_SECOND`` pins a second to a copy of
  the walk backend (one commit at a time, each changing one probe's status), how long after a commit
  returns a ``status`` file the kernel had cached shows it; p99 at most 2 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import bench_gen
from bench_gen import say

from pinfs.data.backends import get_backend
from pinfs.data.schema import make_record
from pinfs.data.store import PinStore

WALK_PINS = 100_000  # the walk backend
QUICK_WALK_PINS = 2_000  # with --quick: a walk of 100k pins takes minutes through FUSE
TMPFS_WALK = 20_000  # CID directories of the tmpfs tree the walks are compared with
WARM_REPS = 2000  # warm cat and stat
LS_REPS = 5
PINS_PER_SECOND = 100
LAG_SECONDS = 20.0
LAG_GIVE_UP = 10.0  # a change not visible after this long is a problem (the promise is 2 s)
SECTIONS = ("warm", "walk", "lag")
OTHER_FILES = ("cid", "car_file_path", "backend_name", "created_at", "metadata.json", "pin.json")


def _cat(path: Path) -> float:
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    os.read(fd, 1 << 16)
    os.close(fd)
    return time.perf_counter() - started


def _shell(command: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=3600, check=True)
    return time.perf_counter() - started, done.stdout.strip()


def walk(by_cid: Path) -> tuple[float, int]:
    """List every directory below ``by_cid`` and read each ``status`` file; (seconds, CIDs)."""
    started = time.perf_counter()
    count = 0
    for directory, _dirs, names in os.walk(by_cid):
        if "status" in names:
            fd = os.open(os.path.join(directory, "status"), os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)
            count += 1
    return time.perf_counter() - started, count


# -- sessions --


def session_cache(
    bench: ModuleType,
    data: Any,
    quick: bool,
    mounts: Any,
    run: Path,
    work: Path,
    res: Any,
    sections: tuple[str, ...] = SECTIONS,
    lag_in_thread: bool = False,
    walk_reps: int | None = None,
) -> None:
    """All of this module's rows (see the module docstring), or those of ``sections``."""
    if "warm" in sections:
        _warm_reads(bench, data, WARM_REPS // 5 if quick else WARM_REPS, mounts, run, res)
        _tmpfs_listing(data, res)
    if "walk" in sections or "lag" in sections:
        walk_root, walk_name, walk_n = _walk_data(data, quick)
    if "walk" in sections:
        reps = walk_reps or (1 if quick else 2)
        _walks(bench, walk_root, walk_name, walk_n, reps, mounts, run, res)
        _tmpfs_walk(walk_root, walk_name, walk_n, res)
    if "lag" in sections:
        seconds = LAG_SECONDS / 5 if quick else LAG_SECONDS
        _lag(bench, walk_root, walk_name, seconds, mounts, run, work, res, lag_in_thread)


def _warm_reads(bench: ModuleType, data: Any, reps: int, mounts: Any, run: Path, res: Any) -> None:
    mountpoint = run / "cache-warm"
    command = bench.pinfs_mount_command(mountpoint, data.root, 256)
    mounts.start(command, mountpoint, run / "cache-mount.log")
    try:
        base = mountpoint / "backends" / data.names[0]
        cids = data.cids[0].slice(0, 50).to_pylist()
        status = base / "by-cid" / cids[0] / "status"
        _cat(status)
        say(f"cache: warm cat and stat ({reps} each)")
        for _ in range(reps):
            res.add("cache_cat_warm", _cat(status))
        for cid in cids:
            for name in OTHER_FILES:
                os.stat(base / "by-cid" / cid / name)  # the kernel learns the name and its attributes
        for _ in range(reps // (len(cids) * len(OTHER_FILES)) + 1):
            for cid in cids:
                for name in OTHER_FILES:
                    res.add("cache_stat_warm", bench.t_stat(base / "by-cid" / cid / name))
        failed = base / "by-status" / "failed"
        expected = data.status_count(0, "failed")
        elapsed, count = bench.t_ls(failed)
        res.check(count == expected, f"ls by-status/failed: {count} entries, expected {expected}")
        for _ in range(LS_REPS):
            res.add("cache_ls_failed_warm", bench.t_ls(failed)[0])
        res.notes["cache_failed_entries"] = expected
    finally:
        mounts.stop(mountpoint)


def _tmpfs_listing(data: Any, res: Any) -> None:
    """D for ``ls by-status/failed``: a tmpfs directory of as many symlinks."""
    tree = Path(f"/dev/shm/pinfs-bench-ls-{os.getpid()}")
    try:
        tree.mkdir()
        names = data.cids[0].filter(bench_failed_mask(data)).to_pylist()
        for name in names:
            os.symlink(f"../../by-cid/{name}", tree / name)
        os.listdir(tree)
        for _ in range(LS_REPS):
            started = time.perf_counter()
            os.listdir(tree)
            res.add("D_ls_failed", time.perf_counter() - started)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def bench_failed_mask(data: Any) -> Any:
    import pyarrow.compute as pc

    return pc.equal(data.statuses[0], "failed")


def _walk_data(data: Any, quick: bool) -> tuple[Path, str, int]:
    """(root, backend, pins) of the walk backend: a data set of its own, cached next to the main one."""
    pins = QUICK_WALK_PINS if quick else WALK_PINS
    cache = bench_gen.ensure_data(data.cache.parent, pins, 1)
    return cache / "root", bench_gen.backend_names(1)[0][0], pins


def _walks(bench: ModuleType, root: Path, name: str, pins: int, reps: int, mounts: Any, run: Path, res: Any) -> None:
    """A cold walk in a fresh mount, then warm walks and warm finds in the same mount. (A cold find
    would cost another pass as long as the cold walk, and shows nothing the cold walk does not.)"""
    mountpoint = run / "cache-walk"
    process, _ready = mounts.start(bench.pinfs_mount_command(mountpoint, root, 256), mountpoint, run / "walk.log")
    try:
        by_cid = mountpoint / "backends" / name / "by-cid"
        say(f"cache: walk of {pins} CIDs, cold")
        elapsed, count = walk(by_cid)
        res.check(count == pins, f"walk: {count} status files, expected {pins}")
        res.add("walk_cold_per_cid", elapsed / max(count, 1))
        say(f"cache: cold walk {elapsed:.1f} s; now warm ({reps}x walk and find)")
        for _ in range(reps):
            elapsed, count = walk(by_cid)
            res.add("walk_warm_per_cid", elapsed / max(count, 1))
            elapsed, out = _shell(f"find {by_cid} -name 'baf*' | wc -l")
            res.check(out == str(pins), f"find: {out} names, expected {pins}")
            res.add("find_warm", elapsed)
        res.notes["rss_mb_after_walks"] = round(bench.rss_mb(process.pid), 1)
    finally:
        mounts.stop(mountpoint)


def _tmpfs_walk(root: Path, name: str, pins: int, res: Any) -> None:
    """D for the walks: ``TMPFS_WALK`` CID directories with their seven files on tmpfs, scaled."""
    import pyarrow.parquet as pq

    sample = min(pins, TMPFS_WALK)
    cids = pq.read_table(root / "backends" / name / "pin_mappings.parquet", columns=["cid"]).column("cid")
    tree = Path(f"/dev/shm/pinfs-bench-walk-{os.getpid()}")
    say(f"cache: tmpfs tree of {sample} CID directories")
    try:
        by_cid = tree / "by-cid"
        by_cid.mkdir(parents=True)
        for cid in cids.slice(0, sample).to_pylist():
            directory = by_cid / cid
            directory.mkdir()
            (directory / "status").write_bytes(b"stored\n")
            for other in OTHER_FILES:
                (directory / other).touch()  # empty: no page each (the walk reads only status)
        walk(by_cid)
        for _ in range(3):
            elapsed, count = walk(by_cid)
            res.add("D_walk_per_cid", elapsed / count)
            elapsed, _out = _shell(f"find {by_cid} -name 'baf*' | wc -l")
            res.add("D_find", elapsed * pins / sample)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def _lag(
    bench: ModuleType,
    root: Path,
    name: str,
    seconds: float,
    mounts: Any,
    run: Path,
    work: Path,
    res: Any,
    in_thread: bool = False,
) -> None:
    """Writes of ~100 pins/s by another process to a copy of the walk backend; the lag until a status
    file the kernel had cached shows each probe's change. ``in_thread``: the writer is a thread of this
    process instead, with no warm-up commit, statuses alternating whatever each probe has
    (``--lag-writer thread``: how the record cache's one-key bug, fixed in a571061, showed: the mount
    served another CID's record under ``by-cid/<cid>`` for longer than ``LAG_GIVE_UP``)."""
    copy = work / "lag-root"
    (copy / "backends").mkdir(parents=True)
    shutil.copyfile(root / "backends" / f"{name}.yaml", copy / "backends" / f"{name}.yaml")
    shutil.copytree(root / "backends" / name, copy / "backends" / name, symlinks=True)
    mountpoint = run / "cache-lag"
    mounts.start(bench.pinfs_mount_command(mountpoint, copy, 256), mountpoint, run / "lag.log")
    writer = None
    try:
        by_cid = mountpoint / "backends" / name / "by-cid"
        probes = _sample_cids(copy, name, 2 * int(seconds * PINS_PER_SECOND / 10) + 10)
        targets = []
        for cid in probes:  # read (so cached by the kernel from now on), and given a status it does not have
            now = (by_cid / cid / "status").read_text().strip()
            targets.append(f"{cid} {('failed', 'pending')[now == 'failed']}\n")
        (work / "probes").write_text("".join(targets))
        say(f"cache: invalidation lag under {PINS_PER_SECOND} pins/s for {seconds:.0f} s")
        if in_thread:
            lines: queue.Queue[str | None] = queue.Queue()
            # As the first version of this row did: statuses alternate whatever each probe has.
            pairs = [(line.split()[0], ("failed", "pending")[index % 2]) for index, line in enumerate(targets)]

            def emit(line: str) -> None:
                lines.put(line)

            def load() -> None:
                try:
                    write_load(copy, name, pairs, seconds, emit=emit, warm_up=False)
                finally:
                    lines.put(None)

            thread = threading.Thread(target=load)
            thread.start()
            commits: Iterable[str] = iter(lines.get, None)
        else:
            command = [sys.executable, __file__, "--write-load", str(copy), name, str(work / "probes"), str(seconds)]
            writer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
            assert writer.stdout is not None
            commits = writer.stdout
        lags = []
        for line in commits:
            if line.startswith("wrote "):
                res.notes["lag_writes"] = line.strip()[len("wrote ") :]
                continue
            cid, status, done = line.split()
            lag = _visible_after(by_cid / cid / "status", f"{status}\n", float(done), res)
            if lag is not None:
                lags.append(lag)
        if writer is not None:
            res.check(writer.wait(timeout=120) == 0, f"lag: the writer exited {writer.returncode}")
        for lag in lags:
            res.add("lag", lag)
        res.notes["lag_probes"] = len(lags)
        if lags:
            res.add("lag_p99", sorted(lags)[max(0, math.ceil(len(lags) * 0.99) - 1)])
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        mounts.stop(mountpoint)


def _visible_after(path: Path, expected: str, done: float, res: Any) -> float | None:
    """Seconds from ``done`` (``time.monotonic``) until ``path`` reads ``expected``; None (and a
    problem) when it does not within ``LAG_GIVE_UP``."""
    while (seen := path.read_text()) != expected:
        if time.monotonic() - done > LAG_GIVE_UP:
            shown = json.loads((path.parent / "pin.json").read_text()).get("cid")
            whose = "" if shown == path.parent.name else f" (its pin.json is the record of {shown})"
            res.check(
                False, f"lag: {path.parent.name} reads {seen!r}, not {expected!r}, after {LAG_GIVE_UP:.0f} s{whose}"
            )
            return None
        time.sleep(0.005)  # each read is three FUSE requests: a tighter loop would load the mount it measures
    return time.monotonic() - done


def _sample_cids(root: Path, name: str, count: int) -> list[str]:
    import pyarrow.parquet as pq

    cids = pq.read_table(root / "backends" / name / "pin_mappings.parquet", columns=["cid"]).column("cid")
    return random.Random(5).sample(cids.to_pylist(), count)


def write_load(
    root: Path,
    name: str,
    probes: list[tuple[str, str]],
    seconds: float,
    emit: Callable[[str], None] | None = None,
    warm_up: bool = True,
) -> None:
    """The writer of the lag rows (a process of its own, as another tool would be): ``PINS_PER_SECOND``
    new pins a second for ``seconds``, one commit at a time, each with as many pins as are due (at least
    ten) and one probe's change to its given status. Emits (prints) ``<probe> <status> <time.monotonic()
    at commit>`` per commit, then ``wrote <pins> pins in <n> commits, <s> s``."""
    emit = emit or (lambda line: print(line, flush=True))  # flushed: the reader times each line
    backend = get_backend(root, name)
    store = PinStore(backend)
    rng = random.Random(3)
    if warm_up:  # the first commit of a process takes seconds (imports)
        first = {cid: make_record(cid, backend.name, backend.type) for cid in bench_gen.random_cids(rng, 10)}
        store.write(lambda txn: txn.update(first))
    started = time.monotonic()
    pins = commits = 0
    for probe, status in probes:
        now = time.monotonic()
        if now - started > seconds:
            break
        due = started + pins / PINS_PER_SECOND
        if due > now:
            time.sleep(due - now)
        count = max(10, int((time.monotonic() - started) * PINS_PER_SECOND) - pins)
        records = {cid: make_record(cid, backend.name, backend.type) for cid in bench_gen.random_cids(rng, count - 1)}
        records[probe] = make_record(probe, backend.name, backend.type, status=status)
        store.write(lambda txn, records=records: txn.update(records))
        pins += count
        commits += 1
        emit(f"{probe} {status} {time.monotonic()!r}")
    emit(f"wrote {pins} pins in {commits} commits, {time.monotonic() - started:.1f} s")


# -- rows --


def row_specs(row_spec: Any) -> list[Any]:
    """This module's rows, as bench_main's ``RowSpec`` (passed in)."""

    def ratio_at_most(limit: float) -> Any:
        return lambda median, ratio: ratio is not None and ratio <= limit

    return [
        row_spec("cache_cat_warm", "cat status, warm, vs tmpfs", "D_cat_warm", "D tmpfs", "<= 3x D", ratio_at_most(3)),
        row_spec(
            "cache_stat_warm",
            "stat of a per-CID file, warm, vs tmpfs",
            "D_stat_warm",
            "D tmpfs",
            "<= 3x D",
            ratio_at_most(3),
        ),
        row_spec(
            "cache_ls_failed_warm",
            "ls by-status/failed, repeated, vs tmpfs",
            "D_ls_failed",
            "D tmpfs",
            "<= 3x D",
            ratio_at_most(3),
        ),
        row_spec(
            "find_warm", "find by-cid -name 'baf*' | wc -l, warm", "D_find", "D tmpfs", "<= 3x D", ratio_at_most(3)
        ),
        row_spec(
            "walk_cold_per_cid",
            "walk by-cid, read every status, cold (per CID)",
            "D_walk_per_cid",
            "D tmpfs",
            "<= 0.5 ms",
            lambda median, ratio: median <= 0.0005,
        ),
        row_spec(
            "walk_warm_per_cid",
            "walk by-cid, read every status, warm (per CID)",
            "D_walk_per_cid",
            "D tmpfs",
            "<= 3x D",
            ratio_at_most(3),
        ),
        row_spec(
            "lag",
            f"change -> visible in a cached file, {PINS_PER_SECOND} pins/s",
            None,
            "-",
            "-",
            lambda median, ratio: True,
        ),
        row_spec("lag_p99", "  same, p99", None, "-", "<= 2 s", lambda median, ratio: median <= 2.0),
    ]


# -- alone --


def main(argv: list[str]) -> int:
    if argv[:1] == ["--write-load"]:
        root, name, probes, seconds = argv[1:]
        lines = [line.split() for line in Path(probes).read_text().splitlines()]
        write_load(Path(root), name, [(cid, status) for cid, status in lines], float(seconds))
        return 0
    import bench_main

    parser = argparse.ArgumentParser(prog="scripts/bench_cache.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k pins, few repetitions")
    parser.add_argument("--pins", type=int, help="pins of the main data (default 1000000; 10000 with --quick)")
    parser.add_argument("--cache", type=Path, default=bench_main.PROJECT / ".bench-cache")
    parser.add_argument(
        "--rows", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)} (default: all)"
    )
    parser.add_argument(
        "--lag-writer",
        choices=("process", "thread"),
        default="process",
        help="who writes during the lag row: another process (default) or a thread of this one",
    )
    parser.add_argument("--walk-reps", type=int, help="warm walks and finds (default 2; 1 with --quick)")
    args = parser.parse_args(argv)
    sections = tuple(args.rows.split(","))
    if not set(sections) <= set(SECTIONS):
        parser.error(f"--rows: sections are {','.join(SECTIONS)}")
    pins = args.pins or (10_000 if args.quick else 1_000_000)
    plan = bench_main.QUICK if args.quick else bench_main.FULL
    data = bench_main.Data(bench_gen.ensure_data(args.cache, pins, 1), 1)
    res = bench_main.Results()
    run = Path(f"/tmp/pinfs-bench-cache-{os.getpid()}")
    work = args.cache / f"work-{os.getpid()}"
    mounts = bench_main.Mounts()
    try:
        run.mkdir(parents=True)
        work.mkdir(parents=True)
        if "warm" in sections:
            bench_main.session_tmpfs(data, plan, res)
        session_cache(
            bench_main, data, args.quick, mounts, run, work, res, sections, args.lag_writer == "thread", args.walk_reps
        )
    finally:
        mounts.stop_all()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
    rows = bench_main.build_rows(res, 1, 256)  # rows without samples (bench_main's own) are left out
    print(bench_main.format_table(rows))
    for key, value in res.notes.items():
        print(f"note: {key} = {value}")
    for problem in res.problems:
        print(f"PROBLEM: {problem}")
    return 1 if res.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
