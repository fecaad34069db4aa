"""Crashes and concurrent writers, hardened (docs/reliability.md "Atomicity", "Durability", "Locking").

``test_crash_concurrency.py`` kills one kind of writer a few times; here every kind of writer (pin
batches, migration, CAR regeneration, restore-from-backup, sync to a filesystem backend) is killed with
SIGKILL at random instants, 200+ times (and 100+ more with data files of 8 rows, so every write
rewrites and commits several files of the Delta table, ``pinfs.data.store``), and after every kill:

* every table loads and reads, every exported parquet parses (pyarrow), every CAR parses
  (``read_pin_mappings_car``), every state file and sync backup parses, and ``migrate --verify-only``
  reports nothing but (at most) exports one commit behind the table (or, for a first write, none yet)
  -- precisely, naming the file;
* every pin whose write was acknowledged is in the table (and every acknowledged removal is gone);
* every ``pins.json`` and backup is byte-identical to what it was; backups are only added, and each
  is a complete copy;
* after the next successful write, no ``*.pinfs-tmp.*`` is left in the backend's directory.

To kill 200 writers in seconds, a *zygote* process imports pinfs once and forks the writers of each
round (it never uses deltalake itself: delta-rs' tokio runtime does not survive a fork); it sleeps a
random 5-300 ms for each (600 for sync, whose round is three commits; twice as long for a writer
that got nothing done in three rounds, as on a loaded machine; on S3, as ``_kill_loop`` adapts it to
the machine's speed), kills the child with SIGKILL, reaps it and reports.
A child acknowledges each completed operation by appending one line (one ``write``) to an ack file.

The same loop runs on a root on S3 (SeaweedFS, ``tests/seaweed.py``; ``test_hardening_crash_s3.py``,
issue #13): there five writers, one of each kind, are killed in each round, each a host of its own
(its own cache directory), and the checks read everything back from the bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from helpers import cid_for, make_backend
from seaweed import Seaweed

import pinfs.data.rootfs
import pinfs.data.store
from pinfs.data.backends import get_backend
from pinfs.data.car import read_pin_mappings_car
from pinfs.data.carv1 import encode_car, make_raw_block, verify_content_car
from pinfs.data.fsutil import TEMP_MARKER
from pinfs.data.rootfs import S3Path, forget_metadata, local_copy, parse_root
from pinfs.data.s3client import s3_client
from pinfs.data.schema import make_record
from pinfs.data.snapshots import DEFAULT_CACHE, StoreCache
from pinfs.data.store import PinStore
from pinfs.ops.migrate import MigrateOptions, migrate
from pinfs.ops.pins import PinRequest, add_pins
from pinfs.ops.sync import SyncOptions, sync

TESTS_DIR = str(Path(__file__).parent)
KILLS = 210
OPS = ("pins", "migrate", "regen", "restore", "sync")

ZYGOTE = r"""
import os, random, signal, sys, time, traceback
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from helpers import cid_for
from pinfs.data.carv1 import encode_car, make_raw_block
from pinfs.data.fsutil import atomic_write_bytes
from pinfs.ops.carops import RegenerateOptions, regenerate_car
from pinfs.ops.migrate import MigrateOptions, migrate
from pinfs.ops.pins import PinRequest, add_pins, remove_pins
from pinfs.ops.sync import SyncOptions, sync
from pinfs.data.schema import STATUSES

from pinfs.data.rootfs import parse_root

root, acks = parse_root(sys.argv[1]), Path(sys.argv[2])
# On an S3 root each writer is a host of its own: its own cache directory (read cache and local locks),
# so that nothing but the bucket keeps concurrent writers from losing each other's pins.
hosts = Path(sys.argv[4]) if len(sys.argv) > 4 else None


