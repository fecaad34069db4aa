"""Issue #15, item 1: a control file written in pieces, by several processes sharing one open file or
each with their own, runs each open file's command once, on exactly what was written, after the last
of its writers has closed it; input over the limit is refused whole. A real mount, real shells."""

from __future__ import annotations

import errno
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import cid_for, make_backend
from mounting import REJECTIONS, Mount, mounted, needs_fuse, sh

from pinfs.data.backends import get_backend
from pinfs.data.store import PinStore

pytestmark = [pytest.mark.mount, needs_fuse]


@pytest.fixture(scope="module")
def rw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    root = tmp_path_factory.mktemp("pieces") / "ipfs_kit"
    (root / "backends").mkdir(parents=True)
    with mounted(root, tmp_path_factory.mktemp("pieces-mnt") / "m", expected_log=REJECTIONS) as mount:
        yield mount


def pinned(root: Path, name: str) -> dict[str, dict[str, str | None]]:
    snapshot = PinStore(get_backend(root, name)).snapshot()
    return {record["cid"]: record for record in snapshot.iter_records()}


def state_of(mount: Mount, name: str, command: str) -> dict:
    return json.loads(mount.path("backends", name, ".control", command).read_text())


def control(mount: Mount, name: str, command: str) -> Path:
    make_backend(mount.root, name)
    return mount.path("backends", name, ".control", command)


def test_a_batch_written_by_two_processes_runs_once_after_the_last_close(rw: Mount, tmp_path: Path) -> None:
    target = control(rw, "two-cats", "pin")
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("".join(f"{cid_for(f'a{n}')}\n" for n in range(3)))
    second.write_text("".join(f"{cid_for(f'b{n}')}\n" for n in range(2)))
    result = sh(f"( cat {first}; sleep 0.3; cat {second} ) > {target}")
    assert result.returncode == 0, result.stderr
    # The subshell's close ran it, once, with all five lines: one batch of five pins.
    assert state_of(rw, "two-cats", "pin")["state"] == "succeeded"
    assert state_of(rw, "two-cats", "pin")["args"]["lines"] == 5
    expected = [cid_for(f"a{n}") for n in range(3)] + [cid_for(f"b{n}") for n in range(2)]
    assert sorted(pinned(rw.root, "two-cats")) == sorted(expected)


def test_a_bad_line_in_the_second_piece_pins_nothing_of_the_first(rw: Mount, tmp_path: Path) -> None:
    target = control(rw, "bad-second", "pin")
    (tmp_path / "a").write_text("".join(f"{cid_for(f'ok{n}')}\n" for n in range(3)))
    (tmp_path / "b").write_text(f"{cid_for('ok3')}\nnot-a-cid\n")
    result = sh(f"( cat {tmp_path / 'a'}; cat {tmp_path / 'b'} ) > {target}")
    assert "Invalid argument" in result.stderr  # cat b's write is refused
    assert pinned(rw.root, "bad-second") == {}
    assert state_of(rw, "bad-second", "pin")["state"] == "rejected"  # nothing ran, and it says why (issue #16)


def test_unpin_in_pieces_with_a_bad_line_removes_nothing(rw: Mount, tmp_path: Path) -> None:
    target = control(rw, "unpin-pieces", "pin")
    cids = [cid_for(f"u{n}") for n in range(4)]
    target.write_text("".join(f"{cid}\n" for cid in cids))
    unpin = rw.path("backends", "unpin-pieces", ".control", "unpin")
    (tmp_path / "a").write_text(f"{cids[0]}\n{cids[1]}\n")
    (tmp_path / "b").write_text("Qm-not-a-cid\n")
    sh(f"( cat {tmp_path / 'a'}; cat {tmp_path / 'b'} ) > {unpin}")
    assert sorted(pinned(rw.root, "unpin-pieces")) == sorted(cids)
    # The same pieces without the bad one remove exactly those two, once.
    result = sh(f"( cat {tmp_path / 'a'}; printf '%s\\n' {cids[2]} ) > {unpin}")
    assert result.returncode == 0, result.stderr
    assert sorted(pinned(rw.root, "unpin-pieces")) == sorted([cids[3]])


def test_a_line_over_4_kib_written_as_head_and_tail_is_refused_whole(rw: Mount, tmp_path: Path) -> None:
    target = control(rw, "long-line", "pin")
    line = f"{cid_for('long')} meta.note=" + "x" * 4096
    (tmp_path / "line").write_text(line + "\n")
    assert len(line.encode()) > 4096
    result = sh(f"( head -c 2000 {tmp_path / 'line'}; tail -c +2001 {tmp_path / 'line'} ) > {target}")
    assert "Invalid argument" in result.stderr
    assert pinned(rw.root, "long-line") == {}


