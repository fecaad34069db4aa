"""Issue #15, item 3: pins with large metadata. pinfs never writes a CAR its own reader rejects: entry
blocks hold at most 1 MiB (a record bigger than that is a block of its own), both writers cut the same
blocks, and migrate, --verify-only, car show and the mount read what was written."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import cid_for, make_backend, run_pinfs, run_pinfs_json

from pinfs.data import car, car_columns, carv1
from pinfs.data.schema import REQUIRED_COLUMNS, make_record

CREATED = "2026-01-01T00:00:00.000000+00:00"
MEGABYTE = 1_000_000


def records_with(metadata_sizes: list[int]) -> list[dict[str, str]]:
    records = [
        make_record(cid_for(f"big{n}"), "b", "unknown", status="stored", metadata={"blob": "x" * size})
        for n, size in enumerate(metadata_sizes)
    ]
    records.sort(key=lambda record: record["cid"])
    return [{name: record[name] for name in REQUIRED_COLUMNS} for record in records]


def entry_block_sizes(data: bytes) -> list[int]:
    roots, blocks = carv1.iter_car_blocks(data)
    return [len(block) for cid, block in blocks if cid not in roots]


def write_both(tmp_path: Path, records: list[dict[str, str]]) -> bytes:
    """The bytes of both writers, which must be the same."""
    by_records = tmp_path / "records.car"
    by_columns = tmp_path / "columns.car"
    car.write_pin_mappings_car(by_records, records, "b", CREATED)
    columns = {name: pa.array([record[name] for record in records], pa.string()) for name in REQUIRED_COLUMNS}
    car_columns.write_pin_mappings_car_columns(by_columns, columns, len(records), "b", CREATED)
    assert by_records.read_bytes() == by_columns.read_bytes()
    return by_records.read_bytes()


def test_seventy_megabyte_records_make_blocks_of_at_most_1_mib_that_read_back(tmp_path: Path) -> None:
    records = records_with([MEGABYTE] * 70)
    data = write_both(tmp_path, records)
    sizes = entry_block_sizes(data)
    assert len(sizes) == 70 and max(sizes) <= car.MAX_BLOCK_BYTES
    decoded = car.decode_pin_mappings_car(data)
    assert decoded.records == records


def test_a_run_is_cut_only_where_it_must_be(tmp_path: Path) -> None:
    records = records_with([10] * 1500 + [300_000] * 9 + [10] * 600)
    data = write_both(tmp_path, records)
    sizes = entry_block_sizes(data)
    assert max(sizes) <= car.MAX_BLOCK_BYTES
    assert len(sizes) > 3  # 2109 records in runs of 1000: the run with the big ones is cut
    assert car.decode_pin_mappings_car(data).records == records


def test_a_record_bigger_than_a_block_is_a_block_of_its_own(tmp_path: Path) -> None:
    records = records_with([100, 3 * MEGABYTE, 100, 100])
    data = write_both(tmp_path, records)
    sizes = sorted(entry_block_sizes(data))
    assert sizes[-1] > car.MAX_BLOCK_BYTES and sum(1 for size in sizes if size > car.MAX_BLOCK_BYTES) == 1
    assert car.decode_pin_mappings_car(data).records == records


def test_a_record_too_big_for_the_reader_is_refused_by_the_writer(tmp_path: Path) -> None:
    records = records_with([carv1.MAX_SECTION_BYTES])
    with pytest.raises(ValueError, match="more than a CAR block may hold"):
        car.write_pin_mappings_car(tmp_path / "x.car", records, "b", CREATED)
    assert not (tmp_path / "x.car").exists()


def test_migrate_verify_and_car_show_agree_on_large_metadata(root: Path) -> None:
    """The commands on a few such pins (the seventy of the issue are above, without the disk)."""
    entries = [{"cid": cid_for(f"m{n}"), "status": "pinned", "note": "y" * MEGABYTE} for n in range(3)]
    directory = make_backend(root, "big-meta", pins_json=entries)
    migrated = run_pinfs(root, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    verified = run_pinfs(root, "migrate", "--verify-only")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = run_pinfs(root, "car", "show", str(directory / "pin_mappings.car"))
    assert shown.returncode == 0, shown.stderr
    assert len(json.loads(shown.stdout)["pin_mappings"]) == 3
    assert max(entry_block_sizes((directory / "pin_mappings.car").read_bytes())) <= car.MAX_BLOCK_BYTES
    assert run_pinfs_json(root, "health")["backends"][0]["car"] == "current"
