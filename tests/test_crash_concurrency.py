"""Crash safety and cross-process writers (CONTRACT §1 "Writes"): a writer killed with SIGKILL leaves the
old or the new file, never a torn one, and two writers to one backend lose nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from helpers import cid_for, make_backend

from pinfs.data.backends import get_backend
from pinfs.data.fsutil import TEMP_MARKER
from pinfs.ops.migrate_verify import verify_backend
from pinfs.ops.pins import PinRequest, add_pins

# Adds pins in batches forever (or COUNT pins in batches of 1-10), printing each batch's CIDs once
# add_pins has returned: a printed line is an acknowledged batch.
WRITER = """
import random, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from helpers import cid_for
from pinfs.ops.pins import PinRequest, add_pins

root, tag, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = random.Random(tag)
done = 0
while count < 0 or done < count:
    size = rng.randint(1, 10) if count >= 0 else 25
    if count >= 0:
        size = min(size, count - done)
    cids = [cid_for(f"{tag}-{done + i}") for i in range(size)]
    add_pins(root, "b1", [PinRequest(cid, "stored", {"tag": tag}) for cid in cids])
    done += size
    print(" ".join(cids), flush=True)
"""

TESTS_DIR = str(Path(__file__).parent)


def _writer(root: Path, tag: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), tag, str(count), TESTS_DIR],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _temp_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if TEMP_MARKER in name]


def test_sigkill_mid_write_leaves_a_readable_parquet_with_every_acknowledged_pin(root: Path) -> None:
    directory = make_backend(root, "b1")
    parquet = directory / "pin_mappings.parquet"
    rng = random.Random(42)
    acknowledged: set[str] = set()
    for round_number in range(4):
        writer = _writer(root, f"round{round_number}", -1)
        first = writer.stdout.readline()  # the writer is running and has written at least once
        assert first, writer.stderr.read()
        time.sleep(rng.uniform(0.0, 0.25))
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate()
        assert writer.returncode == -signal.SIGKILL
        for line in [first, *rest.splitlines()]:
            acknowledged.update(line.split())
        on_disk = set(pd.read_parquet(parquet)["cid"])
        assert acknowledged <= on_disk
    add_pins(root, "b1", [PinRequest(cid_for("after-the-crashes"))])
    assert _temp_files(directory) == []
    assert len(pd.read_parquet(parquet)) >= len(acknowledged) + 1


def test_next_write_removes_a_stale_temp_file(root: Path) -> None:
    directory = make_backend(root, "b1")
    add_pins(root, "b1", [PinRequest(cid_for(1))])
    stale = directory / f".pin_mappings.parquet{TEMP_MARKER}99999.deadbeef"
    stale.write_bytes(b"half a parquet")
    add_pins(root, "b1", [PinRequest(cid_for(2))])
    assert _temp_files(directory) == []


def test_two_processes_adding_500_pins_each_end_with_1000(root: Path) -> None:
    make_backend(root, "b1")
    writers = [_writer(root, tag, 500) for tag in ("left", "right")]
    for writer in writers:
        _, errors = writer.communicate(timeout=120)
        assert writer.returncode == 0, errors
    frame = pd.read_parquet(root / "backends/b1/pin_mappings.parquet")
    assert len(frame) == 1000 and frame["cid"].is_unique
    assert frame["metadata"].value_counts().to_dict() == {'{"tag":"left"}': 500, '{"tag":"right"}': 500}
    assert verify_backend(get_backend(root, "b1"))["ok"]  # the CAR matches the final parquet
