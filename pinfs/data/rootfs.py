"""Where a data root lives: a local directory, or ``s3://bucket/prefix`` on any S3-compatible store.

A local root is named with ``pathlib.Path``. A root on S3 is named with ``S3Path``, a small path type with
the part of pathlib's interface pinfs uses (``/``, ``name``, ``parent``, ``exists``, ``is_file``,
``is_dir``, ``iterdir``, ``glob``, ``stat``, ``read_bytes``, ``write_bytes``, ``unlink``), so the layers
above name files the same way on both. What differs between the two is decided here and in
``pinfs.data.fsutil`` (atomic writes, locks), once:

* Writes. A local file is replaced through a temporary file and a rename; an S3 object by one PUT,
  which S3 makes atomic. Where two writers could race, the PUT is conditional (``put_object`` with
  ``if_absent`` or ``if_match``): If-None-Match / If-Match, which S3, R2, MinIO and SeaweedFS honour.
  ``check_conditional_puts`` proves at start-up that the store really refuses a second conditional
  put, and pinfs refuses to write to one that does not (``ConditionalPutsIgnored``).
* Reads of parquet files go through ``local_copy``: an object is downloaded once into the local read
  cache (``$PINFS_CACHE_DIR`` or ``~/.cache/pinfs``), under a name made of its ETag, and read there.
  The table's data files never change, so they are fetched once per host while their copy is kept;
  the cache is bounded (``PINFS_DISK_CACHE_MB``) and drops the least recently used copies
  (``pinfs.data.readcache``). In a mount (``read_cold_files_by_ranges``), a data file that is not
  there yet is read by ranges instead (``open_object``: its footer, then the row groups asked for),
  and one opened again is downloaded whole on a background thread for later readers: a cold lookup
  then reads one row group (~350 KB) instead of the whole ~2.6 MB file first (issue #13's ``cat
  status`` target). A command, which mostly reads files whole, downloads them as before (and the next
  command finds them).
* What a listing or ``stat`` answered is kept for ``S3_METADATA_SECONDS``: a mount asks often, and
  changes made elsewhere must show within 2 s (CONTRACT §2). Writes through this process are seen at once.
* Credentials and the endpoint come from the standard variables (``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``; ``AWS_ALLOW_HTTP=true`` for a plain
  HTTP endpoint), which pyarrow, boto3 and delta-rs all read.
* Reads use pyarrow's S3 client, writes boto3's (``pinfs.data.s3client`` says why).

The S3 client, its request bounds and its errors (one line each: a missing object is
``FileNotFoundError`` as for a local file, a refused login ``S3AccessDenied``, an unreachable endpoint
``S3Unreachable``) are in ``pinfs.data.s3client``.

Threading: the metadata cache has its own lock, made anew in a forked child. Background downloads run on
one daemon thread (``_Fetcher``); the conditional-put check holds a lock, so a write waits for a check
another thread is making.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import logging
import os
import stat as stat_module
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from pinfs.data.readcache import added, disk_cache_limit, objects_dir, use
from pinfs.data.s3client import (
    ConditionalPutsIgnored,
    PreconditionFailed,
    calling,
    reading,
    s3_client,
    s3_filesystem,
    start_filesystem,
)
from pinfs.errors import PinfsError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
S3_METADATA_SECONDS = 1.0
_CACHE_LOCK = threading.Lock()


def _new_lock_in_child() -> None:
    """Another thread of the parent may have held the cache's lock at the fork: the child makes its own."""
    global _CACHE_LOCK, _CHECK_LOCK
    _CACHE_LOCK = threading.Lock()
    _CHECK_LOCK = threading.Lock()
    _FETCHER.__init__()  # its thread is not in the child


os.register_at_fork(after_in_child=_new_lock_in_child)


def is_s3(location: object) -> bool:
    return isinstance(location, S3Path) or (isinstance(location, str) and location.startswith(S3_SCHEME))


