"""Helpers shared by the tests: real CIDs, data roots and running the real ``pinfs`` command."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from pinfs.data.readers import READERS_DIR


def cid_for(seed: object, version: int = 1) -> str:
    """A valid CID (sha2-256 of ``seed``): CIDv1 raw in base32, or CIDv0 ``Qm…``."""
    digest = hashlib.sha256(str(seed).encode()).digest()
    if version == 0:
        return _base58(bytes([0x12, 0x20]) + digest)
    return "b" + base64.b32encode(bytes([1, 0x55, 0x12, 0x20]) + digest).decode().lower().rstrip("=")


def spelled(cid: str, base: str) -> str:
    """``cid`` as a CIDv1 in multibase ``base`` (``z`` base58btc, ``B`` upper-case base32, ``k`` base36):
    another spelling of the same CID (issue #16)."""
    import libipld

    from pinfs.data.cids import standard_forms

    return libipld.encode_multibase(base, libipld.decode_multibase(standard_forms(cid)[-1])[1])


def ago(**delta: float) -> str:
    """An ISO-8601 UTC time ``delta`` (days=…, hours=…) before now, as the store writes them."""
    return (datetime.now(timezone.utc) - timedelta(**delta)).isoformat(timespec="microseconds")


def _base58(data: bytes) -> str:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    number = int.from_bytes(data, "big")
    text = ""
    while number:
        number, remainder = divmod(number, 58)
        text = alphabet[remainder] + text
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + text


def make_backend(root: Path, name: str, config: dict[str, Any] | None = None, pins_json: Any = None) -> Path:
    """Create ``root/backends/<name>/``, optionally its YAML config and a legacy pins.json."""
    directory = root / "backends" / name
    directory.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (root / "backends" / f"{name}.yaml").write_text(yaml.safe_dump(config))
    if pins_json is not None:
        (directory / "pins.json").write_text(json.dumps(pins_json))
    return directory


def run_pinfs(
    root: Path, *args: str, check: bool = False, timeout: float = 120, env: dict[str, str] | None = None, **kwargs: Any
):
    """Run the real CLI in a subprocess (``python -m pinfs``) against ``root`` (``env``: added variables)."""
    env = {**os.environ, **(env or {}), "PINFS_ROOT": str(root)}
    result = subprocess.run(
        [sys.executable, "-m", "pinfs", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pinfs {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def run_pinfs_json(root: Path, *args: str) -> Any:
    """Run the CLI with ``--json``, require exit 0, and return the parsed report."""
    result = run_pinfs(root, *args, "--json", check=True)
    return json.loads(result.stdout)


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (to prove that something wrote nothing), but the records of
    readers (``pinfs.data.readers``): a reader writes its own while it reads, and a mount renews and
    drops its records on a timer of its own."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and READERS_DIR not in path.parts
    }


def break_store(backend_dir: Path) -> None:
    """Make a backend's pins unreadable: every data file of its table (or, without a table, its
    ``pin_mappings.parquet``) overwritten with garbage of the same size."""
    table = backend_dir / "pin_mappings.delta"
    files = sorted(table.glob("part-*.parquet")) if table.is_dir() else [backend_dir / "pin_mappings.parquet"]
    for path in files:
        size = path.stat().st_size if path.exists() else 16
        path.write_bytes((b"garbage!" * (size // 8 + 1))[:size])


def store_records(backend: Any, records: list[dict[str, Any]]) -> None:
    """Add ``records`` (``make_record`` dicts) that are not pinned yet, in one commit, and bring the
    exports along: what a pin batch does."""
    from pinfs.ops.carops import change_pins

    def body(txn: Any) -> None:
        present = txn.records_for([record["cid"] for record in records])
        txn.update({record["cid"]: record for record in records if record["cid"] not in present})

    change_pins(backend, body)


def run_on_terminal(root: Path, *args: str, terminal: str = "stderr", columns: int = 100) -> tuple[int, str, str]:
    """Run the real CLI with ``terminal`` ("stdout" or "stderr") on a pseudo-terminal of ``columns``
    columns, the other stream piped. Returns (exit status, piped output, what the terminal showed)."""
    import fcntl
    import pty
    import struct
    import termios

    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, terminal: secondary}
    process = subprocess.Popen(
        [sys.executable, "-m", "pinfs", *args], env={**os.environ, "PINFS_ROOT": str(root)}, **streams
    )
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO once the other side is closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    piped = process.stderr if terminal == "stdout" else process.stdout
    text = piped.read().decode() if piped is not None else ""
    return process.wait(timeout=120), text, shown.decode(errors="replace").replace("\r\n", "\n")


def assert_no_secret(secret: str, root: Path, *texts: str) -> None:
    """``secret`` appears in no file under ``root`` (reports, state, parquet, CAR, caches) and in none of
    ``texts``. The backend configs are left out: a password written in one is the user's own text."""
    needle = secret.encode()
    for path in root.rglob("*"):
        if path.suffix in (".yaml", ".yml") and path.parent.name in ("backends", "backend_configs"):
            continue
        if path.is_file() and not path.is_symlink():
            assert needle not in path.read_bytes(), f"the secret leaked into {path}"
    for text in texts:
        assert secret not in text, f"the secret leaked into {text[:200]!r}"