def test_a_held_descriptor_defers_the_run_until_it_is_closed(rw: Mount) -> None:
    """exec 3> keeps the open file in the shell; each builtin echo closes only a duplicate of it."""
    target = control(rw, "held", "pin")
    script = (
        f"exec 3> {target}; echo {cid_for('h1')} >&3; echo {cid_for('h2')} >&3; "
        f"test -e {rw.path('backends', 'held', 'by-cid', cid_for('h1'))} && echo early; exec 3>&-"
    )
    result = sh(script)
    assert "early" not in result.stdout  # nothing ran while fd 3 was open
    assert sorted(pinned(rw.root, "held")) == sorted([cid_for("h1"), cid_for("h2")])
    assert state_of(rw, "held", "pin")["args"]["lines"] == 2


def test_the_last_close_fails_with_eio_when_the_command_fails(rw: Mount) -> None:
    """bash runs /bin/echo in the process that opened the file: echo's close is the last one, runs
    the command, and reports its failure."""
    target = control(rw, "fails", "unpin")
    result = subprocess.run(
        ["bash", "-c", f"/bin/echo {cid_for('never-pinned')} > {target}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "Input/output error" in result.stderr
    assert "not pinned" in state_of(rw, "fails", "unpin")["error"]


def test_a_shell_that_holds_the_file_around_a_command_runs_it_at_its_own_close(rw: Mount) -> None:
    """dash opens the file itself and keeps it open while /bin/echo runs: the command runs when dash
    closes it, after echo has exited, and dash ignores errors at close; the JSON says what happened,
    and it is final when the shell returns."""
    target = control(rw, "dash-holds", "unpin")
    result = sh(f"/bin/echo {cid_for('never-pinned')} > {target}")
    assert result.returncode == 0
    state = state_of(rw, "dash-holds", "unpin")
    assert state["state"] == "failed" and "not pinned" in state["error"]


def test_two_writer_processes_each_with_their_own_open_file_run_whole_or_busy(rw: Mount) -> None:
    """Two processes write a batch each at the same time: each batch runs whole, or its close is
    refused with EBUSY (one runs at a time) and none of it is pinned; never a mix."""
    target = control(rw, "own-files", "pin")
    batches = {tag: [cid_for(f"{tag}{n}") for n in range(200)] for tag in ("x", "y")}
    writers = [
        subprocess.Popen(
            ["python3", "-c", WRITER, str(target), "\n".join(cids) + "\n"], stdout=subprocess.PIPE, text=True
        )
        for cids in batches.values()
    ]
    outcomes = [writer.communicate(timeout=60)[0].strip() for writer in writers]
    assert set(outcomes) <= {"ok", str(errno.EBUSY)}, outcomes
    have = set(pinned(rw.root, "own-files"))
    for outcome, cids in zip(outcomes, batches.values(), strict=True):
        assert (set(cids) <= have) if outcome == "ok" else not (set(cids) & have)
    assert "ok" in outcomes


# A writer that opens, writes in two pieces with a pause, and closes; prints "ok" or the errno.
WRITER = """
import os, sys, time
path, text = sys.argv[1], sys.argv[2].encode()
try:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    half = text.index(b"\\n", len(text) // 2) + 1
    os.write(fd, text[:half]); time.sleep(0.2); os.write(fd, text[half:])
    os.close(fd)
    print("ok")
except OSError as exc:
    print(exc.errno)
"""


def test_a_run_while_another_holds_its_own_open_file_is_not_held_up(rw: Mount) -> None:
    """Another open file of the same control file (held by an unrelated writer) does not defer a
    command: only holders of the same open file do."""
    target = control(rw, "other-holder", "pin")
    holder = subprocess.Popen(["sh", "-c", f"exec 3> {target}; sleep 5"])
    try:
        time.sleep(0.3)
        result = sh(f"/bin/echo {cid_for('not-held-up')} > {target}")
        assert result.returncode == 0, result.stderr
        assert cid_for("not-held-up") in pinned(rw.root, "other-holder")
    finally:
        holder.kill()
        holder.wait()


def test_an_open_file_that_no_close_could_run_runs_at_its_release(rw: Mount) -> None:
    """Two open files of one control file in one shell, at the same offset: closing the first sees the
    second as a possible holder and leaves its command to RELEASE, which runs it; both pins go in."""
    target = control(rw, "at-release", "pin")
    first, second = cid_for("r1"), cid_for("r2")
    assert len(first) == len(second)
    result = sh(f"exec 3> {target} 4> {target}; echo {first} >&3; echo {second} >&4; exec 3>&-; sleep 1; exec 4>&-")
    assert result.returncode == 0, result.stderr
    assert sorted(pinned(rw.root, "at-release")) == sorted([first, second])
