"""Results as aligned text tables for people: the plan of a sweep, its results, reports' cells."""

from __future__ import annotations

import math
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
