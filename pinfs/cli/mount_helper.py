"""Mounting the way other filesystems are mounted: ``-o`` options and the mount helper convention.

``mount -t fuse.pinfs ROOT MOUNTPOINT -o allow_other,cache_mb=512`` and the fstab line
``ROOT MOUNTPOINT fuse.pinfs defaults,_netdev 0 0`` (or ``pinfs#ROOT MOUNTPOINT fuse …``) go through
``mount.fuse3``, which runs ``pinfs ROOT MOUNTPOINT -o OPTIONS`` through ``/bin/sh`` (libfuse
``util/mount.fuse.c``) and expects it to return once the filesystem is mounted. ``helper_argv`` turns
that into ``pinfs mount MOUNTPOINT --root ROOT --background -o OPTIONS``: one code path for every way
of mounting.

``parse_options`` reads the comma-separated options, as in fstab: pinfs' own (``allow_other``,
``cache_mb=N``, ``sync_interval=…``, ``verify_interval=…``, ``debug``), kernel options passed on to
FUSE (``ro``, ``noexec``…), and options meant for mount(8) or systemd that are accepted and ignored
(``defaults``, ``_netdev``, ``nofail``, ``x-systemd.*``…). Anything else is an error (exit 2) that
names the option, so a typo in fstab is seen at the first ``mount -a``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from pinfs.errors import InvalidInput

# Passed on to the kernel through FUSE; of two opposites, the last one given counts (as in mount(8)).
KERNEL_OPTIONS = {"ro": "rw", "rw": "ro", "exec": "noexec", "noexec": "exec", "sync": "async", "async": "sync"}
KERNEL_OPTIONS["dirsync"] = "dirsync"
# Accepted and ignored: mount(8)/systemd's own options, and ones pinfs decides itself. pinfs serves no
# device nodes or set-user-ID files (``dev``/``suid``, which mount.fuse3 adds, change nothing), always
# mounts noatime (nothing is ever written to a data file), and with allow_other always checks modes.
IGNORED_OPTIONS = frozenset(
    {
        "defaults",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "owner",
        "group",
        "_netdev",
        "nofail",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "atime",
        "noatime",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "diratime",
        "nodiratime",
        "lazytime",
        "nolazytime",
        "default_permissions",
    }
)
IGNORED_PREFIXES = ("x-", "comment=")
OWN_FLAGS = ("allow_other", "debug", "nonempty")
OWN_VALUES = ("cache_mb", "sync_interval", "verify_interval")


@dataclass
class MountOptions:
    """What ``-o`` asked for; None where it did not say."""

    allow_other: bool = False
    debug: bool = False
    nonempty: bool = False
    cache_mb: int | None = None
    sync_interval: str | None = None
    verify_interval: str | None = None
    kernel: list[str] = field(default_factory=list)


def parse_options(groups: Sequence[str]) -> MountOptions:
    """Parse ``-o`` arguments (each a comma-separated list). Raises InvalidInput naming a bad option."""
    options = MountOptions()
    for group in groups:
        for word in group.split(","):
            _apply(options, word.strip())
    return options


def _apply(options: MountOptions, word: str) -> None:
    name, has_value, value = word.partition("=")
    key = name.replace("-", "_")
    if not word or word in IGNORED_OPTIONS or word.startswith(IGNORED_PREFIXES):
        return
    if word in KERNEL_OPTIONS:
        options.kernel = [kept for kept in options.kernel if kept not in (word, KERNEL_OPTIONS[word])] + [word]
    elif key in OWN_FLAGS and not has_value:
        setattr(options, key, True)
    elif key in OWN_VALUES and has_value and value:
        setattr(options, key, _number(word, value) if key == "cache_mb" else value)
    else:
        known = ", ".join([*OWN_FLAGS, *(f"{name}=…" for name in OWN_VALUES), *sorted(KERNEL_OPTIONS)])
        raise InvalidInput(f"unknown mount option {word!r} (pinfs knows: {known})")


def _number(word: str, value: str) -> int:
    if not re.fullmatch(r"\d+", value):
        raise InvalidInput(f"mount option {word!r}: expected a whole number")
    return int(value)


# -- the mount helper convention --


def helper_argv(argv: Sequence[str], commands: Collection[str]) -> list[str] | None:
    """``pinfs ROOT MOUNTPOINT [-o OPTIONS]…`` (as mount.fuse3 runs it) as ``pinfs mount …`` arguments,
    or None when ``argv`` is an ordinary command line.

    mount.fuse3 always passes ``-o`` (it adds ``dev,suid`` at least) and may pass ``-v``; with the
    ``pinfs#`` form and no source, only the mount point comes. A first word that is a command name or
    an option is never a mount, nor is one word alone (a mistyped command gets argparse's error).
    """
    if not argv or argv[0].startswith("-") or argv[0] in commands:
        return None
    positionals: list[str] = []
    options: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "-o":
            options += ["-o", next(words, "")]
        elif word.startswith("-o") and len(word) > 2:
            options += ["-o", word[2:]]
        elif word in ("-v", "-n", "-s"):  # verbose / no mtab / sloppy: nothing to do for pinfs
            continue
        else:
            positionals.append(word)
    if len(positionals) == 1 and options:
        return ["mount", positionals[0], "--background", *options]
    if len(positionals) == 2:
        return ["mount", positionals[1], "--root", positionals[0], "--background", *options]
    return None
