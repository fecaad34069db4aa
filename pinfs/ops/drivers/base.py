"""The storage-driver interface every backend type implements, and what the drivers share.

A driver holds two kinds of things for its backend:

- **pin CARs** (``put_car``/``car_size``/``get_car``), addressed by the pin's CID *and* its key (the pin's
  ``car_file_path`` made safe by ``key_for``). A keyed store (directory, bucket, FTP, git, Hub repo)
  keeps the CAR at the key; a content-addressed one (IPFS node, Storacha) by the CID and ignores the key.
- **named files** (``put``/``get``/``size``/``exists``/``list``): the backend's own ``pin_mappings.car``
  and the backup copies under ``pin_mappings/<backend>/``. Only drivers with ``holds_files`` have them.

``flush`` ends a batch: drivers that make one commit per sync run (git, Hugging Face) stage every put
and publish them there; the others write at once and flush does nothing. A put is not durable until
flush returned.

Errors: ``DriverError`` (misconfigured, unreachable, refused login, a request failed), ``NotFound``
(no such object), ``CorruptData`` (an unsafe key), ``TooLarge`` (above the service's size limit,
raised before anything is sent). No error message ever holds a secret: ``Secrets.scrub`` removes every
secret value a driver was given from the text of an exception before it is raised.

Every call is synchronous and may block on the network; callers run them off the event loop.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from pinfs.data.backends import Backend
from pinfs.errors import CorruptData, PinfsError, Unsupported

CONNECT_TIMEOUT = 3.0  # seconds
REQUEST_TIMEOUT = 20.0
# A content CAR bigger than this is not read into memory by sync/verify.
MAX_OBJECT_BYTES = 1 << 30


class DriverError(PinfsError):
    """A backend's storage cannot be used: misconfigured, unreachable, or a request failed."""


class TooLarge(DriverError):
    """An object is larger than the service accepts in one file; nothing was sent."""


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


def in_repository(key: str, placeholder: str) -> str:
    """A key as a path inside a repository: the template's first component (``github-repo`` of
    ``/github-repo/cars/<cid>.car``, CONTRACT §1) stands for the repository itself, so the CAR is at
    ``cars/<cid>.car`` there. Any other key (a legacy ``car_file_path``) is kept whole."""
    key = key_for(key)
    prefix = placeholder + "/"
    return key[len(prefix) :] if key.startswith(prefix) else key


def one_line(exc: BaseException | str) -> str:
    """An exception's text on one line, at most 300 characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    return " ".join(lines)[:300]


def setting(backend: Backend, *names: str) -> Any:
    """A config setting (top level or under ``config:``), None when absent or empty."""
    value = backend.setting(*names)
    return value if value not in (None, "") else None


def text_setting(backend: Backend, *names: str, default: str | None = None) -> str | None:
    value = setting(backend, *names)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DriverError(f"backend {backend.name!r} ({backend.type}): '{names[0]}' must be a string")
    return str(value).strip() or default


def required(backend: Backend, *names: str) -> str:
    value = text_setting(backend, *names)
    if not value:
        raise DriverError(f"backend {backend.name!r} ({backend.type}): no '{names[0]}' in its config")
    return value


def flag_setting(backend: Backend, name: str, default: bool) -> bool:
    value = setting(backend, name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in {"false", "no", "0", "off"}


class Secrets:
    """The secret values a driver holds, so that none of them ever reaches a message.

    ``secret(backend, value_key, env_key)`` reads a secret from the config (``password``) or from the
    environment variable the config names (``password_env``); the value is remembered and
    ``scrub(text)`` replaces it (and its base64 and URL forms) with ``***``.
    """

    def __init__(self) -> None:
        self._values: list[str] = []

    def add(self, value: str) -> str:
        if value and len(value) >= 3:
            encoded = value.encode()
            forms = {value, base64.b64encode(encoded).decode(), base64.urlsafe_b64encode(encoded).decode()}
            self._values.extend(sorted(forms, key=len, reverse=True))
        return value

    def secret(self, backend: Backend, value_key: str | None, env_key: str, *, needed: bool) -> str | None:
        """The secret, or None when neither key is set and ``needed`` is False; DriverError otherwise."""
        value = setting(backend, value_key) if value_key else None
        if value is not None:
            return self.add(str(value))
        env_name = text_setting(backend, env_key)
        if env_name:
            found = os.environ.get(env_name)
            if not found:
                raise DriverError(
                    f"backend {backend.name!r} ({backend.type}): environment variable {env_name} "
                    f"(named by '{env_key}') is not set"
                )
            return self.add(found)
        if needed:
            where = f"'{value_key}' or '{env_key}'" if value_key else f"'{env_key}'"
            raise DriverError(f"backend {backend.name!r} ({backend.type}): no credential ({where}) in its config")
        return None

    def scrub(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, "***")
        return text

    def error(self, message: str, exc: BaseException | str | None = None) -> DriverError:
        """A DriverError ``message (exc)`` with every secret removed."""
        full = f"{message} ({one_line(exc)})" if exc is not None else message
        return DriverError(self.scrub(full))


class BaseDriver:
    """Defaults shared by the built-in drivers: pin CARs live at their key, puts are immediate."""

    kind = "base"
    #: the largest object the service takes in one file (None: no limit known)
    max_object_bytes: int | None = None
    #: named files (pin_mappings.car, backups) can be kept here
    holds_files = True
    #: ``car_size`` is the size of the CAR that was put (content-addressed stores rebuild their CARs)
    exact_sizes = True

    def describe(self) -> str:
        raise NotImplementedError

    def check(self) -> None:
        """Raise DriverError when the storage cannot be reached at all."""

    def probe(self) -> None:
        """A cheap reachability check for health (issue #16): raise DriverError when the storage
        surely cannot be reached, at the cost of one connection attempt at most. Default: nothing."""

    # -- named files: keyed drivers implement these --

    def put(self, key: str, data: bytes) -> None:
        raise Unsupported(f"{self.kind} storage keeps no named files")

    def get(self, key: str) -> bytes:
        """The object's bytes; NotFound when there is none."""
        raise Unsupported(f"{self.kind} storage keeps no named files")

    def size(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""
        raise Unsupported(f"{self.kind} storage keeps no named files")

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (recursive), sorted."""
        raise Unsupported(f"{self.kind} storage keeps no named files")

    def flush(self, message: str) -> None:
        """Publish what the puts since the last flush staged (one commit); nothing to do by default."""

    def close(self) -> None:
        """Release connections and helper processes (the driver may be used again: they reopen)."""

    # -- pin CARs --

    def limit_check(self, what: str, size: int) -> None:
        """TooLarge when ``size`` is above the service's file limit."""
        if self.max_object_bytes is not None and size > self.max_object_bytes:
            raise TooLarge(
                f"{what} is {size} bytes, more than the {self.max_object_bytes} bytes {self.kind} takes in one file"
            )

    def put_car(self, cid: str, key: str, data: bytes) -> None:
        self.limit_check(f"the CAR of {cid}", len(data))
        self.put(key, data)

    def car_size(self, cid: str, key: str) -> int | None:
        return self.size(key)

    def get_car(self, cid: str, key: str) -> bytes:
        return self.get(key)

    def has_car(self, cid: str, key: str) -> bool:
        return self.car_size(cid, key) is not None


checked_key = key_for  # a key made safe (the name drivers use for keys they are given)
