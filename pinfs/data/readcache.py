"""This host's local cache directory, and the bound on its copies of S3 objects (issue #13).

``cache_root()`` is ``$PINFS_CACHE_DIR``, else ``~/.cache/pinfs``. Under it, ``objects/<2 hex>/<digest><suffix>``
holds the local copies of parquet objects read from (or just written to) a root on S3
(``pinfs.data.rootfs.local_copy``/``keep_local``); ``locks/`` holds the lock files of ``pinfs.data.fsutil``
and this module's, ``tmp/`` the files being uploaded.

``objects/`` is bounded: ``PINFS_DISK_CACHE_MB`` megabytes (default 2048; not ``--cache-mb``, the mount's
*memory* cache). A copy's mtime is the time it was last used: it is set when the copy is made and
touched at every use, so the least recently used copies go first. There is no index to go out of step
with the directory: the directory is the index. When a copy is added and the cache is over its bound,
the oldest copies are unlinked until it is under ``LOW_WATER`` of the bound (so that a full cache does
not scan at every add). What this process added is counted as it goes; the directory is scanned again
after ``RESCAN_EVERY`` adds, to see what the other processes sharing it added, or when the count goes
over the bound.

Several processes share the directory (mounts and CLIs of one user), so removing a copy must not hurt
another's reader:

* A copy open in another process stays readable once unlinked (POSIX), so unlinking is enough.
* A copy touched less than ``FRESH_SECONDS`` ago is never removed: a reader that was just handed its
  path (``use``) opens it within that time.
* ``use`` touches a copy under a shared ``flock`` and the pruner re-checks each copy's mtime and
  unlinks it under the exclusive one, so a copy cannot be found old, then touched, then unlinked: the
  toucher either sees it gone (and downloads it again) or has made it fresh before it was looked at.
* Copies are written to a temporary name and renamed (``rootfs.local_copy``); a temporary name starts
  with ``.``, is never counted or removed while in use, and is removed once ``STALE_TEMP_SECONDS`` old
  (a download that died with its process).

Threading: the count has its own lock; one thread of a process prunes at a time (another that would
prune meanwhile skips it). Both locks are made anew in a forked child.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pinfs.errors import InvalidInput

LIMIT_VARIABLE = "PINFS_DISK_CACHE_MB"
DEFAULT_LIMIT_MB = 2048
OBJECTS_DIR = "objects"
LOCK_FILE = "read-cache.lock"
LOW_WATER = 0.9  # a prune goes down to this share of the bound
RESCAN_EVERY = 32  # adds between two scans of the directory
FRESH_SECONDS = 10.0  # a copy used this recently is never removed
STALE_TEMP_SECONDS = 3600.0  # a temporary copy this old belongs to a download that died

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """The local read cache and lock directory of this user."""
    configured = os.environ.get("PINFS_CACHE_DIR")
    base = Path(configured) if configured else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "pinfs"
    base.mkdir(parents=True, exist_ok=True)
    return base


def objects_dir() -> Path:
    return cache_root() / OBJECTS_DIR


def disk_cache_limit() -> int:
    """The bound of ``objects/`` in bytes, from ``PINFS_DISK_CACHE_MB``; InvalidInput when it is not a
    whole number of megabytes, 1 or more."""
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_LIMIT_MB << 20
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"{LIMIT_VARIABLE}={text!r}: give the local read cache's bound in MB, 1 or more")
    return int(text) << 20


# -- using and adding copies --


def use(copy: Path) -> bool:
    """Mark a cached copy as used now (its mtime), so that it stays for at least ``FRESH_SECONDS``; False
    when it is not there (never made, or removed by a prune)."""
    with _cache_lock(fcntl.LOCK_SH):
        try:
            os.utime(copy)
        except FileNotFoundError:
            return False
        except OSError:  # another user's copy, a read-only cache: there, though its use goes unrecorded
            return copy.is_file()
    return True


def added(copy: Path) -> None:
    """Count a copy just put into the cache, and prune when the cache is over its bound."""
    try:
        size = copy.stat().st_size
    except FileNotFoundError:
        return
    limit = disk_cache_limit()
    with _STATE.lock:
        _STATE.adds += 1
        if _STATE.total is not None and _STATE.adds < RESCAN_EVERY:
            _STATE.total += size
            if _STATE.total <= limit or time.monotonic() < _STATE.quiet_until:
                return
    try:
        prune(limit)
    except OSError as exc:  # the copy just made is there: a cache that cannot be pruned fails no read
        log.warning("the read cache %s could not be pruned: %s", objects_dir(), exc)


def prune(limit: int | None = None) -> int:
    """Scan ``objects/``, and when it holds more than ``limit`` bytes (default: ``disk_cache_limit``),
    unlink the least recently used copies until it is under ``LOW_WATER`` of it, sparing those used in
    the last ``FRESH_SECONDS``. Returns the bytes it holds afterwards (as far as this process saw)."""
    limit = disk_cache_limit() if limit is None else limit
    if not _STATE.pruning.acquire(blocking=False):
        return _STATE.total or 0  # another thread is at it
    try:
        copies = _scan(objects_dir())
        total = sum(size for _mtime, size, _path in copies)
        if total > limit:
            total = _remove_oldest(copies, total, int(limit * LOW_WATER))
        with _STATE.lock:
            _STATE.total, _STATE.adds = total, 0
            # Over the bound with only fresh copies left: scanning again at once would find the same.
            _STATE.quiet_until = time.monotonic() + FRESH_SECONDS / 2 if total > limit else 0.0
        return total
    finally:
        _STATE.pruning.release()


def _remove_oldest(copies: list[tuple[float, int, Path]], total: int, target: int) -> int:
    """Unlink the oldest of ``copies`` until ``total`` is at most ``target``; returns what is left."""
    with _cache_lock(fcntl.LOCK_EX):
        fresh_since = time.time() - FRESH_SECONDS
        for _mtime, size, path in sorted(copies):
            if total <= target:
                break
            try:
                now = path.lstat()  # used since the scan? (``use`` cannot touch it while we hold the lock)
                if now.st_mtime >= fresh_since:
                    continue
                path.unlink()
            except FileNotFoundError:  # another process removed it
                pass
            except OSError:  # another user's copy: left to that user's pinfs
                continue
            total -= size
    return total


def _scan(directory: Path) -> list[tuple[float, int, Path]]:
    """(mtime, size, path) of every copy under ``directory``; removes the temporary copies of dead
    downloads on the way."""
    copies: list[tuple[float, int, Path]] = []
    stale_before = time.time() - STALE_TEMP_SECONDS
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as shards:
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError), os.scandir(shard.path) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):  # removed meanwhile, or another user's
                        info = entry.stat(follow_symlinks=False)
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        if entry.name.startswith("."):
                            if info.st_mtime < stale_before:
                                os.unlink(entry.path)
                            continue
                        copies.append((info.st_mtime, info.st_size, Path(entry.path)))
    return copies


# -- state and locks --


@dataclass
class _State:
    """What this process knows of the cache's size between scans."""

    total: int | None = None  # bytes at the last scan, plus what was added since; None: never scanned
    adds: int = 0  # copies added since the last scan
    quiet_until: float = 0.0  # monotonic time before which being over the bound does not prompt a scan
    lock: threading.Lock = field(default_factory=threading.Lock)
    pruning: threading.Lock = field(default_factory=threading.Lock)


_STATE = _State()


def _new_locks_in_child() -> None:
    """Another thread of the parent may have held a lock at the fork: the child makes its own."""
    _STATE.lock = threading.Lock()
    _STATE.pruning = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)


@contextlib.contextmanager
def _cache_lock(operation: int) -> Iterator[None]:
    """The cache's ``flock``, shared (``use``) or exclusive (removing copies), across processes."""
    directory = cache_root() / "locks"
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
