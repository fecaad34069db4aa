"""The S3 driver: a bucket on any S3-compatible endpoint through ``pyarrow.fs.S3FileSystem``.

Short timeouts and one retry, so an unreachable endpoint fails in seconds. Credentials come from the
config (``access_key``/``secret_key``), else the usual AWS environment variables and files; with none
at all the bucket is read anonymously rather than letting the SDK probe instance metadata.
"""

from __future__ import annotations

import os
import posixpath
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import cachetools

from pinfs.data.backends import Backend
from pinfs.errors import NotFound
from pinfs.ops.drivers.base import (
    CONNECT_TIMEOUT,
    MAX_OBJECT_BYTES,
    REQUEST_TIMEOUT,
    BaseDriver,
    DriverError,
    Secrets,
    key_for,
)
from pinfs.ops.drivers.base import checked_key as _check_key
from pinfs.ops.drivers.base import setting as _first

MAX_ATTEMPTS = 2
# S3's limit for one PUT (larger objects need a multipart upload, which pyarrow does for a stream).
S3_MAX_OBJECT_BYTES = 5 * 1024**4

# Endpoints tried lately and what happened ("" when it answered): health probes each backend, and many
# backends often share one endpoint (issue #16: a blackholed one must not cost its timeout each time).
_PROBED: cachetools.TTLCache = cachetools.TTLCache(maxsize=64, ttl=30)
_PROBED_LOCK = threading.Lock()


class S3Driver(BaseDriver):
    """An S3 bucket (any S3-compatible endpoint) through ``pyarrow.fs.S3FileSystem``."""

    kind = "s3"
    max_object_bytes = S3_MAX_OBJECT_BYTES

    def __init__(self, bucket: str, prefix: str, options: dict[str, Any], endpoint: str | None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.options = options
        self.endpoint = endpoint
        self._fs: Any = None
        self.secrets = Secrets()
        for name in ("secret_key", "session_token"):
            self.secrets.add(str(options.get(name) or ""))

    @classmethod
    def from_backend(cls, backend: Backend, root: Path | None = None) -> S3Driver:
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
                raise self.secrets.error(f"{self.describe()}: cannot set up the S3 client", exc) from None
        return self._fs

    def _path(self, key: str) -> str:
        key = _check_key(key)
        return posixpath.join(self.bucket, self.prefix, key) if self.prefix else f"{self.bucket}/{key}"

    def _error(self, what: str, exc: BaseException) -> DriverError:
        return self.secrets.error(f"{self.describe()}: {what} failed", exc)

    def _probe_endpoint(self) -> None:
        """Open a TCP connection to the endpoint: the SDK reports some network failures as 'not found'."""
        host = self.options.get("endpoint_override") or f"s3.{self.options['region']}.amazonaws.com"
        parsed = urlparse(f"{self.options.get('scheme', 'https')}://{host}")
        port = parsed.port or (80 if parsed.scheme == "http" else 443)
        address = (parsed.hostname or "", port)
        with _PROBED_LOCK:
            known = _PROBED.get(address)
        if known is None:
            try:
                with socket.create_connection(address, timeout=CONNECT_TIMEOUT):
                    known = ""
            except OSError as exc:
                known = str(exc)
            with _PROBED_LOCK:
                _PROBED[address] = known
        if known:
            raise DriverError(f"{self.describe()}: cannot connect to {parsed.hostname}:{port} ({known})")

    def probe(self) -> None:
        self._probe_endpoint()

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
