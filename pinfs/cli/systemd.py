"""A systemd service for a pinfs mount (``pinfs mount --print-systemd-unit``), and telling systemd when
the mount is ready (``sd_notify``'s protocol: one datagram to ``$NOTIFY_SOCKET``).

The unit is ``Type=notify``: ``ExecStart`` serves in the foreground and says ``READY=1`` once the mount
answers, so units ordered after it find it mounted; ``ExecStop`` unmounts (the serving process then
exits 0); ``ExecStartPre`` clears a mount left behind by a process that died, so ``Restart=`` works.
Every path in it is absolute: systemd's PATH is not the user's.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def quote(word: str) -> str:
    """One word of an Exec line or path list, as systemd reads it back (quotes, C escapes, ``%``
    specifiers and ``$`` variables are special there)."""
    word = word.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def command_line(words: Sequence[str]) -> str:
    return " ".join(quote(word) for word in words)


def escape_path(path: Path) -> str:
    """``systemd-escape --path``: how systemd names a unit after a path (``/mnt/pins`` -> ``mnt-pins``)."""
    text = str(path).strip("/") or "-"
    out = []
    for index, char in enumerate(text):
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char == "_" or (char == "." and index > 0)):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


def pinfs_command() -> list[str]:
    """How to run this very pinfs from a unit: its console script beside the interpreter (a venv's
    ``bin/pinfs``), else the interpreter with ``-m pinfs``."""
    script = Path(sys.executable).parent / "pinfs"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "pinfs"]


def service_unit(root: Path, mountpoint: Path, mount_args: Sequence[str], user: str | None = None) -> str:
    """The text of a ``.service`` unit serving ``root`` at ``mountpoint`` with ``mount_args`` (the
    options of ``pinfs mount``), run as ``user`` when given."""
    pinfs = pinfs_command()
    name = f"pinfs-{escape_path(mountpoint)}.service"
    start = command_line([*pinfs, "mount", str(mountpoint), "--root", str(root), *mount_args])
    stop = command_line([*pinfs, "umount", str(mountpoint)])
    description = f"pinfs: IPFS pin mappings of {root} at {mountpoint}".replace("%", "%%")
    lines = [
        f"# Install: save as /etc/systemd/system/{name}, then",
        f"#   systemctl daemon-reload && systemctl enable --now {name}",
        "[Unit]",
        f"Description={description}",
        f"RequiresMountsFor={command_line([str(root), str(mountpoint.parent)])}",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        *([f"User={user}"] if user else []),
        # '-': when nothing is left mounted there, this fails and that is fine.
        f"ExecStartPre=-{stop}",
        f"ExecStart={start}",
        f"ExecStop={stop}",
        "Restart=on-failure",
        "RestartSec=5s",
        "TimeoutStopSec=60s",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to the service manager; False when not run by one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True
