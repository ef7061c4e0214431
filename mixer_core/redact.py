"""Passwords out of everything printed or logged: the one redaction of storage URLs (`optuna_storage`, MLflow
tracking URIs, any SQLAlchemy or HTTP URL) used by messages, `--json` output and MLflow artifacts alike."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
# `scheme://user:password@host`: the password runs to the last `@` before any space, so one holding `@` or `/`
# is hidden whole.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^\s]+@(?=[^@\s]*(?:\s|$))")
# `?password=...` and friends in a query string (SQLAlchemy and libpq accept them there).
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|secret|token|access_token)=)[^&\s]+", re.IGNORECASE)


def redacted(value: Any) -> Any:
    """`value` with every password in a URL replaced by `***`: in a string, or in every string of nested dicts
    and lists (dict keys included); anything else is returned as it is."""
    if isinstance(value, str):
        return _QUERY_SECRET.sub(rf"\g<head>{REDACTED}", _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", value))
    if isinstance(value, dict):
        return {redacted(key): redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redacted(item) for item in value)
    return value
