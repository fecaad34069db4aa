"""Storage drivers: where a backend keeps the CAR files of its pins, behind one small interface.

A driver stores bytes under *keys*: relative POSIX paths below the backend's storage root (a directory
for filesystem/local/sshfs, ``bucket/prefix`` for s3). A pin's ``car_file_path`` (``/s3-bucket/cars/
<cid>.car``) becomes a key by ``key_for``: the leading ``/`` is stripped; ``..``, NUL and empty
components are refused, so a path read from a parquet can never escape the storage root.

Drivers: ``FilesystemDriver`` (atomic temp+rename writes) and ``S3Driver`` (``pyarrow.fs.S3FileSystem``,
any S3-compatible endpoint, short timeouts and one retry so an unreachable endpoint fails in seconds).
Other types (github, huggingface, storacha, ftp, ipfs, unknown) have no driver here, and a backend
without any config file has no known storage: ``driver_for`` raises ``Unsupported`` for both. A
misconfigured (config present, settings missing) or unreachable backend raises ``DriverError``.

Every call is synchronous and may block on the network; callers run them off the event loop.
"""

from __future__ import annotations

import os
import posixpath
import socket
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from pinfs.backends import Backend
from pinfs.errors import CorruptData, NotFound, PinfsError, Unsupported
from pinfs.fsutil import atomic_write_bytes

FILESYSTEM_DRIVER_TYPES = frozenset({"filesystem", "local", "sshfs"})
S3_TYPES = frozenset({"s3"})
CONNECT_TIMEOUT = 3.0  # seconds
REQUEST_TIMEOUT = 20.0
MAX_ATTEMPTS = 2
# A content CAR bigger than this is not read into memory by sync/verify.
MAX_OBJECT_BYTES = 1 << 30


class DriverError(PinfsError):
    """A backend's storage cannot be used: misconfigured, unreachable, or a request failed."""


class Driver(Protocol):
    """What sync, verify and backups need from a backend's storage."""

    kind: str

    def describe(self) -> str: ...

    def check(self) -> None:
        """Raise DriverError when the storage cannot be reached at all."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; NotFound when there is none."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (recursive), sorted."""


def key_for(car_file_path: str) -> str:
    """A pin's ``car_file_path`` as a key below the storage root; CorruptData when it is unsafe."""
    if not isinstance(car_file_path, str) or not car_file_path.strip("/"):
        raise CorruptData(f"car_file_path {car_file_path!r} is empty")
    if "\0" in car_file_path or "\\" in car_file_path:
        raise CorruptData(f"car_file_path {car_file_path!r} contains a NUL or backslash")
    parts = car_file_path.strip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise CorruptData(f"car_file_path {car_file_path!r} has an empty, '.' or '..' component")
    return "/".join(parts)


def _check_key(key: str) -> str:
    return key_for(key)


def has_driver(backend: Backend) -> bool:
    return backend.type in FILESYSTEM_DRIVER_TYPES or backend.type in S3_TYPES


def driver_for(backend: Backend, root: Path | None = None) -> Driver:
    """The driver of ``backend``. Unsupported: no driver for its type; DriverError: misconfigured."""
    if backend.config_error:
        raise DriverError(f"backend {backend.name!r}: {backend.config_error}")
    if not has_driver(backend):
        raise Unsupported(f"no storage driver for backend type {backend.type!r} on this machine")
    if backend.config_path is None and not backend.config:
        raise Unsupported(f"backend {backend.name!r} has no config file, so where its storage is is unknown")
    if backend.type in FILESYSTEM_DRIVER_TYPES:
        return FilesystemDriver.from_backend(backend, root)
    if backend.type in S3_TYPES:
        return S3Driver.from_backend(backend)
    raise Unsupported(f"no storage driver for backend type {backend.type!r} on this machine")


# -- filesystem --