def parse_root(text: str) -> Path | S3Path:
    """``s3://bucket/prefix`` as an ``S3Path``; anything else as a local, absolute ``Path``."""
    if text.startswith(S3_SCHEME):
        bucket, _, key = text[len(S3_SCHEME) :].partition("/")
        if not bucket:
            raise PinfsError(f"{text!r}: no bucket (use s3://bucket/prefix)")
        disk_cache_limit()  # a bad PINFS_DISK_CACHE_MB is one line now, not an error at the first read
        return S3Path(bucket, key.strip("/"))
    return Path(os.path.expanduser(text)).resolve()


# -- metadata cache --


@dataclass(frozen=True)
class S3Stat:
    """What ``stat`` says of an object, in ``os.stat_result``'s names (the inode is made of the ETag,
    so that a file identity changes when the object does)."""

    st_size: int
    st_mtime_ns: int
    etag: str
    st_mode: int = stat_module.S_IFREG | 0o644
    st_dev: int = 0

    @property
    def st_mtime(self) -> float:
        return self.st_mtime_ns / 1e9

    @property
    def st_ino(self) -> int:
        return int(hashlib.blake2b(self.etag.encode(), digest_size=7).hexdigest(), 16)


_DIRECTORY = S3Stat(0, 0, "", stat_module.S_IFDIR | 0o755)
_metadata: dict[tuple[str, str], tuple[float, object]] = {}


def _remembered(kind: str, uri: str) -> object | None:
    with _CACHE_LOCK:
        found = _metadata.get((kind, uri))
    if found is None or time.monotonic() - found[0] > S3_METADATA_SECONDS:
        return None
    return found[1]


def _remember(kind: str, uri: str, value: object) -> None:
    with _CACHE_LOCK:
        if len(_metadata) > 20000:
            _metadata.clear()
        _metadata[(kind, uri)] = (time.monotonic(), value)


def _remember_head(uri: str, answer: dict[str, Any]) -> S3Stat:
    """Keep what a HEAD answered as the object's ``stat``."""
    info = S3Stat(
        int(answer["ContentLength"]), int(answer["LastModified"].timestamp() * 1e9), answer.get("ETag", "").strip('"')
    )
    _remember("stat", uri, info)
    return info


def forget_metadata(path: S3Path | None = None, *, below: bool = False) -> None:
    """Drop what was remembered of ``path`` and its folder (after a write), of everything under it too
    with ``below`` (after delta-rs, which writes behind this cache, committed), or of everything."""
    with _CACHE_LOCK:
        if path is None:
            _metadata.clear()
            return
        prefix = f"{path}/"
        for key in [
            key for key in _metadata if key[1] in (str(path), str(path.parent)) or (below and key[1].startswith(prefix))
        ]:
            del _metadata[key]


# -- the path type --


