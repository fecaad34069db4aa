"""Fresh-process baselines of the benchmark; prints one JSON object on stdout.

    python scripts/bench_probe.py parquet FILE CID    baseline A: pandas.read_parquet of the whole file, filter one CID
    python scripts/bench_probe.py json FILE CID       baseline B: json.load of a legacy pins.json, scan for one CID
    python scripts/bench_probe.py jsonwrite FILE OUT  reference for migrate: json.load + one pyarrow parquet write

``seconds`` is the work alone (imports and interpreter start excluded, which favours the baseline);
``import_seconds`` says what the imports cost.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    kind, path, arg = argv
    started = time.perf_counter()
    if kind == "parquet":
        import pandas as pd

        imported = time.perf_counter()
        frame = pd.read_parquet(path)
        rows = frame[frame["cid"] == arg]
        answer = str(rows["status"].iloc[0]) if len(rows) else None
    elif kind == "json":
        imported = time.perf_counter()
        with open(path, "rb") as handle:
            pins = json.load(handle)
        answer = next((pin.get("status") for pin in pins if pin.get("cid") == arg), None)
    elif kind == "jsonwrite":
        import pyarrow as pa
        import pyarrow.parquet as pq

        imported = time.perf_counter()
        with open(path, "rb") as handle:
            pins = json.load(handle)
        pq.write_table(pa.Table.from_pylist(pins), arg)
        answer = len(pins)
    else:
        raise SystemExit(f"unknown probe {kind!r}")
    done = time.perf_counter()
    print(json.dumps({"seconds": done - imported, "import_seconds": imported - started, "answer": answer}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
