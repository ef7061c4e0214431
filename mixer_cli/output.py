"""How every `mixer` command prints results: an aligned table for people, one JSON document with `--json`; and
how it refuses bad input: one message on stderr and exit status 2."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any

# A config, spec, dataset or sweep name that cannot be used (nothing was started); a failed run is 1.
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a program ended by Ctrl-C


def format_value(value: Any) -> str:
    """A table cell: floats to 4 significant digits, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as an aligned text table (numbers to the right, text to the left); columns default to the
    first row's keys."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    values = [[row.get(column) for column in columns] for row in rows]
    cells = [[format_value(value) for value in line] for line in values]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    header = "  ".join(column.ljust(width) for column, width in zip(columns, widths)).rstrip()
    rule = "  ".join("-" * width for width in widths)
    body = [
        "  ".join(_align(cell, value, width) for cell, value, width in zip(cell_line, value_line, widths)).rstrip()
        for cell_line, value_line in zip(cells, values)
    ]
    return "\n".join([header, rule, *body])


def _align(cell: str, value: Any, width: int) -> str:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return cell.rjust(width) if is_number else cell.ljust(width)


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout (the `--json` contract)."""
    json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def refuse(command: str, problem: Exception) -> int:
    """Print `mixer COMMAND: problem` on stderr and return `EXIT_BAD_INPUT`, the exit status for bad input."""
    print(f"mixer {command}: {problem}", file=sys.stderr)
    return EXIT_BAD_INPUT


def add_json_flag(parser) -> None:
    """Add the `--json` flag every result-producing command accepts."""
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of tables")