class FilesystemDriver:
    """A directory (local disk, or an sshfs mount point that must already be mounted)."""

    kind = "filesystem"

    def __init__(self, base: Path, *, create: bool) -> None:
        self.base = base
        self.create = create

    @classmethod
    def from_backend(cls, backend: Backend, root: Path | None = None) -> FilesystemDriver:
        raw = backend.setting("storage_path", "path", "base_path", "mount_point", "local_path")
        if not isinstance(raw, str) or not raw.strip():
            raise DriverError(f"backend {backend.name!r} ({backend.type}): no storage_path in its config")
        base = Path(os.path.expanduser(raw.strip()))
        if not base.is_absolute():
            base = (root or backend.directory.parent.parent) / base
        # An sshfs mount point that is not mounted must not be filled with files.
        return cls(base, create=backend.type != "sshfs")

    def describe(self) -> str:
        return str(self.base)

    def check(self) -> None:
        if self.base.is_dir():
            return
        if self.create and not self.base.exists():
            try:
                self.base.mkdir(parents=True, exist_ok=True)
                return
            except OSError as exc:
                raise DriverError(f"storage_path {self.base} cannot be created ({exc.strerror or exc})") from None
        raise DriverError(f"storage_path {self.base} is not a directory (not mounted?)")

    def _path(self, key: str) -> Path:
        return self.base / _check_key(key)

    def put(self, key: str, data: bytes) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        except OSError as exc:
            raise DriverError(f"writing {target} failed ({exc.strerror or exc})") from None

    def get(self, key: str) -> bytes:
        target = self._path(key)
        try:
            if target.stat().st_size > MAX_OBJECT_BYTES:
                raise DriverError(f"{target} is larger than {MAX_OBJECT_BYTES} bytes")
            return target.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{target} does not exist") from None
        except IsADirectoryError:
            raise NotFound(f"{target} is a directory, not a file") from None
        except OSError as exc:
            raise DriverError(f"reading {target} failed ({exc.strerror or exc})") from None

    def size(self, key: str) -> int | None:
        target = self._path(key)
        try:
            info = target.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise DriverError(f"stat {target} failed ({exc.strerror or exc})") from None
        return info.st_size if target.is_file() else None

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def list(self, prefix: str = "") -> list[str]:
        start = self.base / _check_key(prefix) if prefix.strip("/") else self.base
        keys: list[str] = []
        for directory, _dirs, files in os.walk(start):
            for name in files:
                if ".pinfs-tmp." in name:
                    continue
                keys.append(Path(directory, name).relative_to(self.base).as_posix())
        return sorted(keys)


# -- s3 --


def _first(backend: Backend, *names: str) -> Any:
    value = backend.setting(*names)
    return value if value not in (None, "") else None


