"""``pinfs mount`` and ``pinfs umount``: the command-line side of ``pinfs.fs.mount``.

``mount`` serves in the foreground until unmounted (Ctrl-C, SIGTERM, ``pinfs umount``), or with
``--background`` starts a detached copy of itself and returns only once that copy's mount is ready
(or has failed, with its error). The copy reports through a pipe (hidden ``--ready-fd``).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pinfs.cli.output import emit, root_of
from pinfs.errors import InvalidInput, NotFound, PinfsError

READY = b"ready\n"


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    mount = subparsers.add_parser(
        "mount",
        parents=[common],
        help="serve the data root as a FUSE filesystem",
        description="Serve the data root at MOUNTPOINT until unmounted ('pinfs umount', Ctrl-C or SIGTERM).",
    )
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    mount.add_argument("--background", action="store_true", help="detach once the mount is ready")
    mount.add_argument(
        "--allow-other", action="store_true", help="let other users enter (the kernel then checks file modes)"
    )
    mount.add_argument("--cache-mb", type=int, default=256, metavar="N", help="read cache bound (default 256)")
    mount.add_argument("--debug", action="store_true", help="log every request on stderr")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.set_defaults(handler=handle_mount)

    umount = subparsers.add_parser(
        "umount", parents=[common], help="unmount a pinfs mount", description="Unmount MOUNTPOINT."
    )
    umount.add_argument("mountpoint", metavar="MOUNTPOINT")
    umount.set_defaults(handler=handle_umount)


def _config(args: argparse.Namespace) -> Any:
    from pinfs.fs.mount import MountConfig, check_mountpoint

    root = Path(root_of(args))
    if not root.is_dir():
        raise NotFound(f"data root {root} does not exist")
    if args.cache_mb < 1:
        raise InvalidInput("--cache-mb must be 1 or more")
    mountpoint = Path(os.path.abspath(args.mountpoint))
    check_mountpoint(mountpoint)
    return MountConfig(
        root=root, mountpoint=mountpoint, cache_mb=args.cache_mb, allow_other=args.allow_other, debug=args.debug
    )


def handle_mount(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="pinfs mount: %(levelname)s %(name)s: %(message)s",
    )
    if args.ready_fd is not None:
        return _serve_detached(args)
    config = _config(args)
    if args.background:
        return _start_background(args, config.mountpoint)
    from pinfs.fs.mount import run

    run(config)
    return 0


def _start_background(args: argparse.Namespace, mountpoint: Path) -> int:
    """Start a detached copy of this command and wait until it says its mount is ready."""
    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "pinfs", "mount", str(mountpoint), "--ready-fd", str(write_end)]
    command += ["--root", str(root_of(args)), "--cache-mb", str(args.cache_mb)]
    command += ["--allow-other"] * args.allow_other + ["--debug"] * args.debug
    with open(os.devnull, "rb") as stdin, open(os.devnull, "wb") as devnull:
        subprocess.Popen(
            command,
            pass_fds=(write_end,),
            stdin=stdin,
            stdout=devnull,
            stderr=None if args.debug else devnull,
            start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    if answer == READY:
        emit(args, {"ok": True, "mountpoint": str(mountpoint)}, lambda _report: "")
        return 0
    message = answer.decode("utf-8", "replace").strip() or "the mount process exited before it was ready"
    raise PinfsError(message)


def _serve_detached(args: argparse.Namespace) -> int:
    """The detached copy: serve, telling the waiting parent through ``--ready-fd`` how it went."""
    pipe = os.fdopen(args.ready_fd, "wb")

    def ready() -> None:
        pipe.write(READY)
        pipe.close()

    try:
        config = _config(args)
        from pinfs.fs.mount import run

        run(config, ready)
    except PinfsError as exc:
        if not pipe.closed:
            pipe.write(str(exc).encode())
            pipe.close()
        return exc.exit_code
    finally:
        if not pipe.closed:
            pipe.close()
    return 0


def handle_umount(args: argparse.Namespace) -> int:
    from pinfs.fs.mount import unmount

    how = unmount(Path(args.mountpoint))
    emit(args, {"ok": True, "mountpoint": os.path.abspath(args.mountpoint), "result": how}, lambda _r: "")
    return 0
