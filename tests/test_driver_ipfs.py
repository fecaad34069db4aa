"""The IPFS driver against a real IPFS node (js-ipfs, Kubo's RPC API) on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_backend
from ipfsnode import IpfsNode
from s3server import content_car, fs_config, pin_record, put_pins, read_pin

from pinfs.ops.drivers.ipfs import base32_cid
from pinfs.ops.sync import SyncOptions, sync
from pinfs.ops.verify import VerifyOptions, verify

pytestmark = pytest.mark.npm  # its server comes from tests/npm/, installed by scripts/test


def stage(root: Path, cid: str, data: bytes) -> None:
    (root / "cars").mkdir(exist_ok=True)
    (root / "cars" / f"{cid}.car").write_bytes(data)


def by_name(report: dict) -> dict[str, dict]:
    return {entry["backend"]: entry for entry in report["backends"]}


def test_sync_imports_and_pins_the_car(root: Path, ipfs_node: IpfsNode) -> None:
    make_backend(root, "ipfs-node", ipfs_node.config("ipfs-node"))
    cid, data = content_car("ipfs sync")
    stage(root, cid, data)
    put_pins(root, "ipfs-node", [pin_record(root, "ipfs-node", cid)])
    report = sync(root, SyncOptions(backends=["ipfs-node"]))
    assert report["ok"], report
    assert by_name(report)["ipfs-node"]["counts"]["moved"] == 1
    assert read_pin(root, "ipfs-node", cid)["status"] == "stored"
    pinned = ipfs_node.rpc("pin/ls", arg=cid, type="recursive")["Keys"]
    assert [base32_cid(key) for key in pinned] == [cid]
    checked = verify(root, VerifyOptions(backends=["ipfs-node"], older_than_days=0, deep=True))
    assert checked["ok"] and checked["totals"]["good"] == 1


def test_a_pin_the_node_lost_fails_verify(root: Path, ipfs_node: IpfsNode) -> None:
    make_backend(root, "ipfs-node", ipfs_node.config("ipfs-node"))
    cid, data = content_car("ipfs lost")
    stage(root, cid, data)
    put_pins(root, "ipfs-node", [pin_record(root, "ipfs-node", cid)])
    assert sync(root, SyncOptions(backends=["ipfs-node"]))["ok"]
    ipfs_node.rpc("pin/rm", arg=cid)
    report = verify(root, VerifyOptions(backends=["ipfs-node"], older_than_days=0))
    assert report["totals"]["failed"] == 1
    record = read_pin(root, "ipfs-node", cid)
    assert record["status"] == "failed" and "missing" in record["metadata"]["last_error"]
    healed = sync(root, SyncOptions(backends=["ipfs-node"]))  # from the staging copy again
    assert healed["ok"] and read_pin(root, "ipfs-node", cid)["status"] == "stored"


def test_the_node_heals_a_filesystem_backend(root: Path, tmp_path: Path, ipfs_node: IpfsNode) -> None:
    make_backend(root, "ipfs-node", ipfs_node.config("ipfs-node"))
    make_backend(root, "fs-a", fs_config("fs-a", tmp_path / "store-a"))
    cid, data = content_car("ipfs heals")
    stage(root, cid, data)
    put_pins(root, "ipfs-node", [pin_record(root, "ipfs-node", cid)])
    assert sync(root, SyncOptions(backends=["ipfs-node"]))["ok"]
    (root / "cars" / f"{cid}.car").unlink()  # now only the node has it
    put_pins(root, "fs-a", [pin_record(root, "fs-a", cid)])
    report = sync(root, SyncOptions(backends=["fs-a"]))
    assert report["ok"], report
    moved = by_name(report)["fs-a"]["moved"]
    assert moved[0]["from"].startswith("backend ipfs-node")
    copy = (tmp_path / "store-a" / "fs-a" / "cars" / f"{cid}.car").read_bytes()
    assert copy == data  # dag/export of a one-block DAG is the same CAR
