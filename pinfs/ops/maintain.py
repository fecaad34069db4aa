"""Maintenance of the backends' tables: ``pinfs maintain``, and the same by itself now and then.

Per backend with a table (``pinfs.data.store``): data files that grew past twice the target are split and
those under a quarter of it merged into a neighbour (one commit; writers that meet it retry on the new
version), vacuum deletes data files that no version younger than the retention needs
(``pinfs.data.delta``: 2 minutes) nor any version a long reader recorded (``pinfs.data.readers``: the
mount's big listings, exports, on any host), and then a log checkpoint
is written and the log cut to its last few dozen versions (so a table loads, and a pin commits, in a
few ms after any number of commits: ``DeltaPins.cleanup_log``). The version the parquet export was
made from is kept by both, since importing a foreign parquet diffs against it, and so are the
versions readers recorded.

Nobody has to remember it: once a table is ``MAINTAIN_EVERY`` commits past its last maintenance (the
run state's ``maintain`` section), the writer that notices (or, in the mount, the background export
refresher) maintains it after its exports.
Nothing here blocks readers, and writers only as any other commit would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinfs.data.backends import Backend
from pinfs.data.delta import insert_rows
from pinfs.data.exports import PARQUET, read_record, refresh_exports
from pinfs.data.readers import versions_read
from pinfs.data.runstate import read_state, record_run
from pinfs.data.schema import now_iso
from pinfs.data.store import ConcurrentChange, PinStore
from pinfs.errors import CorruptData, PinfsError, describe
from pinfs.ops.common import error_entry, select_backends
from pinfs.ops.progress import NullProgress, Progress

log = logging.getLogger(__name__)

# A table is maintained once it is this many commits past its last maintenance.
MAINTAIN_EVERY = 64
# Range files rewritten per commit when the insert file is merged into them: a merge of 16k random
# CIDs into 62 files (1M pins) is then 16 commits of ~0.15 s, each holding writers back only that long,
# and each small enough (4 x 16k rows in and out, with the insert file) for the mount to tell the
# kernel exactly what changed (nothing: ``pinfs.fs.versions.DIFF_ROWS``) instead of everything.
MERGE_FILES_PER_COMMIT = 4
# A step of the merge is made without the backend's lock and committed under it; a change to a pin in
# one of the files it rewrites makes it conflict. After this many in a row, the step holds the lock.
MERGE_TRIES_UNLOCKED = 3


@dataclass
class MaintainOptions:
    backends: list[str] = field(default_factory=list)  # empty: every backend
    # Override of the table's retention for vacuum, in hours (0: every unreferenced file now). None
    # keeps the table's own (delta.deletedFileRetentionDuration, 2 minutes).
    retention_hours: int | None = None


def maintain(root: Path, options: MaintainOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Maintain the chosen backends' tables; one report entry per backend."""
    progress = progress or NullProgress()
    backends = select_backends(root, options.backends)
    entries: list[dict[str, Any]] = []
    progress.start("maintain", len(backends))
    for backend in backends:
        try:
            entries.append(maintain_backend(backend, options.retention_hours))
        except (PinfsError, OSError) as exc:
            entries.append(error_entry(backend, exc))
        progress.advance()
    progress.finish()
    return {"ok": all(entry["ok"] for entry in entries), "backends": entries}


def maintain_backend(
    backend: Backend, retention_hours: int | None = None, *, all_inserts: bool = True
) -> dict[str, Any]:
    """Lay out, checkpoint and vacuum one backend's table (see the module docstring); merge its insert
    file into the range files (all of it, or with ``all_inserts`` False only once it is due)."""
    store = PinStore(backend)
    entry: dict[str, Any] = {"backend": backend.name, "type": backend.type, "ok": True}
    if not store.has_table():
        entry["skipped"] = "no table yet (run 'pinfs migrate' or pin something)"
        return entry
    try:
        entry["files_rewritten"] = store.write(lambda txn: txn.relayout())
        entry["inserts_merged"] = merge_inserts(backend, due_only=not all_inserts)
    except ConcurrentChange as exc:  # busy writers: the next maintenance tries again
        entry.setdefault("files_rewritten", 0)
        entry.setdefault("inserts_merged", 0)
        entry["note"] = str(exc)
    if entry["files_rewritten"] or entry["inserts_merged"]:
        refresh_exports(backend)  # the same pins, but the exports are dated by the version they come from
    entry["properties_upgraded"] = store.table.upgrade_properties()
    exported = _exported_version(backend)
    # the versions long readers read (the mount's big listings, exports), on any host: pinfs.data.readers
    entry["versions_read"] = versions_read(store.table.directory)
    keep = sorted({*entry["versions_read"], *([exported] if exported is not None else [])})
    # Vacuum before the checkpoint: delta-rs records a vacuum in two commits (VACUUM START and END), which
    # every table load would otherwise replay until the next checkpoint (~1.5 ms each, issue #12 bench).
    entry["vacuumed"] = len(_vacuum(store, keep, retention_hours))
    entry["log_entries_removed"] = store.table.checkpoint(keep_versions=keep)
    state = store.table_state(reload=True)
    assert state is not None
    entry.update(version=state.version, files=sum(1 for data_file in state.files if data_file.rows), pins=state.count)
    record_run(backend, "maintain", {"version": state.version, "finished_at": now_iso(), **entry})
    return entry


