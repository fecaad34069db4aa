"""Build a demo data root: several backends of different types, legacy pins.json files in several of the
shapes seen in the wild (including a few invalid CIDs), and small real content CAR files whose CIDs are
real, staged in ROOT/cars/ so that `pinfs sync` has something true to move.

Usage: python scripts/demo_data.py ROOT   (ROOT is replaced if it exists)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from pinfs.data.carv1 import encode_car, make_raw_block


def content_car(text: str) -> tuple[str, bytes]:
    """A one-block CAR holding ``text``; returns the block's CID and the CAR bytes."""
    cid, block = make_raw_block(text.encode())
    return cid, encode_car([cid], [(cid, block)])


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def write_config(root: Path, name: str, config: dict) -> None:
    path = root / "backends" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": name, **config}, sort_keys=False))


def build(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    (root / "cars").mkdir(parents=True)
    cids = []
    for index in range(12):
        cid, car = content_car(f"demo file {index}: hello from pinfs\n")
        (root / "cars" / f"{cid}.car").write_bytes(car)
        cids.append(cid)
    storage = root / "storage"

    # A filesystem backend with a list of objects (ipfs_kit_py's usual shape).
    write_config(
        root, "local-fs", {"type": "filesystem", "enabled": True, "config": {"storage_path": str(storage / "local-fs")}}
    )
    write_json(
        root / "backends/local-fs/pins.json",
        [
            {"cid": cids[0], "status": "pinned", "name": "readme", "created_at": "2026-10-01T08:00:00Z"},
            {"cid": cids[1], "status": "queued", "name": "photo"},
            {"hash": cids[2], "status": "pinning", "pinned_at": 1767225600},
            {"cid": "QmNotARealCidAtAll", "status": "pinned", "name": "typo"},
        ],
    )

    # An SSHFS backend (type from the name) with the {"pins": [...]} shape; storage is a local path.
    write_config(root, "sshfs-archive", {"config": {"storage_path": str(storage / "sshfs-archive")}})
    write_json(
        root / "backends/sshfs-archive/pins.json",
        {
            "version": 1,
            "pins": [{"cid": cid, "status": "failed", "error": "timeout"} for cid in cids[3:6]],
        },
    )

    # An S3 backend whose config points at a local endpoint; the legacy file is a CID → object map.
    write_config(
        root,
        "s3-main",
        {
            "type": "s3",
            "config": {"bucket": "pins", "endpoint": "http://127.0.0.1:9000", "region": "us-east-1", "prefix": "pinfs"},
        },
    )
    write_json(
        root / "backends/s3-main/pins.json",
        {
            cids[0]: {"status": "pinned", "size": 43},
            cids[6]: {"status": "pending"},
            cids[7]: {"status": "archived"},
            "not-a-cid": {"status": "pinned"},
        },
    )

    # GitHub and Storacha (no driver on this machine) with a plain list of CID strings and an empty file.
    write_config(root, "github-mirror", {"type": "github", "config": {"repo": "example/pins"}})
    write_json(root / "backends/github-mirror/pins.json", [cids[8], cids[9], cids[0], "bafyNOPE"])
    (root / "backends/storacha-main").mkdir(parents=True)
    (root / "backends/storacha-main/pins.json").write_text("")

    # HuggingFace, its type taken from its name (the config has no `type`).
    write_config(root, "huggingface-models", {"config": {"repo": "example/models"}})
    write_json(
        root / "backends/huggingface-models/pins.json",
        [
            {"cid": cids[10], "status": "pinned", "model": "tiny"},
            {"cid": cids[11], "status": "failed"},
        ],
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    build(Path(argv[1]).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