def op_pins(rng, tag, ack):
    mine, i = [], 0
    while True:
        i += 1
        if mine and i % 3 == 0:
            gone = rng.sample(mine, min(len(mine), rng.randint(1, 3)))
            ack("rm-intent", gone)  # before the write: an unacknowledged removal may or may not be done
            remove_pins(root, "pins", gone)
            mine = [c for c in mine if c not in gone]
            ack("rm", gone)
        else:
            cids = [cid_for(f"{tag}-{i}-{k}") for k in range(rng.randint(1, 10))]
            add_pins(root, "pins", [PinRequest(c, rng.choice(STATUSES), {"tag": tag}) for c in cids])
            mine += cids
            ack("add", cids)


def lost_a_race(report):
    # Two writers of one backend at once (the S3 loop): the one whose whole-table write came second is
    # told so and writes nothing; it is not acknowledged.
    assert all(e["ok"] or "another writer" in e.get("error", "") for e in report["backends"]), report
    return not report["ok"]


def op_migrate(rng, tag, ack):
    while True:
        name = rng.choice(["mig-a", "mig-b"])
        report = migrate(root, MigrateOptions(backends=[name], force_car_regeneration=rng.random() < 0.5))
        if not lost_a_race(report):
            ack("migrated", [name])


def op_regen(rng, tag, ack):
    while True:
        assert regenerate_car(root, RegenerateOptions(["pins"]))["ok"]
        ack("regen", ["pins"])


def op_restore(rng, tag, ack):
    while True:
        report = migrate(root, MigrateOptions(backends=["rest"], restore_from_backup=True))
        if not lost_a_race(report):
            ack("restored", ["rest"])


def op_sync(rng, tag, ack):
    i = 0
    while True:
        i += 1
        cids = []
        for k in range(rng.randint(1, 3)):
            cid, block = make_raw_block(f"{tag}-{i}-{k}".encode())
            atomic_write_bytes(root / "cars" / f"{cid}.car", encode_car([cid], [(cid, block)]))
            cids.append(cid)
        add_pins(root, "fs", [PinRequest(c, "pending") for c in cids])
        report = sync(root, SyncOptions(backends=["fs"]))
        assert report["ok"], report
        ack("synced", cids)


def warm_up():
    # Import and exercise what a writer uses, so a forked writer does not spend its first 150 ms on lazy
    # imports (and the kills land in real writes) -- all but deltalake's runtime, which must be made in
    # the child: delta-rs' tokio runtime panics in a forked process ("Forked process detected").
    import shutil, tempfile
    import deltalake, deltalake.transaction, deltalake.exceptions  # imported, not run
    import pyarrow.parquet as pq
    from pinfs.data import exports, oldforms, store, legacy  # noqa: F401
    from pinfs.data.tables import records_to_table, write_table
    from pinfs.data.schema import make_record
    warm = Path(tempfile.mkdtemp())
    table = records_to_table([make_record(cid_for(n), "w", "filesystem") for n in range(50)])
    write_table(warm / "w.parquet", table)
    pq.read_table(warm / "w.parquet")
    shutil.rmtree(warm)
    if hosts is not None:  # boto3 and the store's conditional-put check (a child makes its own client)
        from pinfs.data.rootfs import require_writable

        require_writable(root)


OPS = {"pins": op_pins, "migrate": op_migrate, "regen": op_regen, "restore": op_restore, "sync": op_sync}
warm_up()
print("ready", flush=True)


def writer(op, tag, ready):
    code = 4
    try:
        if hosts is not None:
            # A new host: its own cache, and its client and delta-rs runtime made (a table loaded) before
            # the clock starts, so that the kills land in writes rather than in start-up (~1 s on S3).
            os.environ["PINFS_CACHE_DIR"] = str(hosts / tag)
            from pinfs.data.backends import get_backend
            from pinfs.data.store import PinStore

            PinStore(get_backend(root, "pins")).table_state()
        os.write(ready, b"r")
        fd = os.open(acks / f"{tag}.acks", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

        def ack(kind, items, fd=fd):
            os.write(fd, (kind + " " + " ".join(items) + "\n").encode())

        OPS[op](random.Random(tag), tag, ack)
    except BaseException:
        traceback.print_exc()
        code = 3
    finally:
        os._exit(code)


for line in sys.stdin:  # "op tag delay_ms" for each writer of the round, separated by ";"
    children = []
    for spec in line.split(";"):
        op, tag, delay_ms = spec.split()
        ready, told = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready)
            writer(op, tag, told)
        os.close(told)
        children.append((int(delay_ms), pid, ready))
    for _delay, _pid, ready in children:  # every writer is ready (or dead: then it reads b"")
        os.read(ready, 1)
        os.close(ready)
    started = time.monotonic()
    for delay_ms, pid, _ready in sorted(children):
        time.sleep(max(0.0, started + delay_ms / 1000 - time.monotonic()))
        os.kill(pid, signal.SIGKILL)
    print(" ".join(str(os.waitpid(pid, 0)[1]) for _delay, pid, _ready in children), flush=True)
