"""How every `mixer` command prints results: an aligned table for people, one JSON document with `--json`."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any


def format_value(value: Any) -> str:
    """A table cell: floats to 4 significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as an aligned text table; columns default to the first row's keys."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[format_value(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    header = "  ".join(column.ljust(width) for column, width in zip(columns, widths))
    rule = "  ".join("-" * width for width in widths)
    body = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    return "\n".join([header, rule, *body])


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout (the `--json` contract)."""
    json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def add_json_flag(parser) -> None:
    """Add the `--json` flag every result-producing command accepts."""
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of tables")
