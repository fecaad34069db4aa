"""The data layer: what is stored and how (docs/architecture.md).

Schema and CIDs (``schema``, ``cids``), backend configs (``backends``), the store (``store`` over a
Delta table per backend, ``delta``, ``datafiles``, ``snapshots``, ``pieces``, ``tables``), its
exports (``exports``: one-file parquet and CAR), the CAR codec (``carv1``, ``car``, ``car_columns``),
the legacy ``pins.json`` reader (``legacy*``, ``oldforms``), and file access on disk or S3
(``fsutil``, ``rootfs``, ``s3client``). Nothing here imports the operations, the filesystem or the CLI.
"""
