"""How every `mixer` command prints results: an aligned table for people (`sweeps.tables`), one JSON document with
`--json`; and how it refuses bad input: one message on stderr and exit status 2."""

from __future__ import annotations

import json
import sys
from typing import Any

# A config, spec, dataset or sweep name that cannot be used (nothing was started); a failed run is 1.
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a program ended by Ctrl-C


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
