"""Fault tolerance for real: a trial's training process killed mid-trial (for both launchers), a sweep driver
killed mid-sweep, and a sweep stopped with Ctrl-C, then `mixer sweep resume`d. Each trial keeps one MLflow run
whose steps are never logged twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from mixer_cli import main
from sweeps.engine.scratch import remove_abandoned
from sweeps.tracking import queries

EPOCHS = 6
WAIT_SECONDS = 300


def trial_runs_of(uri: str, sweep: str) -> list:
    """The trial runs of sweep `sweep` in the test experiment (empty before the sweep starts logging)."""
    parent = queries.find_sweep_run(uri, sweep)
    if parent is None:
        return []
    return queries.trial_runs(uri, parent.info.experiment_id, parent.info.run_id)


def evaluations(uri: str, run_id: str) -> list[int]:
    """The steps at which the run logged `val_top1`, in logging order."""
    return [metric.step for metric in MlflowClient(uri).get_metric_history(run_id, "val_top1")]


def wait_for(condition, what: str, seconds: float = WAIT_SECONDS, log: Path | None = None):
    """Poll `condition()` until it returns something truthy; fail after `seconds`, showing `log` (a driver's)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f"; the driver's output:\n{log.read_text()}" if log else ""))


def training_pids(title: str) -> list[int]:
    """PIDs of this session's Ray processes whose title starts with `title` (descendants of its raylet)."""
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

    def process_title(pid: int) -> str:
        try:
            return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return ""

    return [pid for pid in parents if descends_from_raylet(pid) and process_title(pid).startswith(title)]


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


# One worker trains in the trial's own Tune process; several are Ray Train workers beside it.
TRAINING_PROCESS = {1: "ray::ImplicitFunc", 2: "ray::RayTrainWorker"}


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_training_process_is_retried_into_the_same_mlflow_run(ray_address, mlflow_store, tiny_spec, capsys,
                                                                     workers):
    spec = tiny_spec(  # max_failures left at its default: a lost process is retried
        "retry",
        base={"train": {"epochs": EPOCHS}, "data": {"fraction": 1.0}},
        resources={"workers_per_trial": workers, "cpus_per_worker": 1, "max_concurrent_trials": 1},
    )
    killed: list[tuple[int, int]] = []  # (pid, evaluations logged when it was killed)

    def kill_training_after_first_evaluation():
        run = wait_for(lambda: next((r for r in trial_runs_of(mlflow_store, "retry")
                                     if evaluations(mlflow_store, r.info.run_id)), None), "a first evaluation")
        for pid in training_pids(TRAINING_PROCESS[workers]):  # the trial's (and any of an earlier test exiting)
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, len(evaluations(mlflow_store, run.info.run_id))))

    killer = threading.Thread(target=kill_training_after_first_evaluation, daemon=True)
    killer.start()
    status = main(["sweep", "run", str(spec), "--address", ray_address, "--json"])
    killer.join(timeout=5)
    output = capsys.readouterr()
    result = json.loads(output.out)

    assert killed and killed[0][1] < EPOCHS  # the process died before the trial's last evaluation
    assert status == 0 and [trial["status"] for trial in result["trials"]] == ["TERMINATED"], output.err
    assert result["trials"][0]["metrics"]["epoch"] >= EPOCHS - 0.1
    assert_one_complete_run_per_trial(mlflow_store, "retry", trials=1)
    # The killed process could not remove its scratch folder (its checkpoints); the retry's start did.
    assert remove_abandoned(Path(tempfile.gettempdir())) == []


