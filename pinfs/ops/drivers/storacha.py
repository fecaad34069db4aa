"""The Storacha driver: a Storacha space, through Storacha's own client (``@storacha/client``, Node).

No maintained Python client exists, so pinfs runs a small Node helper (``storacha_client/helper.mjs``)
with ``@storacha/client`` at a pinned version, installed by pinfs with npm on first use into
``client_dir`` (default ``ROOT/.pinfs-cache/storacha-client``; ``PINFS_STORACHA_CLIENT`` overrides it).
It needs ``node`` and, for that first install, ``npm``.

Config: ``space_did``, ``principal_env`` (an environment variable holding the agent's private key, as
``storacha key create`` prints it) and ``proof_env`` (one holding the space's delegation to that agent,
as ``storacha delegation create <agent did> --base64`` prints it), ``service_url`` and ``service_did``
(Storacha's by default), ``receipts_url`` (``<service_url>/receipt/``), ``gateway_url`` (where CARs are
fetched from, ``https://storacha.link``). Signing in by email needs a click in a mailbox, so pinfs
takes a delegation instead, as Storacha documents for servers and CI.

Storacha is content-addressed: a put uploads the CAR (``uploadCAR``: blob/add of its shards, index,
upload/add) and checks the root it reports; existence is the space's upload list with its shards
(``upload/list`` + ``blob/list``, read once per run), and the size there is the shards' total (the
client re-shards a CAR, so it is not the size of the CAR put: ``exact_sizes`` is False). A fetch is a
trustless-gateway request (``/ipfs/<cid>?format=car``), a path no local server exercises
(docs/drivers.md). A space keeps no named files: no pin_mappings.car or backups there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pinfs.data.backends import Backend
from pinfs.errors import NotFound
from pinfs.ops.drivers.base import (
    MAX_OBJECT_BYTES,
    REQUEST_TIMEOUT,
    BaseDriver,
    DriverError,
    Secrets,
    required,
    text_setting,
)
from pinfs.ops.drivers.ipfs import base32_cid

HELPER_SOURCE = Path(__file__).with_name("storacha_client")
HELPER_NAME = "pinfs-storacha-helper.mjs"
CACHE_DIR = ".pinfs-cache/storacha-client"
HELPER_TIMEOUT = 300.0  # one upload of a large CAR included
INSTALL_TIMEOUT = 600.0


class StorachaDriver(BaseDriver):
    kind = "storacha"
    holds_files = False
    exact_sizes = False

    def __init__(self, request: dict[str, str], env: dict[str, str], client_dir: Path, gateway: str, secrets: Secrets):
        self.request = request
        self._env = env
        self.client_dir = client_dir
        self.gateway = gateway.rstrip("/")
        self.secrets = secrets
        self._uploads: dict[str, int] | None = None  # root (base32) -> stored bytes, read once
        self._helper: subprocess.Popen | None = None
        self._stderr: Any = None

    @classmethod
    def from_backend(cls, backend: Backend, root: Path | None = None) -> StorachaDriver:
        space = required(backend, "space_did", "space")
        if not space.startswith("did:key:"):
            raise DriverError(f"backend {backend.name!r} (storacha): space_did {space!r} is not a did:key")
        service_url = (text_setting(backend, "service_url", default="https://up.storacha.network") or "").rstrip("/")
        request = {
            "space": space,
            "service_url": service_url,
            "service_did": text_setting(backend, "service_did", default="did:web:up.storacha.network") or "",
            "receipts_url": text_setting(backend, "receipts_url", default=f"{service_url}/receipt/") or "",
        }
        secrets = Secrets()
        env = {
            "PINFS_STORACHA_PRINCIPAL": secrets.secret(backend, None, "principal_env", needed=True) or "",
            "PINFS_STORACHA_PROOF": secrets.secret(backend, None, "proof_env", needed=True) or "",
        }
        configured = text_setting(backend, "client_dir") or os.environ.get("PINFS_STORACHA_CLIENT")
        data_root = root or backend.directory.parent.parent
        client_dir = Path(os.path.expanduser(configured)) if configured else data_root / CACHE_DIR
        gateway = text_setting(backend, "gateway_url", default="https://storacha.link") or "https://storacha.link"
        return cls(request, env, client_dir, gateway, secrets)

    def describe(self) -> str:
        return f"storacha space {self.request['space']} at {self.request['service_url']}"

    # -- the Node helper --

    def _ensure_client(self) -> Path:
        """The helper script inside an installed client; installs the pinned client with npm when missing."""
        wanted = json.loads((HELPER_SOURCE / "package.json").read_text())["dependencies"]["@storacha/client"]
        installed = self.client_dir / "node_modules" / "@storacha" / "client" / "package.json"
        helper = self.client_dir / HELPER_NAME
        source = (HELPER_SOURCE / "helper.mjs").read_bytes()
        try:
            self.client_dir.mkdir(parents=True, exist_ok=True)
            with open(self.client_dir / ".pinfs-install.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # two syncs must not install at once
                if not installed.is_file() or json.loads(installed.read_text()).get("version") != wanted:
                    self._install()
                if not helper.is_file() or helper.read_bytes() != source:
                    helper.write_bytes(source)
        except OSError as exc:
            where = self.client_dir
            raise DriverError(f"{self.describe()}: cannot set up the Storacha client in {where} ({exc})") from None
        return helper

    def _install(self) -> None:
        npm = shutil.which("npm")
        command = f"npm install --omit=dev --prefix {self.client_dir}"
        if npm is None:
            raise DriverError(f"{self.describe()}: the Storacha client is not installed and npm is missing ({command})")
        shutil.copyfile(HELPER_SOURCE / "package.json", self.client_dir / "package.json")
        try:
            result = subprocess.run(
                [npm, "install", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=self.client_dir,
                capture_output=True,
                timeout=INSTALL_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise DriverError(f"{self.describe()}: installing the Storacha client took too long ({command})") from None
        if result.returncode != 0:
            tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["npm failed"]
            raise DriverError(f"{self.describe()}: installing the Storacha client failed: {tail[0]} ({command})")

    def _run(self, command: str, **extra: str) -> Any:
        """One request to the helper process (started on first use, kept for the driver's life)."""
        if self._helper is None or self._helper.poll() is not None:
            self._helper = self._start()
        payload = json.dumps({"command": command, **self.request, **extra}) + "\n"
        try:
            assert self._helper.stdin is not None
            self._helper.stdin.write(payload.encode())
            self._helper.stdin.flush()
            line = _read_line(self._helper, HELPER_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise DriverError(f"{self.describe()}: {command} failed ({exc})") from None
        try:
            answer = json.loads(line)
        except ValueError:
            answer = {}
        if "ok" in answer:
            return answer["ok"]
        if not line:  # the helper died: say why, from its stderr
            self.close()
            answer["error"] = self._stderr_tail() or "the Storacha helper exited"
        raise self.secrets.error(f"{self.describe()}: {command} failed", answer.get("error") or line[:300])

    def _start(self) -> subprocess.Popen:
        node = shutil.which("node")
        if node is None:
            raise DriverError(f"{self.describe()}: the Storacha client needs Node.js ('node' is not on PATH)")
        helper = self._ensure_client()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the helper; closed in close())
        return subprocess.Popen(
            [node, str(helper)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=self.client_dir,
            env={**os.environ, **self._env},
        )

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def close(self) -> None:
        """Stop the helper process (it also ends by itself when its stdin closes)."""
        helper, self._helper = self._helper, None
        if helper is not None:
            with contextlib.suppress(OSError):
                helper.stdin.close()  # type: ignore[union-attr]
            try:
                helper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait(timeout=5)
            with contextlib.suppress(OSError):
                helper.stdout.close()  # type: ignore[union-attr]
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _listing(self) -> dict[str, int]:
        if self._uploads is None:
            found: dict[str, int] = {}
            for upload in self._run("ls")["uploads"]:
                sizes = [shard.get("size") or 0 for shard in upload.get("shards", [])]
                found[base32_cid(upload["root"])] = sum(sizes)
            self._uploads = found
        return self._uploads

    # -- the interface --

    def check(self) -> None:
        self._run("check")

    def put_car(self, cid: str, key: str, data: bytes) -> None:
        self.limit_check(f"the CAR of {cid}", len(data))
        with tempfile.NamedTemporaryFile(prefix="pinfs-storacha-", suffix=".car") as car:
            car.write(data)
            car.flush()
            root = self._run("put", car_path=car.name)["root"]
        if base32_cid(root) != base32_cid(cid):
            raise DriverError(f"{self.describe()}: the upload's root is {root}, not {cid}")
        if self._uploads is not None:
            self._uploads[base32_cid(cid)] = len(data)

    def car_size(self, cid: str, key: str) -> int | None:
        return self._listing().get(base32_cid(cid))

    def get_car(self, cid: str, key: str) -> bytes:
        if self.car_size(cid, key) is None:
            raise NotFound(f"{self.describe()}: {cid} is not uploaded there")
        url = f"{self.gateway}/ipfs/{cid}?format=car"
        request = urllib.request.Request(url, headers={"Accept": "application/vnd.ipld.car"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                data = response.read(MAX_OBJECT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise NotFound(f"{self.describe()}: {url} answered 404") from None
            raise DriverError(f"{self.describe()}: fetching {url} failed (HTTP {exc.code})") from None
        except (OSError, ValueError) as exc:
            raise DriverError(f"{self.describe()}: fetching {url} failed ({exc})") from None
        if len(data) > MAX_OBJECT_BYTES:
            raise DriverError(f"{self.describe()}: {url} is larger than {MAX_OBJECT_BYTES} bytes")
        return data


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    """One line of the process's stdout ("" when it ended); TimeoutError after ``timeout`` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no answer in {timeout:g}s")
    return process.stdout.readline().decode(errors="replace")
