"""The FTP driver: an FTP or FTPS server through ``ftplib``, passive mode, binary transfers.

Config: ``host``, ``port`` (21), ``username`` (anonymous), ``password`` or ``password_env``, ``tls``
(explicit FTPS: ``AUTH TLS`` then a protected data channel, with a verifying SSL context; ``ca_file``
names extra trusted certificates, e.g. a self-signed server's), ``base_path`` (the directory keys
are below).

A put is STOR to a temporary name in the target directory, then RNFR/RNTO onto the key, so a reader
never sees half a CAR. One control connection is kept per driver and opened again once if the server
dropped it. Every call is synchronous; callers run it off the event loop.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import posixpath
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pinfs.data.backends import Backend
from pinfs.errors import NotFound
from pinfs.ops.drivers.base import (
    CONNECT_TIMEOUT,
    MAX_OBJECT_BYTES,
    REQUEST_TIMEOUT,
    BaseDriver,
    DriverError,
    Secrets,
    checked_key,
    flag_setting,
    required,
    text_setting,
)

T = TypeVar("T")
TEMP_PREFIX = ".pinfs-tmp."


class FtpDriver(BaseDriver):
    kind = "ftp"

    def __init__(
        self, host: str, port: int, username: str, password: str, tls: bool, base: str, ca_file: str | None
    ) -> None:
        self.host, self.port, self.username, self.tls, self.base = host, port, username, tls, base
        self.secrets = Secrets()
        self._password = self.secrets.add(password)
        self.ca_file = ca_file
        self._ftp: ftplib.FTP | None = None

    @classmethod
    def from_backend(cls, backend: Backend, root: Path | None = None) -> FtpDriver:
        host = required(backend, "host", "server")
        port_text = text_setting(backend, "port", default="21") or "21"
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise DriverError(f"backend {backend.name!r} (ftp): port {port_text!r} is not a TCP port")
        secrets = Secrets()
        username = text_setting(backend, "username", "user", default="anonymous") or "anonymous"
        password = secrets.secret(backend, "password", "password_env", needed=False)
        if password is None:
            password = "anonymous@" if username == "anonymous" else ""
        base = text_setting(backend, "base_path", "path", default="/") or "/"
        ca_file = text_setting(backend, "ca_file", "cafile")
        if ca_file and not Path(os.path.expanduser(ca_file)).is_file():
            raise DriverError(f"backend {backend.name!r} (ftp): ca_file {ca_file} does not exist")
        tls = flag_setting(backend, "tls", False)
        ca_path = os.path.expanduser(ca_file) if ca_file else None
        return cls(host, int(port_text), username, password, tls, base, ca_path)

    def describe(self) -> str:
        scheme = "ftps" if self.tls else "ftp"
        return f"{scheme}://{self.username}@{self.host}:{self.port}{posixpath.join('/', self.base)}"

    # -- the connection --

    def _connect(self) -> ftplib.FTP:
        try:
            if self.tls:
                context = ssl.create_default_context(cafile=self.ca_file)
                ftp: ftplib.FTP = ftplib.FTP_TLS(context=context, timeout=REQUEST_TIMEOUT)
            else:
                ftp = ftplib.FTP(timeout=REQUEST_TIMEOUT)
            ftp.connect(self.host, self.port, timeout=CONNECT_TIMEOUT)
            ftp.sock.settimeout(REQUEST_TIMEOUT)
            ftp.login(self.username, self._password)
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()  # the CARs travel encrypted too
            ftp.set_pasv(True)
            ftp.voidcmd("TYPE I")
        except ftplib.error_perm as exc:
            raise self.secrets.error(f"{self.describe()}: login refused", exc) from None
        except (OSError, EOFError, ftplib.Error) as exc:
            raise self.secrets.error(f"{self.describe()}: cannot connect", exc) from None
        return ftp

    def _call(self, what: str, action: Callable[[ftplib.FTP], T]) -> T:
        """``action(ftp)`` on the open connection; opened again once when the server had dropped it."""
        for attempt in (1, 2):
            if self._ftp is None:
                self._ftp = self._connect()
            try:
                return action(self._ftp)
            except (ftplib.error_temp, OSError, EOFError) as exc:
                self._close()
                if attempt == 2 or isinstance(exc, TimeoutError | socket.timeout):
                    raise self.secrets.error(f"{self.describe()}: {what} failed", exc) from None
            except ftplib.error_perm as exc:
                raise self.secrets.error(f"{self.describe()}: {what} refused", exc) from None
        raise AssertionError("unreachable")

    def _close(self) -> None:
        """Drop a connection that failed (no QUIT: it may not answer)."""
        ftp, self._ftp = self._ftp, None
        if ftp is not None:
            ftp.close()

    def close(self) -> None:
        ftp, self._ftp = self._ftp, None
        if ftp is not None:
            try:
                ftp.quit()
            except (OSError, EOFError, ftplib.Error):
                ftp.close()

    def __del__(self) -> None:
        self.close()

    def _path(self, key: str) -> str:
        return posixpath.join("/", self.base, checked_key(key))

    # -- the interface --

    def check(self) -> None:
        """Log in (a put creates ``base_path`` when it is missing, so that is not required here)."""
        self._call("PWD", lambda ftp: ftp.pwd())

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        directory, name = posixpath.split(path)
        temp = posixpath.join(directory, f"{TEMP_PREFIX}{os.getpid()}.{name}")

        def store(ftp: ftplib.FTP) -> None:
            _makedirs(ftp, directory)
            ftp.storbinary(f"STOR {temp}", io.BytesIO(data))
            try:
                ftp.rename(temp, path)
            except ftplib.error_perm:
                # Some servers refuse RNTO over an existing file: remove it, then rename.
                _quiet_delete(ftp, path)
                ftp.rename(temp, path)

        self._call(f"writing {path}", store)

    def size(self, key: str) -> int | None:
        path = self._path(key)

        def size_of(ftp: ftplib.FTP) -> int | None:
            try:
                return ftp.size(path)
            except ftplib.error_perm as exc:
                if str(exc).startswith("550"):
                    return None  # no such file (or a directory)
                raise

        return self._call(f"SIZE {path}", size_of)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        size = self.size(key)
        if size is None:
            raise NotFound(f"{self.describe()}: {key} does not exist")
        if size > MAX_OBJECT_BYTES:
            raise DriverError(f"{self.describe()}: {key} is larger than {MAX_OBJECT_BYTES} bytes")
        out = io.BytesIO()
        self._call(f"reading {path}", lambda ftp: ftp.retrbinary(f"RETR {path}", out.write))
        return out.getvalue()

    def list(self, prefix: str = "") -> list[str]:
        top = posixpath.join("/", self.base)
        start = self._path(prefix) if prefix.strip("/") else top
        keys: list[str] = []

        def walk(ftp: ftplib.FTP) -> None:
            keys.clear()
            pending = [start]
            while pending:
                directory = pending.pop()
                try:
                    entries = list(ftp.mlsd(directory, facts=["type"]))
                except ftplib.error_perm:
                    continue  # not there
                for name, facts in entries:
                    full = posixpath.join(directory, name)
                    if facts.get("type") == "dir":
                        pending.append(full)
                    elif facts.get("type") == "file" and not name.startswith(TEMP_PREFIX):
                        keys.append(posixpath.relpath(full, top))

        self._call(f"listing {start}", walk)
        return sorted(keys)


def _makedirs(ftp: ftplib.FTP, directory: str) -> None:
    """Create ``directory`` and its parents (MKD of one that exists is refused: that is fine)."""
    current = "/"
    for part in [p for p in directory.split("/") if p]:
        current = posixpath.join(current, part)
        with contextlib.suppress(ftplib.error_perm):
            ftp.mkd(current)


def _quiet_delete(ftp: ftplib.FTP, path: str) -> Any:
    try:
        return ftp.delete(path)
    except ftplib.error_perm:
        return None
