"""The fixed names of the mount's tree (CONTRACT §2), and how a path through it is spelled.

What it is for: one place for every name the tree serves, so the tree's directory kinds, the
kernel-cache duty (``pinfs.fs.kernel``, which invalidates them by name) and the tests agree.

What it must not do: import anything of the tree; it is imported by all of it. No threading concerns.
"""

from __future__ import annotations

# A path in the tree: a tuple of names from the mount's root, e.g.
# ``("backends", "s3-main", "by-cid", cid, "status")``; ``()`` is the root.
TreePath = tuple[str, ...]

README = "README"
CONTROL_DIR = ".control"
BACKENDS_DIR = "backends"
CIDS_DIR = "cids"
BY_CID = "by-cid"
BY_STATUS = "by-status"
SUMMARY = "summary.json"
PARQUET_FILE = "pin_mappings.parquet"
CAR_FILE = "pin_mappings.car"
CAR_JSON = "pin_mappings.car.json"
INSIGHTS_SVG = "insights.svg"
REPORT_FILES = ("health.json", "status.json", "insights.json", INSIGHTS_SVG)
RECORD_VALUE_FILES = ("cid", "status", "car_file_path", "backend_name", "created_at")
RECORD_FILES = (*RECORD_VALUE_FILES, "metadata.json", "pin.json")
ROOT_ENTRIES = (README, *REPORT_FILES, CONTROL_DIR, BACKENDS_DIR, CIDS_DIR)
BACKEND_ENTRIES = (SUMMARY, PARQUET_FILE, CAR_FILE, CAR_JSON, BY_CID, BY_STATUS, CONTROL_DIR)


def shown(path: TreePath) -> str:
    """``path`` as a user reads it in a message: ``/backends/s3-main``."""
    return "/" + "/".join(path)


def cid_named(key: str) -> str | None:
    """The CID name the path ``key`` (its names joined with "/") is at or below: ``cids/<cid>``,
    ``backends/<b>/by-cid/<cid>`` or ``backends/<b>/by-status/<s>/<cid>``; else None. A string test
    and one split: the inode table asks it of every path the kernel learns of."""
    parts = key.split("/", 5)
    if parts[0] == CIDS_DIR:
        return parts[1] if len(parts) > 1 else None
    if parts[0] != BACKENDS_DIR or len(parts) < 4:
        return None
    if parts[2] == BY_CID:
        return parts[3]
    if parts[2] == BY_STATUS and len(parts) > 4:
        return parts[4]
    return None


def nameable(cid: str) -> bool:
    """Whether ``cid`` can be a file name. base64 multibase CIDs ("m…", "u…") may hold "/": listings
    skip them (they stay readable through the parquet and the CLI). NUL cannot occur in a valid CID."""
    return "/" not in cid and cid not in ("", ".", "..")
