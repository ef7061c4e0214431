"""Failures with a real local Ray and a real MLflow store: a deterministic error ends its trial at once whatever
`max_failures` says (FAILED in MLflow with the reason, FAIL in Optuna), and a sweep has one driver at a time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis, ResultGrid
from test_engine_faults import EPOCHS, WAIT_SECONDS, trial_runs_of, wait_for

from mixer_cli import main
from sweeps.engine.progress import SweepCallback
from sweeps.engine.summary import finish_sweep
from sweeps.engine.trial import SweepContext
from sweeps.spec import load_spec
from sweeps.tracking import queries, store

MIXER = str(Path(sys.executable).with_name("mixer"))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_value_error_ends_its_trial_at_once_though_retries_are_unlimited(ray_address, mlflow_store, tiny_spec,
                                                                           tmp_path, workers):
    # Weights that are no Mixer's: `mixer_core.build` raises ValueError on every attempt, on every rank. With
    # max_failures -1 a retried trial would fail again forever, and the sweep would run past the timeout.
    not_mixer = tmp_path / "not_mixer.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, not_mixer)
    spec = tiny_spec(
        f"valueerror{workers}",
        max_failures=-1,
        searcher="optuna-tpe",
        search={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        base={"train": {"init_from": str(not_mixer)}},
        resources={"workers_per_trial": workers, "cpus_per_worker": 1, "max_concurrent_trials": 1},
    )
    driver = subprocess.run([MIXER, "sweep", "run", str(spec), "--address", ray_address, "--json"],
                            capture_output=True, text=True, timeout=WAIT_SECONDS)
    err = driver.stderr
    result = json.loads(driver.stdout)

    reason = f"ValueError: {not_mixer}: not a Mixer state dict"
    assert driver.returncode == 1, err
    assert [trial["status"] for trial in result["trials"]] == ["ERROR"]
    assert f"{reason} (no blocks.0.mlp_tokens.fc1.weight) (not retried)" in err
    [trial] = ExperimentAnalysis(result["experiment_dir"]).trials
    assert trial.num_failures == 0  # Tune never saw it fail: one attempt
    [run] = trial_runs_of(mlflow_store, f"valueerror{workers}")
    assert run.info.status == "FAILED" and run.data.tags["mixer.error"].startswith(reason)
    [study] = optuna.get_all_study_summaries(result["optuna_storage"])
    [optuna_trial] = optuna.load_study(study_name=study.study_name, storage=result["optuna_storage"]).trials
    assert optuna_trial.state == optuna.trial.TrialState.FAIL
    assert MlflowClient(mlflow_store).get_run(result["parent_run_id"]).info.status == "FAILED"


def test_one_sweep_has_one_driver(ray_address, mlflow_store, tiny_spec, tmp_path, capsys):
    spec = tiny_spec("solo", grid={"train.lr": [0.001, 0.003]},
                     base={"train": {"epochs": EPOCHS}, "data": {"fraction": 1.0}})
    # Two drivers of one name at once: one runs it, the other is refused.
    drivers = [subprocess.Popen([MIXER, "sweep", "run", str(spec), "--address", ray_address, "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        wait_for(lambda: any(driver.poll() is not None for driver in drivers), "one driver to be refused")
        state_files = (tmp_path / "ray_results").glob
        wait_for(lambda: list(state_files("solo-*/experiment_state*.json")), "the running sweep's Tune state")
        # While the other runs, `resume` is refused too, naming its driver.
        assert main(["sweep", "resume", "solo", "--address", ray_address]) == 2
        assert "mixer sweep resume: sweep solo has a live driver (sweep id" in capsys.readouterr().err
        outputs = [driver.communicate(timeout=WAIT_SECONDS) for driver in drivers]
    finally:
        for driver in drivers:
            driver.kill()
    codes = [driver.returncode for driver in drivers]
    assert sorted(codes) == [0, 2], outputs
    refused_err = outputs[codes.index(2)][1]
    assert refused_err.strip().splitlines()[-1].startswith("mixer sweep run: sweep solo has a live driver (sweep id")
    ran = json.loads(outputs[codes.index(0)][0])
    assert [trial["status"] for trial in ran["trials"]] == ["TERMINATED"] * 2
    parent = queries.find_sweep_run(mlflow_store, "solo")
    assert parent.info.run_id == ran["parent_run_id"] and parent.info.status == "FINISHED"
    assert len(MlflowClient(mlflow_store).search_runs([parent.info.experiment_id], "tags.`mixer.role` = 'sweep'")) == 1


def test_a_store_away_at_the_end_of_a_sweep_still_gives_its_results(ray_address, mlflow_store, tiny_spec, capsys,
                                                                     monkeypatch):
    spec_path = tiny_spec("outage", base={"train": {"epochs": 1}})
    assert main(["sweep", "run", str(spec_path), "--address", ray_address, "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)
    # The same end of the sweep, with its store gone for good: the retries give up (after 1 s here), and the
    # summary still holds every trial, from Tune, with what MLflow did not take.
    monkeypatch.setattr(store, "RETRY_SECONDS", 1.0)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    gone = "http://127.0.0.1:9"
    context = SweepContext(load_spec(spec_path), gone, "0", ran["parent_run_id"], f"{ran['experiment_dir']}/train")
    results = ResultGrid(ExperimentAnalysis(ran["experiment_dir"]))
    summary = finish_sweep(context, results, SweepCallback(context, total_trials=1), ran["experiment_dir"])

    assert [(trial.trial_id, trial.status) for trial in summary.trials] == [
        (trial["trial_id"], "TERMINATED") for trial in ran["trials"]]
    assert summary.best_trial_id == ran["best_trial_id"]
    assert summary.not_recorded.startswith(f"the sweep's outcome (best trial, trial counts, best weights, final"
                                           f" status of run {ran['parent_run_id']}): ")
