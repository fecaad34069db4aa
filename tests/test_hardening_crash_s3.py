"""The SIGKILL loop of ``test_hardening_crash`` on a data root on S3 (issue #13): its own file, so
that a parallel run (``scripts/test`` runs files on two workers) runs it beside the local loops."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from seaweed import Seaweed
from test_hardening_crash import KILLS, OPS, _kill_loop, _setup

import pinfs.data.rootfs
from pinfs.data.rootfs import parse_root

# On S3 every step is a few requests: a writer's write takes ~0.3 s alone, a sync round ~1 s, and
# five of them share the machine (the loop adapts these to its speed).
S3_WRITERS = len(OPS)
S3_LONGEST_MS = {"pins": 1000, "migrate": 1000, "regen": 1000, "restore": 1000, "sync": 2000}


@pytest.mark.slow
def test_two_hundred_sigkills_of_writers_on_an_s3_root(
    seaweed: Seaweed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same loop on a root on S3: every writer is a host of its own (its own cache directory), the
    checks read back from the bucket (this process has a cache directory of its own too), and five
    writers, one of each kind, are killed in each round, so they also race each other (pins and CAR
    regeneration share a backend) across hosts, with nothing but the bucket between them. Five a
    round keep the checks' time down (42 rounds for 210 kills)."""
    for name, value in seaweed.env(f"crash-{uuid.uuid4().hex}").items():
        if name.startswith("AWS_") or name == "PINFS_ROOT":
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("PINFS_CACHE_DIR", str(tmp_path / "checker-cache"))
    # The checks ask S3 for what they need once per round: what this process knew of the bucket is
    # forgotten after the writers are killed (``_kill_loop``), and its own writes forget what they
    # touch; in between nothing else writes, so nothing it remembers expires.
    monkeypatch.setattr(pinfs.data.rootfs, "S3_METADATA_SECONDS", 3600.0)
    world = _setup(parse_root(os.environ["PINFS_ROOT"]), tmp_path / "storage")
    _kill_loop(world, tmp_path, KILLS // S3_WRITERS, S3_WRITERS, S3_LONGEST_MS, adapt=True)
