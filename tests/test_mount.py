"""End to end: a real FUSE mount in a subprocess, driven with ls, cat, find, stat, echo and os calls.

Read-only tests share one mount of a prepared data root (module scope); tests that change data share a
second one and each use their own backend; tests about the mount's life (signals, umount) have their own.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from helpers import cid_for, file_digests, make_backend, run_pinfs, store_records
from mounting import REJECTIONS, Mount, force_unmount, mounted, needs_fuse, sh, start_mount, stop_with, write_errno

from pinfs.data import schema
from pinfs.data.backends import get_backend
from pinfs.data.car import read_pin_mappings_car, to_legacy_json, write_pin_mappings_car
from pinfs.fs.mount import is_mounted

pytestmark = [pytest.mark.mount, needs_fuse]

BIG = 5000  # CIDs in s3-main: more than one readdir buffer holds
RECORD_FILES = ["backend_name", "car_file_path", "cid", "created_at", "metadata.json", "pin.json", "status"]


def add_pins(root: Path, name: str, cids: list[str], **fields: object) -> list[dict[str, str]]:
    make_backend(root, name)
    backend = get_backend(root, name)
    statuses = schema.STATUSES
    records = [
        schema.make_record(cid, name, backend.type, status=statuses[i % 3], metadata={"n": str(i)}, **fields)  # type: ignore[arg-type]
        for i, cid in enumerate(cids)
    ]
    store_records(backend, records)
    return records


def build_root(root: Path) -> None:
    (root / "backends").mkdir(parents=True)
    records = add_pins(root, "s3-main", [cid_for(i) for i in range(BIG)])
    backend = get_backend(root, "s3-main")
    write_pin_mappings_car(backend.car_path, records[:300], "s3-main", schema.now_iso())
    add_pins(root, "local-b", [cid_for(i) for i in range(BIG - 10, BIG + 10)])
    make_backend(root, "old", pins_json={"pins": {cid_for("old-1"): "pinned", cid_for("old-2"): "queued"}})
    (make_backend(root, "bad") / "pin_mappings.parquet").write_bytes(b"this is not a parquet file")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ro") / "ipfs_kit"
    build_root(root)
    return root


@pytest.fixture(scope="module")
def ro(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    with mounted(data_root, tmp_path_factory.mktemp("ro-mnt") / "m") as mount:
        yield mount


@pytest.fixture(scope="module")
def rw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    root = tmp_path_factory.mktemp("rw") / "ipfs_kit"
    (root / "backends").mkdir(parents=True)
    with mounted(root, tmp_path_factory.mktemp("rw-mnt") / "m", expected_log=REJECTIONS) as mount:
        yield mount


def parquet(root: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(root / "backends" / name / "pin_mappings.parquet")


def lines(text: str) -> list[str]:
    return text.splitlines()


def data_digests(root: Path) -> dict[str, str]:
    """``file_digests`` without the backends' lock files (taking a lock is not changing data)."""
    return {name: digest for name, digest in file_digests(root).items() if not name.endswith(".pinfs.lock")}


