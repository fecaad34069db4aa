"""Baseline C of the benchmark: the floor a Python FUSE filesystem reaches here.

A minimal pyfuse3 + trio filesystem with no data layer and fixed answers::

    MOUNT/by-cid/<N entries>/{cid,status,car_file_path,backend_name,created_at,metadata.json,pin.json}

``by-cid`` lists N synthetic names as long as a CIDv1 (59 characters); a lookup of any other name that
looks like a CID is answered too (so the bench can use the same real CIDs as for pinfs). Attributes
use pinfs' timeouts (1 s), mode bits and readdirplus; everything is answered on the event loop with no
threads. Usage: ``python scripts/bench_floorfs.py MOUNTPOINT N`` (serves until unmounted or SIGTERM).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys

import pyfuse3
import trio

TIMEOUT = 1.0
FILES = ("backend_name", "car_file_path", "cid", "created_at", "metadata.json", "pin.json", "status")
CONTENT = {
    "backend_name": b"s3-main\n",
    "car_file_path": b"/s3-bucket/cars/bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.car\n",
    "cid": b"bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
    "created_at": b"2026-11-24T19:09:23.123456+00:00\n",
    "metadata.json": b'{\n  "name": "x",\n  "size": 1\n}\n',
    "pin.json": b'{\n  "cid": "bafkrei",\n  "status": "stored"\n}\n',
    "status": b"stored\n",
}
BY_CID_INODE = 2
STRIDE = 8  # entry i has inode BASE + i * STRIDE; its files follow it
BASE = 16


class Floor(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.extra: dict[str, int] = {}  # looked-up names that are not synthetic -> entry index
        self.extra_names: list[str] = []
        self.uid, self.gid = os.getuid(), os.getgid()

    # -- names <-> inodes --

    @staticmethod
    def synthetic(index: int) -> str:
        return f"bafkrei{index:052d}"

    def index_of(self, name: str) -> int | None:
        if name.startswith("bafkrei") and len(name) == 59 and name[7:].isdigit():
            index = int(name[7:])
            return index if index < self.count else None
        if len(name) < 10 or not name.isalnum():
            return None
        found = self.extra.get(name)
        if found is None:
            found = self.count + len(self.extra_names)
            self.extra[name] = found
            self.extra_names.append(name)
        return found

    def attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_blksize = 4096
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = 1_700_000_000_000_000_000
        if inode in (pyfuse3.ROOT_INODE, BY_CID_INODE) or (inode - BASE) % STRIDE == 0:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 2
            a.st_size = 0
        else:
            size = len(CONTENT[FILES[(inode - BASE) % STRIDE - 1]])
            a.st_mode = stat.S_IFREG | 0o444
            a.st_nlink = 1
            a.st_size = size
            a.st_blocks = (size + 511) // 512
        return a

    # -- operations --

    async def lookup(self, parent_inode, name, ctx):
        text = name.decode("utf-8", "replace")
        if parent_inode == pyfuse3.ROOT_INODE:
            if text == "by-cid":
                return self.attrs(BY_CID_INODE)
        elif parent_inode == BY_CID_INODE:
            index = self.index_of(text)
            if index is not None:
                return self.attrs(BASE + index * STRIDE)
        elif (parent_inode - BASE) % STRIDE == 0 and text in FILES:
            return self.attrs(parent_inode + 1 + FILES.index(text))
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def getattr(self, inode, ctx):
        return self.attrs(inode)

    async def forget(self, inode_list):
        return None

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        if fh == pyfuse3.ROOT_INODE:
            if start_id == 0:
                pyfuse3.readdir_reply(token, b"by-cid", self.attrs(BY_CID_INODE), 1)
            return
        if fh == BY_CID_INODE:
            for index in range(start_id, self.count):
                name = self.synthetic(index).encode()
                if not pyfuse3.readdir_reply(token, name, self.attrs(BASE + index * STRIDE), index + 1):
                    return
            return
        for position in range(start_id, len(FILES)):
            if not pyfuse3.readdir_reply(token, FILES[position].encode(), self.attrs(fh + 1 + position), position + 1):
                return

    async def releasedir(self, fh):
        return None

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh, off, size):
        return CONTENT[FILES[(fh - BASE) % STRIDE - 1]][off : off + size]

    async def release(self, fh):
        return None


async def serve(mountpoint: str, count: int) -> None:
    pyfuse3.init(Floor(count), mountpoint, {"fsname=benchfloor", "subtype=benchfloor", "noatime"})
    clean = False
    try:
        async with trio.open_nursery() as nursery:

            async def signals() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                    async for _ in received:
                        pyfuse3.terminate()
                        return

            nursery.start_soon(signals)
            await pyfuse3.main()
            clean = True
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=clean)


if __name__ == "__main__":
    trio.run(serve, sys.argv[1], int(sys.argv[2]))
