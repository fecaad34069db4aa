"""Operations: plain functions that the CLI and the mount's control files both call.

Each operation takes the data root, an options dataclass and optionally a ``Progress``, and returns a
JSON-serialisable report ``dict`` whose ``"ok"`` key says whether it succeeded (CLI: exit 1 and
control file: EIO when it is False). Bad input raises ``pinfs.errors.InvalidInput`` before anything
changes; other ``PinfsError`` subclasses mean the operation could not run at all.

Modules: ``migrate`` (migrate, verify-only, restore), ``carops`` (regenerate CAR), ``pins`` (pin/unpin,
get, find, list), ``drivers`` (storage drivers), ``sync``, ``verify``, ``reports`` (health, status,
insights, per-backend summary).

Operations never import the filesystem or CLI layers. They are synchronous; the mount runs them on a
worker thread.
"""
