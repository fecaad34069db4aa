"""The sharded form of ``pin_mappings.parquet``, for backends too big to rewrite per pin (issue #6).

On disk, beside the backend's other files::

    pin_mappings.parquet -> .pin_mappings.d/g0000000042            a relative symlink
    .pin_mappings.d/g0000000042/part-00000-g0000000042.parquet …     sorted shards, disjoint CID
                                                                    ranges, in name order
    .pin_mappings.d/g0000000042/_pinfs_shards.json                  the manifest

pandas, pyarrow and DuckDB (``read_parquet('…/pin_mappings.parquet/*.parquet')``) read the link as one
table: a directory of parquet files is a dataset, and names starting with ``_`` or ``.`` are not data to
them. Shards are ordered by name, so the rows of the whole are in CID order.

A generation directory never changes once published. A write builds the next one in a temporary
directory (shards it does not change are hard links, so a pin rewrites one shard of ~16k rows), renames
it into place and then swaps the symlink with one rename: readers see the old generation or the new,
whole. Superseded generations are removed by later writers after a grace period, since a reader that
resolved the link just before the swap may still be opening files in the old one.

The manifest names every shard with its rows, size and row groups (rows, first and last CID), so a
lookup finds its row group without opening any other shard's footer.

Everything here runs with the backend's lock held, except reading (``generation_dir``,
``read_manifest``), which any process may do at any time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa

from pinfs.backends import PARQUET_NAME
from pinfs.errors import CorruptData
from pinfs.fsutil import SHARD_DIR, TEMP_MARKER, fsync_dir

MANIFEST_NAME = "_pinfs_shards.json"
MANIFEST_FORMAT = "pinfs_shards"
_GENERATION = re.compile(r"^g(\d{10})$")
_PART = re.compile(r"^part-\d{5}-(g\d{10})\.parquet$")
# A superseded generation stays this long after its successor was published (readers in flight).
GENERATION_GRACE_SECONDS = 60.0
DEFAULT_SHARD_ROWS = 16384
WRITER_THREADS = min(4, os.cpu_count() or 1)  # shards are written in parallel (Arrow drops the GIL)


def shard_rows() -> int:
    """Target rows per shard: ``PINFS_SHARD_ROWS`` (at least 8) or 16384.

    A shard of 16k rows is read and rewritten in ~35 ms; a 1M-pin backend has ~61 of them. Tables of
    more than 4× this are stored sharded, and go back to one file when they shrink to 1× (see
    ``choose_sharded``)."""
    raw = os.environ.get("PINFS_SHARD_ROWS", "")
    return max(int(raw), 8) if raw.isdigit() else DEFAULT_SHARD_ROWS


def choose_sharded(rows: int, currently_sharded: bool) -> bool:
    """Whether a table of ``rows`` rows is stored sharded; between the two bounds the form stays."""
    target = shard_rows()
    if rows > 4 * target:
        return True
    if rows <= target:
        return False
    return currently_sharded


@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows: int
    bytes: int
    groups: tuple[tuple[int, str, str], ...]  # per row group: rows, first CID, last CID

    @property
    def min_cid(self) -> str:
        return self.groups[0][1]

    @property
    def max_cid(self) -> str:
        return self.groups[-1][2]


@dataclass(frozen=True)
class Manifest:
    generation: int
    columns: tuple[str, ...]
    shards: tuple[ShardInfo, ...]

    @property
    def count(self) -> int:
        return sum(shard.rows for shard in self.shards)


@dataclass(frozen=True)
class KeptShard:
    """A shard of the current generation that the next one keeps unchanged (hard-linked)."""

    path: Path
    info: ShardInfo


ShardWriter = Callable[[Path, pa.Table], ShardInfo]


# -- reading --


def shard_name(index: int, generation: int) -> str:
    """``part-00003-g0000000042.parquet``: in CID order by name, and never the same name in two
    generations, so a reader that listed one generation and opens a file after the link moved on gets
    ENOENT instead of a silent mix of two versions."""
    return f"part-{index:05d}-g{generation:010d}.parquet"


def shard_generation(name: str) -> str | None:
    """The generation directory a shard's name says it belongs to, or None for any other name."""
    match = _PART.match(name)
    return match.group(1) if match else None


