"""The virtual tree the mount serves: paths to nodes, directory listings, attributes and bytes.

A package (issue #18): ``names`` (the fixed names, ``TreePath``), ``nodes`` (``Node``, file
contents), ``listings`` (pinned versions of directories and their paging cursor), ``records`` (a
pin's files), ``generated`` (reports and other rendered files), ``readme`` (``README_TEXT``),
``kinds`` (one class per directory kind) and ``pintree`` (``PinTree``, the facade the adapter uses).
None of it imports pyfuse3; see each module for its threading rules.
"""

from pinfs.fs.tree.generated import RENDER_SECONDS
from pinfs.fs.tree.kinds import Directory, directory_at
from pinfs.fs.tree.listings import (
    Listing,
    ListingCursor,
    NameBlock,
    NameListing,
    PositionalListing,
    StaticListing,
    StreamListing,
    merge_sorted_unique,
)
from pinfs.fs.tree.names import (
    BACKENDS_DIR,
    BY_CID,
    BY_STATUS,
    CAR_FILE,
    CAR_JSON,
    CIDS_DIR,
    CONTROL_DIR,
    INSIGHTS_SVG,
    PARQUET_FILE,
    README,
    RECORD_FILES,
    RECORD_VALUE_FILES,
    REPORT_FILES,
    SUMMARY,
    TreePath,
)
from pinfs.fs.tree.nodes import BytesContent, Content, Node, NodeKind, NotADirectory, RealFileContent
from pinfs.fs.tree.pintree import FRESH_ENTRIES, PinTree
from pinfs.fs.tree.readme import README_TEXT
from pinfs.fs.tree.records import record_file_bytes, record_mtime
from pinfs.fs.versions import FRESH_SECONDS

__all__ = [
    "BACKENDS_DIR",
    "BY_CID",
    "BY_STATUS",
    "CAR_FILE",
    "CAR_JSON",
    "CIDS_DIR",
    "CONTROL_DIR",
    "FRESH_ENTRIES",
    "FRESH_SECONDS",
    "INSIGHTS_SVG",
    "PARQUET_FILE",
    "README",
    "README_TEXT",
    "RECORD_FILES",
    "RECORD_VALUE_FILES",
    "RENDER_SECONDS",
    "REPORT_FILES",
    "SUMMARY",
    "BytesContent",
    "Content",
    "Directory",
    "Listing",
    "ListingCursor",
    "NameBlock",
    "NameListing",
    "Node",
    "NodeKind",
    "NotADirectory",
    "PinTree",
    "PositionalListing",
    "RealFileContent",
    "StaticListing",
    "StreamListing",
    "TreePath",
    "directory_at",
    "merge_sorted_unique",
    "record_file_bytes",
    "record_mtime",
]
