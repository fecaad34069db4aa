"""The S3 clients of a root on S3 (``pinfs.data.rootfs``), delta-rs' storage options with the same
bounds, and S3's errors translated into pinfs errors of one line (a missing object is
``FileNotFoundError``, a refused login ``S3AccessDenied``, an unreachable endpoint ``S3Unreachable``,
remembered for ``UNREACHABLE_SECONDS``).

Two clients, each for what it does best (issue #13's speed targets, measured on the local server):

* Reads (HEAD, LIST, GET, ranged GET) go through ``pyarrow.fs.S3FileSystem`` (``s3_filesystem``):
  pyarrow is loaded by every pinfs process anyway, makes its client in ~40 ms, and answers a request
  in ~1.5 ms without holding the GIL. A mount answers reads without ever importing boto3.
* Writes go through boto3 (``s3_client``): conditional puts (If-None-Match, If-Match), user metadata
  and the ETag of what was put, which pyarrow's writer does not offer. Importing boto3 and making its
  client cost ~0.35 s, paid by the first write (or by the mount's warm-up thread, off the way of reads).

Threading: both clients are thread-safe; the client tables have their own lock. A forked child drops
the parent's clients (their pooled sockets are shared with the parent) and makes its own.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from pinfs.errors import PinfsError


class S3Error(PinfsError):
    """The store answered with an error other than not-found."""


class S3AccessDenied(S3Error):
    """The credentials were refused."""


class S3Unreachable(S3Error):
    """The endpoint did not answer."""


class PreconditionFailed(S3Error):
    """A conditional put lost: the object exists already, or changed since it was read."""


class ConditionalPutsIgnored(PinfsError):
    """The store accepted a put it should have refused; writing to it could lose commits."""


_CLIENTS: dict[tuple[str | None, ...], Any] = {}
_FILESYSTEMS: dict[tuple[str | None, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()
_MAKING_LOCK = threading.Lock()

# Bounds on every request, so that a server that stopped (or stopped answering) is an error in seconds,
# never a hang: the mount answers EIO for what it cannot read (issue #13). The wait for an answer is
# per read of the socket (boto3), or for a whole request of delta-rs (which only moves small log files).
CONNECT_SECONDS = 3
ANSWER_SECONDS = 10
ATTEMPTS = 2
# After the endpoint failed to answer, requests fail at once for this long instead of each waiting out
# its timeouts again (a listing in the mount would otherwise wait once per entry).
UNREACHABLE_SECONDS = 2.0
_unreachable_until: dict[str, float] = {}


def _configuration() -> tuple[str | None, ...]:
    return tuple(os.environ.get(name) for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_REGION"))


def s3_client() -> Any:
    """One boto3 client per process and configuration (the variables above), with the bounds above:
    the writer."""
    import boto3
    from botocore.config import Config

    key = _configuration()
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            config = Config(
                connect_timeout=CONNECT_SECONDS,
                read_timeout=ANSWER_SECONDS,
                retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
                s3={"addressing_style": "path"},
            )
            client = _CLIENTS[key] = boto3.client("s3", config=config, region_name=os.environ.get("AWS_REGION"))
        return client


def s3_filesystem() -> Any:
    """One ``pyarrow.fs.S3FileSystem`` per process and configuration, with the bounds above: the reader.
    It reads the same standard variables as boto3 (the endpoint and keys are passed on explicitly, so
    that both clients surely talk to the same store as the same user)."""
    key = _configuration()
    with _CLIENTS_LOCK:
        found = _FILESYSTEMS.get(key)
    if found is not None:
        return found
    with _MAKING_LOCK:  # one is made at a time: a caller waits for the one a thread is making (start_filesystem)
        with _CLIENTS_LOCK:
            found = _FILESYSTEMS.get(key)
        return found if found is not None else _new_filesystem(key)


def _new_filesystem(key: tuple[str | None, ...]) -> Any:
    from pyarrow import fs as pafs

    options: dict[str, Any] = {
        "connect_timeout": CONNECT_SECONDS,
        "request_timeout": ANSWER_SECONDS,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS),
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_override"] = endpoint
        options["force_virtual_addressing"] = False  # path style, as the boto3 client
    access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        options.update(access_key=access, secret_key=secret)
        if os.environ.get("AWS_SESSION_TOKEN"):
            options["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    try:
        filesystem = pafs.S3FileSystem(**options)
    except (OSError, ValueError, TypeError) as exc:
        raise S3Error(f"{_endpoint()}: cannot set up the S3 client ({exc})") from None
    with _CLIENTS_LOCK:
        return _FILESYSTEMS.setdefault(key, filesystem)


def start_filesystem() -> None:
    """Make ``s3_filesystem()`` on a thread (~30 ms of the AWS SDK's set-up, mostly without the GIL),
    so that a process about to import more (the mount) does not wait for it; what goes wrong is found
    again, and said, by the first request."""

    def make() -> None:
        with contextlib.suppress(PinfsError):
            s3_filesystem()

    threading.Thread(target=make, name="pinfs-s3-client", daemon=True).start()


def _after_fork_in_child() -> None:
    """A forked child makes its own client: the parent's pooled connections are the same sockets, and a
    child that used one could read an answer meant for another process (or leave one half-read). The
    locks are made anew, since another thread of the parent may have held them at the fork."""
    global _CLIENTS_LOCK, _MAKING_LOCK
    _CLIENTS_LOCK = threading.Lock()
    _MAKING_LOCK = threading.Lock()
    _CLIENTS.clear()
    _FILESYSTEMS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def delta_storage_options() -> dict[str, str]:
    """The same bounds for delta-rs (its object_store client), for a table on S3."""
    return {
        "connect_timeout": f"{CONNECT_SECONDS}s",
        "timeout": f"{ANSWER_SECONDS}s",
        "max_retries": str(ATTEMPTS - 1),
        "retry_timeout": f"{ATTEMPTS * ANSWER_SECONDS}s",
    }


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL", "the S3 endpoint")


def unreachable(where: str, why: str) -> S3Unreachable:
    """The error for a request the endpoint did not answer; requests fail at once for a moment after it."""
    endpoint = _endpoint()
    with _CLIENTS_LOCK:
        _unreachable_until[endpoint] = time.monotonic() + UNREACHABLE_SECONDS
    return S3Unreachable(f"{where}: cannot reach {endpoint} ({why})")


def _refuse_while_unreachable(where: str) -> None:
    endpoint = _endpoint()
    with _CLIENTS_LOCK:
        until = _unreachable_until.get(endpoint, 0.0)
    if time.monotonic() < until:
        raise S3Unreachable(f"{where}: cannot reach {endpoint} (it did not answer a moment ago)")


def _translate(error: Exception, where: str) -> Exception:
    """A botocore error as the pinfs error (or FileNotFoundError) a user can act on."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return FileNotFoundError(2, "no such object", where)
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status in (409, 412):
            return PreconditionFailed(f"{where}: changed by another writer meanwhile")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or status == 403:
            return S3AccessDenied(f"{where}: access denied ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        if code == "NoSuchBucket":
            return S3Error(f"{where}: the bucket does not exist")
        return S3Error(f"{where}: {code or status}: {error.response.get('Error', {}).get('Message', '')}".strip())
    if isinstance(error, NoCredentialsError):
        return S3AccessDenied(f"{where}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if isinstance(error, EndpointConnectionError) or "Connect" in type(error).__name__:
        return unreachable(where, type(error).__name__)
    if isinstance(error, ReadTimeoutError):
        return unreachable(where, f"no answer within {ANSWER_SECONDS} s")
    return S3Error(f"{where}: {type(error).__name__}: {error}")


@contextlib.contextmanager
def calling(where: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    _refuse_while_unreachable(where)
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise _translate(exc, where) from None


# pyarrow names S3's errors in its message: "AWS Error ACCESS_DENIED during HeadObject operation: ...".
_ARROW_DENIED = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "MISSING_AUTHENTICATION_TOKEN")
_ARROW_UNREACHABLE = ("NETWORK_CONNECTION", "REQUEST_TIMEOUT", "SERVICE_UNAVAILABLE", "SLOW_DOWN", "curlCode")


def _translate_arrow(error: OSError, where: str) -> Exception:
    """A pyarrow S3 error as the pinfs error (or FileNotFoundError) a user can act on, as ``_translate``."""
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(2, "no such object", where)
    text = str(error)
    code = text.partition("AWS Error ")[2].split(" ", 1)[0]
    if code in _ARROW_DENIED:
        return S3AccessDenied(f"{where}: access denied ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if code == "NO_SUCH_BUCKET":
        return S3Error(f"{where}: the bucket does not exist")
    if code in ("NO_SUCH_KEY", "RESOURCE_NOT_FOUND"):
        return FileNotFoundError(2, "no such object", where)
    if code in _ARROW_UNREACHABLE or any(word in text for word in _ARROW_UNREACHABLE):
        return unreachable(where, code or "no answer")
    lines = text.strip().splitlines()
    return S3Error(f"{where}: {lines[0] if lines else type(error).__name__}")


@contextlib.contextmanager
def reading(where: str) -> Iterator[None]:
    """Around a request of ``s3_filesystem()``: its errors as pinfs errors (``calling`` for boto3)."""
    _refuse_while_unreachable(where)
    try:
        yield
    except OSError as exc:
        raise _translate_arrow(exc, where) from None
