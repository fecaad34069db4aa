"""Errors at the FUSE edge: the one place a domain error becomes the errno the kernel is answered.

What it is for: ``answer_errors`` wraps every adapter handler so that only ``FUSEError`` leaves it
(pyfuse3 ends the main loop on any other exception): a ``PinfsError`` becomes its ``errno``, an
OSError keeps its own, anything else is logged with its traceback and answered EIO (borg ``fuse.py``).

Threading: runs on the event loop, inside the handlers; no state.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from pinfs.errors import PinfsError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def fuse_error_for(exc: BaseException) -> pyfuse3.FUSEError:
    """The FUSEError to answer for ``exc``: domain errors by their errno, OSError by its own."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    if isinstance(exc, PinfsError):
        return pyfuse3.FUSEError(exc.errno)
    if isinstance(exc, OSError) and exc.errno:
        return pyfuse3.FUSEError(exc.errno)
    return pyfuse3.FUSEError(errno.EIO)


def answer_errors(handler: F) -> F:
    """Let only FUSEError leave ``handler``; log unexpected exceptions with their traceback."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except (PinfsError, OSError) as exc:
            log.debug("%s: %s", handler.__name__, exc)
            raise fuse_error_for(exc) from None
        except Exception:
            log.exception("unexpected error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]
