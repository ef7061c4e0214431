"""The MLflow store: where it is (`tracking_uri`), how to look at it (`ui_hint`), and calls that outlast a store
that is briefly unavailable: a SQLite file locked past its busy timeout, a tracking server restarting or
unreachable for longer than MLflow's own HTTP retries wait.

`RetryingMlflowClient` is an `MlflowClient` whose calls are retried with exponential backoff while the error says
the store is unavailable (not that the request is wrong); `best_effort` runs bookkeeping that must never fail a
trial or the sweep, and warns instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mixer_core.redact import redacted
from sweeps.tracking.reach import create_sqlite_tables
from sweeps.tracking.reach import tracking_uri  # noqa: F401  (its home is light: commands ask before importing MLflow)

# How long one call keeps trying before it gives up: a server restart or a long SQLite write lock, not an outage
# that needs a person.
RETRY_SECONDS = 300.0
_FIRST_WAIT_SECONDS, _LONGEST_WAIT_SECONDS = 0.5, 15.0
# What an unavailable store answers: SQLite's "database is locked" and a server's 503 arrive as
# TEMPORARILY_UNAVAILABLE; a refused connection, once MLflow's own HTTP retries are spent, as INTERNAL_ERROR.
_UNAVAILABLE_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"})
LOCAL_UI_URL = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
Returned = TypeVar("Returned")


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the MLflow store could not be reached or was busy (worth retrying)."""
    if isinstance(error, MlflowException):
        return error.error_code in _UNAVAILABLE_CODES
    return isinstance(error, (requests.ConnectionError, requests.Timeout, ConnectionError))


def call_with_retries(
    call: Callable[..., Returned], *args: Any, seconds: float | None = None, **kwargs: Any
) -> Returned:
    """`call(*args, **kwargs)`, retried with exponential backoff for up to `seconds` (default `RETRY_SECONDS`)
    while the store is unavailable; any other error, or the last one, is raised."""
    deadline = time.monotonic() + (RETRY_SECONDS if seconds is None else seconds)
    wait = _FIRST_WAIT_SECONDS
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as error:
            if not is_unavailable(error) or time.monotonic() + wait > deadline:
                raise
        time.sleep(wait)
        wait = min(wait * 2, _LONGEST_WAIT_SECONDS)


class RetryingMlflowClient:
    """An `MlflowClient` on `uri` whose every call goes through `call_with_retries`; a new SQLite store's tables
    are made first, under the lock every such client takes."""

    def __init__(self, uri: str):
        create_sqlite_tables(uri)
        self._client = MlflowClient(uri)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: call_with_retries(attribute, *args, **kwargs)


def best_effort(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run bookkeeping `call(*args, **kwargs)`; if it still fails after its retries, say so on stderr (naming
    `what` was not recorded) and go on: training and the sweep never stop over MLflow."""
    try:
        call(*args, **kwargs)
    except Exception as error:
        print(f"MLflow: {what} not recorded: {type(error).__name__}: {redacted(str(error))}", file=sys.stderr, flush=True)


def experiment_url(ui_url: str, experiment_id: str) -> str:
    """The experiment's runs in the MLflow UI at `ui_url`, in its model-training view.

    MLflow 3.17's UI picks the view from a per-browser GenAI / Model training switch (GenAI until a person flips
    it) rather than from the experiment's kind tag; `workflowType` in the link sets that switch.
    """
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def ui_hint(uri: str, experiment_id: str) -> str:
    """Where to see an experiment of the store `uri`: its page on a tracking server, else the `mlflow ui` command
    that serves this store and the page to open there."""
    if uri.startswith(("http://", "https://")):
        return redacted(experiment_url(uri, experiment_id))
    return f"mlflow ui --backend-store-uri {redacted(uri)}, then {experiment_url(LOCAL_UI_URL, experiment_id)}"


def missing_sqlite_store(uri: str) -> Path | None:
    """The SQLite file a `sqlite:///` store `uri` names when it does not exist (MLflow would create an empty one
    on first use), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///"))
    return None if path.is_file() else path
