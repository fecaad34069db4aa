"""The forms of ``pin_mappings.parquet`` written before the Delta table (issue #12), read-only.

Until its first write after the upgrade, a backend may still be stored as:

* one parquet file ``pin_mappings.parquet`` (every release so far, and what ipfs_kit_py writes); or
* the sharded form of issue #6: ``pin_mappings.parquet`` a relative symlink to
  ``.pin_mappings.d/g<10 digits>/``, which holds sorted shards ``part-XXXXX-g<N>.parquet`` with disjoint
  CID ranges and a manifest ``_pinfs_shards.json`` naming each with its rows, size and row groups.

Both are served as they are (``old_form_snapshot``) and converted into the table at the first write or
``pinfs migrate`` (``pinfs.data.store``). Nothing here writes; the only removal is ``remove_shard_dir``,
once the table and its export have replaced the sharded form.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pinfs.data.fsutil import SHARD_DIR
from pinfs.data.pieces import FileIdentity, FilePiece, OpenParquet
from pinfs.data.snapshots import PinSnapshot, StoreCache, memory_snapshot
from pinfs.data.tables import empty_table, first_duplicate_cid, parallel_map, read_whole_table
from pinfs.errors import CorruptData

MANIFEST_NAME = "_pinfs_shards.json"
MANIFEST_FORMAT = "pinfs_shards"
_GENERATION = re.compile(r"^g(\d{10})$")
_PART = re.compile(r"^part-\d{5}-(g\d{10})\.parquet$")


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


def is_sharded(parquet_path: Path) -> bool:
    return isinstance(parquet_path, Path) and os.path.islink(parquet_path)  # S3 has no links


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


# -- reading either form --


def old_form_exists(parquet_path: Path) -> bool:
    """Whether ``parquet_path`` is a file or pinfs' link to its shards."""
    return parquet_path.is_file() or is_sharded(parquet_path)


def old_form_snapshot(parquet_path: Path, cache: StoreCache) -> PinSnapshot | None:
    """The pins of the old form at ``parquet_path``, or None when there is none. CorruptData when it
    cannot be read."""
    try:
        info = parquet_path.lstat()
    except FileNotFoundError:
        return None
    if is_sharded(parquet_path):
        directory = generation_dir(parquet_path)
        identity = FileIdentity.of(directory)
        return cache.get_snapshot(identity, lambda: _sharded_snapshot(directory, identity, cache))
    identity = FileIdentity.of(parquet_path, info)
    return cache.get_snapshot(identity, lambda: _file_snapshot(parquet_path, identity, cache))


def _file_snapshot(path: Path, identity: FileIdentity, cache: StoreCache) -> PinSnapshot:
    opened = cache.open_file(("file", str(path), identity), lambda: OpenParquet(path))
    if opened.sorted_within_groups():
        groups = opened.groups or []
        piece = FilePiece(
            path,
            cache,
            opened.file.metadata.num_rows,
            groups[0].min_cid if groups else None,
            groups[-1].max_cid if groups else None,
            identity.size,
        )
        piece.key = ("file", str(path), identity)  # the reader opened above, whatever the path holds now
        return PinSnapshot(identity, [piece], cache, "parquet")
    # Written by another tool in another order: served sorted from memory; verify-only reports it.
    table = read_whole_table(path)
    duplicate = first_duplicate_cid(table)
    if duplicate is not None:
        raise CorruptData(f"{path}: CID {duplicate} appears more than once")
    return memory_snapshot(table, cache, identity, "parquet")


def _sharded_snapshot(directory: Path, identity: FileIdentity, cache: StoreCache) -> PinSnapshot:
    manifest = read_manifest(directory)
    pieces = [
        FilePiece(directory / shard.file, cache, shard.rows, shard.min_cid, shard.max_cid, shard.bytes)
        for shard in manifest.shards
    ]
    return PinSnapshot(identity, pieces, cache, "parquet")


def read_old_form(parquet_path: Path) -> pa.Table:
    """Every pin of the old form, as one sorted table (CorruptData when unreadable or a CID repeats)."""
    if is_sharded(parquet_path):
        files = data_files(parquet_path)
        tables = parallel_map(read_whole_table, files)
        try:
            table = pa.concat_tables(tables) if tables else empty_table()
        except pa.ArrowInvalid as exc:
            raise CorruptData(f"{parquet_path}: shards differ in their columns ({exc})") from None
    else:
        table = read_whole_table(parquet_path)
    duplicate = first_duplicate_cid(table)
    if duplicate is not None:
        raise CorruptData(f"{parquet_path}: CID {duplicate} appears more than once")
    return table


def remove_shard_dir(backend_dir: Path) -> None:
    """Remove the sharded form's directory once nothing links to it any more (after the upgrade)."""
    if not isinstance(backend_dir, Path) or is_sharded(backend_dir / "pin_mappings.parquet"):  # S3: never sharded
        return
    shard_root = backend_dir / SHARD_DIR
    if shard_root.is_dir() and not shard_root.is_symlink():
        shutil.rmtree(shard_root, ignore_errors=True)