def is_sharded(parquet_path: Path) -> bool:
    return os.path.islink(parquet_path)


def generation_dir(parquet_path: Path) -> Path:
    """The generation directory ``parquet_path`` links to, checked to be pinfs' own: a relative link to
    ``.pin_mappings.d/g<10 digits>``, both real directories. Any other link is refused, never followed."""
    try:
        target = os.readlink(parquet_path)
    except OSError as exc:
        raise CorruptData(f"{parquet_path}: cannot read the link ({exc.strerror})") from None
    parts = target.split("/")
    if len(parts) != 2 or parts[0] != SHARD_DIR or not _GENERATION.match(parts[1]):
        raise CorruptData(
            f"{parquet_path}: is a symlink; refusing to follow it (pinfs links it only to its own {SHARD_DIR}/g…, "
            f"not to {target!r})"
        )
    shard_root = parquet_path.parent / SHARD_DIR
    directory = shard_root / parts[1]
    for path in (shard_root, directory):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise CorruptData(f"{parquet_path}: links to {target}, which is missing") from None
        if not stat.S_ISDIR(mode):
            raise CorruptData(f"{path}: is not a directory; refusing to follow it")
    return directory


def read_manifest(directory: Path) -> Manifest:
    """The manifest of a generation directory; CorruptData if it is missing or malformed."""
    path = directory / MANIFEST_NAME
    try:
        document = json.loads((path).read_bytes())
        if document.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format is {document.get('format')!r}")
        shards = tuple(_shard_info(item) for item in document["shards"])
        columns = tuple(str(name) for name in document["columns"])
    except FileNotFoundError:
        raise CorruptData(f"{path}: missing (the shard directory is incomplete)") from None
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise CorruptData(f"{path}: not a valid shard manifest ({exc})") from None
    match = _GENERATION.match(directory.name)
    return Manifest(int(match.group(1)) if match else 0, columns, shards)


def _shard_info(item: dict) -> ShardInfo:
    if not _PART.match(item["file"]):
        raise ValueError(f"bad shard name {item['file']!r}")
    groups = tuple((int(rows), str(first), str(last)) for rows, first, last in item["groups"])
    if not groups or sum(rows for rows, _first, _last in groups) != int(item["rows"]):
        raise ValueError(f"shard {item['file']}: row groups do not add up to its rows")
    return ShardInfo(item["file"], int(item["rows"]), int(item["bytes"]), groups)


def data_files(parquet_path: Path) -> list[Path]:
    """The parquet files that hold the backend's rows, in order: the file itself, or its shards."""
    if not is_sharded(parquet_path):
        return [parquet_path]
    directory = generation_dir(parquet_path)
    return [directory / shard.file for shard in read_manifest(directory).shards]


def generation_problems(parquet_path: Path) -> list[str]:
    """What is wrong with the generation ``parquet_path`` links to (for verify-only): shards missing,
    of another size than the manifest says, out of CID order, or parquet files the manifest does not
    name (pandas would read those too)."""
    try:
        directory = generation_dir(parquet_path)
        manifest = read_manifest(directory)
    except CorruptData as exc:
        return [str(exc)]
    problems: list[str] = []
    named = {shard.file for shard in manifest.shards}
    extra = sorted(name for name in os.listdir(directory) if name.endswith(".parquet") and name not in named)
    if extra:
        problems.append(f"{directory}: parquet files the manifest does not name: {', '.join(extra)}")
    previous_max: str | None = None
    for shard in manifest.shards:
        path = directory / shard.file
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            continue
        if not stat.S_ISREG(info.st_mode):
            problems.append(f"{path}: not a regular file")
        elif info.st_size != shard.bytes:
            problems.append(f"{path}: {info.st_size} bytes, the manifest says {shard.bytes}")
        if previous_max is not None and shard.min_cid <= previous_max:
            problems.append(f"{path}: its CIDs overlap the shard before it")
        previous_max = shard.max_cid
    return problems


# -- writing (backend lock held) --


