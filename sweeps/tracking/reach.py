"""Whether the MLflow store answers at all, asked once before a command starts Ray or waits on MLflow's retries.

MLflow retries a refused connection for minutes, and `sweeps.tracking.store` retries on top of that (both right
for a store that is briefly away mid-sweep); a command that cannot reach its store at the start should say so
at once. `require_reachable` bounds the question to `REACH_SECONDS`: a tracking server must answer its
`/health` (any HTTP answer but a gateway's 502-504, a 401 included, means it is up), a database server must
accept a connection on its port, and a SQLite store's folder must exist. It imports neither MLflow nor Ray.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

from mixer_core.redact import redacted

REACH_SECONDS = 8.0  # within the 10 s a person waits for a refusal; a healthy server answers in milliseconds
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else an absolute `sqlite:///<cwd>/mlflow.db` (MLflow 3 refuses ./mlruns)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


class StoreUnreachable(RuntimeError):
    """The MLflow store did not answer; the one-line message names it and what failed."""


def require_reachable(uri: str, seconds: float = REACH_SECONDS) -> None:
    """Return when the MLflow store `uri` answers; raise `StoreUnreachable` after at most `seconds` otherwise."""
    outcome: list[str | None] = []
    probe = threading.Thread(target=lambda: outcome.append(_problem(uri, seconds)), daemon=True)
    probe.start()
    probe.join(seconds)  # a hung DNS lookup or proxy has no timeout of its own
    problem = outcome[0] if outcome else f"no answer within {seconds:g} s"
    if problem:
        raise StoreUnreachable(
            f"MLflow store {redacted(uri)} cannot be reached ({problem}); start it, or point MLFLOW_TRACKING_URI"
            " at one that runs"
        )


def create_sqlite_tables(uri: str) -> None:
    """Create a new SQLite store's tables, one process at a time. MLflow creates them on a store's first open, and
    two processes that do so at once (two `mixer sweep run` in a fresh folder, or a sweep and a reader of its
    store) fail on `ALTER TABLE` or on a half-made table."""
    if not uri.startswith("sqlite:"):
        return
    database = Path(uri.split(":///", 1)[-1])
    try:
        lock = open(database.with_name(f"{database.name}.init-lock"), "a")
    except OSError:  # a folder this process cannot write to: it creates no store there
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not database.exists():
            from mlflow.tracking import MlflowClient

            MlflowClient(uri).search_experiments(max_results=1)


def _problem(uri: str, seconds: float) -> str | None:
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme in ("http", "https"):
        return _http_problem(uri, seconds)
    if scheme in _DATABASE_PORTS:
        try:
            socket.create_connection((parts.hostname, parts.port or _DATABASE_PORTS[scheme]), timeout=seconds).close()
        except OSError as error:
            return _reason(error)
        return None
    if scheme == "sqlite":  # sqlite:///relative.db, sqlite:////absolute.db: MLflow creates the file, not its folder
        folder = Path(uri.split(":///", 1)[-1]).parent
        return None if folder.is_dir() else f"no folder {folder}"
    return None  # a store MLflow reaches through a plugin (databricks, ...): MLflow's own errors say more


def _http_problem(uri: str, seconds: float) -> str | None:
    import requests

    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=seconds)
    except requests.RequestException as error:
        return _reason(error)
    # A gateway's or proxy's answer for a server behind it that is down.
    return f"HTTP {response.status_code}" if response.status_code in (502, 503, 504) else None


def _reason(error: BaseException) -> str:
    text = str(error).lower()
    if "refused" in text:
        return "connection refused"
    if "timed out" in text or "timeout" in text:
        return "no answer"
    if "name or service not known" in text or "nodename nor servname" in text or "resolve" in text:
        return "unknown host"
    return type(error).__name__
