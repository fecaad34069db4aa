"""A third-party package adds a backend type through the ``pinfs.drivers`` entry point group, without
touching pinfs: here a package made on disk (a module and its dist-info) put on PYTHONPATH."""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import make_backend, run_pinfs
from s3server import content_car, pin_record, put_pins, read_pin

PLUGIN = '''
"""A driver kept in a local folder, as the docs/drivers.md example writes one."""
from pathlib import Path

from pinfs.errors import NotFound
from pinfs.ops.drivers.base import BaseDriver, DriverError, checked_key, required


class TapeDriver(BaseDriver):
    kind = "tape"
    max_object_bytes = 10_000

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def from_backend(cls, backend, root=None):
        return cls(Path(required(backend, "folder")))

    def describe(self):
        return f"tape in {self.folder}"

    def check(self):
        if not self.folder.is_dir():
            raise DriverError(f"{self.folder} is not loaded")

    def put(self, key, data):
        target = self.folder / checked_key(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def get(self, key):
        try:
            return (self.folder / checked_key(key)).read_bytes()
        except FileNotFoundError:
            raise NotFound(key) from None

    def size(self, key):
        target = self.folder / checked_key(key)
        return target.stat().st_size if target.is_file() else None
'''


def install_plugin(site: Path) -> None:
    site.mkdir()
    (site / "pinfs_tape.py").write_text(PLUGIN)
    info = site / "pinfs_tape-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pinfs-tape\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pinfs.drivers]\ntape = pinfs_tape:TapeDriver.from_backend\n")


def test_an_entry_point_adds_a_backend_type(root: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_plugin(site)
    (tmp_path / "tape").mkdir()
    make_backend(root, "tape-vault", {"type": "tape", "folder": str(tmp_path / "tape")})
    cid, data = content_car("on tape")
    (root / "cars").mkdir()
    (root / "cars" / f"{cid}.car").write_bytes(data)
    too_big, big_data = content_car("x" * 20_000)
    (root / "cars" / f"{too_big}.car").write_bytes(big_data)
    put_pins(root, "tape-vault", [pin_record(root, "tape-vault", c) for c in (cid, too_big)])
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    result = run_pinfs(root, "sync", "--json", env=env)
    report = json.loads(result.stdout)
    entry = report["backends"][0]
    assert entry["type"] == "tape" and entry["counts"]["moved"] == 1, entry
    assert (tmp_path / "tape" / "tape-vault" / "cars" / f"{cid}.car").read_bytes() == data
    assert read_pin(root, "tape-vault", cid)["status"] == "stored"
    assert "10000 bytes tape takes" in read_pin(root, "tape-vault", too_big)["metadata"]["last_error"]
    # without the package the type is unknown again, and nothing changes
    plain = run_pinfs(root, "sync", "--json")
    assert json.loads(plain.stdout)["backends"][0]["state"] == "unsupported"


def test_a_broken_plugin_is_reported_not_raised(root: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_plugin(site)
    (site / "pinfs_tape.py").write_text("raise ImportError('the tape library is missing')\n")
    make_backend(root, "tape-vault", {"type": "tape", "folder": str(tmp_path)})
    put_pins(root, "tape-vault", [pin_record(root, "tape-vault", content_car("t")[0])])
    result = run_pinfs(root, "sync", "--json", env={"PYTHONPATH": str(site)})
    entry = json.loads(result.stdout)["backends"][0]
    assert entry["state"] == "unsupported" and "the tape library is missing" in entry["reason"]
    assert "Traceback" not in result.stderr