def wait_for(condition: object, timeout: float = 2.0) -> float:
    """Poll ``condition()`` until true; return how long it took (fail after ``timeout``)."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


# -- the tree --


def test_root_lists_exactly_the_contract_entries(ro: Mount) -> None:
    assert lines(sh(f"ls -A {ro.mountpoint}").stdout) == [
        ".control",
        "README",
        "backends",
        "cids",
        "health.json",
        "insights.json",
        "insights.svg",
        "status.json",
    ]


def test_readme_explains_the_control_files(ro: Mount) -> None:
    text = sh(f"cat {ro.path('README')}").stdout
    assert ".control/migrate" in text and "pin" in text
    assert os.stat(ro.path("README")).st_size == len(text.encode())


def test_control_directories_list_the_commands(ro: Mount) -> None:
    assert lines(sh(f"ls {ro.path('.control')}").stdout) == ["migrate", "regenerate-car", "sync", "verify"]
    assert lines(sh(f"ls {ro.path('backends', 's3-main', '.control')}").stdout) == [
        "migrate",
        "pin",
        "regenerate-car",
        "sync",
        "unpin",
        "verify",
    ]


def test_backends_lists_every_backend(ro: Mount) -> None:
    assert lines(sh(f"ls {ro.path('backends')}").stdout) == ["bad", "local-b", "old", "s3-main"]


def test_backend_directory_lists_exactly_its_entries(ro: Mount) -> None:
    assert lines(sh(f"ls -A {ro.path('backends', 's3-main')}").stdout) == [
        ".control",
        "by-cid",
        "by-status",
        "pin_mappings.car",
        "pin_mappings.car.json",
        "pin_mappings.parquet",
        "summary.json",
    ]


def test_by_cid_lists_every_cid_once_past_one_readdir_buffer(ro: Mount) -> None:
    listed = lines(sh(f"ls {ro.path('backends', 's3-main', 'by-cid')}").stdout)
    assert len(listed) == BIG == len(set(listed))
    assert listed == sorted(parquet(ro.root, "s3-main")["cid"])
    assert sorted(os.listdir(ro.path("backends", "s3-main", "by-cid"))) == listed


def test_per_cid_files_match_the_parquet(ro: Mount) -> None:
    frame = parquet(ro.root, "s3-main").set_index("cid")
    for cid in (cid_for(0), cid_for(1234), cid_for(BIG - 1)):
        directory = ro.path("backends", "s3-main", "by-cid", cid)
        assert sorted(os.listdir(directory)) == RECORD_FILES
        row = frame.loc[cid]
        for name in ("status", "car_file_path", "backend_name", "created_at"):
            assert sh(f"cat {directory / name}").stdout == f"{row[name]}\n"
        assert sh(f"cat {directory / 'cid'}").stdout == f"{cid}\n"
        assert json.loads(sh(f"cat {directory / 'metadata.json'}").stdout) == json.loads(row["metadata"])
        pin = json.loads((directory / "pin.json").read_text())
        assert pin["metadata"] == json.loads(row["metadata"])
        assert {key: pin[key] for key in ("status", "car_file_path", "created_at")} == {
            "status": row["status"],
            "car_file_path": row["car_file_path"],
            "created_at": row["created_at"],
        }


def test_stat_shows_true_sizes(ro: Mount) -> None:
    directory = ro.path("backends", "s3-main", "by-cid", cid_for(7))
    sizes = sh(f"cd {directory} && stat -c '%n %s' *").stdout
    for line in lines(sizes):
        name, size = line.split()
        assert int(size) == len((directory / name).read_bytes())
    real = ro.root / "backends" / "s3-main" / "pin_mappings.parquet"
    assert os.stat(ro.path("backends", "s3-main", "pin_mappings.parquet")).st_size == real.stat().st_size


@pytest.mark.parametrize(
    "parts",
    [
        ("health.json",),
        ("status.json",),
        ("insights.json",),
        ("backends", "s3-main", "summary.json"),
        ("backends", "s3-main", "pin_mappings.car.json"),
        (".control", "verify"),
        ("backends", "s3-main", ".control", "pin"),
    ],
)
def test_generated_files_stat_their_true_size(ro: Mount, parts: tuple[str, ...]) -> None:
    path = ro.path(*parts)
    listed = sh(f"ls -l {path.parent}").stdout  # a listing first: its entries must not pin a wrong size
    assert path.name in listed
    size = os.stat(path).st_size
    assert size > 0 and size == len(path.read_bytes())
    ls_size = int(sh(f"stat -c %s {path}").stdout)
    assert ls_size == size


def test_absent_cid_is_enoent(ro: Mount) -> None:
    with pytest.raises(FileNotFoundError):
        os.stat(ro.path("backends", "s3-main", "by-cid", cid_for("absent")))
    # Under cids/ no one can say it is absent while backend 'bad' cannot be read (issue #15, item 8).
    with pytest.raises(OSError) as caught:
        os.stat(ro.path("cids", cid_for("absent")))
    assert caught.value.errno == errno.EIO
    result = sh(f"stat {ro.path('backends', 's3-main', 'by-cid', cid_for('absent'), 'status')}")
    assert result.returncode != 0 and "No such file" in result.stderr


def test_by_status_holds_symlinks_into_by_cid(ro: Mount) -> None:
    frame = parquet(ro.root, "s3-main")
    for status in ("stored", "pending", "failed"):
        listed = lines(sh(f"ls {ro.path('backends', 's3-main', 'by-status', status)}").stdout)
        assert listed == sorted(frame[frame["status"] == status]["cid"])
    cid = sorted(frame[frame["status"] == "failed"]["cid"])[0]
    link = ro.path("backends", "s3-main", "by-status", "failed", cid)
    assert os.readlink(link) == f"../../by-cid/{cid}"
    assert sh(f"cat {link}/status").stdout == "failed\n"


def test_cids_lists_all_backends_once_each(ro: Mount) -> None:
    listed = lines(sh(f"ls {ro.path('cids')}").stdout)
    expected = set(parquet(ro.root, "s3-main")["cid"]) | set(parquet(ro.root, "local-b")["cid"])
    expected |= {cid_for("old-1"), cid_for("old-2")}
    assert listed == sorted(expected)


def test_cid_held_by_two_backends_links_to_both(ro: Mount) -> None:
    cid = cid_for(BIG - 1)
    assert lines(sh(f"ls {ro.path('cids', cid)}").stdout) == ["local-b", "s3-main"]
    assert os.readlink(ro.path("cids", cid, "local-b")) == f"../../backends/local-b/by-cid/{cid}"
    assert sh(f"cat {ro.path('cids', cid, 's3-main', 'cid')}").stdout == f"{cid}\n"


def test_find_walks_a_backend(ro: Mount) -> None:
    found = lines(sh(f"cd {ro.path('backends', 'local-b')} && find by-cid -type f").stdout)
    assert len(found) == 20 * len(RECORD_FILES)


def test_listed_entries_keep_their_inode_numbers_for_stat_find_and_cat(ro: Mount) -> None:
    """readdir, stat and find agree on the numbers a listing gave (issue #6: listing inodes), also after
    the entry timeout, when the kernel revalidates each name with a lookup."""
    by_cid = ro.path("backends", "s3-main", "by-cid")
    with os.scandir(by_cid) as entries:
        listed = {entry.name: entry.inode() for entry in entries}
    assert len(listed) == BIG
    sample = [0, 1234, BIG - 1]
    numbers = [listed[cid_for(i)] for i in sample]
    assert [os.stat(by_cid / cid_for(i)).st_ino for i in sample] == numbers
    time.sleep(1.3)  # past the entry timeout
    assert [os.stat(by_cid / cid_for(i)).st_ino for i in sample] == numbers
    assert [(by_cid / cid_for(i) / "status").read_text() for i in sample] == [
        f"{schema.STATUSES[i % 3]}\n" for i in sample
    ]
    found = sh(f"find {by_cid} -maxdepth 1 -type d")
    assert found.returncode == 0 and found.stderr == "" and len(lines(found.stdout)) == BIG + 1
    assert lines(sh(f"find {by_cid} -maxdepth 1 -inum {numbers[1]}").stdout) == [str(by_cid / cid_for(1234))]


def test_real_files_are_served_byte_for_byte(ro: Mount) -> None:
    for name in ("pin_mappings.parquet", "pin_mappings.car"):
        served = ro.path("backends", "s3-main", name).read_bytes()
        assert served == (ro.root / "backends" / "s3-main" / name).read_bytes()
    assert len(pd.read_parquet(ro.path("backends", "s3-main", "pin_mappings.parquet"))) == BIG


def test_car_json_is_the_car_in_legacy_form(ro: Mount) -> None:
    served = json.loads(sh(f"cat {ro.path('backends', 's3-main', 'pin_mappings.car.json')}").stdout)
    car = read_pin_mappings_car(ro.root / "backends" / "s3-main" / "pin_mappings.car")
    assert served == to_legacy_json(car)
    assert served["count"] == 300


def test_summary_counts_by_status(ro: Mount) -> None:
    summary = json.loads(sh(f"cat {ro.path('backends', 's3-main', 'summary.json')}").stdout)
    frame = parquet(ro.root, "s3-main")
    assert summary["backend"] == "s3-main" and summary["type"] == "s3" and summary["count"] == BIG
    assert summary["by_status"] == {s: int((frame["status"] == s).sum()) for s in ("stored", "pending", "failed")}
    assert summary["source"] == "table"


def test_legacy_backend_is_served_with_source_legacy(ro: Mount) -> None:
    summary = json.loads(ro.path("backends", "old", "summary.json").read_text())
    assert summary["source"] == "legacy" and summary["count"] == 2
    assert sh(f"cat {ro.path('backends', 'old', 'by-cid', cid_for('old-1'), 'status')}").stdout == "stored\n"
    assert lines(sh(f"ls {ro.path('backends', 'old', 'by-status', 'pending')}").stdout) == [cid_for("old-2")]


def test_corrupt_backend_says_why_and_listing_it_is_eio(ro: Mount) -> None:
    summary = json.loads(ro.path("backends", "bad", "summary.json").read_text())
    assert {"backend", "type", "count", "by_status", "source"} <= summary.keys()
    assert "parquet" in json.dumps(summary)
    with pytest.raises(OSError) as caught:
        os.listdir(ro.path("backends", "bad", "by-cid"))
    assert caught.value.errno == errno.EIO
    assert sh(f"ls {ro.path('backends', 'bad', 'by-cid')}").returncode != 0
    assert sh(f"cat {ro.path('backends', 's3-main', 'by-cid', cid_for(3), 'cid')}").stdout == f"{cid_for(3)}\n"


@pytest.mark.parametrize("name", ["health.json", "status.json", "insights.json"])
def test_reports_are_json_objects(ro: Mount, name: str) -> None:
    result = sh(f"cat {ro.path(name)}")
    assert result.returncode == 0 and isinstance(json.loads(result.stdout), dict)


def test_health_names_every_backend(ro: Mount) -> None:
    health = json.loads(ro.path("health.json").read_text())
    assert "error" not in health
    text = json.dumps(health)
    assert all(name in text for name in ("s3-main", "local-b", "old", "bad"))


def test_modes_and_owner(ro: Mount) -> None:
    expected = {
        ro.path("README"): 0o444,
        ro.path("backends"): 0o755,
        ro.path("backends", "s3-main", "by-cid", cid_for(1)): 0o755,
        ro.path("backends", "s3-main", "by-cid", cid_for(1), "status"): 0o444,
        ro.path(".control", "migrate"): 0o600,
        ro.path("backends", "s3-main", ".control", "pin"): 0o600,
    }
    for path, mode in expected.items():
        info = os.stat(path)
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (mode, os.getuid(), os.getgid()), path


@pytest.mark.parametrize(
    "command",
    [
        "touch {m}/new",
        "rm {m}/README",
        "mkdir {m}/backends/new",
        "mv {m}/README {m}/README2",
        "echo x > {m}/README",
        "echo x >> {m}/backends/s3-main/by-cid/{cid}/status",
        "rm -r {m}/backends/s3-main/by-cid/{cid}",
        "ln -s x {m}/cids/y",
    ],
)
def test_everything_but_control_files_is_read_only(ro: Mount, command: str) -> None:
    before = file_digests(ro.root)
    result = sh(command.format(m=ro.mountpoint, cid=cid_for(2)))
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr
    assert file_digests(ro.root) == before


def test_reading_a_control_file_gives_its_last_run(ro: Mount) -> None:
    state = json.loads(sh(f"cat {ro.path('.control', 'regenerate-car')}").stdout)
    assert {"command", "state", "args", "started_at", "finished_at", "result", "error"} <= state.keys()
    assert state["command"] == "regenerate-car" and state["state"] == "idle"


# -- control files --


@pytest.mark.parametrize(
    ("control", "line"),
    [
        (".control/migrate", "dry-run frobnicate"),
        (".control/migrate", "backend=NOT_A_NAME"),
        (".control/migrate", "backend=no-such-backend"),
        (".control/verify", "older-than=soon"),
        (".control/verify", "older-than=-1"),
        (".control/sync", "dry-run=yes"),
        (".control/regenerate-car", "dry-run"),
        ("backends/rw-einval/.control/sync", "backend=other"),
        ("backends/rw-einval/.control/migrate", "x" * 5000),
    ],
)
def test_bad_words_fail_the_write_with_einval_and_change_nothing(rw: Mount, control: str, line: str) -> None:
    add_pins(rw.root, "other", [cid_for("o")])
    add_pins(rw.root, "rw-einval", [cid_for("e")])
    before = file_digests(rw.root)
    assert write_errno(rw.mountpoint / control, f"{line}\n".encode()) == errno.EINVAL
    assert file_digests(rw.root) == before
    assert json.loads((rw.mountpoint / control).read_text())["state"] == "rejected"  # issue #16: said, nothing ran


def test_shell_echo_of_a_bad_word_fails(rw: Mount) -> None:
    result = sh(f"echo 'dry-run frobnicate' > {rw.path('.control', 'migrate')}")
    assert result.returncode != 0 and "error" in result.stderr


def test_non_utf8_input_fails_with_einval(rw: Mount) -> None:
    make_backend(rw.root, "rw-utf8")
    before = file_digests(rw.root)
    assert write_errno(rw.path("backends", "rw-utf8", ".control", "unpin"), b"\xff\xfe\n") == errno.EINVAL
    assert file_digests(rw.root) == before


def test_invalid_cid_in_a_pin_batch_fails_and_pins_nothing(rw: Mount) -> None:
    add_pins(rw.root, "rw-badpin", [cid_for("x")])
    before = file_digests(rw.root)
    batch = f"{cid_for('y')} status=stored\nnot-a-cid\n".encode()
    assert write_errno(rw.path("backends", "rw-badpin", ".control", "pin"), batch) == errno.EINVAL
    assert file_digests(rw.root) == before


def test_pin_written_to_control_file_shows_everywhere(rw: Mount) -> None:
    add_pins(rw.root, "rw-pin", [cid_for("first")])
    new = [cid_for("pin-1"), cid_for("pin-2")]
    batch = f"{new[0]} status=stored meta.source=test\\n{new[1]}\\n"
    result = sh(f"printf '{batch}' > {rw.path('backends', 'rw-pin', '.control', 'pin')}")
    assert result.returncode == 0, result.stderr
    frame = parquet(rw.root, "rw-pin").set_index("cid")
    assert frame.loc[new[0], "status"] == "stored" and json.loads(frame.loc[new[0], "metadata"]) == {"source": "test"}
    assert set(new) <= set(os.listdir(rw.path("backends", "rw-pin", "by-cid")))
    assert new[0] in os.listdir(rw.path("backends", "rw-pin", "by-status", "stored"))
    assert os.listdir(rw.path("cids", new[1])) == ["rw-pin"]
    state = json.loads(rw.path("backends", "rw-pin", ".control", "pin").read_text())
    assert state["state"] == "succeeded"


def test_reports_show_a_control_command_at_once(rw: Mount) -> None:
    add_pins(rw.root, "rw-fresh", [cid_for("fresh-0")])
    summary = rw.path("backends", "rw-fresh", "summary.json")
    assert json.loads(summary.read_text())["count"] == 1  # now cached for a moment
    sh(f"echo {cid_for('fresh-1')} > {rw.path('backends', 'rw-fresh', '.control', 'pin')}")
    assert json.loads(summary.read_text())["count"] == 2
    assert os.stat(summary).st_size == len(summary.read_bytes())


def test_pin_batch_larger_than_one_write_is_one_batch(rw: Mount) -> None:
    make_backend(rw.root, "rw-batch")
    cids = [cid_for(f"batch-{i}") for i in range(3000)]  # ~200 KB: the kernel splits it into several writes
    data = "".join(f"{cid} status=stored meta.batch=yes\n" for cid in cids).encode()
    assert write_errno(rw.path("backends", "rw-batch", ".control", "pin"), data) is None
    frame = parquet(rw.root, "rw-batch")
    assert sorted(frame["cid"]) == sorted(cids) and set(frame["status"]) == {"stored"}
    assert len(os.listdir(rw.path("backends", "rw-batch", "by-status", "stored"))) == 3000


def test_pin_line_over_4_kib_fails_with_einval(rw: Mount) -> None:
    make_backend(rw.root, "rw-longline")
    line = f"{cid_for('long')} meta.note={'x' * 5000}\n".encode()
    assert write_errno(rw.path("backends", "rw-longline", ".control", "pin"), line) == errno.EINVAL
    assert not (rw.root / "backends" / "rw-longline" / "pin_mappings.parquet").exists()


def test_unpin_removes_the_cid(rw: Mount) -> None:
    add_pins(rw.root, "rw-unpin", [cid_for("u1"), cid_for("u2")])
    result = sh(f"echo {cid_for('u1')} > {rw.path('backends', 'rw-unpin', '.control', 'unpin')}")
    assert result.returncode == 0, result.stderr
    assert list(parquet(rw.root, "rw-unpin")["cid"]) == [cid_for("u2")]
    assert not rw.path("backends", "rw-unpin", "by-cid", cid_for("u1")).exists()


def test_failed_command_fails_close_and_records_the_error(rw: Mount) -> None:
    (make_backend(rw.root, "rw-broken") / "pin_mappings.parquet").write_bytes(b"garbage")
    target = rw.path("backends", "rw-broken", ".control", "verify")
    assert write_errno(target, b"older-than=0\n") == errno.EIO
    state = json.loads(target.read_text())
    assert state["state"] == "failed" and state["error"]
    assert state["args"] == {"backends": ["rw-broken"], "older_than_days": 0.0}


def test_coreutils_echo_reports_a_failed_command(rw: Mount) -> None:
    """In bash, /bin/echo is the process that opened the file, so its close is the last one, which
    runs the command and fails (dash keeps the file open itself: tests/test_fault_control.py)."""
    (make_backend(rw.root, "rw-broken2") / "pin_mappings.parquet").write_bytes(b"garbage")
    target = rw.path("backends", "rw-broken2", ".control", "verify")
    result = subprocess.run(["bash", "-c", f"/bin/echo > {target}"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_migrate_in_a_backend_control_file_migrates_that_backend(rw: Mount) -> None:
    legacy = {"pins": {cid_for("m1"): "pinned", cid_for("m2"): "queued"}}
    make_backend(rw.root, "rw-migrate", pins_json=legacy)
    make_backend(rw.root, "rw-migrate-other", pins_json=legacy)
    result = sh(f"echo > {rw.path('backends', 'rw-migrate', '.control', 'migrate')}")
    assert result.returncode == 0, result.stderr
    assert sorted(parquet(rw.root, "rw-migrate")["cid"]) == sorted(legacy["pins"])
    assert not (rw.root / "backends" / "rw-migrate-other" / "pin_mappings.parquet").exists()
    wait_for(lambda: json.loads(rw.path("backends", "rw-migrate", "summary.json").read_text())["source"] == "table")
    state = json.loads(rw.path("backends", "rw-migrate", ".control", "migrate").read_text())
    assert state["state"] == "succeeded" and state["args"]["backends"] == ["rw-migrate"]


def test_migrate_dry_run_changes_nothing(rw: Mount) -> None:
    make_backend(rw.root, "rw-dry", pins_json=[cid_for("d1")])
    before = data_digests(rw.root)
    result = sh(f"echo 'dry-run verbose backend=rw-dry' > {rw.path('.control', 'migrate')}")
    assert result.returncode == 0, result.stderr
    assert data_digests(rw.root) == before
    state = json.loads(rw.path(".control", "migrate").read_text())
    assert state["state"] == "succeeded"
    assert state["args"] == {"backends": ["rw-dry"], "dry_run": True, "verbose": True}


def test_regenerate_car_through_the_control_file(rw: Mount) -> None:
    add_pins(rw.root, "rw-car", [cid_for(f"car-{i}") for i in range(25)])
    result = sh(f"echo > {rw.path('backends', 'rw-car', '.control', 'regenerate-car')}")
    assert result.returncode == 0, result.stderr
    car = read_pin_mappings_car(rw.root / "backends" / "rw-car" / "pin_mappings.car")
    assert len(car.records) == 25
    assert json.loads(rw.path("backends", "rw-car", "pin_mappings.car.json").read_text())["count"] == 25


def test_mount_answers_while_a_command_runs(rw: Mount) -> None:
    add_pins(rw.root, "rw-slow", [cid_for(f"slow-{i}") for i in range(200_000)])
    control = rw.path("backends", "rw-slow", ".control", "regenerate-car")
    runner = threading.Thread(target=sh, args=(f"echo > {control}",), kwargs={"timeout": 120})
    runner.start()
    try:
        wait_for(lambda: json.loads(control.read_text())["state"] == "running", timeout=10)
        start = time.monotonic()
        os.stat(rw.path("README"))
        os.listdir(rw.path("backends"))
        assert time.monotonic() - start < 5  # a hang guard: it answers in milliseconds while the command runs
        assert json.loads(control.read_text())["state"] == "running"
        assert sh(f"echo > {control}").returncode != 0  # EBUSY for a second command
    finally:
        runner.join(120)
    assert json.loads(control.read_text())["state"] == "succeeded"


# -- changes from outside --


def test_changes_outside_the_mount_show_within_two_seconds(rw: Mount) -> None:
    add_pins(rw.root, "rw-outside", [cid_for("before")])
    by_cid = rw.path("backends", "rw-outside", "by-cid")
    assert os.listdir(by_cid) == [cid_for("before")]
    assert (by_cid / cid_for("before") / "status").read_text() == "stored\n"
    add_pins(rw.root, "rw-outside", [cid_for("after")])
    wait_for(lambda: cid_for("after") in os.listdir(by_cid))
    wait_for(lambda: os.path.isdir(rw.path("cids", cid_for("after"))))


def test_new_backend_directory_appears_and_goes(rw: Mount) -> None:
    directory = make_backend(rw.root, "rw-appears")
    wait_for(lambda: "rw-appears" in os.listdir(rw.path("backends")))
    directory.rmdir()
    wait_for(lambda: "rw-appears" not in os.listdir(rw.path("backends")))


def test_listing_in_progress_keeps_its_version(rw: Mount) -> None:
    original = {cid_for(f"keep-{i}") for i in range(3000)}
    add_pins(rw.root, "rw-listing", sorted(original))
    with os.scandir(rw.path("backends", "rw-listing", "by-cid")) as entries:
        seen = [next(entries).name for _ in range(10)]
        add_pins(rw.root, "rw-listing", [cid_for(f"new-{i}") for i in range(3000)])
        seen += [entry.name for entry in entries]
    assert len(seen) == len(set(seen)) and set(seen) == original


# -- the mount's life --


def small_root(tmp_path: Path) -> Path:
    root = tmp_path / "ipfs_kit"
    (root / "backends").mkdir(parents=True)
    add_pins(root, "s3-main", [cid_for(1)])
    return root


def test_sigterm_unmounts_cleanly(tmp_path: Path) -> None:
    mountpoint = tmp_path / "m"
    mount = start_mount(small_root(tmp_path), mountpoint)
    try:
        assert stop_with(mount, signal.SIGTERM) == 0
        assert not is_mounted(mountpoint)
    finally:
        force_unmount(mountpoint, mount.process)


def test_pinfs_umount_unmounts(tmp_path: Path) -> None:
    root, mountpoint = small_root(tmp_path), tmp_path / "m"
    mount = start_mount(root, mountpoint)
    try:
        result = run_pinfs(root, "umount", str(mountpoint))
        assert result.returncode == 0, result.stderr
        assert mount.process.wait(timeout=10) == 0
        assert not is_mounted(mountpoint)
    finally:
        force_unmount(mountpoint, mount.process)


def test_umount_after_sigkill_then_mount_again(tmp_path: Path) -> None:
    root, mountpoint = small_root(tmp_path), tmp_path / "m"
    mount = start_mount(root, mountpoint)
    try:
        mount.process.kill()
        mount.process.wait(timeout=10)
        assert is_mounted(mountpoint)
        result = run_pinfs(root, "umount", str(mountpoint))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mountpoint)
    finally:
        force_unmount(mountpoint, mount.process)
    with mounted(root, mountpoint) as again:
        assert lines(sh(f"ls {again.path('backends')}").stdout) == ["s3-main"]


def test_umount_of_something_not_mounted_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = run_pinfs(tmp_path, "umount", str(tmp_path))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "not mounted" in result.stderr


def test_background_returns_once_mounted(tmp_path: Path) -> None:
    root, mountpoint = small_root(tmp_path), tmp_path / "m"
    mountpoint.mkdir()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pinfs", "mount", str(mountpoint), "--root", str(root), "--background"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mountpoint)
        assert lines(sh(f"ls {mountpoint}/backends").stdout) == ["s3-main"]
    finally:
        force_unmount(mountpoint)


def test_mount_on_a_missing_directory_fails_with_one_line(tmp_path: Path) -> None:
    result = run_pinfs(small_root(tmp_path), "mount", str(tmp_path / "missing"))
    assert result.returncode == 2  # bad input (issue #16)
    assert len(result.stderr.strip().splitlines()) == 1 and "mount point" in result.stderr


def test_digest_helper_sees_writes(tmp_path: Path) -> None:
    # file_digests is what proves "nothing changed" above; make sure it would notice a change.
    (tmp_path / "f").write_text("a")
    before = file_digests(tmp_path)
    (tmp_path / "f").write_text("b")
    assert file_digests(tmp_path) != before
    assert hashlib.sha256(b"b").hexdigest() in file_digests(tmp_path).values()