"""

MIG_PINS = {
    "mig-a": [cid_for(f"mig-a-{n}") for n in range(40)] + ["not-a-cid", 17, None],
    "mig-b": {"pins": [{"cid": cid_for(f"mig-b-{n}"), "status": "pinned"} for n in range(30)] + [{"x": 1}]},
}
REST_PINS = [cid_for(f"rest-{n}") for n in range(25)]


Root = Path | S3Path  # a local data root, or one on S3 (SeaweedFS: tests/seaweed.py)


def _sha(path: Root) -> str:
    """What a file holds, in short: its sha256, or on S3 the object's ETag (the MD5 of what a single
    PUT stored; a HEAD instead of a download)."""
    if isinstance(path, S3Path):
        return path.stat().etag
    return hashlib.sha256(path.read_bytes()).hexdigest()


class World:
    """The data root under attack and everything the checks must remember between kills."""

    def __init__(self, root: Root, storage: Path) -> None:
        self.root = root
        self.storage = storage
        self.present: set[str] = set()  # acknowledged adds to "pins"
        self.removing: set[str] = set()  # removals started (acknowledged or not)
        self.removed: set[str] = set()  # acknowledged removals
        self.synced: set[str] = set()
        self.migrated: set[str] = set()  # backends whose migration was acknowledged since their reset
        self.restored = False
        self.legacy: dict[str, str] = {}  # path -> sha256 of every pins.json and pins.json backup
        self.checked_parquet_backups: set[str] = set()
        self.kills_by_op = dict.fromkeys(OPS, 0)
        self.acks_by_op = dict.fromkeys(OPS, 0)

    def backend_dirs(self) -> list[Root]:
        return sorted(p for p in (self.root / "backends").iterdir() if p.is_dir())

    def remember_legacy(self) -> None:
        for directory in self.backend_dirs():
            for path in directory.glob("pins.json*"):
                self.legacy[str(path)] = _sha(path)


def _setup(root: Root, storage: Path) -> World:
    (root / "backends").mkdir(parents=True)
    (root / "cars").mkdir()
    # On S3 a folder exists only with something in it: there, "pins" gets a config naming it (its type
    # still comes from its name, as without one).
    make_backend(root, "pins", config={"name": "pins"} if isinstance(root, S3Path) else None)
    # 40 pins: past 4 x PINFS_SHARD_ROWS in the sharded run, so every pin write there is a shard write
    add_pins(root, "pins", [PinRequest(cid_for(f"seed-{n}"), "stored") for n in range(40)])
    for name, document in MIG_PINS.items():
        make_backend(root, name, pins_json=document)
    make_backend(root, "rest", pins_json=REST_PINS)
    assert migrate(root, MigrateOptions(backends=["rest"]))["ok"]  # makes its pins.json.backup.<stamp>
    make_backend(root, "fs", config={"type": "filesystem", "storage_path": str(storage)})
    seed, block = make_raw_block(b"fs-seed")
    (root / "cars" / f"{seed}.car").write_bytes(encode_car([seed], [(seed, block)]))
    add_pins(root, "fs", [PinRequest(seed, "failed")])  # content is staged: the first sync stores it
    world = World(root, storage)
    world.remember_legacy()
    return world


def _read_acks(world: World, op: str, path: Path) -> int:
    """Take in what a killed writer acknowledged; returns how many operations it completed."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    for line in lines:  # a line is complete: it was one write()
        kind, *items = line.split()
        world.acks_by_op[op] += 1
        if kind == "add":
            world.present.update(items)
        elif kind == "rm-intent":
            world.removing.update(items)
        elif kind == "rm":
            world.removed.update(items)
        elif kind == "migrated":
            world.migrated.update(items)
        elif kind == "restored":
            world.restored = True
        elif kind == "synced":
            world.synced.update(items)
    return len(lines)