class S3Path:
    """An object or a folder (a key prefix) in a bucket: ``s3://bucket/key``."""

    def __init__(self, bucket: str, key: str = "") -> None:
        self.bucket = bucket
        self.key = key.strip("/")

    # -- naming --

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}" if self.key else f"{S3_SCHEME}{self.bucket}"

    def __repr__(self) -> str:
        return f"S3Path({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Path) and (self.bucket, self.key) == (other.bucket, other.key)

    def __hash__(self) -> int:
        return hash((self.bucket, self.key))

    def __lt__(self, other: S3Path) -> bool:
        return str(self) < str(other)

    def __truediv__(self, part: str) -> S3Path:
        part = str(part).strip("/")
        return S3Path(self.bucket, f"{self.key}/{part}" if self.key else part)

    def joinpath(self, *parts: str) -> S3Path:
        path = self
        for part in parts:
            path = path / part
        return path

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    @property
    def parent(self) -> S3Path:
        return S3Path(self.bucket, str(PurePosixPath(self.key).parent).strip("."))

    def with_name(self, name: str) -> S3Path:
        return self.parent / name

    def relative_to(self, other: S3Path) -> PurePosixPath:
        if self.bucket != other.bucket:
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.key).relative_to(other.key or ".")

    def expanduser(self) -> S3Path:
        return self

    def resolve(self) -> S3Path:
        return self

    # -- metadata --

    def stat(self) -> S3Stat:
        info = self._object_stat()
        if info is not None:
            return info
        if self._has_children():
            return _DIRECTORY
        raise FileNotFoundError(2, "no such object", str(self))

    def _object_stat(self) -> S3Stat | None:
        """The object's ``stat`` (one HEAD, remembered), or None when there is no object of that name
        (a folder may still be there: only ``stat``/``exists``/``is_dir`` also ask for a listing)."""
        uri = str(self)
        found = _remembered("stat", uri)
        if isinstance(found, S3Stat):
            return found
        if found is False or not self.key:
            return None
        try:
            with reading(uri), s3_filesystem().open_input_file(self.arrow_path) as opened:  # a HEAD, no GET
                answer = opened.metadata()
        except FileNotFoundError:
            _remember("stat", uri, False)
            return None
        info = S3Stat(
            int(answer["Content-Length"]),
            int(datetime.fromisoformat(answer["Last-Modified"].decode()).timestamp() * 1e9),
            _etag_of(answer),
        )
        _remember("stat", uri, info)
        return info

    def lstat(self) -> S3Stat:
        return self.stat()

    def exists(self) -> bool:
        try:
            self.stat()
        except FileNotFoundError:
            return False
        return True

    def is_file(self) -> bool:
        return self._object_stat() is not None

    def is_dir(self) -> bool:
        return self._has_children()

    def is_symlink(self) -> bool:
        return False  # S3 has no links: nothing here can lead outside the root

    def _has_children(self) -> bool:
        """Whether anything is under this prefix: a listing of at most one key (pyarrow's ``get_file_info``
        of a name that is no object), unless a whole listing is remembered."""
        from pyarrow import fs as pafs

        uri = str(self)
        found = _remembered("list", uri)
        if (isinstance(found, list) and found) or _remembered("folder", uri):
            return True
        with reading(uri):
            kind = s3_filesystem().get_file_info(self.arrow_path).type
        there = kind == pafs.FileType.Directory or (kind == pafs.FileType.File and bool(self._listing()))
        if there:  # a backend's folder is asked for at every pin: kept as long as other metadata
            _remember("folder", uri, True)
        return there

    def _listing(self) -> list[tuple[str, bool]]:
        """(name, is_folder) of what is directly under this prefix."""
        from pyarrow import fs as pafs

        uri = str(self)
        found = _remembered("list", uri)
        if isinstance(found, list):
            return found
        selector = pafs.FileSelector(self.arrow_path, allow_not_found=True, recursive=False)
        with reading(uri):
            infos = s3_filesystem().get_file_info(selector)
        entries = [(info.base_name, info.type == pafs.FileType.Directory) for info in infos]
        entries = [(name, folder) for name, folder in entries if name]
        _remember("list", uri, entries)
        return entries

    def iterdir(self) -> Iterator[S3Path]:
        for name, _folder in sorted(self._listing()):
            yield self / name

    def entries(self) -> list[tuple[str, bool]]:
        """(name, is_folder) of every entry, sorted: one LIST (``os.scandir`` of a folder)."""
        return sorted(self._listing())

    def glob(self, pattern: str) -> Iterator[S3Path]:
        for name, _folder in sorted(self._listing()):
            if fnmatch.fnmatchcase(name, pattern):
                yield self / name

    @property
    def arrow_path(self) -> str:
        """This path as ``pyarrow.fs.S3FileSystem`` names it: ``bucket/key``."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    # -- content --

    def read_bytes(self) -> bytes:
        if never_rewritten(self):
            with reading(str(self)), s3_filesystem().open_input_stream(self.arrow_path) as stream:
                return stream.read()
        out = io.BytesIO()  # an export or a config, replaced in place: exactly one version of it
        _read_one_version(self, out)
        return out.getvalue()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        put_object(self, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        with calling(str(self)):
            s3_client().delete_object(Bucket=self.bucket, Key=self.key)  # S3 deletes are idempotent
        forget_metadata(self)

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: an S3 folder exists as soon as something is put under it."""


