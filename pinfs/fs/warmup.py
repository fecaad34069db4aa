"""Set-up before the mount answers: Arrow's memory pool, the first-use costs of pyarrow, and the tables'
logs.

What it is for: ``warm_up_arrow`` runs once, on a worker thread, before ``serve`` mounts, so that the
first CID lookup pays for none of pyarrow's lazy set-up (issue #12 bench); ``use_jemalloc`` picks the
memory pool (issue #6); ``preload_tables`` loads each backend's newest table version and makes one lookup
through the tree, so that the first lookup pays only for its row group.

On a root on S3 (issue #13), ``prepare_s3`` has a data file that is not in the local read cache read by
ranges, and downloaded whole in the background once opened again (``rootfs.read_cold_files_by_ranges``);
``prepare_s3_writes`` runs, once the mount answers, what the first write would otherwise pay: boto3's
import and client (~0.35 s) and the check that the store refuses a second conditional put. A write that
comes first waits for that check, or makes it.

Threading: process-wide set-up; call before the mount serves (``prepare_s3_writes``: a nursery task).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from pinfs.data.backends import discover_backends
from pinfs.data.rootfs import S3Path, read_cold_files_by_ranges, require_writable
from pinfs.data.store import PinStore
from pinfs.data.tables import settle_pandas_probe
from pinfs.errors import PinfsError

if TYPE_CHECKING:
    from pinfs.data.snapshots import PinSnapshot
    from pinfs.fs.tree.pintree import PinTree

log = logging.getLogger(__name__)

# How long the mount waits, before it answers, for the tables' logs to be loaded (``preload_tables``):
# a table load is ~9 ms at 1M pins and ~20 ms at 10M; what is not done by then goes on meanwhile.
PRELOAD_BUDGET_SECONDS = 0.3
# How long after the mount answers the S3 write path is prepared: not at once, where boto3's import
# (CPU under the GIL) would slow the first lookups a user (or the bench) makes right after mounting.
S3_WRITES_DELAY_SECONDS = 1.0


def warm_up_arrow() -> None:
    """Before the mount answers: pick the Arrow memory pool (``use_jemalloc``), settle pyarrow's
    pandas probe (``settle_pandas_probe``: importing pandas cost the mount 0.1-0.35 s before it was
    ready and ~40 MB of RSS, issue #12 bench), import deltalake and read a parquet file from memory, so
    that the first CID lookup pays for none of them. deltalake (~30 ms) was imported by the first
    lookup, which reads the table's log."""
    import pyarrow as pa

    use_jemalloc()
    settle_pandas_probe()
    import deltalake  # noqa: F401
    import pyarrow.parquet as pq

    # A parquet round trip in memory: the first row group a process reads costs a few ms more than
    # the next ones (reader and codec set-up), which the first lookup would pay.
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"cid": pa.array([""], pa.string())}), sink)
    pq.ParquetFile(pa.BufferReader(sink.getvalue())).read_row_group(0)


def use_jemalloc() -> str:
    """Make jemalloc Arrow's memory pool in this process, unless the user chose one
    (``ARROW_DEFAULT_MEMORY_POOL``) or pyarrow was built without it; returns the pool in use.

    Why (issue #6, measured on the 1M x 3 benchmark): with the default mimalloc, buffers freed on the
    mount's worker threads stay in per-thread heaps, and the mount's RSS sat 150-200 MB above what its
    read cache holds; jemalloc hands pages back to the system within a second or so."""
    import pyarrow as pa

    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        with contextlib.suppress(NotImplementedError):
            pa.set_memory_pool(pa.jemalloc_memory_pool())
    return pa.default_memory_pool().backend_name


def give_back_freed_memory() -> None:
    """Collect cyclic garbage and hand the C heap's free pages back to the system (glibc's
    ``malloc_trim``; only the collection elsewhere).

    Why (issue #12, measured at 10M pins): a full ``ls by-cid`` makes and frees ~10M name strings and
    thousands of lists; glibc keeps the freed pages (~25 MB of RSS after the listing), and ~700 objects
    in reference cycles kept ~17 MB more until the next full collection. Called after a big listing, on
    a worker thread (it takes milliseconds)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def preload_tables(tree: PinTree, budget: float = PRELOAD_BUDGET_SECONDS) -> None:
    """Load every backend's newest table version into the mount's cache (on a thread), waiting at most
    ``budget`` seconds for it: the first ``cat`` after mount then reads one row group and no log. Then
    one lookup through the tree (``warm_up_lookup``). Not on an S3 root, where it would be requests
    before the mount answers (and a store that does not answer must not hold the mount up)."""
    if isinstance(tree.root, S3Path):
        return

    def load() -> None:
        backends, _problems = discover_backends(tree.root)
        loaded: list[tuple[str, PinSnapshot]] = []
        for backend in backends:
            store = PinStore(backend, tree.cache)
            try:
                if store.has_table():  # not a legacy pins.json: parsing one is for its first reader
                    loaded.append((backend.name, store.snapshot()))
            except Exception as exc:  # a backend that cannot be read is found out by its first lookup
                log.info("preloading the table of %s: %s", backend.name, exc)
        warm_up_lookup(tree, loaded)

    thread = threading.Thread(target=load, name="pinfs-preload", daemon=True)
    thread.start()
    thread.join(budget)


def warm_up_lookup(tree: PinTree, loaded: list[tuple[str, PinSnapshot]]) -> None:
    """Look up one CID (the first of the first backend that has any) and its ``status`` file, as a
    ``cat`` would: the first lookup of a process paid ~2 ms more than the next ones (first uses of the
    tree's, the store's and Arrow's code paths beyond ``warm_up_arrow``; 7.2 -> 5.1 ms in process, median
    of 12, issue #12). One lookup in all: the cost is the process's, not each backend's."""
    for name, snapshot in loaded:
        if snapshot.pieces and snapshot.pieces[0].min_cid is not None:
            path = ("backends", name, "by-cid", snapshot.pieces[0].min_cid)
            try:
                tree.resolve(path)
                tree.resolve((*path, "status"))
            except Exception as exc:  # found out again by the first lookup a user makes
                log.info("a first lookup in %s: %s", name, exc)
            return


def prepare_s3(root: object) -> None:
    """On a root on S3: a data file the read cache lacks is read by ranges (one row group for a lookup),
    and fetched whole in the background once opened again, for the reads after that."""
    if isinstance(root, S3Path):
        read_cold_files_by_ranges()


async def prepare_s3_writes(root: object, delay: float = S3_WRITES_DELAY_SECONDS) -> None:
    """On a root on S3, ``delay`` seconds after the mount answers: the conditional-put check (with
    boto3's import), on a thread. What fails here (a store that is down, read-only credentials, one
    that ignores conditional puts) is only logged: the first write makes the check again and says it."""
    if not isinstance(root, S3Path):
        return
    await trio.sleep(delay)
    try:
        await trio.to_thread.run_sync(require_writable, root, abandon_on_cancel=True)
    except (PinfsError, OSError) as exc:
        log.info("checking that %s refuses a second conditional put: %s", root, exc)
