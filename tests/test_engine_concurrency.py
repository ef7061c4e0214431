"""Four trials at once on fractional CPUs, logging to the SQLite store and to a local MLflow server: every trial
ends FINISHED with every report, and they did run side by side."""

from __future__ import annotations

import json

import pytest
from test_engine_bookkeeping import assert_every_report_logged, free_port, start_mlflow_server, stop_mlflow_server
from test_engine_faults import EPOCHS, assert_one_complete_run_per_trial

from mixer_cli import main

TRIALS = 4


def most_runs_at_once(runs: list) -> int:
    """The largest number of runs that were running at the same moment (from their start and end times)."""
    edges = sorted([(run.info.start_time, 1) for run in runs] + [(run.info.end_time, -1) for run in runs])
    running = most = 0
    for _, change in edges:
        running += change
        most = max(most, running)
    return most


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_four_concurrent_trials_on_fractional_cpus_lose_nothing(ray_address, mlflow_store, tiny_spec, tmp_path,
                                                                monkeypatch, capsys, store):
    server = None
    uri = mlflow_store
    if store == "server":
        port = free_port()
        uri = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        server = start_mlflow_server(tmp_path, port)
    spec = tiny_spec(
        f"four-{store}",
        grid={"train.lr": [0.001, 0.002, 0.003, 0.004]},
        base={"train": {"epochs": EPOCHS}, "data": {"fraction": 1.0}},
        resources={"workers_per_trial": 1, "cpus_per_worker": 0.5, "max_concurrent_trials": TRIALS},
    )
    try:
        status = main(["sweep", "run", str(spec), "--address", ray_address, "--json"])
        result = json.loads(capsys.readouterr().out)
        assert status == 0 and [trial["status"] for trial in result["trials"]] == ["TERMINATED"] * TRIALS
        runs = assert_one_complete_run_per_trial(uri, f"four-{store}", trials=TRIALS)
        assert_every_report_logged(uri, runs)
        assert most_runs_at_once(runs) >= 3  # 2 CPUs of the test's Ray hold four half-CPU trials
    finally:
        if server is not None:
            stop_mlflow_server(server)
