"""``pinfs query SQL``: DuckDB SQL over every backend's pins as one view ``pins`` (``pinfs.ops.query``).

Output: ``--json`` an array of row objects, ``--csv`` CSV with a header; otherwise an aligned table on
a terminal and tab-separated lines with a header line when piped. Bad SQL is one line on stderr and
exit 2; a backend that could not be read is left out with a line on stderr, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from typing import Any

from pinfs.cli.output import root_of

DESCRIPTION = """\
Run one DuckDB SQL statement over every backend's pins, seen as one view 'pins' with the columns
of pin_mappings.parquet (cid, car_file_path, backend_name, created_at, status, metadata, and any
extra column such as updated_at or verified_at). Nothing is copied and nothing is written: the
files are scanned in place, and the statement may not read or write other files.

examples:
  pinfs query "SELECT backend_name, status, count(*) FROM pins GROUP BY ALL ORDER BY ALL"
  pinfs query --csv "SELECT cid FROM pins WHERE status = 'failed'" > failed.csv
  pinfs query --json "SELECT cid, count(*) AS copies FROM pins GROUP BY cid HAVING copies > 1"
"""
MAX_CELL = 80  # characters of one cell in the terminal table (the whole value is in --json/--csv)


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    query = subparsers.add_parser(
        "query",
        parents=[common],
        help="SQL (DuckDB) over every backend's pins as one table 'pins'",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    query.add_argument("sql", metavar="SQL", help="one SQL statement; the table is 'pins'")
    query.add_argument("--csv", action="store_true", help="print CSV with a header line")
    query.set_defaults(handler=run_query_command)


def run_query_command(args: argparse.Namespace) -> int:
    from pinfs.errors import InvalidInput
    from pinfs.ops.query import run_query

    if args.json and args.csv:
        raise InvalidInput("--json and --csv are exclusive")
    result = run_query(root_of(args), args.sql)
    names = result.table.column_names
    rows = _rows(result.table)
    if args.json:
        _write_json(names, rows)
    elif args.csv:
        _write_csv(names, rows)
    elif sys.stdout.isatty():
        _write_table(names, list(rows))
    else:
        _write_tsv(names, rows)
    for item in result.left_out:
        print(f"pinfs query: warning: backend {item['backend']} left out: {item['error']}", file=sys.stderr)
    return 1 if result.left_out else 0


def _rows(table: Any) -> Iterator[tuple[Any, ...]]:
    """Rows as tuples of Python values, a record batch at a time (never the whole result as objects)."""
    names = table.column_names
    for batch in table.to_batches():
        columns = [batch.column(index).to_pylist() for index in range(len(names))]
        yield from zip(*columns, strict=True)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _write_json(names: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
    out = sys.stdout
    out.write("[")
    for index, row in enumerate(rows):
        out.write(",\n" if index else "\n")
        out.write(json.dumps(dict(zip(names, row, strict=True)), default=str))
    out.write("\n]\n")


def _write_csv(names: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_text(value) for value in row])


def _write_tsv(names: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
    def clean(text: str) -> str:  # a tab or newline inside a value would break the line's columns
        return text.replace("\t", " ").replace("\n", " ")

    sys.stdout.write("\t".join(names) + "\n")
    for row in rows:
        sys.stdout.write("\t".join(clean(_text(value)) for value in row) + "\n")


def _cell(value: Any) -> str:
    text = _text(value).replace("\n", " ") if value is not None else "NULL"
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _write_table(names: list[str], rows: list[tuple[Any, ...]]) -> None:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(name)] + [len(row[index]) for row in cells]) for index, name in enumerate(names)]
    numeric = [all(_is_number(row[index]) for row in rows) and bool(rows) for index in range(len(names))]

    def line(values: list[str]) -> str:
        return "  ".join(
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    print(line(names))
    print("  ".join("-" * width for width in widths))
    for row in cells:
        print(line(row))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