def test_killed_driver_is_resumed_without_rerunning_finished_trials(
    ray_address, mlflow_store, tiny_spec, tmp_path, capsys
):
    spec = tiny_spec(
        "crash", grid={"train.lr": [0.001, 0.003]}, base={"train": {"epochs": EPOCHS}, "data": {"fraction": 1.0}}
    )
    log_path = tmp_path / "driver.log"
    mixer = str(Path(sys.executable).with_name("mixer"))
    with log_path.open("w") as log:
        driver = subprocess.Popen([mixer, "sweep", "run", str(spec), "--address", ray_address], stdout=log, stderr=log)

    def first_finished_and_second_evaluated():
        runs = trial_runs_of(mlflow_store, "crash")
        finished = [run for run in runs if run.info.status == "FINISHED"]
        running = [run for run in runs if run.info.status == "RUNNING" and evaluations(mlflow_store, run.info.run_id)]
        return (finished[0], running[0]) if finished and running else None

    try:
        finished, running = wait_for(first_finished_and_second_evaluated, "trial 1 done and trial 2 evaluated",
                                     log=log_path)
        # Tune snapshots its experiment state at least every 10 s; wait for one taken after trial 1 ended.
        state_files = (tmp_path / "ray_results").glob
        wait_for(lambda: max((f.stat().st_mtime for f in state_files("crash-*/experiment_state*.json")), default=0)
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


def test_ctrl_c_stops_the_sweep_and_resume_finishes_it(ray_address, mlflow_store, tiny_spec, tmp_path, capsys):
    spec = tiny_spec(
        "ctrlc", grid={"train.lr": [0.001, 0.003, 0.01]}, base={"train": {"epochs": EPOCHS}, "data": {"fraction": 1.0}}
    )
    mixer = str(Path(sys.executable).with_name("mixer"))
    # The driver writes to a file, which the test can show while the driver runs (a pipe is read only at its end).
    log_path = tmp_path / "driver.log"
    with log_path.open("w") as log:
        driver = subprocess.Popen([mixer, "sweep", "run", str(spec), "--address", ray_address], stdout=log, stderr=log)

    def first_evaluation():
        assert driver.poll() is None, f"the sweep ended before its first evaluation:\n{log_path.read_text()}"
        return any(evaluations(mlflow_store, run.info.run_id) for run in trial_runs_of(mlflow_store, "ctrlc"))

    try:
        wait_for(first_evaluation, "a first evaluation", log=log_path)
        interrupted_at = time.monotonic()
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=30)
        stopped_after = time.monotonic() - interrupted_at
    finally:
        driver.kill()
    err = log_path.read_text()
    assert driver.returncode == 130, err
    assert stopped_after < 30
    assert "mixer sweep resume ctrlc" in err
    # The interrupted trial's run and the sweep's are KILLED, and no training process of the sweep is left.
    parent = queries.find_sweep_run(mlflow_store, "ctrlc")
    assert parent.info.status == "KILLED"
    runs_before = {run.info.run_id: run for run in trial_runs_of(mlflow_store, "ctrlc")}
    assert "RUNNING" not in {run.info.status for run in runs_before.values()}
    assert "KILLED" in {run.info.status for run in runs_before.values()}
    wait_for(lambda: not training_pids("ray::ImplicitFunc"), "the trial processes to exit", seconds=30)

    status = main(["sweep", "resume", "ctrlc", "--address", ray_address, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert status == 0
    assert [trial["status"] for trial in result["trials"]] == ["TERMINATED"] * 3
    runs = {run.info.run_id: run for run in assert_one_complete_run_per_trial(mlflow_store, "ctrlc", trials=3)}
    assert set(runs_before) <= set(runs)  # the interrupted trial continued its own run
    for run_id, before in runs_before.items():
        if before.info.status == "FINISHED":
            assert runs[run_id].info.end_time == before.info.end_time  # finished trials were not run again
    assert MlflowClient(mlflow_store).get_run(result["parent_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize("workers", [1, 2])
def test_non_finite_loss_ends_its_trial_at_once_though_retries_are_unlimited(ray_address, mlflow_store, tiny_spec,
                                                                             workers):
    # Sigmoid cross-entropy at a learning rate of 1e12 overflows a few steps in (tests/test_train.py); with
    # max_failures -1 a retried trial would fail again forever, and the sweep would run past the timeout.
    spec = tiny_spec(
        "diverges",
        max_failures=-1,
        base={"train": {"lr": 1e12, "warmup_steps": 0, "grad_clip": None, "loss": "sigmoid"}},
        resources={"workers_per_trial": workers, "cpus_per_worker": 1, "max_concurrent_trials": 1},
    )
    mixer = str(Path(sys.executable).with_name("mixer"))
    driver = subprocess.run([mixer, "sweep", "run", str(spec), "--address", ray_address, "--json"],
                            capture_output=True, text=True, timeout=WAIT_SECONDS)

    assert driver.returncode == 1, driver.stderr
    result = json.loads(driver.stdout)
    assert [trial["status"] for trial in result["trials"]] == ["ERROR"]
    assert "TrainingError: training loss is" in driver.stderr and "(not retried)" in driver.stderr
    [run] = trial_runs_of(mlflow_store, "diverges")
    assert run.info.status == "FAILED"
    assert run.data.tags["mixer.error"].startswith("TrainingError: training loss is")
    assert MlflowClient(mlflow_store).get_run(result["parent_run_id"]).info.status == "FAILED"