def _parquet_cids(path: Root) -> dict[str, str]:
    table = pq.read_table(local_copy(path), columns=["cid", "status"])  # on S3: a fresh download
    return dict(zip(table.column("cid").to_pylist(), table.column("status").to_pylist(), strict=True))


def _table_cids(directory: Root) -> dict[str, str] | None:
    """A backend's pins as a new process reads them: the table (or, before its first commit, the
    parquet of an older form), read with its own cache."""
    store = PinStore(get_backend(directory.parent.parent, directory.name), StoreCache())
    if not store.has_parquet():
        return None
    table = store.snapshot().table()
    return dict(zip(table.column("cid").to_pylist(), table.column("status").to_pylist(), strict=True))


def _check_files(world: World) -> dict[str, dict[str, str]]:
    """Every file parses; returns each backend's {cid: status} from its table."""
    tables: dict[str, dict[str, str]] = {}
    for directory in world.backend_dirs():
        parquet, car = directory / "pin_mappings.parquet", directory / "pin_mappings.car"
        found = _table_cids(directory)
        if found is not None:
            tables[directory.name] = found
        if parquet.exists():
            _parquet_cids(parquet)
        if car.exists():
            read_pin_mappings_car(car)
        state = directory / ".pinfs-state.json"
        if state.exists():
            json.loads(state.read_text())
        for backup in directory.glob("pin_mappings.parquet.backup.*"):
            if str(backup) not in world.checked_parquet_backups:
                pq.read_table(local_copy(backup))
                world.checked_parquet_backups.add(str(backup))
    return tables


def _check_verify_only(world: World) -> None:
    """Nothing is torn: verify-only finds at most a CAR one write behind, and says so precisely."""
    report = migrate(world.root, MigrateOptions(verify_only=True))
    for entry in report["backends"]:
        for problem in entry["problems"]:
            # Exports one commit behind the table, or none yet when a backend's first write was killed
            # between its commit and its exports (sync and the next write heal both).
            allowed = (
                ("do not match the table's" in problem and "pin_mappings.car: holds" in problem)
                or ("pin_mappings.parquet: does not hold what the table holds" in problem)
                or problem.endswith("pin_mappings.parquet: missing (backend not migrated)")
                or "pin_mappings.parquet: missing (run" in problem
                or problem.startswith("not migrated yet: served from")
                or problem.endswith("pin_mappings.car: missing")
            )
            assert allowed, f"{entry['backend']}: {problem}"


def _check_acknowledged(world: World, tables: dict[str, dict[str, str]]) -> None:
    pins = tables["pins"]
    missing = (world.present - world.removing) - pins.keys()
    assert not missing, f"{len(missing)} acknowledged pins lost, e.g. {sorted(missing)[:3]}"
    assert not world.removed & pins.keys(), "an acknowledged removal came back"
    for name in world.migrated:
        valid = {c for c in json.dumps(MIG_PINS[name]).split('"') if c.startswith("bafk")}
        assert valid <= tables[name].keys(), name
        assert (world.root / "backends" / name / "pins.rejected.json").exists()
    if world.restored:
        assert set(tables["rest"]) == set(REST_PINS)
    fs = tables["fs"]
    for cid in world.synced:
        assert fs[cid] == "stored", cid
        data = (world.storage / "fs" / "cars" / f"{cid}.car").read_bytes()
        assert verify_content_car(data, cid, cid) == 1


