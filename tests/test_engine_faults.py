"""Fault tolerance for real: a Ray Train worker killed mid-trial, and a sweep driver killed mid-sweep then
`mixer sweep resume`d. Either way each trial keeps one MLflow run whose steps are never logged twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient

from sweeps import tracking
from sweeps.cli import main

EPOCHS = 6
WAIT_SECONDS = 300


def trial_runs_of(uri: str, sweep: str) -> list:
    """The trial runs of sweep `sweep` in the test experiment (empty before the sweep starts logging)."""
    parent = tracking.find_sweep_run(uri, sweep)
    if parent is None:
        return []
    return tracking.trial_runs(uri, parent.info.experiment_id, parent.info.run_id)


def evaluations(uri: str, run_id: str) -> list[int]:
    """The steps at which the run logged `val_top1`, in logging order."""
    return [metric.step for metric in MlflowClient(uri).get_metric_history(run_id, "val_top1")]


def wait_for(condition, what: str):
    """Poll `condition()` until it returns something truthy; fail after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def train_worker_pids() -> list[int]:
    """PIDs of the Ray Train workers of this session's Ray (descendants of its raylet, found in /proc)."""
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue

    def descends_from_raylet(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == raylet:
                return True
        return False

    def title(pid: int) -> str:
        try:
            return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return ""

    return [pid for pid in parents if descends_from_raylet(pid) and title(pid).startswith("ray::RayTrainWorker")]


def assert_one_complete_run_per_trial(uri: str, sweep: str, trials: int) -> list:
    runs = trial_runs_of(uri, sweep)
    assert len(runs) == trials
    assert len({run.data.tags["mixer.trial_id"] for run in runs}) == trials
    for run in runs:
        assert run.info.status == "FINISHED"
        steps = evaluations(uri, run.info.run_id)
        assert len(steps) == EPOCHS and steps == sorted(set(steps)), steps
        losses = [metric.step for metric in MlflowClient(uri).get_metric_history(run.info.run_id, "train_loss")]
        assert losses == sorted(set(losses))
    return runs


def test_killed_worker_is_retried_into_the_same_mlflow_run(ray_address, mlflow_store, tiny_spec, capsys):
    spec = tiny_spec("retry", max_failures=1, base={"train": {"epochs": EPOCHS}, "data": {"fraction": 1.0}})
    killed: list[tuple[int, int]] = []  # (pid, evaluations logged when it was killed)

    def kill_worker_after_first_evaluation():
        run = wait_for(lambda: next((r for r in trial_runs_of(mlflow_store, "retry")
                                     if evaluations(mlflow_store, r.info.run_id)), None), "a first evaluation")
        for pid in train_worker_pids():  # the trial's one worker (and any of an earlier test still exiting)
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, len(evaluations(mlflow_store, run.info.run_id))))

    killer = threading.Thread(target=kill_worker_after_first_evaluation, daemon=True)
    killer.start()
    status = main(["sweep", "run", str(spec), "--address", ray_address, "--json"])
    killer.join(timeout=5)
    result = json.loads(capsys.readouterr().out)

    assert killed and killed[0][1] < EPOCHS  # the worker died before the trial's last evaluation
    assert status == 0 and [trial["status"] for trial in result["trials"]] == ["TERMINATED"]
    assert result["trials"][0]["metrics"]["epoch"] >= EPOCHS - 0.1
    assert_one_complete_run_per_trial(mlflow_store, "retry", trials=1)


def test_killed_driver_is_resumed_without_rerunning_finished_trials(
    ray_address, mlflow_store, tiny_spec, tmp_path, capsys
):
    spec = tiny_spec(
        "crash", grid={"train.lr": [0.001, 0.003]}, base={"train": {"epochs": EPOCHS}, "data": {"fraction": 1.0}}
    )
    log = (tmp_path / "driver.log").open("w")
    mixer = str(Path(sys.executable).with_name("mixer"))
    driver = subprocess.Popen([mixer, "sweep", "run", str(spec), "--address", ray_address], stdout=log, stderr=log)

    def first_finished_and_second_evaluated():
        runs = trial_runs_of(mlflow_store, "crash")
        finished = [run for run in runs if run.info.status == "FINISHED"]
        running = [run for run in runs if run.info.status == "RUNNING" and evaluations(mlflow_store, run.info.run_id)]
        return (finished[0], running[0]) if finished and running else None

    try:
        finished, running = wait_for(first_finished_and_second_evaluated, "trial 1 done and trial 2 evaluated")
        # Tune snapshots its experiment state at least every 10 s; wait for one taken after trial 1 ended.
        state_files = (tmp_path / "ray_results" / "crash").glob
        wait_for(lambda: max((f.stat().st_mtime for f in state_files("experiment_state*.json")), default=0)
                 > finished.info.end_time / 1000, "a Tune snapshot with trial 1 finished")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finished_history = evaluations(mlflow_store, finished.info.run_id)
    assert len(evaluations(mlflow_store, running.info.run_id)) < EPOCHS

    status = main(["sweep", "resume", "crash", "--address", ray_address, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert status == 0
    assert sorted(trial["status"] for trial in result["trials"]) == ["TERMINATED", "TERMINATED"]
    runs = {run.info.run_id: run for run in assert_one_complete_run_per_trial(mlflow_store, "crash", trials=2)}
    assert set(runs) == {finished.info.run_id, running.info.run_id}  # the unfinished trial continued its run
    assert evaluations(mlflow_store, finished.info.run_id) == finished_history
    assert runs[finished.info.run_id].info.end_time == finished.info.end_time  # trial 1 was not run again
    assert MlflowClient(mlflow_store).get_run(result["parent_run_id"]).info.status == "FINISHED"
