"""Domain errors shared by every layer.

Each error's ``str()`` is one line a user can act on: what is wrong and where. The CLI maps them to
exit codes and the mount maps them to errno values in one place each (``pinfs.cli`` and
``pinfs.fs.adapter``); nothing below those layers knows about either.
"""

from __future__ import annotations

import errno
import os
import re


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


class RootMissing(PinfsError):
    """The data root is not there (a typo, a disk not mounted, a directory renamed away): every command
    fails rather than report an empty root as healthy (issue #15, item 5)."""


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


# -- one line for an OSError --

_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)|\[errno (\d+)\]", re.IGNORECASE)
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def errno_of(exc: OSError) -> int | None:
    """The errno of ``exc``, also when a library put it only in the message (delta-rs: "... (os error
    28)", pyarrow: "[errno 28] ...")."""
    if exc.errno:
        return int(exc.errno)
    found = _OS_ERROR_IN_TEXT.search(str(exc))
    return int(found.group(1) or found.group(2)) if found else None


def describe(exc: BaseException) -> str:
    """One line a user can act on (issue #15, item 4): a PinfsError's own message; an OSError as
    ``<file>: <reason> (<ENAME>)``, whatever library raised it, without its traceback or colours."""
    if not isinstance(exc, OSError) or isinstance(exc, PinfsError):
        return first_line(str(exc)) or type(exc).__name__
    code = errno_of(exc)
    reason = os.strerror(code) if code else first_line(str(exc)) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename else ""
    name = f" ({errno.errorcode[code]})" if code in errno.errorcode else ""
    return f"{where}{reason}{name}"


def first_line(text: str) -> str:
    """The first non-empty line of ``text`` without terminal colour codes."""
    for line in _TERMINAL_CODES.sub("", text).splitlines():
        if line.strip():
            return line.strip()
    return ""