def _check_legacy(world: World) -> None:
    """pins.json and its backups never change; new backups are complete copies of pins.json."""
    seen: set[str] = set()
    for directory in world.backend_dirs():
        current = directory / "pins.json"
        for path in directory.glob("pins.json*"):
            seen.add(str(path))
            digest = _sha(path)
            before = world.legacy.get(str(path))
            if before is None:
                assert path.name.startswith("pins.json.backup.") and digest == _sha(current), path
                world.legacy[str(path)] = digest
            else:
                assert digest == before, f"{path} changed"
    deleted = world.legacy.keys() - seen
    assert not deleted, f"{sorted(deleted)} deleted"


def _check_storage(world: World) -> None:
    """What sync put on the filesystem backend parses too (its temp files are only counted)."""
    if not world.storage.exists():
        return
    for path in world.storage.rglob("*"):
        if not path.is_file() or TEMP_MARKER in path.name:
            continue
        if path.name == "manifest.json":
            json.loads(path.read_text())
        elif path.name == "pin_mappings.parquet":
            pq.read_table(path)
        elif path.name == "pin_mappings.car":
            read_pin_mappings_car(path)
        elif path.suffix == ".car":
            verify_content_car(path.read_bytes(), path.stem, str(path))


def _next_write(world: World, op: str) -> list[str]:
    """One successful write of the kind that was killed; returns the backend directories it wrote."""
    root = world.root
    if op in ("pins", "regen"):
        cid = cid_for(f"next-{len(world.present)}-{time.monotonic_ns()}")
        add_pins(root, "pins", [PinRequest(cid, "stored")])
        world.present.add(cid)
        return ["pins"]
    if op == "migrate":
        assert migrate(root, MigrateOptions(backends=["mig-a", "mig-b"]))["ok"]
        world.migrated.update({"mig-a", "mig-b"})
        return ["mig-a", "mig-b"]
    if op == "restore":
        assert migrate(root, MigrateOptions(backends=["rest"], restore_from_backup=True))["ok"]
        world.restored = True
        return ["rest"]
    report = sync(root, SyncOptions(backends=["fs"]))
    assert report["ok"], report
    return ["fs"]


def _reset_migration(world: World, rng: random.Random) -> None:
    """Sometimes start a migration from scratch, so kills also land in backup/rejected/parquet writes."""
    for name in ("mig-a", "mig-b"):
        if rng.random() < 0.5:
            continue
        directory = world.root / "backends" / name
        for path in directory.iterdir():
            if path.is_dir() and not path.is_symlink():
                _remove_tree(path)  # the table
            elif path.name != "pins.json" and not path.name.startswith(".pinfs"):
                path.unlink()
                world.legacy.pop(str(path), None)
        world.migrated.discard(name)


def _remove_tree(path: Root) -> None:
    """Delete a directory, or on S3 every object under a prefix (as an operator would with the CLI)."""
    if not isinstance(path, S3Path):
        shutil.rmtree(path)
        return
    client = s3_client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=path.bucket, Prefix=f"{path.key}/"):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=path.bucket, Key=item["Key"])
    forget_metadata(path, below=True)
    # This process's cached table would read the new table's log on top of the old one's: on S3 nothing
    # tells a table made again from the old one (pinfs.data.delta.DeltaPins.log_stamp), and only a table
    # deleted by hand is ever made again.
    pinfs.data.store._TABLES.clear()


