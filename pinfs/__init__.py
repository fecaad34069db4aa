"""pinfs: IPFS pin mappings as files you can browse and drive from a shell.

Layers, each knowing only the ones listed before it:

- data layer: ``errors``, ``schema``, ``cids``, ``fsutil``, ``store``, ``legacy``, ``car``, ``backends``
- operations: ``pinfs.ops`` (migrate, regenerate CAR, pins, sync, verify, reports)
- filesystem: ``pinfs.fs`` (tree model, control files, pyfuse3 adapter, mount)
- command line: ``pinfs.cli``
"""

__version__ = "0.1.0"
