"""How every `mixer` command prints results: an aligned table for people (`sweeps.tables`), one JSON document with
`--json`; and how it refuses bad input: one message on stderr and exit status 2."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from mixer_core.redact import redacted

# A config, spec, dataset or sweep name that cannot be used (nothing was started); a failed run is 1.
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # what a shell reports for a program ended by Ctrl-C
# A refusal fits a terminal: the first problems (fixing them often fixes the rest), each line cut to a width.
MAX_MESSAGE_LINES, MAX_LINE_CHARS = 3, 300


# Where `emit_json` writes while `json_stdout` holds stdout for it.
_json_sinks: list[TextIO] = []


@contextlib.contextmanager
def json_stdout() -> Iterator[None]:
    """While a `--json` command runs, stdout carries its JSON document alone: whatever else is written to
    `sys.stdout` meanwhile goes to stderr. Ray prints its workers' error messages there (a DDP worker group torn
    down after an error, for one), from a thread of its own, at any time."""
    _json_sinks.append(sys.stdout)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = _json_sinks.pop()


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout (the `--json` contract)."""
    sink = _json_sinks[-1] if _json_sinks else sys.stdout
    json.dump(document, sink, indent=2, default=str)
    sink.write("\n")
    sink.flush()


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