def _kill_loop(
    world: World, tmp_path: Path, rounds: int, writers: int, longest_ms: dict[str, int], adapt: bool = False
) -> None:
    """``rounds`` times: start ``writers`` writers at once (the kinds in turn), SIGKILL each at its own
    random instant up to ``longest[kind]``, then check everything (module docstring) and make one
    successful write of one kind that was killed (each kind in turn).

    With ``adapt``, ``longest`` starts at ``longest_ms`` and follows the machine's speed (on S3, where a
    write takes ten times longer and depends on the server too): 10 % longer after a writer of
    that kind that completed nothing, 10 % shorter after one that completed two operations or more,
    which settles where both are equally likely (about three operations' time), so the kills land at
    every point of a writer's first writes on a fast machine and on a busy one alike."""
    longest = dict(longest_ms)
    acks = tmp_path / "acks"
    acks.mkdir()
    rng = random.Random(20261125)
    stderr_path = tmp_path / "zygote.stderr"
    command = [sys.executable, "-c", ZYGOTE, str(world.root), str(acks), TESTS_DIR]
    if isinstance(world.root, S3Path):
        command.append(str(tmp_path / "hosts"))
    with open(stderr_path, "wb") as stderr:
        zygote = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    number = 0
    try:
        assert zygote.stdout.readline().strip() == "ready", stderr_path.read_text()
        for _round in range(rounds):
            ops = [OPS[(number + index) % len(OPS)] for index in range(writers)]
            tags = [f"k{number + index}" for index in range(writers)]
            number += writers
            if "migrate" in ops:
                _reset_migration(world, rng)
            line = ";".join(f"{op} {tag} {rng.randint(5, longest[op])}" for op, tag in zip(ops, tags, strict=True))
            zygote.stdin.write(line + "\n")
            zygote.stdin.flush()
            statuses = zygote.stdout.readline().split()
            assert statuses == ["9"] * writers, f"{ops}: not all killed ({statuses}):\n{stderr_path.read_text()}"
            DEFAULT_CACHE.clear()
            forget_metadata()  # what this process knew of the bucket is older than the writers' commits
            for op, tag in zip(ops, tags, strict=True):
                world.kills_by_op[op] += 1
                completed = _read_acks(world, op, acks / f"{tag}.acks")
                if not adapt:  # fixed instants; but a writer that got nothing done in three rounds gets
                    if world.acks_by_op[op] == 0 and world.kills_by_op[op] % 3 == 0:  # twice as long (a loaded machine)
                        longest[op] = min(longest[op] * 2, 5000)
                    continue
                if completed == 0:
                    longest[op] = min(int(longest[op] * 1.1) + 1, 30_000)
                elif completed >= 2:
                    longest[op] = max(int(longest[op] * 0.9), 20)
            tables = _check_files(world)
            _check_verify_only(world)
            _check_acknowledged(world, tables)
            _check_legacy(world)
            _check_storage(world)
            # One successful write of one of the kinds killed (of each, with one writer a round)
            written = _next_write(world, ops[number // writers % len(ops)])
            for name in written:
                directory = world.root / "backends" / name
                leftovers = [p.name for p in directory.iterdir() if TEMP_MARKER in p.name]
                assert not leftovers, f"after a successful write of {name}: {leftovers}"
            # ... and the written backends' table and exports agree again
            verified = migrate(world.root, MigrateOptions(backends=written, verify_only=True))
            assert verified["ok"], verified
            _check_legacy(world)
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    assert sum(world.kills_by_op.values()) == rounds * writers
    assert all(world.acks_by_op[op] > 0 for op in OPS), world.acks_by_op  # every writer got some work done
    final = _check_files(world)
    _check_acknowledged(world, final)


# A writer's round is longest for sync (three commits); a forked writer makes its delta-rs runtime on
# its first write, ~150 ms.
LOCAL_LONGEST_MS = {"pins": 300, "migrate": 300, "regen": 300, "restore": 300, "sync": 600}


@pytest.mark.parametrize(
    ("file_rows", "kills"),
    [(None, KILLS), ("8", KILLS // 2)],
    ids=["big-files", "small-files"],  # "small-files": every write rewrites and commits several data files
)
@pytest.mark.slow
def test_two_hundred_sigkills_across_every_kind_of_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_rows: str | None, kills: int
) -> None:
    if file_rows is not None:
        monkeypatch.setenv("PINFS_FILE_ROWS", file_rows)  # the zygote and its writers inherit it
    world = _setup(tmp_path / "root", tmp_path / "storage")
    _kill_loop(world, tmp_path, kills, 1, LOCAL_LONGEST_MS)
    if file_rows is not None:  # the kills did land in writes of many data files
        assert len(DeltaTable(str(world.root / "backends" / "pins" / "pin_mappings.delta")).file_uris()) > 4


# -- concurrency --

OPS_WORKER = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from helpers import cid_for
from pinfs.ops.pins import PinRequest, add_pins, remove_pins
from pinfs.data.rootfs import parse_root
root, tag = parse_root(sys.argv[1]), sys.argv[2]
for i in range(int(sys.argv[4])):
    cids = [cid_for(f"{tag}-{i}-{k}") for k in range(5)]
    add_pins(root, "shared", [PinRequest(c, "stored", {"by": tag}) for c in cids])
    print("add", *cids, flush=True)
    remove_pins(root, "shared", cids[:2])
    print("rm", *cids[:2], flush=True)
"""

CLI_WORKER = r"""
import subprocess, sys
sys.path.insert(0, sys.argv[3])
from helpers import cid_for
root, tag = sys.argv[1], sys.argv[2]
pinfs = [sys.executable, "-m", "pinfs"]
for i in range(int(sys.argv[4])):
    cids = [cid_for(f"{tag}-{i}-{k}") for k in range(4)]
    subprocess.run(pinfs + ["pin", "add", *cids, "--backend", "shared", "--root", root], check=True)
    print("add", *cids, flush=True)
    subprocess.run(pinfs + ["pin", "rm", cids[0], "--backend", "shared", "--root", root], check=True)
    print("rm", cids[0], flush=True)
"""

READER = r"""
import json, os, sys, time
from pathlib import Path
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pinfs.data.car import decode_pin_mappings_car, read_pin_mappings_car
directory, stop = sys.argv[1], Path(sys.argv[2])
on_s3 = directory.startswith("s3://")
if on_s3:  # a reader of the bucket, as boto3 (or any S3 client) reads: one GET is one whole object
    import boto3
    client = boto3.client("s3")
    bucket, _, prefix = directory[len("s3://"):].partition("/")
    fetch = lambda name: client.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read()
else:
    directory = Path(directory)
reads, errors, path_races = 0, [], 0
while not stop.exists():
    try:
        if on_s3:
            try:
                table = pq.read_table(pa.BufferReader(fetch("pin_mappings.parquet")))
                car = fetch("pin_mappings.car")
            except client.exceptions.NoSuchKey:  # before the first export
                continue
            decode_pin_mappings_car(car)
            cids = table.column("cid")
            assert len(cids) == len(pc.unique(cids)), "duplicate CIDs"
            assert cids.to_pylist() == sorted(cids.to_pylist()), "unsorted"
            reads += 1
            time.sleep(0.02)  # leave the (two) cores to the writers and the server
            continue
        # One open per read: pq.read_table(path) opens the path twice (footer, then pages), and a rename
        # between the two mixes two versions -- a reader-side race, not a torn file (docs/reliability.md).
        parquet = directory / "pin_mappings.parquet"
        with open(parquet, "rb") as handle:
            table = pq.read_table(handle)
        if reads % 2:  # and the path-based way, retried as a user of pandas.read_parquet would
            for attempt in range(10):  # each retry can meet another rename; ten in a row would be news
                try:
                    pq.read_table(directory / "pin_mappings.parquet")
                    break
                except OSError:
                    path_races += 1
                    if attempt == 9:
                        raise
        cids = table.column("cid")
        assert len(cids) == len(pc.unique(cids)), "duplicate CIDs"
        assert cids.to_pylist() == sorted(cids.to_pylist()), "unsorted"
        read_pin_mappings_car(directory / "pin_mappings.car")
        reads += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"reads": reads, "errors": errors[:5], "error_count": len(errors), "path_races": path_races}))
