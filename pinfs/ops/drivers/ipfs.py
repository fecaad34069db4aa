"""The IPFS driver: an IPFS node (Kubo, or any node speaking its RPC API) over HTTP POST.

Config: ``api`` (``http://127.0.0.1:5001``), ``auth_env`` (an environment variable holding the RPC
``Authorization``: ``user:password`` is sent as Basic, a value starting with ``Basic ``/``Bearer ``
as it is).

The node is content-addressed, so pins are found by CID and the key is not used: a put is
``dag/import?pin-roots=true`` of the CAR (the node checks every block and pins the root), existence is
``pin/ls`` of the CID (recursive) plus ``block/stat`` of the root (with a timeout, so a pin whose
blocks went missing does not hang), and a fetch is ``dag/export``. CIDs are compared in base32 CIDv1
(a node may answer in base58 or CIDv0). The CAR a node exports is rebuilt from its blocks, so its size
is not the size of the CAR that was put (``exact_sizes`` is False). A node keeps no named files, so it
holds neither ``pin_mappings.car`` nor backups.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

import libipld

from pinfs.data.backends import Backend
from pinfs.data.carv1 import cid_to_bytes
from pinfs.errors import NotFound
from pinfs.ops.drivers.base import (
    MAX_OBJECT_BYTES,
    REQUEST_TIMEOUT,
    BaseDriver,
    DriverError,
    Secrets,
    required,
)

BLOCK_STAT_TIMEOUT = "10s"
CHUNK = 1 << 20


def base32_cid(text: str) -> str:
    """``text`` as a CIDv1 in base32 (a CIDv0 becomes the dag-pb CIDv1 of the same hash); ValueError
    when it is not a CID."""
    binary = cid_to_bytes(text)
    if binary[0] != 1:  # CIDv0: a bare multihash
        binary = bytes([1, 0x70]) + binary
    return libipld.encode_cid(binary)


class IpfsDriver(BaseDriver):
    kind = "ipfs"
    holds_files = False
    exact_sizes = False

    def __init__(self, api: str, authorization: str | None, secrets: Secrets) -> None:
        self.api = api.rstrip("/")
        self.authorization = authorization
        self.secrets = secrets

    @classmethod
    def from_backend(cls, backend: Backend, root: Path | None = None) -> IpfsDriver:
        api = required(backend, "api", "api_url", "endpoint")
        parsed = urlparse(api if "://" in api else f"http://{api}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise DriverError(f"backend {backend.name!r} (ipfs): api {api!r} is not an http(s) URL")
        secrets = Secrets()
        auth = secrets.secret(backend, None, "auth_env", needed=False)
        if auth is not None and not auth.startswith(("Basic ", "Bearer ")):
            import base64

            auth = secrets.add("Basic " + base64.b64encode(auth.encode()).decode())
        return cls(f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}", auth, secrets)

    def describe(self) -> str:
        return f"IPFS node at {self.api}"

    # -- RPC --

    def _post(
        self, command: str, args: dict[str, str], body: bytes = b"", content_type: str | None = None
    ) -> urllib.request.Request:
        request = urllib.request.Request(f"{self.api}/api/v0/{command}?{urlencode(args)}", data=body, method="POST")
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.authorization:
            request.add_header("Authorization", self.authorization)
        return request

    def _rpc(self, command: str, args: dict[str, str], body: bytes = b"", content_type: str | None = None) -> Any:
        """The decoded JSON answer; ``_RpcError`` carrying the node's message when it refused."""
        data = self._raw(command, args, body, content_type)
        try:
            lines = [json.loads(line) for line in data.splitlines() if line.strip()]
        except ValueError:
            raise self.secrets.error(f"{self.describe()}: {command} answered something that is not JSON") from None
        return lines[-1] if len(lines) == 1 else lines

    def _raw(
        self, command: str, args: dict[str, str], body: bytes = b"", content_type: str | None = None, limit: int = 0
    ) -> bytes:
        request = self._post(command, args, body, content_type)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                if limit:
                    return _read_limited(response, limit, f"{self.describe()}: {command} {args}")
                return response.read()
        except urllib.error.HTTPError as exc:
            message = _rpc_message(exc)
            if exc.code in (401, 403):
                raise self.secrets.error(f"{self.describe()}: {command} refused (HTTP {exc.code})", message) from None
            raise _RpcError(self.secrets.scrub(message or f"HTTP {exc.code}")) from None
        except (OSError, ValueError) as exc:
            raise self.secrets.error(f"{self.describe()}: {command} failed", exc) from None

    # -- the interface --

    def check(self) -> None:
        try:
            answer = self._rpc("version", {})
        except _RpcError as exc:
            raise self.secrets.error(f"{self.describe()}: version refused", exc) from None
        if not isinstance(answer, dict) or "Version" not in answer:
            raise DriverError(f"{self.describe()}: not an IPFS RPC API (no version)")

    def put_car(self, cid: str, key: str, data: bytes) -> None:
        self.limit_check(f"the CAR of {cid}", len(data))
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{base32_cid(cid)}.car"\r\n'
                f"Content-Type: application/vnd.ipld.car\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        try:
            answer = self._rpc("dag/import", {"pin-roots": "true"}, body, f"multipart/form-data; boundary={boundary}")
        except _RpcError as exc:
            raise self.secrets.error(f"{self.describe()}: dag/import of {cid} refused", exc) from None
        roots = [line.get("Root") for line in (answer if isinstance(answer, list) else [answer])]
        wanted = base32_cid(cid)
        for root in roots:
            if isinstance(root, dict) and _cid_of(root.get("Cid")) == wanted:
                if root.get("PinErrorMsg"):
                    raise DriverError(f"{self.describe()}: pinning {cid} failed: {root['PinErrorMsg']}")
                return
        raise DriverError(f"{self.describe()}: dag/import did not pin {cid} (roots: {roots})")

    def car_size(self, cid: str, key: str) -> int | None:
        """The root block's size when ``cid`` is pinned and its root block is on the node, else None."""
        wanted = base32_cid(cid)
        try:
            answer = self._rpc("pin/ls", {"arg": cid, "type": "recursive"})
        except _RpcError:
            return None  # "not pinned"
        keys = answer.get("Keys", {}) if isinstance(answer, dict) else {}
        if not any(base32_cid(found) == wanted for found in keys):
            return None
        try:
            stat = self._rpc("block/stat", {"arg": cid, "timeout": BLOCK_STAT_TIMEOUT})
        except _RpcError:
            return None  # pinned, but the block is gone (or could not be found in time)
        size = stat.get("Size") if isinstance(stat, dict) else None
        return int(size) if isinstance(size, int) else None

    def get_car(self, cid: str, key: str) -> bytes:
        if self.car_size(cid, key) is None:
            raise NotFound(f"{self.describe()}: {cid} is not pinned there")
        try:
            return self._raw("dag/export", {"arg": cid}, limit=MAX_OBJECT_BYTES)
        except _RpcError as exc:
            raise self.secrets.error(f"{self.describe()}: dag/export of {cid} failed", exc) from None


class _RpcError(Exception):
    """The node answered a command with an error (its message)."""


def _rpc_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read(4096)
        message = json.loads(body).get("Message")
        return str(message) if message else body.decode(errors="replace")
    except (OSError, ValueError, AttributeError):
        return f"HTTP {exc.code}"


def _cid_of(value: Any) -> str | None:
    text = value.get("/") if isinstance(value, dict) else value
    try:
        return base32_cid(str(text))
    except ValueError:
        return None


def _read_limited(response: Any, limit: int, what: str) -> bytes:
    parts: list[bytes] = []
    total = 0
    while chunk := response.read(CHUNK):
        total += len(chunk)
        if total > limit:
            raise DriverError(f"{what}: more than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)
