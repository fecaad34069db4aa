"""Real FTP and FTPS servers for tests: pyftpdlib on 127.0.0.1, one of each per test module.

The FTPS server uses a self-signed certificate made here for IP 127.0.0.1 (``cert``: the PEM a
client must trust, given to the driver as ``ca_file``). Both allow one user, ``USER``/``PASSWORD``,
writing below ``directory``.
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servers import Service, free_port, port_open

USER = "pinfs"
PASSWORD = "ftp-Secret-4711"  # what the tests look for in every report, file and log


@dataclass
class FtpServer:
    port: int
    directory: Path
    service: Service
    cert: Path | None = None

    def config(self, name: str, password_env: str = "PINFS_TEST_FTP_PASSWORD", **extra: Any) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "username": USER,
            "password_env": password_env,
            "base_path": "/pins",
        }
        if self.cert is not None:
            settings.update(tls=True, ca_file=str(self.cert))
        settings.update(extra)
        return {"name": name, "type": "ftp", "config": settings}


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for IP 127.0.0.1 (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def start_ftp_server(directory: Path, tls: bool) -> FtpServer:
    shared = directory / "shared"
    shared.mkdir()
    port = free_port()
    command = [sys.executable, "-m", "pyftpdlib", "-i", "127.0.0.1", "-p", str(port), "-d", str(shared), "-w"]
    command += ["-u", USER, "-P", PASSWORD]
    cert = None
    if tls:
        cert, key = make_certificate(directory)
        command += ["--tls", "--certfile", str(cert), "--keyfile", str(key)]
    service = Service("pyftpdlib", command, directory / "ftpd.log")
    try:
        service.wait_until(lambda: port_open(port), 20)
    except BaseException:
        service.stop()
        raise
    return FtpServer(port, shared, service, cert)


@pytest.fixture(scope="module")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    server = start_ftp_server(tmp_path_factory.mktemp("ftp"), tls=False)
    try:
        yield server
    finally:
        server.service.stop()


@pytest.fixture(scope="module")
def ftps_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    server = start_ftp_server(tmp_path_factory.mktemp("ftps"), tls=True)
    try:
        yield server
    finally:
        server.service.stop()
