"""The FUSE mount of a data root (CONTRACT §2).

- ``tree``: the virtual tree model (paths, nodes, listings, bytes); plain code, no pyfuse3.
- ``control``: the control files' command table and run state; plain code, no pyfuse3.
- ``adapter``: the thin ``pyfuse3.Operations`` over the two (inodes, handles, errno).
- ``mount``: the one composition root (trio, signals, clean unmount).
"""
