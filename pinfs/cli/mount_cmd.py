"""``pinfs mount`` and ``pinfs umount``: the command-line side of ``pinfs.fs.mount``.

``mount`` serves in the foreground until unmounted (Ctrl-C, SIGTERM, ``pinfs umount``), or with
``--background`` starts a detached copy of itself and returns only once that copy's mount is ready
(or has failed, with its error). The copy reports through a pipe (hidden ``--ready-fd``).
``--sync-interval``/``--verify-interval`` (off by default) make the mount sync/verify every backend
on its own every so often (``pinfs.fs.duties.ScheduledDuties``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from pinfs.cli.mount_helper import parse_options
from pinfs.cli.output import emit, root_of
from pinfs.cli.systemd import notify, service_unit
from pinfs.data.rootfs import as_path, start_client
from pinfs.errors import InvalidInput, NotFound, PinfsError
from pinfs.fs.collector import pause_collector_for_start_up

READY = b"ready\n"

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[smhd]?)", re.IGNORECASE)


def parse_interval(text: str) -> float | None:
    """Seconds from ``90``, ``30s``, ``5m``, ``1.5h`` or ``1d``; ``0`` is off (None). argparse type:
    raises ArgumentTypeError (exit 2) for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, or a number with s, m, h or d (e.g. 90, 5m)")
    seconds = float(match["number"]) * _UNITS[match["unit"].lower()]
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"{text!r}: too large")
    return seconds if seconds > 0 else None


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    mount = subparsers.add_parser(
        "mount",
        parents=[common],
        help="serve the data root as a FUSE filesystem",
        description="Serve the data root at MOUNTPOINT until unmounted ('pinfs umount', Ctrl-C or SIGTERM). "
        "MOUNTPOINT must be an existing directory, and an empty one: a directory with entries is refused, since "
        "the mount would hide them, unless --nonempty (-o nonempty) is given.",
    )
    mount.add_argument(
        "mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory (one with entries: see --nonempty)"
    )
    mount.add_argument("--background", action="store_true", help="detach once the mount is ready")
    mount.add_argument(
        "--nonempty",
        action="store_true",
        help="mount even on a directory that has entries (they are hidden, not changed, until unmounted)",
    )
    mount.add_argument(
        "--allow-other", action="store_true", help="let other users enter (the kernel then checks file modes)"
    )
    mount.add_argument("--cache-mb", type=int, default=256, metavar="N", help="read cache bound (default 256)")
    mount.add_argument("--debug", action="store_true", help="log every request on stderr")
    mount.add_argument(
        "--sync-interval",
        type=parse_interval,
        metavar="SECONDS",
        help="sync every backend this often (e.g. 900, 15m, 1h; default: off)",
    )
    mount.add_argument(
        "--verify-interval",
        type=parse_interval,
        metavar="SECONDS",
        help="verify stored pins (those not verified for 7 days) this often (e.g. 1d; default: off)",
    )
    mount.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="mount options as in fstab, comma-separated: allow_other, cache_mb=N, sync_interval=T, "
        "verify_interval=T, debug, nonempty, ro, noexec; mount(8)'s own (defaults, _netdev, nofail, x-*) "
        "are ignored",
    )
    mount.add_argument(
        "--print-systemd-unit",
        action="store_true",
        help="print a systemd service that serves this mount (with these options) and exit",
    )
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.set_defaults(handler=handle_mount)

    umount = subparsers.add_parser(
        "umount",
        parents=[common],
        help="unmount a pinfs mount",
        description="Unmount the pinfs mount at MOUNTPOINT (fusermount3 -u); one whose process was killed is "
        "cleared too. While a shell or program still uses the mount, nothing is unmounted and the error says "
        "which processes hold it (as 'fuser -m' does): leave the mount with them, then run it again.",
    )
    umount.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the data root is mounted")
    umount.set_defaults(handler=handle_umount)


def apply_options(args: argparse.Namespace) -> list[str]:
    """Fold ``-o`` into the flags it spells (``-o cache_mb=512`` is ``--cache-mb 512``); returns the
    kernel options to pass on. Raises InvalidInput for an unknown or malformed option."""
    options = parse_options(args.options)
    args.allow_other = args.allow_other or options.allow_other
    args.debug = args.debug or options.debug
    args.nonempty = args.nonempty or options.nonempty
    if options.cache_mb is not None:
        args.cache_mb = options.cache_mb
    for name in ("sync_interval", "verify_interval"):
        text = getattr(options, name)
        if text is not None:
            try:
                setattr(args, name, parse_interval(text))
            except argparse.ArgumentTypeError as exc:
                raise InvalidInput(f"mount option {name}: {exc}") from None
    if args.cache_mb < 1:
        raise InvalidInput("--cache-mb must be 1 or more")
    args.kernel_options = options.kernel
    return options.kernel


