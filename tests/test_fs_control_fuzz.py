"""Hostile control-file input (issue 7): whatever bytes are written, parsing either yields a command
or raises InvalidInput (EINVAL in the mount) — never another exception, never a hang — and a batch of
thousands of pins with one bad CID is refused as a whole."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from helpers import cid_for, file_digests, make_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mounting import REJECTIONS, mounted, needs_fuse, write_errno

from pinfs.errors import InvalidInput
from pinfs.fs.control import BACKEND_COMMANDS, ROOT_COMMANDS, ControlRegistry

WORDS = [
    "dry-run",
    "verbose",
    "force",
    "verify-only",
    "backend=ok",
    "backend=../x",
    "older-than=",
    "older-than=3",
    "status=stored",
    "meta.k=v",
    "\x00",
    "é",
    "backend=OK",
    "restore-from-backup",
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ControlRegistry:
    root = tmp_path_factory.mktemp("fuzz") / "ipfs_kit"
    make_backend(root, "ok")
    return ControlRegistry(root)


def words_line() -> st.SearchStrategy[bytes]:
    word = st.one_of(st.sampled_from(WORDS), st.text(max_size=12), st.sampled_from([cid_for(1), cid_for(2, 0)]))
    return st.lists(word, max_size=8).map(lambda words: " ".join(words).encode("utf-8", "surrogatepass"))


def any_input() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=600),
        words_line(),
        st.lists(words_line(), max_size=5).map(b"\n".join),
        st.integers(4000, 20000).map(lambda n: b"a" * n),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=any_input(), command=st.sampled_from(BACKEND_COMMANDS), at_root=st.booleans())
def test_any_bytes_parse_or_are_invalid_input(
    registry: ControlRegistry, data: bytes, command: str, at_root: bool
) -> None:
    if at_root and command not in ROOT_COMMANDS:
        return
    key = (None if at_root else "ok", command)
    try:
        prepared = registry.parse(key, data)
    except InvalidInput as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert prepared.command == command


@needs_fuse
@pytest.mark.mount
def test_thousands_of_pins_with_one_bad_cid_pin_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ipfs_kit"
    make_backend(root, "batch")
    lines = [f"{cid_for(i)} status=pending meta.n={i}" for i in range(5000)]
    lines[3777] = "bafy-not-a-cid status=stored"
    with mounted(root, tmp_path / "m", expected_log=REJECTIONS) as mount:
        before = file_digests(root)
        batch = ("\n".join(lines) + "\n").encode()
        failure = write_errno(mount.path("backends", "batch", ".control", "pin"), batch)
        assert failure == errno.EINVAL
        assert {k: v for k, v in file_digests(root).items() if not k.endswith(".pinfs.lock")} == {
            k: v for k, v in before.items() if not k.endswith(".pinfs.lock")
        }
        assert os.listdir(mount.path("backends", "batch", "by-cid")) == []
