"""Crash-safe file replacement and cross-process locks, for a root on a local disk or on S3.

Every file pinfs writes goes through ``atomic_writer``/``atomic_write_bytes``: a temporary file in the
same directory, fsync, rename over the target, fsync of the directory. A crash at any instant leaves
either the old or the new file. On an S3 root (``pinfs.data.rootfs.S3Path``) the same calls make one PUT of
the whole object, which S3 makes atomic, from a local temporary file.

Writers to one backend serialize on ``backend_lock`` (``fcntl.flock`` on ``<backend dir>/.pinfs.lock``),
which works across processes and is released by the kernel if the holder dies. For an S3 root the lock
file is in the local cache directory: it serializes the processes of one host, which saves them retries;
correctness across hosts never rests on it (Delta commits and conditional puts, ``pinfs.data.store``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from pinfs.data.readcache import cache_root
from pinfs.data.rootfs import S3Path, put_object
from pinfs.errors import Busy, CorruptData, errno_of

TEMP_MARKER = ".pinfs-tmp."
LOCK_NAME = ".pinfs.lock"
EXPORT_LOCK_NAME = ".pinfs-export.lock"
# Where a sharded backend keeps its generations (``pinfs.shards``); its temporary directories are
# cleaned like the backend's temporary files.
SHARD_DIR = ".pin_mappings.d"


@contextlib.contextmanager
def naming(path: Path | S3Path) -> Iterator[None]:
    """Let an OSError raised while writing ``path`` name it, with its errno (issue #15, item 4: a full
    disk or a read-only root is one line naming the file). pyarrow and delta-rs raise OSErrors that
    name no file, and delta-rs' carry the errno only in a message of several lines."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None and TEMP_MARKER not in os.fspath(exc.filename):
            raise  # names its file already (a temporary file is named by what it was to become)
        code = errno_of(exc)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from exc


def fsync_dir(directory: Path | S3Path) -> None:
    if isinstance(directory, S3Path):
        return  # an S3 PUT is durable when it returns
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(target: Path) -> Path:
    """A unique temporary name beside ``target``; recognisable so stale ones can be cleaned."""
    return target.with_name(f".{target.name}{TEMP_MARKER}{os.getpid()}.{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_writer(target: Path | S3Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` atomically and, unless
    ``durable`` is False (a file nothing needs after a crash), durably.

    If the body raises, the temporary file is removed and ``target`` is untouched. On S3 the temporary
    file is local and the object is put in one PUT."""
    if isinstance(target, S3Path):
        with _s3_writer(target) as temp:
            yield temp
        return
    target = Path(target)
    temp = temp_path_for(target)
    try:
        with naming(target):
            yield temp
            if durable:
                fsync_file(temp)
            os.replace(temp, target)
            if durable:
                fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


@contextlib.contextmanager
def _s3_writer(target: S3Path) -> Iterator[Path]:
    temp = local_temp_for(target)
    try:
        yield temp
        put_object(target, temp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def local_temp_for(target: Path | S3Path) -> Path:
    """A fresh temporary file name: beside a local target, in the local cache for an S3 one."""
    if isinstance(target, S3Path):
        directory = cache_root() / "tmp"
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{target.name}{TEMP_MARKER}{os.getpid()}.{secrets.token_hex(4)}"
    return temp_path_for(target)


def atomic_write_bytes(target: Path | S3Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    if isinstance(target, S3Path):
        put_object(target, data)
        return
    with atomic_writer(target, durable=durable) as temp:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)


def remove_stale_temps(directory: Path | S3Path, older_than_seconds: float = 0.0) -> list[Path]:
    """Delete temporary files (and temporary links) left by writers that died. Call with the
    directory's lock held. A temporary file of a process still alive is kept: one that writes a CAR
    without the lock (an export refresh) may be at work on it."""
    removed: list[Path] = []
    if isinstance(directory, S3Path):
        return removed  # nothing temporary is ever put on S3
    now = time.time()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            if TEMP_MARKER not in entry.name or _writer_alive(entry.name):
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat(follow_symlinks=False).st_mtime < older_than_seconds:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)  # a new shard generation, never published
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _writer_alive(temp_name: str) -> bool:
    """Whether the process named in a temporary name (``temp_path_for``, or a shard generation being
    built) is still running (this one included: another of its threads may write without the lock)."""
    pid_text = temp_name.partition(TEMP_MARKER)[2].partition(".")[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")  # a zombie has finished writing for good


def _lock_file(backend_dir: Path | S3Path, name: str) -> Path:
    if isinstance(backend_dir, S3Path):
        digest = hashlib.sha256(str(backend_dir).encode()).hexdigest()[:32]
        directory = cache_root() / "locks"
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{digest}{name}"
    return Path(backend_dir) / name


@contextlib.contextmanager
def backend_lock(backend_dir: Path | S3Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the backend's exclusive write lock. ``timeout`` None waits forever; on expiry raise Busy.

    Stale temporary files are removed once the lock is taken: whoever left them is gone or finished.
    """
    fd = os.open(_lock_file(backend_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, backend_dir, timeout)
        remove_stale_temps(backend_dir, older_than_seconds=0.0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def export_lock(backend_dir: Path | S3Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the lock of the backend's exports (``pinfs.data.exports``): separate from ``backend_lock``, so
    that rebuilding the exports of a million pins never holds up a writer. Take it before
    ``backend_lock`` when both are needed, never after."""
    fd = os.open(_lock_file(backend_dir, EXPORT_LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, backend_dir, timeout)
        yield
    finally:
        os.close(fd)


def _acquire(fd: int, backend_dir: Path | S3Path, timeout: float | None) -> None:
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise Busy(f"{backend_dir}: another pinfs process is writing this backend") from None
            time.sleep(0.02)


# -- reading data files without following links --


def refuse_symlink(path: Path | S3Path) -> None:
    """CorruptData if ``path`` is a symbolic link: a data file that is a link may point outside the
    data root, and pinfs reads and writes nothing outside it. A missing path is not an error here."""
    if isinstance(path, Path) and os.path.islink(path):
        raise CorruptData(f"{path}: is a symlink; refusing to follow it")


def read_regular_file(path: Path | S3Path) -> bytes:
    """The bytes of ``path``, opened without following a symlink (CorruptData for one).
    FileNotFoundError and other OSErrors propagate."""
    if isinstance(path, S3Path):
        return path.read_bytes()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptData(f"{path}: is a symlink; refusing to follow it") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def unescape_mountinfo(field: str) -> str:
    """A path as /proc/self/mountinfo writes it, unescaped."""
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \\ooo (octal).
    out, index = [], 0
    while index < len(field):
        if field[index] == "\\" and index + 3 < len(field) and field[index + 1 : index + 4].isdigit():
            out.append(chr(int(field[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)
