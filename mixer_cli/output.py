"""How every `mixer` command prints results: an aligned table for people (`sweeps.tables`), one JSON document with
`--json`; and how it refuses bad input: one message on stderr and exit status 2."""

from __future__ import annotations

import json
import sys
from typing import Any

from mixer_core.redact import redacted

# A config, spec, dataset or sweep name that cannot be used (nothing was started); a failed run is 1.
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a program ended by Ctrl-C
# A refusal fits a terminal: the first problems (fixing them often fixes the rest), each line cut to a width.
MAX_MESSAGE_LINES, MAX_LINE_CHARS = 3, 300


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout (the `--json` contract)."""
    json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def refuse(command: str, problem: Exception | str) -> int:
    """Print `mixer COMMAND: problem` on stderr (see `short_message`; passwords in URLs hidden by
    `mixer_core.redact`) and return `EXIT_BAD_INPUT`, the exit status for bad input."""
    print(short_message(redacted(f"mixer {command}: {problem}")), file=sys.stderr)
    return EXIT_BAD_INPUT


def short_message(message: str) -> str:
    """`message` in at most `MAX_MESSAGE_LINES` lines of at most `MAX_LINE_CHARS` characters: the first problems,
    then how many more there are."""
    lines = message.splitlines() or [""]
    if len(lines) > MAX_MESSAGE_LINES:
        more = len(lines) - MAX_MESSAGE_LINES + 1
        lines = [*lines[: MAX_MESSAGE_LINES - 1], f"... and {more} more problem{'s' * (more > 1)}"]
    return "\n".join(line if len(line) <= MAX_LINE_CHARS else f"{line[: MAX_LINE_CHARS - 3]}..." for line in lines)


def add_json_flag(parser) -> None:
    """Add the `--json` flag every result-producing command accepts."""
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of tables")
