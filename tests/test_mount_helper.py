"""Mounting like any other filesystem (issue #20): ``mount -t fuse.pinfs``, fstab lines through
mount.fuse3, ``-o`` options, and the systemd service of ``pinfs mount --print-systemd-unit``.

mount(8) runs its helpers with a clean environment, so mount.fuse3 finds ``pinfs`` only on the standard
PATH, as on a host where pinfs is installed (the README says how). These tests give it that in a
private mount namespace: /usr/local/bin (and /etc/fstab) are bind-mounted over there only, and every
mount made inside disappears with the namespace. The tests run as root, as mount(8) needs.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import cid_for, make_backend, run_pinfs
from mounting import force_unmount, needs_fuse, sh
from s3server import fs_config, pin_record, put_pins

from pinfs.fs.mount import is_mounted

pytestmark = [pytest.mark.mount, needs_fuse]

NAMESPACE_SCRIPT = """\
set -u
mount --bind "$PINFS_BIN" /usr/local/bin
if [ -n "${FSTAB-}" ]; then mount --bind "$FSTAB" /etc/fstab; fi
trap 'fusermount3 -uz "$MP" 2>/dev/null' EXIT
"""

# What each namespace script prints once mounted: where from, as what, what is inside, and who serves it.
INSPECT = """\
echo "mounted=$?"
echo "findmnt: $(findmnt -n -o SOURCE,FSTYPE,OPTIONS "$MP")"
echo "ls: $(ls "$MP" | tr '\\n' ' ')"
echo "summary: $(cat "$MP/backends/fs-a/summary.json" | tr -d '\\n ')"
echo "nobody: $(setpriv --reuid=65534 --regid=65534 --clear-groups ls "$MP" 2>&1 | tr '\\n' ' ')"
SERVER="${SERVER:-pinfs mount $MP}"
echo "server: $(pgrep -af "$SERVER" | grep -v pgrep)"
umount "$MP"; echo "umount=$?"
for _ in $(seq 100); do pgrep -f "$SERVER" >/dev/null || break; sleep 0.1; done
pgrep -f "$SERVER" >/dev/null && echo "server-after-umount=running" || echo "server-after-umount=gone"
"""


@pytest.fixture
def data(root: Path, tmp_path: Path) -> Path:
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "a"))
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid_for(i), "stored") for i in range(3)])
    return root


@pytest.fixture
def mountpoint() -> Iterator[Path]:
    """A mount point another user can reach (pytest's tmp_path is not: its parents are 0700), so that
    allow_other is tested by the kernel's checks alone."""
    path = Path(tempfile.mkdtemp(prefix="pinfs-mnt-"))
    os.chmod(path, 0o755)
    yield path
    force_unmount(path)
    path.rmdir()


def in_namespace(
    script: str, data: Path, mountpoint: Path, tmp_path: Path, fstab: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (bash) as root in a private mount namespace where ``pinfs`` (this venv's) is on the
    standard PATH, and /etc/fstab holds ``fstab`` when given."""
    bin_dir = tmp_path / "usr-local-bin"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / "pinfs"
    if not link.exists():
        link.symlink_to(Path(sys.executable).parent / "pinfs")
    env = {**os.environ, "PINFS_BIN": str(bin_dir), "ROOT": str(data), "MP": str(mountpoint)}
    env.pop("PINFS_ROOT", None)
    if fstab is not None:
        (tmp_path / "fstab").write_text(fstab)
        env["FSTAB"] = str(tmp_path / "fstab")
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", NAMESPACE_SCRIPT + script],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def report(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The ``key=value`` / ``key: value`` lines a namespace script printed."""
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"([a-z-]+)[=:] ?(.*)$", line)
        if match:
            found[match[1]] = match[2].strip()
    return found


def assert_served(seen: dict[str, str], data: Path, *, allow_other: bool) -> None:
    assert seen["mounted"] == "0"
    source, fstype, options = seen["findmnt"].split()
    assert (source, fstype) == (str(data), "fuse.pinfs")
    assert {"nosuid", "nodev", "noatime"} <= set(options.split(","))
    assert seen["ls"].split() == [
        "README",
        "backends",
        "cids",
        "health.json",
        "insights.json",
        "insights.svg",
        "status.json",
    ]
    assert '"backend":"fs-a"' in seen["summary"] and '"count":3' in seen["summary"]
    if allow_other:
        assert "allow_other" in options.split(",") and "backends" in seen["nobody"].split()
    else:
        assert "Permission denied" in seen["nobody"]
    assert seen["umount"] == "0" and seen["server-after-umount"] == "gone"


def test_mount_t_fuse_pinfs(data: Path, mountpoint: Path, tmp_path: Path) -> None:
    script = 'mount -t fuse.pinfs "$ROOT" "$MP" -o allow_other,cache_mb=512\n' + INSPECT
    result = in_namespace(script, data, mountpoint, tmp_path)
    seen = report(result)
    assert_served(seen, data, allow_other=True)
    assert "--cache-mb 512" in seen["server"] and "--allow-other" in seen["server"]
    assert not is_mounted(mountpoint)


def test_mount_t_with_drop_privileges(data: Path, mountpoint: Path, tmp_path: Path) -> None:
    """mount.fuse3 -o drop_privileges mounts itself and hands pinfs /dev/fd/N, with no capabilities."""
    # The pattern split in two, so that pgrep does not find this very script's command line.
    script = 'SERVER="pinfs mount /dev/f""d/"\nmount -t fuse.pinfs "$ROOT" "$MP" -o drop_privileges\n' + INSPECT
    seen = report(in_namespace(script, data, mountpoint, tmp_path))
    assert seen["mounted"] == "0" and seen["findmnt"].split()[1] == "fuse.pinfs"
    assert "backends" in seen["ls"].split() and '"count":3' in seen["summary"]
    assert "/dev/fd/" in seen["server"]
    assert seen["umount"] == "0" and seen["server-after-umount"] == "gone"


@pytest.mark.parametrize(
    "line",
    [
        "{root} {mp} fuse.pinfs defaults,_netdev,nofail,x-systemd.mount-timeout=30 0 0",
        "pinfs#{root} {mp} fuse defaults,_netdev 0 0",
    ],
    ids=["fuse.pinfs", "pinfs#ROOT"],
)
def test_an_fstab_line(data: Path, mountpoint: Path, tmp_path: Path, line: str) -> None:
    fstab = line.format(root=data, mp=mountpoint) + "\n"
    result = in_namespace('mount "$MP"\n' + INSPECT, data, mountpoint, tmp_path, fstab=fstab)
    assert_served(report(result), data, allow_other=False)


def test_a_bad_option_fails_the_mount_with_one_line(data: Path, mountpoint: Path, tmp_path: Path) -> None:
    script = 'mount -t fuse.pinfs "$ROOT" "$MP" -o cache_mb=lots; echo "mounted=$?"; findmnt "$MP" || echo none\n'
    result = in_namespace(script, data, mountpoint, tmp_path)
    assert result.stderr.splitlines() == ["pinfs mount: error: mount option 'cache_mb=lots': expected a whole number"]
    assert report(result)["mounted"] != "0" and result.stdout.splitlines()[-1] == "none"


def test_the_helper_form_on_its_own(data: Path, mountpoint: Path) -> None:
    """``pinfs ROOT MOUNTPOINT -o OPTIONS`` (what mount.fuse3 runs) returns once mounted."""
    result = run_pinfs(data, str(data), str(mountpoint), "-o", "rw,ro,dev,suid")
    assert result.returncode == 0, result.stderr
    assert os.path.ismount(mountpoint)
    assert "backends" in os.listdir(mountpoint)
    control = mountpoint / ".control" / "sync"
    with pytest.raises(OSError) as failure:  # -o ro: the kernel refuses every write, control files too
        control.write_text("dry-run\n")
    assert failure.value.errno == 30  # EROFS
    assert run_pinfs(data, "umount", str(mountpoint)).returncode == 0


def test_unknown_options_are_refused_by_pinfs_mount(data: Path, mountpoint: Path) -> None:
    result = run_pinfs(data, "mount", str(mountpoint), "-o", "allow_other,colour=blue")
    assert result.returncode == 2
    assert result.stderr.startswith("pinfs mount: error: unknown mount option 'colour=blue' (pinfs knows: ")
    assert len(result.stderr.splitlines()) == 1 and not is_mounted(mountpoint)


def test_a_mistyped_command_is_not_taken_for_a_mount(data: Path) -> None:
    result = run_pinfs(data, "stauts")
    assert result.returncode == 2 and "invalid choice: 'stauts'" in result.stderr


# -- the systemd unit --


def unit_of(data: Path, mountpoint: Path, *options: str) -> dict[str, str]:
    result = run_pinfs(data, "mount", "--print-systemd-unit", str(mountpoint), "--root", str(data), *options)
    assert result.returncode == 0, result.stderr
    return {key: value for key, _, value in (line.partition("=") for line in result.stdout.splitlines()) if value}


def exec_words(line: str) -> list[str]:
    """An Exec line as systemd reads it: quotes, and ``%%``/``$$`` for ``%``/``$``."""
    return [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(line.lstrip("-"))]


class NotifySocket:
    """A stand-in for systemd's notification socket (``$NOTIFY_SOCKET``): collects what is sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def receive(self, timeout: float = 15.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def close(self) -> None:
        self.sock.close()


def test_the_unit_is_valid_for_systemd(data: Path, tmp_path: Path) -> None:
    mountpoint = tmp_path / "pins mount"  # a space: quoted in the unit
    result = run_pinfs(data, "mount", "--print-systemd-unit", str(mountpoint), "--root", str(data))
    name = re.search(r"/etc/systemd/system/(\S+\.service)", result.stdout)
    assert name is not None and name[1].startswith("pinfs-") and "\\x20mount" in name[1]
    path = tmp_path / name[1]
    path.write_text(result.stdout)
    verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    unit = unit_of(data, mountpoint)
    assert unit["Type"] == "notify" and unit["Restart"] == "on-failure"
    pinfs = str(Path(sys.executable).parent / "pinfs")  # absolute: systemd's PATH is not the user's
    assert exec_words(unit["ExecStart"]) == [pinfs, "mount", str(mountpoint), "--root", str(data), "--cache-mb", "256"]
    assert exec_words(unit["ExecStop"]) == [pinfs, "umount", str(mountpoint)]
    assert unit["ExecStartPre"] == "-" + unit["ExecStop"]


def test_the_units_commands_start_and_stop_the_mount(data: Path, mountpoint: Path, tmp_path: Path) -> None:
    unit = unit_of(data, mountpoint, "-o", "allow_other,cache_mb=64")
    start = exec_words(unit["ExecStart"])
    assert start[1:] == ["mount", str(mountpoint), "--root", str(data), "--cache-mb", "64", "--allow-other"]
    notify = NotifySocket(tmp_path / "notify")
    try:
        pre = subprocess.run(exec_words(unit["ExecStartPre"]), capture_output=True, text=True, timeout=60)
        assert pre.returncode == 1 and unit["ExecStartPre"].startswith("-")  # nothing to clear: tolerated
        env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
        server = subprocess.Popen(start, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert notify.receive().startswith("READY=1\n")
            assert os.path.ismount(mountpoint)  # ready means mounted: units after it can use it
            assert "backends" in sh(f"ls {mountpoint}").stdout.split()
            stop = subprocess.run(exec_words(unit["ExecStop"]), capture_output=True, text=True, timeout=60)
            assert stop.returncode == 0, stop.stderr
            assert server.wait(timeout=30) == 0
            assert notify.receive() == "STOPPING=1"
            assert not is_mounted(mountpoint)
            assert server.stderr is not None and server.stderr.read() == ""
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    finally:
        notify.close()


def test_execstartpre_clears_what_a_crashed_mount_left(data: Path, mountpoint: Path, tmp_path: Path) -> None:
    """Restart=on-failure after a crash: ExecStartPre clears the dead mount, ExecStart mounts again."""
    unit = unit_of(data, mountpoint)
    server = subprocess.Popen(exec_words(unit["ExecStart"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not os.path.ismount(mountpoint):
        assert time.monotonic() < deadline and server.poll() is None
        time.sleep(0.05)
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    assert is_mounted(mountpoint)  # a dead endpoint: "Transport endpoint is not connected"
    again = subprocess.run(exec_words(unit["ExecStart"]), capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "process has gone" in again.stderr  # why ExecStartPre is there
    pre = subprocess.run(exec_words(unit["ExecStartPre"]), capture_output=True, text=True, timeout=60)
    assert pre.returncode == 0 and not is_mounted(mountpoint)
    restarted = subprocess.Popen(exec_words(unit["ExecStart"]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not os.path.ismount(mountpoint):
            assert time.monotonic() < deadline and restarted.poll() is None
            time.sleep(0.05)
        assert "backends" in os.listdir(mountpoint)
        assert subprocess.run(exec_words(unit["ExecStop"]), timeout=60).returncode == 0
        assert restarted.wait(timeout=30) == 0
    finally:
        if restarted.poll() is None:
            restarted.kill()
            restarted.wait()
