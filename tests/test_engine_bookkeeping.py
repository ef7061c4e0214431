"""The sweep's MLflow bookkeeping never costs it a trial: a SQLite store locked past its busy timeout, a tracking
server down for 10 s mid-sweep, and a sweep that fails before Tune starts (its parent run ends FAILED, with why)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_engine_faults import EPOCHS, assert_one_complete_run_per_trial, evaluations, trial_runs_of, wait_for

from mixer_cli import main
from sweeps.tracking import queries

# MLflow's SQLite store waits this long for a lock (`PRAGMA busy_timeout = 20000` in mlflow/store/db/utils.py).
SQLITE_BUSY_TIMEOUT_SECONDS = 20


def run_sweep_while(spec: Path, ray_address: str, capsys, disturbance) -> tuple[int, dict]:
    """`mixer sweep run SPEC --json` with `disturbance()` running beside it; the exit status and the results."""
    thread = threading.Thread(target=disturbance, daemon=True)
    thread.start()
    status = main(["sweep", "run", str(spec), "--address", ray_address, "--json"])
    thread.join(timeout=120)
    assert not thread.is_alive()
    return status, json.loads(capsys.readouterr().out)


def assert_every_report_logged(uri: str, runs: list) -> None:
    """Each run holds `train_loss` at every `log_every_steps` (5) step and at every evaluation: none was lost."""
    client = MlflowClient(uri)
    for run in runs:
        total_steps = int(run.data.metrics["total_steps"])
        expected = set(range(5, total_steps + 1, 5)) | set(evaluations(uri, run.info.run_id))
        logged = [metric.step for metric in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(logged) == sorted(expected), sorted(expected - set(logged))


def first_evaluation_logged(uri: str, sweep: str):
    return wait_for(lambda: next((run for run in trial_runs_of(uri, sweep)
                                  if evaluations(uri, run.info.run_id)), None), "a first evaluation")


def test_sqlite_store_locked_past_its_busy_timeout_loses_no_trial(ray_address, mlflow_store, tiny_spec, tmp_path,
                                                                  capsys):
    spec = tiny_spec("locked", base={"train": {"epochs": EPOCHS}, "data": {"fraction": 1.0}})
    held: list[float] = []

    def lock_the_store():
        first_evaluation_logged(mlflow_store, "locked")
        database = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
        database.execute("BEGIN EXCLUSIVE")  # "database is locked" for every other writer and reader
        time.sleep(SQLITE_BUSY_TIMEOUT_SECONDS + 5)
        database.execute("COMMIT")
        database.close()
        held.append(time.time())

    status, result = run_sweep_while(spec, ray_address, capsys, lock_the_store)

    assert held, "the store was never locked"
    assert status == 0 and [trial["status"] for trial in result["trials"]] == ["TERMINATED"]
    [run] = assert_one_complete_run_per_trial(mlflow_store, "locked", trials=1)
    assert_every_report_logged(mlflow_store, [run])
    assert run.info.end_time / 1000 > held[0]  # training logged on after the lock was released
    assert MlflowClient(mlflow_store).get_run(result["parent_run_id"]).info.status == "FINISHED"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port` over `root/server.db`; returns once it answers /health."""
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--default-artifact-root", str(root / "artifacts"), "--no-serve-artifacts"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=(root / "server.log").open("a"), stderr=subprocess.STDOUT, start_new_session=True,
    )

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return True
        except OSError:
            return False

    wait_for(answers, "the MLflow server", seconds=180)
    return server


def stop_mlflow_server(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker, started in their own session
    server.wait(timeout=60)


def test_mlflow_server_down_for_10_seconds_mid_sweep_loses_no_trial(ray_address, tmp_path, tiny_spec, monkeypatch,
                                                                    capsys):
    monkeypatch.chdir(tmp_path)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    servers = [start_mlflow_server(tmp_path, port)]
    spec = tiny_spec("outage", grid={"train.lr": [0.001, 0.003]},
                     base={"train": {"epochs": EPOCHS}, "data": {"fraction": 1.0}})
    down: list[tuple[float, float]] = []

    def take_the_server_down_for_10_seconds():
        first_evaluation_logged(uri, "outage")
        stop_mlflow_server(servers[0])
        stopped = time.time()
        time.sleep(10)
        servers.append(start_mlflow_server(tmp_path, port))
        down.append((stopped, time.time()))

    try:
        status, result = run_sweep_while(spec, ray_address, capsys, take_the_server_down_for_10_seconds)
        assert down and down[0][1] - down[0][0] >= 10
        assert status == 0 and sorted(trial["status"] for trial in result["trials"]) == ["TERMINATED"] * 2
        assert_every_report_logged(uri, assert_one_complete_run_per_trial(uri, "outage", trials=2))
        assert MlflowClient(uri).get_run(result["parent_run_id"]).info.status == "FINISHED"
    finally:
        stop_mlflow_server(servers[-1])

def test_a_sweep_failing_before_tune_starts_ends_its_parent_run_failed_with_the_reason(ray_address, mlflow_store,
                                                                                       tiny_spec, tmp_path):
    (tmp_path / "optuna.db").mkdir()  # where the sweep's Optuna study would be kept: no SQLite file can open there
    spec = tiny_spec("no-study", searcher="optuna-tpe", num_samples=1,
                     search={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})

    with pytest.raises(Exception, match="unable to open database file"):
        main(["sweep", "run", str(spec), "--address", ray_address])

    parent = queries.find_sweep_run(mlflow_store, "no-study")
    assert parent.info.status == "FAILED"
    assert "unable to open database file" in parent.data.tags["mixer.error"]