class S3Driver:
    """An S3 bucket (any S3-compatible endpoint) through ``pyarrow.fs.S3FileSystem``."""

    kind = "s3"

    def __init__(self, bucket: str, prefix: str, options: dict[str, Any], endpoint: str | None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.options = options
        self.endpoint = endpoint
        self._fs: Any = None

    @classmethod
    def from_backend(cls, backend: Backend) -> S3Driver:
        bucket = _first(backend, "bucket", "bucket_name")
        if not isinstance(bucket, str) or not bucket.strip() or "/" in bucket.strip("/"):
            raise DriverError(f"backend {backend.name!r} (s3): no valid 'bucket' in its config")
        prefix = _first(backend, "prefix", "key_prefix", "path_prefix") or ""
        prefix = key_for(str(prefix)) if str(prefix).strip("/") else ""
        options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "request_timeout": REQUEST_TIMEOUT,
        }
        region = (
            _first(backend, "region", "region_name", "aws_region")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
        )
        options["region"] = str(region) if region else "us-east-1"
        endpoint = (
            _first(backend, "endpoint_url", "endpoint", "endpoint_override", "s3_endpoint")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint:
            parsed = urlparse(str(endpoint) if "://" in str(endpoint) else f"https://{endpoint}")
            if not parsed.netloc:
                raise DriverError(f"backend {backend.name!r} (s3): endpoint {endpoint!r} is not a URL")
            options["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
            options["scheme"] = parsed.scheme or "https"
            if _first(backend, "force_path_style", "path_style") is not False:
                options["force_virtual_addressing"] = False
        access = _first(backend, "access_key", "access_key_id", "aws_access_key_id")
        secret = _first(backend, "secret_key", "secret_access_key", "aws_secret_access_key")
        token = _first(backend, "session_token", "aws_session_token")
        if access is None and secret is None:
            access = os.environ.get("AWS_ACCESS_KEY_ID")
            secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
            token = token or os.environ.get("AWS_SESSION_TOKEN")
        if access is not None and secret is not None:
            options["access_key"] = str(access)
            options["secret_key"] = str(secret)
            if token:
                options["session_token"] = str(token)
        elif access is not None or secret is not None:
            raise DriverError(f"backend {backend.name!r} (s3): access key and secret key must be given together")
        elif not (os.environ.get("AWS_PROFILE") or Path("~/.aws/credentials").expanduser().is_file()):
            # No credentials anywhere: anonymous, rather than letting the SDK probe instance metadata.
            options["anonymous"] = True
        return cls(bucket.strip().strip("/"), prefix, options, str(endpoint) if endpoint else None)

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self.endpoint}" if self.endpoint else where

    def _filesystem(self) -> Any:
        if self._fs is None:
            from pyarrow import fs as pafs

            try:
                self._fs = pafs.S3FileSystem(
                    **self.options, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS)
                )
            except (OSError, ValueError, TypeError) as exc:
                raise DriverError(f"{self.describe()}: cannot set up the S3 client ({_one_line(exc)})") from None
        return self._fs

    def _path(self, key: str) -> str:
        key = _check_key(key)
        return posixpath.join(self.bucket, self.prefix, key) if self.prefix else f"{self.bucket}/{key}"

    def _error(self, what: str, exc: BaseException) -> DriverError:
        return DriverError(f"{self.describe()}: {what} failed ({_one_line(exc)})")

    def _probe_endpoint(self) -> None:
        """Open a TCP connection to the endpoint: the SDK reports some network failures as 'not found'."""
        host = self.options.get("endpoint_override") or f"s3.{self.options['region']}.amazonaws.com"
        parsed = urlparse(f"{self.options.get('scheme', 'https')}://{host}")
        port = parsed.port or (80 if parsed.scheme == "http" else 443)
        try:
            with socket.create_connection((parsed.hostname or "", port), timeout=CONNECT_TIMEOUT):
                pass
        except OSError as exc:
            raise DriverError(f"{self.describe()}: cannot connect to {parsed.hostname}:{port} ({exc})") from None

    def check(self) -> None:
        from pyarrow import fs as pafs

        self._probe_endpoint()
        try:
            info = self._filesystem().get_file_info(self.bucket)
        except OSError as exc:
            raise self._error("reaching the bucket", exc) from None
        if info.type == pafs.FileType.NotFound:
            raise DriverError(f"{self.describe()}: bucket {self.bucket!r} does not exist")

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            metadata = {"Content-Type": "application/vnd.ipld.car"}
            with self._filesystem().open_output_stream(path, metadata=metadata) as out:
                out.write(data)
        except OSError as exc:
            raise self._error(f"writing {path}", exc) from None

    def get(self, key: str) -> bytes:
        path = self._path(key)
        size = self.size(key)
        if size is None:
            raise NotFound(f"{self.describe()}: {key} does not exist")
        if size > MAX_OBJECT_BYTES:
            raise DriverError(f"{self.describe()}: {key} is larger than {MAX_OBJECT_BYTES} bytes")
        try:
            with self._filesystem().open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            raise NotFound(f"{self.describe()}: {key} does not exist") from None
        except OSError as exc:
            raise self._error(f"reading {path}", exc) from None

    def size(self, key: str) -> int | None:
        from pyarrow import fs as pafs

        path = self._path(key)
        try:
            info = self._filesystem().get_file_info(path)
        except OSError as exc:
            raise self._error(f"stat {path}", exc) from None
        if info.type != pafs.FileType.File:
            return None
        return int(info.size)

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def list(self, prefix: str = "") -> list[str]:
        from pyarrow import fs as pafs

        base = self._path(prefix) if prefix.strip("/") else posixpath.join(self.bucket, self.prefix).rstrip("/")
        top = posixpath.join(self.bucket, self.prefix).rstrip("/") + "/"
        try:
            infos = self._filesystem().get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise self._error(f"listing {base}", exc) from None
        return sorted(info.path[len(top) :] for info in infos if info.type == pafs.FileType.File)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines)[:300] if lines else type(exc).__name__