def _mountpoint(args: argparse.Namespace) -> Path:
    from pinfs.fs.mount import is_fd_mountpoint

    given = Path(args.mountpoint)
    return given if is_fd_mountpoint(given) else Path(os.path.abspath(given))


def _config(args: argparse.Namespace) -> Any:
    kernel_options = apply_options(args)
    root = as_path(root_of(args))
    start_client(root)  # on S3, made on a thread while the mount's modules are imported (issue #13)
    from pinfs.fs.mount import MountConfig, check_mountpoint

    if not root.is_dir():
        raise NotFound(f"data root {root} does not exist")
    mountpoint = _mountpoint(args)
    check_mountpoint(mountpoint, nonempty=args.nonempty)
    return MountConfig(
        root=root,
        mountpoint=mountpoint,
        cache_mb=args.cache_mb,
        allow_other=args.allow_other,
        debug=args.debug,
        sync_interval=args.sync_interval,
        verify_interval=args.verify_interval,
        kernel_options=tuple(kernel_options),
    )


def _mount_words(args: argparse.Namespace) -> list[str]:
    """The options of ``pinfs mount`` that reproduce this one (for the detached copy and the unit);
    after ``apply_options``."""
    words = ["--cache-mb", str(args.cache_mb)]
    words += ["--allow-other"] * args.allow_other + ["--debug"] * args.debug + ["--nonempty"] * args.nonempty
    for option, seconds in (("--sync-interval", args.sync_interval), ("--verify-interval", args.verify_interval)):
        if seconds is not None:
            words += [option, f"{seconds:g}"]
    if args.kernel_options:
        words += ["-o", ",".join(args.kernel_options)]
    return words


def handle_mount(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="pinfs mount: %(levelname)s %(name)s: %(message)s",
    )
    pause_collector_for_start_up()  # on again once the mount has warmed up (pinfs.fs.collector)
    if args.ready_fd is not None:
        return _serve_detached(args)
    if args.print_systemd_unit:
        return _print_unit(args)
    config = _config(args)
    if args.background:
        return _start_background(args, config.mountpoint)
    from pinfs.fs.mount import run

    def ready() -> None:  # under systemd (Type=notify): the units ordered after this one may start
        notify(f"READY=1\nSTATUS=serving {config.root} at {config.mountpoint}")

    abandoned = run(config, ready)
    notify("STOPPING=1")
    if abandoned:
        _exit_now(0)
    return 0


def _print_unit(args: argparse.Namespace) -> int:
    import getpass

    apply_options(args)  # an option the mount would refuse is refused now, not at boot
    user = None if os.geteuid() == 0 else getpass.getuser()
    unit = service_unit(as_path(root_of(args)), _mountpoint(args), _mount_words(args), user)
    emit(args, {"ok": True, "unit": unit}, lambda report: report["unit"].rstrip("\n"))
    return 0


def _exit_now(status: int) -> None:
    """End the process at once: unmounted, but an abandoned scheduled duty is still on a worker thread
    (e.g. waiting on an S3 endpoint), and a normal exit would wait for it in pyarrow's S3 finalizer.
    Its writes are atomic and its backend lock dies with the process, as after a crash."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def _start_background(args: argparse.Namespace, mountpoint: Path) -> int:
    """Start a detached copy of this command and wait until it says its mount is ready."""
    from pinfs.fs.mount import is_fd_mountpoint

    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "pinfs", "mount", str(mountpoint), "--ready-fd", str(write_end)]
    command += ["--root", str(root_of(args)), *_mount_words(args)]
    # A /dev/fd/N mount point (mount.fuse3 -o drop_privileges) is a descriptor the copy must inherit.
    inherited = (int(mountpoint.name),) if is_fd_mountpoint(mountpoint) else ()
    with open(os.devnull, "rb") as stdin, open(os.devnull, "wb") as devnull:
        subprocess.Popen(
            command,
            pass_fds=(write_end, *inherited),
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

        if run(config, ready):
            _exit_now(0)
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
