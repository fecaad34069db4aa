"""Storage drivers: where a backend keeps the CAR files of its pins, one module per backend type.

The interface is ``pinfs.ops.drivers.base`` (``BaseDriver``; see docs/drivers.md). This module is the
registry: ``driver_for(backend, root)`` builds the driver of a backend's ``type`` from

- the built-in types below (imported only when used: the git, Hub and FTP clients cost nothing to a
  run that does not need them), then
- the entry point group ``pinfs.drivers`` (``importlib.metadata``): ``<type> = package.module:factory``,
  where ``factory(backend, root)`` returns a driver. A third-party package adds a type this way; it
  cannot replace a built-in one.

``Unsupported``: no driver for the type, or a backend without any config (its storage is unknown).
``DriverError``: a config present but unusable (a setting missing, a named environment variable unset).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pinfs.data.backends import Backend
from pinfs.errors import Unsupported
from pinfs.ops.drivers.base import (
    CONNECT_TIMEOUT,
    MAX_OBJECT_BYTES,
    REQUEST_TIMEOUT,
    BaseDriver,
    DriverError,
    TooLarge,
    key_for,
    setting,
)

ENTRY_POINT_GROUP = "pinfs.drivers"
# type -> "module:factory"; the factory takes (backend, root) and returns a driver.
BUILTIN: dict[str, str] = {
    "filesystem": "pinfs.ops.drivers.filesystem:FilesystemDriver.from_backend",
    "local": "pinfs.ops.drivers.filesystem:FilesystemDriver.from_backend",
    "sshfs": "pinfs.ops.drivers.filesystem:FilesystemDriver.from_backend",
    "s3": "pinfs.ops.drivers.s3:S3Driver.from_backend",
    "ftp": "pinfs.ops.drivers.ftp:FtpDriver.from_backend",
    "github": "pinfs.ops.drivers.github:GitDriver.from_backend",
    "huggingface": "pinfs.ops.drivers.huggingface:HubDriver.from_backend",
    "storacha": "pinfs.ops.drivers.storacha:StorachaDriver.from_backend",
    "ipfs": "pinfs.ops.drivers.ipfs:IpfsDriver.from_backend",
}
FILESYSTEM_DRIVER_TYPES = frozenset({"filesystem", "local", "sshfs"})
Driver = BaseDriver  # the interface (kept under its old name for callers' annotations)
Factory = Callable[[Backend, "Path | None"], BaseDriver]

log = logging.getLogger(__name__)

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_OBJECT_BYTES",
    "REQUEST_TIMEOUT",
    "BaseDriver",
    "Driver",
    "DriverError",
    "FilesystemDriver",
    "S3Driver",
    "TooLarge",
    "driver_for",
    "driver_types",
    "has_driver",
    "key_for",
]


@functools.cache
def _plugins() -> dict[str, Any]:
    """Entry points of the ``pinfs.drivers`` group by type name (built-in names left out). Read once per
    process: sync asks for every pin and backend, and scanning the installed packages costs
    milliseconds (a package installed later is seen by the next process)."""
    found: dict[str, Any] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        name = point.name.strip().lower()
        if name in BUILTIN:
            log.warning("driver entry point %s for built-in type %r ignored", point.value, name)
            continue
        found.setdefault(name, point)
    return found


def driver_types() -> list[str]:
    """Every backend type a driver is known for: built in and registered by entry points."""
    return sorted(set(BUILTIN) | set(_plugins()))


def has_driver(backend: Backend) -> bool:
    return backend.type in BUILTIN or backend.type in _plugins()


def _factory(kind: str) -> Factory:
    target = BUILTIN.get(kind)
    if target is not None:
        module_name, _, attribute = target.partition(":")
        value: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
        return value
    point = _plugins().get(kind)
    if point is None:
        raise Unsupported(f"no storage driver for backend type {kind!r} on this machine")
    try:
        return point.load()
    except Exception as exc:  # a broken third-party package must not take the run down
        raise Unsupported(f"the driver for backend type {kind!r} ({point.value}) cannot be loaded: {exc}") from None


def driver_for(backend: Backend, root: Path | None = None) -> BaseDriver:
    """The driver of ``backend``. Unsupported: no driver for its type; DriverError: misconfigured."""
    if backend.config_error:
        raise DriverError(f"backend {backend.name!r}: {backend.config_error}")
    factory = _factory(backend.type)
    if backend.config_path is None and not backend.config:
        raise Unsupported(f"backend {backend.name!r} has no config file, so where its storage is is unknown")
    driver = factory(backend, root)
    limit = setting(backend, "max_file_bytes")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise DriverError(f"backend {backend.name!r}: max_file_bytes must be a positive number of bytes")
        # A lower limit than the service's (e.g. a provider plan's); never a higher one.
        driver.max_object_bytes = min(limit, driver.max_object_bytes or limit)
    return driver


def __getattr__(name: str) -> Any:
    # The classes of the first two drivers, imported on first use (tests and callers name them).
    if name == "FilesystemDriver":
        from pinfs.ops.drivers.filesystem import FilesystemDriver

        return FilesystemDriver
    if name == "S3Driver":
        from pinfs.ops.drivers.s3 import S3Driver

        return S3Driver
    raise AttributeError(name)