# -- writing --


def put_object(
    target: S3Path,
    data: bytes | Path,
    *,
    if_absent: bool = False,
    if_match: str | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """Put ``data`` (bytes, or a local file to upload) at ``target`` in one atomic PUT; returns the new
    ETag. ``if_absent``: only if no object is there; ``if_match``: only if the object is still that
    ETag; ``metadata``: user metadata kept with the object (``head``). PreconditionFailed when the
    condition does not hold."""
    options: dict[str, Any] = {"Metadata": metadata} if metadata else {}
    if if_absent:
        options["IfNoneMatch"] = "*"
    if if_match is not None:
        options["IfMatch"] = f'"{if_match}"'
    body = data.read_bytes() if isinstance(data, Path) else data
    try:
        with calling(str(target)):
            answer = s3_client().put_object(Bucket=target.bucket, Key=target.key, Body=body, **options)
    finally:
        forget_metadata(target)
    return str(answer.get("ETag", "")).strip('"')


def head(target: S3Path) -> tuple[str, dict[str, str]] | None:
    """The object's ETag and user metadata, asked now (no cache); None when there is no object. What
    it answered is what a ``stat`` right after it says."""
    forget_metadata(target)
    try:
        with calling(str(target)):
            answer = s3_client().head_object(Bucket=target.bucket, Key=target.key)
    except FileNotFoundError:
        return None
    _remember_head(str(target), answer)
    return str(answer.get("ETag", "")).strip('"'), {k.lower(): v for k, v in answer.get("Metadata", {}).items()}


def start_client(location: object) -> None:
    """For a root on S3: make the reading client now, on a thread (``s3client.start_filesystem``)."""
    if isinstance(location, S3Path):
        start_filesystem()


def local_copy(path: Path | S3Path, etag: str | None = None) -> Path:
    """A local file holding ``path``'s bytes: the path itself for a local file; for an S3 object, a copy
    in the read cache named by its ETag (downloaded once; later calls reuse it)."""
    if not isinstance(path, S3Path):
        return path
    for attempt in range(3):
        version = etag if etag and attempt == 0 else path.stat().etag
        target = _copy_of(path, version)
        if use(target):  # there, and now safe from a prune for readcache.FRESH_SECONDS: time to open it
            return target
        try:
            _download(path, target, version)
            return target
        except PreconditionFailed:  # replaced since it was looked at: the copy of the version there now
            forget_metadata(path)
    raise PreconditionFailed(f"{path}: replaced again and again while being read")


def _read_one_version(path: S3Path, out: BinaryIO, etag: str | None = None) -> None:
    """Write the bytes of exactly one version of ``path`` (of ``etag`` when given: PreconditionFailed when
    another is there) to ``out``, from its start. pyarrow's reader makes a HEAD and then ranged GETs, so
    an object replaced in between would come out cut or mixed: its ETag is asked again after the read,
    and the read is made again when it changed."""
    for _attempt in range(3):
        out.seek(0)
        out.truncate()
        with reading(str(path)), s3_filesystem().open_input_file(path.arrow_path) as opened:
            seen = _etag_of(opened.metadata())
            if etag is not None and seen != etag:
                raise PreconditionFailed(f"{path}: changed by another writer meanwhile")
            size = opened.size()
            while chunk := opened.read(_CHUNK_BYTES):
                out.write(chunk)
        with reading(str(path)), s3_filesystem().open_input_file(path.arrow_path) as opened:  # a HEAD
            if out.tell() == size and _etag_of(opened.metadata()) == seen:
                return
    raise PreconditionFailed(f"{path}: replaced again and again while being read")


def _etag_of(metadata: Mapping[str, bytes]) -> str:
    return metadata.get("ETag", b"").decode().strip('"')


def _download(path: S3Path, target: Path, etag: str | None = None) -> None:
    """Put ``path``'s bytes at ``target`` in the read cache (through a temporary name): of version
    ``etag`` for an object replaced in place (``_read_one_version``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}")
    try:
        with open(temp, "w+b") as out:
            if never_rewritten(path):
                with reading(str(path)), s3_filesystem().open_input_stream(path.arrow_path) as stream:
                    while chunk := stream.read(_CHUNK_BYTES):  # pyarrow reads without the GIL
                        out.write(chunk)
            else:
                _read_one_version(path, out, etag)
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    added(target)


_CHUNK_BYTES = 4 << 20
FETCH_DELAY_SECONDS = 1.0
OPENED_REMEMBERED = 100_000


def never_rewritten(path: S3Path) -> bool:
    """Whether ``path`` is a parquet file of a Delta table (a data or insert file, a checkpoint) or one of
    its commits (``_delta_log/<version>.json``, put only if absent): written once under a name of its own,
    never replaced (``pinfs.data.delta``), so that reading it by ranges cannot mix versions."""
    parts = PurePosixPath(path.key).parts
    if not any(part.endswith(".delta") for part in parts[:-1]):
        return False
    name = parts[-1]
    commit = len(parts) > 1 and parts[-2] == "_delta_log" and name.endswith(".json") and name[: -len(".json")].isdigit()
    return path.suffix == ".parquet" or commit


def open_object(path: S3Path, info: S3Stat) -> pa.NativeFile:
    """A random-access reader of the version ``info`` of an object that never changes once written
    (a Delta data file: its name is new at each write): the local copy when the read cache has it.
    Else, with ``read_cold_files_by_ranges`` on (a mount), a reader by ranged GETs, which reads only
    what is asked (a parquet footer, one row group), and at its second open by ranges, the whole object
    is downloaded on a background thread for later ones; without it, the copy downloaded now
    (``local_copy``)."""
    import pyarrow as pa

    target = _copy_of(path, info.etag)
    if use(target):
        return pa.OSFile(str(target), "r")
    if not _FETCHER.enabled:
        return pa.OSFile(str(local_copy(path, info.etag)), "r")
    with reading(str(path)):
        opened = s3_filesystem().open_input_file(path.arrow_path)
    if opened.size() != info.st_size:  # replaced meanwhile: a new version, not this one (never for data files)
        opened.close()
        raise FileNotFoundError(2, "changed while being opened", str(path))
    _FETCHER.add(path, target)
    return opened


class _Fetcher:
    """Downloads whole objects into the read cache, one at a time, on a daemon thread (a process that
    exits leaves a temporary file, which the read cache removes later).

    Only an object opened by ranges a second time is fetched: the mount keeps a file it opened open
    (``StoreCache``), so a second open means it is read again and again (its reader was dropped, or a
    table scan reads it), while most files a lookup or a pin touches are read once. Fetching each of
    those 2.6 MB files beside the next commands cost the pin target more than it saved (measured)."""

    def __init__(self) -> None:
        self.enabled = False
        self._lock = threading.Lock()
        self._opened: set[Path] = set()  # opened by ranges once
        self._wanted: dict[Path, S3Path] = {}
        self._thread: threading.Thread | None = None

    def add(self, path: S3Path, target: Path) -> None:
        with self._lock:
            if target not in self._opened:
                if len(self._opened) > OPENED_REMEMBERED:
                    self._opened.clear()
                self._opened.add(target)
                return
            if target in self._wanted:
                return
            self._wanted[target] = path
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pinfs-s3-fetch", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        # Not at once: the read that asked for the file is still going on, and on a small host (or with
        # a local server) a download beside it would slow the very lookup it is meant to help.
        time.sleep(FETCH_DELAY_SECONDS)
        while True:
            with self._lock:
                if not self._wanted:
                    self._thread = None
                    return
                target, path = next(iter(self._wanted.items()))
            try:
                if not use(target):
                    _download(path, target)
            except (PinfsError, OSError) as exc:  # a later open reads by ranges, or downloads, again
                log.info("downloading %s into the read cache: %s", path, exc)
            with self._lock:
                self._wanted.pop(target, None)


_FETCHER = _Fetcher()


def read_cold_files_by_ranges(enabled: bool = True) -> None:
    """Have ``open_object`` read a data file the read cache lacks by ranges, and download it whole in the
    background (the mount turns this on: its lookups read one row group; a command reads files whole)."""
    _FETCHER.enabled = enabled


def keep_local(path: S3Path, local: Path, etag: str) -> None:
    """Put a file this process just uploaded to ``path`` into the read cache (no download later)."""
    target = _copy_of(path, etag)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(local, target)
    except OSError:
        return  # there already, or a cache on another file system: it is downloaded when needed
    use(target)  # used last now, not when the temporary file was written
    added(target)


def _copy_of(path: S3Path, etag: str) -> Path:
    """Where the read cache keeps the version ``etag`` of ``path`` (``pinfs.data.readcache``)."""
    digest = hashlib.sha256(f"{path}\0{etag}".encode()).hexdigest()
    return objects_dir() / digest[:2] / f"{digest}{path.suffix}"


# -- the start-up check --

_CHECKED: dict[str, bool] = {}
_CHECK_LOCK = threading.Lock()


def check_conditional_puts(root: S3Path) -> None:
    """Prove once per process and bucket that the store refuses a second If-None-Match put and a
    stale If-Match put; raise ConditionalPutsIgnored when it does not (pinfs then writes nothing
    there: without them, two hosts could overwrite each other's commits)."""
    if _CHECKED.get(root.bucket):
        return
    with _CHECK_LOCK:  # a write waits for the check another thread (the mount's warm-up) is making
        if not _CHECKED.get(root.bucket):
            _check_conditional_puts(root)


def _check_conditional_puts(root: S3Path) -> None:
    probe = root / ".pinfs-probes" / f"{uuid.uuid4().hex}"
    first = put_object(probe, b"1", if_absent=True)
    try:
        try:
            put_object(probe, b"2", if_absent=True)
        except PreconditionFailed:
            pass
        else:
            raise ConditionalPutsIgnored(
                f"{root}: the store accepted a second put with If-None-Match; refusing to write there, since "
                "concurrent writers could lose each other's commits (use a store with conditional puts: "
                "AWS S3, R2, MinIO, SeaweedFS)"
            )
        put_object(probe, b"3", if_match=first)
        try:
            put_object(probe, b"4", if_match=first)
        except PreconditionFailed:
            pass
        else:
            raise ConditionalPutsIgnored(f"{root}: the store accepted a put with a stale If-Match; refusing to write")
    finally:
        with contextlib.suppress(PinfsError, FileNotFoundError):
            probe.unlink()
    _CHECKED[root.bucket] = True


def require_writable(location: object) -> None:
    """Before the first write to a root on S3: the conditional-put check (``check_conditional_puts``)."""
    if isinstance(location, S3Path):
        check_conditional_puts(S3Path(location.bucket, location.key.split("/backends/")[0]))


def as_location(text: str) -> Path | S3Path:
    """A location written with ``str()`` back as the path it was (``S3Path`` or ``Path``)."""
    if text.startswith(S3_SCHEME):
        bucket, _, key = text[len(S3_SCHEME) :].partition("/")
        return S3Path(bucket, key)
    return Path(text)


def as_path(location: str | os.PathLike[str] | Path | S3Path) -> Path | S3Path:
    """``location`` as a path of its kind: an ``S3Path`` or ``Path`` stays what it is, text becomes one."""
    if isinstance(location, (Path, S3Path)):
        return location
    return as_location(os.fspath(location))