def merge_inserts(backend: Backend, *, due_only: bool = True) -> int:
    """Move the rows of ``backend``'s insert files into the range files (``pinfs.data.delta``), a few
    files per commit (``MERGE_FILES_PER_COMMIT``); with ``due_only``, only the bulk files and only once
    the insert files hold ``insert_rows()`` rows, else all of them. Returns how many rows moved.
    ConcurrentChange when writers kept changing the same files."""
    store = PinStore(backend)
    state = store.table_state()
    if state is None:
        return 0
    held = sum(data_file.rows for data_file in state.insert_files)
    if not held or (due_only and held < insert_rows()):
        return 0
    moved = 0
    for _step in range(len(state.range_files) // MERGE_FILES_PER_COMMIT + 2):  # bounded: writers go on
        step = _merge_step(store, include_small=not due_only)
        if not step:
            break
        moved += step
    return moved


def _merge_step(store: PinStore, *, include_small: bool) -> int:
    """One commit of the merge, made without holding up writers (``PinStore.merge_inserts``); after
    ``MERGE_TRIES_UNLOCKED`` conflicts in a row (changes to the very pins it moves, coming faster than
    a step takes), with the lock held throughout, so that the merge ends however busy the backend is."""
    for _try in range(MERGE_TRIES_UNLOCKED):
        try:
            return store.merge_inserts(MERGE_FILES_PER_COMMIT, include_small=include_small)
        except ConcurrentChange:
            continue
    return store.write(lambda txn: txn.merge_inserts(MERGE_FILES_PER_COMMIT, include_small=include_small))


def merge_inserts_if_due(backend: Backend) -> None:
    """``merge_inserts`` once due, after a commit; a failure is logged, never raised (the commit it
    follows has succeeded, and the next one tries again)."""
    try:
        merge_inserts(backend)
    except (PinfsError, OSError) as exc:
        log.warning("merging the insert file of %s failed: %s", backend.directory, describe(exc))


def maybe_maintain(backend: Backend) -> None:
    """Maintain ``backend``'s table when its newest version is due (``MAINTAIN_EVERY``); a failure is
    logged, never raised: the commit it follows has succeeded."""
    try:
        state = PinStore(backend).table_state()
        last = read_state(backend).get("maintain")
        done = last.get("version") if isinstance(last, dict) else None
        if state is None or state.version - (done if isinstance(done, int) else 0) < MAINTAIN_EVERY:
            return
        maintain_backend(backend, all_inserts=False)
    except (PinfsError, OSError) as exc:  # a full disk: one line, no traceback; done at a later commit
        log.warning("maintaining the table of %s failed: %s", backend.directory, describe(exc))
    except Exception:
        log.exception("maintaining the table of %s failed", backend.directory)


def _vacuum(store: PinStore, keep: list[int], retention_hours: int | None) -> list[str]:
    """Vacuum ``store``'s table, keeping the files of the versions ``keep``. A version whose log is gone
    (delta-rs cleaned it up by age in a table made before this release, whose exports fell a day behind;
    or a reader recorded it after its entries were cleaned up) cannot be kept, and delta-rs would refuse
    the whole vacuum for it: then the others are kept."""
    try:
        return store.table.vacuum(keep_versions=keep, hours=retention_hours)
    except CorruptData:
        loadable = [version for version in keep if _loadable(store, version)]
        if loadable == keep:
            raise
        gone = sorted(set(keep) - set(loadable))
        log.info("%s: versions %s are no longer in the log; vacuum keeps the others", store.table.directory, gone)
        return store.table.vacuum(keep_versions=loadable, hours=retention_hours)


def _loadable(store: PinStore, version: int) -> bool:
    try:
        store.table.load(version)
    except (PinfsError, OSError):
        return False
    return True


def _exported_version(backend: Backend) -> int | None:
    entry = read_record(backend).get(PARQUET)
    version = entry.get("version") if isinstance(entry, dict) else None
    return version if isinstance(version, int) and version >= 0 else None
