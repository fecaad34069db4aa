"""The benchmark runs end to end (``scripts/bench --quick --json``) and reports a number for every row.

Nothing about speed is asserted: that is what the benchmark's own table is for.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from mounting import needs_fuse

PROJECT = Path(__file__).resolve().parent.parent


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
@needs_fuse
def test_bench_quick_json_has_every_row(tmp_path: Path) -> None:
    # Shards of 1024 rows: the quick run's 10k pins are then stored sharded, as 1M are in a full run.
    done = subprocess.run(
        [str(PROJECT / "scripts" / "bench"), "--quick", "--json", "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=300,
        env={**os.environ, "PINFS_SHARD_ROWS": "1024"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)
    assert not report["problems"]
    keys = {row["key"] for row in report["rows"]}
    expected = {
        "ready",
        "cat_cold_first",
        "cat_cold_more",
        "cat_warm",
        "stat_warm",
        "cids_cold_first",
        "cids_cold_more",
        "ls_failed_cold",
        "ls_failed_warm",
        "ls_by_cid_first",
        "ls_by_cid",
        "rss",
        "rss_growth",
        "migrate",
        "migrate_rss",
        "regen",
        "pin_batch",
        "pin_single",
        "cache_cat_warm",
        "cache_stat_warm",
        "cache_ls_failed_warm",
        "find_warm",
        "walk_cold_per_cid",
        "walk_warm_per_cid",
        "lag",
        "lag_p99",
    }
    assert expected <= keys
    for row in report["rows"]:
        assert _number(row["median"]) and _number(row["p95"]) and row["n"] >= 1, row
        assert isinstance(row["met"], bool), row
        if row["baseline"] is not None:
            assert _number(row["baseline_median"]) and _number(row["ratio"]), row
