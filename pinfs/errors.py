"""Domain errors shared by every layer.

Each error's ``str()`` is one line a user can act on: what is wrong and where. The CLI maps them to
exit codes and the mount maps them to errno values in one place each (``pinfs.cli`` and
``pinfs.fs.adapter``); nothing below those layers knows about either.
"""

from __future__ import annotations

import errno


class PinfsError(Exception):
    """Base class. ``errno`` is what the mount answers; ``exit_code`` what the CLI exits with."""

    errno: int = errno.EIO
    exit_code: int = 1


class InvalidInput(PinfsError):
    """Input from a user (argument, control-file line, CID) is malformed. Nothing was changed."""

    errno = errno.EINVAL
    exit_code = 2


class NotFound(PinfsError):
    """A backend, CID or file that was asked for does not exist."""

    errno = errno.ENOENT


class UnknownBackend(NotFound):
    """A backend named by the user does not exist: bad input for the CLI (exit 2, issue #16), a name
    that is not there for the mount (ENOENT)."""

    exit_code = 2


class Busy(PinfsError):
    """Another command is already running where only one may run at a time."""

    errno = errno.EBUSY


class ReadOnly(PinfsError):
    """A write was attempted on data that is only readable."""

    errno = errno.EROFS


class CorruptData(PinfsError):
    """A file on disk (parquet, CAR, pins.json, config) cannot be read or fails validation."""

    errno = errno.EIO


class Unsupported(PinfsError):
    """The operation has no driver for this backend type on this machine."""

    errno = errno.EOPNOTSUPP