"""


@pytest.mark.parametrize(
    ("where", "file_rows"),
    [("local", None), ("local", "8"), ("s3", None)],
    ids=["big-files", "small-files", "s3"],
)
@pytest.mark.slow
def test_four_writers_and_a_reader_lose_nothing_and_see_nothing_torn(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, file_rows: str | None
) -> None:
    """Two CLI writers (``pinfs pin add/rm``) and two ops writers in subprocesses share a backend while
    another process reads its exported parquet and CAR in a loop. (Writers through the mount's control
    files: tests/test_mount_concurrency.py.) Small files: the table grows to dozens of data files while
    they write, and their export refreshes race each other. On S3 each writer is a host of its own (its
    own cache directory), the reader GETs the exports from the bucket, and they write half as many
    rounds (every commit is several requests)."""
    if file_rows is not None:
        monkeypatch.setenv("PINFS_FILE_ROWS", file_rows)
    root: Root = request.getfixturevalue("root")
    if where == "s3":
        seaweed: Seaweed = request.getfixturevalue("seaweed")
        for name, value in seaweed.env(f"writers-{uuid.uuid4().hex}").items():
            if name.startswith("AWS_") or name == "PINFS_ROOT":
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("PINFS_CACHE_DIR", str(tmp_path / "checker-cache"))
        root = parse_root(os.environ["PINFS_ROOT"])
    ops_rounds, cli_rounds = (12, 3) if where == "s3" else (25, 5)
    make_backend(root, "shared", config={"name": "shared"} if where == "s3" else None)
    add_pins(root, "shared", [PinRequest(cid_for("before"), "stored")])
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(root / "backends/shared"), str(stop)], stdout=subprocess.PIPE, text=True
    )
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(root), tag, TESTS_DIR, str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PINFS_CACHE_DIR": str(tmp_path / f"host-{tag}")},
        )
        for script, tag, rounds in (
            (OPS_WORKER, "ops1", ops_rounds),
            (OPS_WORKER, "ops2", ops_rounds),
            (CLI_WORKER, "cli1", cli_rounds),
            (CLI_WORKER, "cli2", cli_rounds),
        )
    ]
    expected = {cid_for("before")}
    removed: set[str] = set()
    for writer in writers:
        out, err = writer.communicate(timeout=600)  # a hang guard: ~20 s on a local root, ~60 s on S3
        assert writer.returncode == 0, err
        for line in out.splitlines():
            kind, *cids = line.split()
            (expected.update if kind == "add" else removed.update)(cids)
    stop.touch()
    seen = json.loads(reader.communicate(timeout=30)[0])
    assert seen["error_count"] == 0, seen
    assert seen["reads"] > 10, seen
    forget_metadata()  # this process last looked before the writers' commits
    final = set(pq.read_table(local_copy(root / "backends/shared/pin_mappings.parquet")).column("cid").to_pylist())
    assert final == expected - removed
    assert len(final) == 1 + 2 * ops_rounds * 3 + 2 * cli_rounds * 3
    table = PinStore(get_backend(root, "shared"), StoreCache()).snapshot().table()
    assert set(table.column("cid").to_pylist()) == final
    assert migrate(root, MigrateOptions(verify_only=True))["ok"]  # and the CAR matches


def test_sync_with_nothing_to_do_rebuilds_a_car_left_behind_by_a_killed_writer(root: Path, tmp_path: Path) -> None:
    """A writer killed between its commit and its exports leaves them one commit behind; a sync that
    finds nothing to move must not leave them so (nor push the old CAR to the storage)."""
    storage = tmp_path / "storage"
    make_backend(root, "fs", config={"type": "filesystem", "storage_path": str(storage)})
    add_pins(root, "fs", [PinRequest(cid_for(1), "stored")])
    car = root / "backends/fs/pin_mappings.car"
    with PinStore(get_backend(root, "fs")).transaction() as txn:  # as if killed after the commit
        txn.update({cid_for(2): make_record(cid_for(2), "fs", "filesystem", status="stored")})
    assert not migrate(root, MigrateOptions(verify_only=True))["ok"]
    report = sync(root, SyncOptions(backends=["fs"]))
    assert report["ok"] and report["backends"][0]["state"] == "skipped", report
    assert migrate(root, MigrateOptions(verify_only=True))["ok"]
    assert (storage / "pin_mappings.car").read_bytes() == car.read_bytes()
