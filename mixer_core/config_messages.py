"""Messages about configs: one line per validation problem (`source: key.path: message`), with the offending
value and a close match for typos. The run config and the sweep spec format their errors with these.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def as_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds, looking inside `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for m in map(as_model, typing.get_args(annotation)) if m is not None), None)
    return None


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model at a pydantic error location under `root`, stepping through lists and dicts."""
    annotation: Any = root
    for part in loc:
        model = as_model(annotation)
        if model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
        elif typing.get_origin(annotation) in (list, dict):
            annotation = typing.get_args(annotation)[-1]
        else:
            return None
    return as_model(annotation)


def suggestion(word: str, candidates: list[str]) -> str:
    """`; did you mean 'x'?` for the closest candidate, or for one ending in `.word` (a missing section); or ``.

    Equally close spellings go to the one whose characters are nearest, so `Ti/5` suggests `Ti/4`, not `Ti/7`.
    """
    word = str(word)
    similarity = {candidate: difflib.SequenceMatcher(None, word, candidate).ratio() for candidate in candidates}
    best = max(similarity.values(), default=0.0)
    matches = [candidate for candidate, ratio in similarity.items() if ratio == best and ratio >= 0.6]
    matches.sort(key=lambda candidate: [abs(ord(a) - ord(b)) for a, b in zip(word, candidate)])
    matches = matches or [c for c in candidates if c.endswith(f".{word}")][:1]
    return f"; did you mean {matches[0]!r}?" if matches else ""


def format_validation_error(
    error: ValidationError, source: str, model: type[BaseModel], data: Any, prefix: str = ""
) -> str:
    """One line per problem, `source: key.path: message`, for `error` from validating `data` into `model`.

    Key paths start at `prefix` and follow what the user wrote; messages add the offending value and, for an
    unknown key or choice, the closest known one.
    """
    lines = []
    for key_path, message in validation_problems(error, model, data, prefix):
        lines.append(f"{source}: {key_path}: {message}" if key_path else f"{source}: {message}")
    return "\n".join(lines)


def validation_problems(
    error: ValidationError, model: type[BaseModel], data: Any, prefix: str = ""
) -> list[tuple[str, str]]:
    """(key path, message) for every problem of `error` (see `format_validation_error`)."""
    return [(_key_path(prefix, problem["loc"], data), _describe(problem, model)) for problem in error.errors()]


def _key_path(prefix: str, loc: tuple, data: Any) -> str:
    """`a.b[2].c` for a location; a list index the user did not write (one item given for a list) is left out."""
    path, written = prefix, data
    for part in loc:
        if isinstance(part, int) and not isinstance(written, list):
            continue
        path += f"[{part}]" if isinstance(part, int) else f"{'.' if path else ''}{part}"
        if isinstance(written, dict):
            written = written.get(part)
        elif isinstance(written, list) and isinstance(part, int) and part < len(written):
            written = written[part]
        else:
            written = None
    return path


def _describe(problem: dict, model: type[BaseModel]) -> str:
    """Pydantic's message, with the offending value and a close match where one helps."""
    kind, loc, given = problem["type"], problem["loc"], problem.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        known = list(parent.model_fields) if parent else []
        return f"unknown key {loc[-1]!r}{suggestion(str(loc[-1]), known)}"
    message = problem["msg"].removeprefix("Value error, ")
    if kind == "value_error":  # our validators' messages name the value themselves
        return message
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", problem["ctx"]["expected"])
        return f"{message}, got {given!r}{suggestion(str(given), choices)}"
    if kind == "missing":
        return message.lower()
    if not isinstance(given, (dict, list)) or kind.endswith("_type"):
        return f"{message}, got {given!r}"
    return message
