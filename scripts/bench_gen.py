"""Benchmark data: K backends of N pins each, generated once into a cache directory.

Layout of a cache entry (``.bench-cache/n<N>-k<K>-v<VERSION>/``)::

    root/backends/<b>.yaml
    root/backends/<b>/pin_mappings.delta/      the backend's table, written through pinfs.data.store (one commit)
    root/backends/<b>/pin_mappings.parquet     its exports, written by pinfs.data.exports
    root/backends/<b>/pin_mappings.car
    legacy/pins.json                           backend 0's pins as a legacy list of objects
    meta.json                                  what was generated (written last: its presence = complete)

Every CID is a valid CIDv1 (raw, sha2-256, base32 ``bafkrei…``) made from random bytes. Statuses are 3 %
failed, 5 % pending, the rest stored; metadata is a JSON object of about 100 bytes. A tenth of the CIDs
(``shared``) are held by every backend, so ``cids/<cid>`` has K holders for them.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import yaml

from pinfs.data.backends import get_backend
from pinfs.data.cids import is_valid_cid
from pinfs.data.exports import refresh_exports
from pinfs.data.schema import car_path_for, dump_metadata
from pinfs.data.store import PinStore
from pinfs.data.tables import normalize_table

VERSION = 4  # 3: a Delta table per backend with one-file exports (issue #12); 4: with its insert file
CHUNK = 500_000  # records built as Python values at a time (10M at once would need ~10 GB)
SHARED_FRACTION = 0.1
FAILED_FRACTION = 0.03
PENDING_FRACTION = 0.05
# (name, type) of the backends, in order; more than listed cycle with a number appended.
BACKEND_KINDS = [
    ("s3-main", "s3"),
    ("local-fs", "filesystem"),
    ("github-mirror", "github"),
    ("sshfs-archive", "sshfs"),
    ("storacha-main", "storacha"),
    ("hf-models", "huggingface"),
]
_RAW_SHA256_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])
_BASE_TIME = datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()
_LEGACY_STATUS = {"stored": "pinned", "pending": "queued", "failed": "failed"}


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def backend_names(k: int) -> list[tuple[str, str]]:
    out = []
    for index in range(k):
        name, kind = BACKEND_KINDS[index % len(BACKEND_KINDS)]
        out.append((name if index < len(BACKEND_KINDS) else f"{name}-{index}", kind))
    return out


def random_cids(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct-with-overwhelming-probability CIDv1 raw sha2-256 in base32. The random bytes
    are drawn a million CIDs at a time: ``randbytes`` of more than 2^31 bits fails (10M pins), and up
    to a million the draw is the one it always was, so cached data sets stay valid."""
    encode = base64.b32encode
    prefix = _RAW_SHA256_PREFIX
    out: list[str] = []
    for start in range(0, count, _CIDS_PER_DRAW):
        blob = rng.randbytes(32 * min(_CIDS_PER_DRAW, count - start))
        out.extend(
            "b" + encode(prefix + blob[i : i + 32]).decode("ascii").lower().rstrip("=") for i in range(0, len(blob), 32)
        )
    return out


_CIDS_PER_DRAW = 1_000_000


def _table(rng: random.Random, cids: list[str], name: str, kind: str) -> pa.Table:
    """The pins of ``cids`` (sorted) as one table, built a chunk at a time."""
    pieces = []
    for start in range(0, len(cids), CHUNK):
        columns = _records(rng, cids[start : start + CHUNK], name, kind)
        pieces.append(normalize_table(pa.table(columns), sort=False))
        del columns
    return pa.concat_tables(pieces)


def _records(rng: random.Random, cids: list[str], name: str, kind: str) -> dict[str, list[str]]:
    n = len(cids)
    statuses = []
    created = []
    metadata = []
    for index in range(n):
        roll = rng.random()
        statuses.append(
            "failed" if roll < FAILED_FRACTION else "pending" if roll < FAILED_FRACTION + PENDING_FRACTION else "stored"
        )
        moment = datetime.fromtimestamp(_BASE_TIME - rng.random() * 3e7, timezone.utc)
        created.append(moment.isoformat(timespec="microseconds"))
        metadata.append(
            dump_metadata(
                {
                    "name": f"dataset-{rng.randrange(10**6):06d}/part-{index % 100000:05d}.bin",
                    "size": rng.randrange(10**9),
                    "source": "pinfs-bench",
                    "replicas": 1 + rng.randrange(3),
                }
            )
        )
    return {
        "cid": cids,
        "car_file_path": [car_path_for(kind, name, cid) for cid in cids],
        "backend_name": [name] * n,
        "created_at": created,
        "status": statuses,
        "metadata": metadata,
        "updated_at": created,
    }


def _legacy_json(columns: dict[str, list[str]]) -> bytes:
    """The same pins as ipfs_kit_py's legacy list of objects (statuses in their legacy spelling)."""
    items = [
        {
            "cid": cid,
            "status": _LEGACY_STATUS[status],
            "created_at": created,
            "car_file_path": car,
            "metadata": json.loads(meta),
        }
        for cid, status, created, car, meta in zip(
            columns["cid"],
            columns["status"],
            columns["created_at"],
            columns["car_file_path"],
            columns["metadata"],
            strict=True,
        )
    ]
    return json.dumps(items, separators=(",", ":")).encode()


# Past this many pins no legacy pins.json is made (the migrate rows are measured at 1M).
LEGACY_MAX = 2_000_000


def cache_dir(base: Path, n: int, k: int) -> Path:
    return base / f"n{n}-k{k}-v{VERSION}"


def ensure_data(base: Path, n: int, k: int, seed: int = 1) -> Path:
    """The cache entry for (N, K), generated if missing or incomplete. Returns its directory."""
    target = cache_dir(base, n, k)
    if (target / "meta.json").is_file():
        return target
    if target.exists():
        shutil.rmtree(target)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    started = time.perf_counter()
    say(f"generating {k} backends x {n} pins into {target} (once; cached)")
    rng = random.Random(seed)
    root = partial / "root"
    (root / "backends").mkdir(parents=True)
    shared_count = int(n * SHARED_FRACTION)
    shared = random_cids(rng, shared_count)
    names = backend_names(k)
    for index, (name, kind) in enumerate(names):
        (root / "backends" / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "type": kind}))
        (root / "backends" / name).mkdir()
        cids = sorted(set(shared + random_cids(rng, n - shared_count)))
        while len(cids) < n:  # a collision among 2^256: never in practice, but keep N exact
            cids = sorted(set(cids + random_cids(rng, n - len(cids))))
        table = _table(rng, cids, name, kind)
        backend = get_backend(root, name)
        PinStore(backend).write(lambda txn, table=table: txn.write(table))
        refresh_exports(backend)
        if index == 0 and n <= LEGACY_MAX:
            (partial / "legacy").mkdir()
            (partial / "legacy" / "pins.json").write_bytes(_legacy_json(table.to_pydict()))
        del table, cids
        say(f"  {name}: done ({time.perf_counter() - started:.1f} s)")
    assert all(is_valid_cid(cid) for cid in shared[:100])
    meta = {
        "n": n,
        "k": k,
        "seed": seed,
        "version": VERSION,
        "backends": [{"name": name, "type": kind} for name, kind in names],
        "shared_sample": rng.sample(shared, min(len(shared), 5000)),
        "generated_in_seconds": round(time.perf_counter() - started, 1),
    }
    (partial / "meta.json").write_text(json.dumps(meta))
    partial.rename(target)
    say(f"generated in {time.perf_counter() - started:.1f} s")
    return target