def publish(
    parquet_path: Path, parts: Sequence[KeptShard | pa.Table], columns: Sequence[str], write_shard: ShardWriter
) -> Manifest:
    """Make ``parts`` (in CID order: kept shards and new tables) the backend's next generation and
    point ``parquet_path`` at it. Crash-safe: until the final rename nothing a reader sees changed."""
    shard_root = _shard_root(parquet_path.parent)
    number = _next_generation(shard_root)
    temp = shard_root / f"{TEMP_MARKER}{os.getpid()}.{secrets.token_hex(4)}"
    os.mkdir(temp)
    try:
        targets = [temp / shard_name(index, number) for index in range(len(parts))]
        with ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="pinfs-publish") as pool:
            infos = list(pool.map(lambda part, target: _place(part, target, write_shard), parts, targets))
        _write_manifest(temp, tuple(columns), infos)
        fsync_dir(temp)
        final = shard_root / f"g{number:010d}"
        os.rename(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    fsync_dir(shard_root)
    point_link(parquet_path, final.name)
    return Manifest(number, tuple(columns), tuple(infos))


def point_link(parquet_path: Path, generation: str) -> None:
    """Atomically make ``parquet_path`` a link to ``generation`` (replacing a file or an older link)."""
    link = parquet_path.with_name(f".{parquet_path.name}{TEMP_MARKER}{os.getpid()}.{secrets.token_hex(4)}")
    os.symlink(f"{SHARD_DIR}/{generation}", link)
    try:
        os.replace(link, parquet_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        raise
    fsync_dir(parquet_path.parent)


def _shard_root(backend_dir: Path) -> Path:
    shard_root = backend_dir / SHARD_DIR
    with contextlib.suppress(FileExistsError):
        os.mkdir(shard_root, 0o755)
    if not stat.S_ISDIR(os.lstat(shard_root).st_mode):
        raise CorruptData(f"{shard_root}: is not a directory; refusing to write through it")
    return shard_root


def _next_generation(shard_root: Path) -> int:
    numbers = [int(match.group(1)) for name in os.listdir(shard_root) if (match := _GENERATION.match(name))]
    return max(numbers, default=0) + 1


def _place(part: KeptShard | pa.Table, target: Path, write_shard: ShardWriter) -> ShardInfo:
    if isinstance(part, KeptShard):
        try:
            os.link(part.path, target, follow_symlinks=False)
        except OSError:  # a filesystem without hard links: copy (slower, same result)
            shutil.copyfile(part.path, target, follow_symlinks=False)
        return replace(part.info, file=target.name)
    return write_shard(target, part)


def _write_manifest(directory: Path, columns: tuple[str, ...], infos: list[ShardInfo]) -> None:
    document = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "columns": list(columns),
        "count": sum(info.rows for info in infos),
        "shards": [
            {"file": info.file, "rows": info.rows, "bytes": info.bytes, "groups": [list(g) for g in info.groups]}
            for info in infos
        ],
    }
    path = directory / MANIFEST_NAME
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, separators=(",", ":"))
        handle.flush()
        os.fsync(handle.fileno())


def collect_garbage(backend_dir: Path, grace_seconds: float = GENERATION_GRACE_SECONDS) -> list[str]:
    """Remove generations no reader can need (``backend_lock`` removes unfinished ones).

    Kept: the current generation, the one before it, and any superseded less than ``grace_seconds``
    ago (its successor's age says when). Call with the backend's lock held."""
    shard_root = backend_dir / SHARD_DIR
    try:
        names = sorted(os.listdir(shard_root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    current = _current_generation(backend_dir)
    generations = [name for name in names if _GENERATION.match(name)]
    removed: list[str] = []
    # When each generation stopped being current: when the next one was made, or for the last one, when
    # the backend went back to a single file.
    superseded = [_mtime(shard_root / name) for name in generations[1:]]
    if current is None and generations:
        superseded.append(_mtime(backend_dir / PARQUET_NAME))
    previous = generations[generations.index(current) - 1] if current in generations[1:] else None
    now = time.time()
    for name, since in zip(generations, superseded, strict=False):
        if name not in (current, previous) and now - since >= grace_seconds:
            removed.append(name)
    for name in removed:
        shutil.rmtree(shard_root / name, ignore_errors=True)
    return removed


def _current_generation(backend_dir: Path) -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink(backend_dir / PARQUET_NAME).split("/")[-1]
    return None


def _mtime(path: Path) -> float:
    try:
        return os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0
