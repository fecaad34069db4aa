"""The adapter's open handles: one per open file or directory, by the number the kernel was given.

What it is for: what an open file holds from ``open`` to ``release`` (its bytes, fixed for the
handle; a control file's write session), and what an open directory holds from ``opendir`` to
``releasedir`` (the pinned version of its listing and, for a big one, its paging cursor and the epoch
its entries' inode numbers belong to).

What it must not do: import pyfuse3 or decide anything; the adapter does.

Threading: used only on the event-loop thread (the adapter's handlers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pinfs.fs.control import ControlFile, ControlSession
from pinfs.fs.inodes import ListedVersion
from pinfs.fs.tree import Content, Listing, ListingCursor, Node

log = logging.getLogger(__name__)


@dataclass
class FileHandle:
    node: Node
    content: Content


@dataclass
class ControlHandle:
    node: Node
    control: ControlFile
    session: ControlSession | None = None  # opened for writing: what is written (``pinfs.fs.control``)
    content: Content | None = None  # the last-run JSON, for reads


@dataclass
class DirHandle:
    """A small directory: every entry is in memory from ``opendir`` on; entries get path inodes."""

    listing: Listing


@dataclass
class ListingHandle:
    """A big directory (``NameListing``, paged by its ``ListingCursor``): entries get listing inodes of
    ``epoch``, held until ``releasedir`` so the epoch outlives a listing whose entries the kernel has
    not taken yet."""

    cursor: ListingCursor
    epoch: ListedVersion


Handle = FileHandle | ControlHandle | DirHandle | ListingHandle


def close_content(handle: Handle) -> None:
    content = getattr(handle, "content", None)
    if content is not None:
        try:
            content.close()
        except OSError:
            log.exception("closing a file handle failed")
