"""The column encoder of pin_mappings.car writes exactly the bytes of the record encoder."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pyarrow as pa
import pytest

from pinfs.data import car, car_columns
from pinfs.data.schema import REQUIRED_COLUMNS
from pinfs.data.tables import merge_records, records_to_table, sort_by_cid

CREATED = "2026-01-01T00:00:00.000000+00:00"


def _records(rng: random.Random, count: int) -> list[dict[str, str]]:
    alphabet = string.ascii_letters + 'é€𝄞\x00\n"'
    sizes = [0, 5, 23, 24, 255, 256, 1000]
    return [
        {c: "".join(rng.choice(alphabet) for _ in range(rng.choice(sizes))) for c in REQUIRED_COLUMNS}
        for _ in range(count)
    ]


@pytest.mark.parametrize("count", [0, 1, 999, 1000, 1001, 2500])
def test_column_encoder_matches_record_encoder(tmp_path: Path, count: int) -> None:
    records = _records(random.Random(count), count)
    if count == 2500:
        records[1700]["metadata"] = "x" * 70_000  # beyond the fast path: that group falls back
    table = pa.table({c: pa.array([r[c] for r in records], pa.string()) for c in REQUIRED_COLUMNS})
    if count:
        table = pa.Table.from_batches(table.to_batches(max_chunksize=777))  # chunks not aligned to blocks
    expected = car.write_pin_mappings_car(tmp_path / "a.car", records, "b", CREATED)
    columns = {c: table.column(c) for c in REQUIRED_COLUMNS}
    written = car_columns.write_pin_mappings_car_columns(tmp_path / "b.car", columns, count, "b", CREATED)
    assert written == expected
    assert (tmp_path / "a.car").read_bytes() == (tmp_path / "b.car").read_bytes()
    assert car.read_pin_mappings_car(tmp_path / "b.car").records == records


def test_merge_into_a_sorted_table_stays_sorted_and_replaces() -> None:
    rows = [
        {
            "cid": f"c{i:04d}",
            "car_file_path": "p",
            "backend_name": "b",
            "created_at": "t",
            "status": "pending",
            "metadata": "{}",
        }
        for i in range(0, 400, 2)
    ]
    current = sort_by_cid(records_to_table(rows))
    for new_cids in (["c0001"], ["c0000", "c0399", "c9999"], [f"c{i:04d}" for i in range(0, 400, 3)]):
        replacements = {cid: {**rows[0], "cid": cid, "status": "stored"} for cid in new_cids}
        merged = merge_records(current, replacements)
        cids = merged.column("cid").to_pylist()
        assert cids == sorted(set(cids) | set(new_cids)) and len(cids) == len(set(cids))
        by_cid = dict(zip(cids, merged.column("status").to_pylist(), strict=True))
        assert all(by_cid[cid] == "stored" for cid in new_cids)
