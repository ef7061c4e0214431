"""End-to-end sweeps on a real local Ray: `mixer sweep run` for a grid and for Optuna + ASHA, read back from
a real MLflow store and Optuna study; `mixer sweep ls`."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from shipped_data import MNIST

from mixer_cli import main
from sweeps.engine.search import optuna_storage_url
from sweeps.spec import SpecError, load_spec
from sweeps.tracking import queries


def run_cli(capsys, *argv: str) -> tuple[int, dict]:
    """Run `mixer ARGV --json` in this process; returns the exit status and the one JSON document printed."""
    status = main([*argv, "--json"])
    return status, json.loads(capsys.readouterr().out)


def test_grid_sweep_logs_parent_and_trial_runs(ray_address, mlflow_store, tiny_spec, capsys):
    spec = tiny_spec("grid", grid={"train.lr": [0.001, 0.003]})
    status, result = run_cli(capsys, "sweep", "run", str(spec), "--address", ray_address)
    assert status == 0
    experiment_id = MlflowClient(mlflow_store).get_experiment_by_name("engine-tests").experiment_id
    assert result["mlflow_ui"] == (
        f"mlflow ui --backend-store-uri {mlflow_store}, then"
        f" http://127.0.0.1:5000/#/experiments/{experiment_id}?workflowType=machine_learning"
    )
    assert sorted(trial["params"]["train.lr"] for trial in result["trials"]) == [0.001, 0.003]
    assert all(trial["status"] == "TERMINATED" for trial in result["trials"])
    best = max(result["trials"], key=lambda trial: trial["metrics"]["val_top1"])
    assert result["best_trial_id"] == best["trial_id"]

    client = MlflowClient(mlflow_store)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mixer.sweep"] == "grid" and parent.data.tags["mixer.role"] == "sweep"
    trials = queries.trial_runs(mlflow_store, parent.info.experiment_id, parent.info.run_id)
    assert sorted(run.data.tags["mixer.trial_id"] for run in trials) == sorted(t["trial_id"] for t in result["trials"])
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mixer.model"] == "Ti/4" and run.data.tags["mixer.patch_size"] == "4"
        assert run.data.tags["mixer.data_fraction"] == "0.5"
        assert float(run.data.tags["mixer.gmacs"]) > 0 and float(run.data.tags["mixer.params"]) > 0
        assert run.data.params["train.lr"] in ("0.001", "0.003")
        assert run.data.params["model.variant"] == "Ti/4"
        steps = [metric.step for metric in client.get_metric_history(run.info.run_id, "val_top1")]
        assert len(steps) == 2 and steps == sorted(set(steps))  # one evaluation per epoch, explicit steps
        losses = client.get_metric_history(run.info.run_id, "train_loss")
        assert len(losses) > 2  # progress reports reach MLflow too
        assert 0.0 <= run.data.metrics["test_top1"] <= 1.0
        assert run.data.metrics["step"] == steps[-1]
        assert run.data.tags["mixer.checkpoint"].startswith(result["experiment_dir"])

    status, listed = run_cli(capsys, "sweep", "ls")
    assert status == 0
    assert [(s["name"], s["trials"], s["trial_states"]) for s in listed] == [("grid", 2, {"FINISHED": 2})]

    # The parent run compares sweeps: the best trial's objective and params, trials by state, its final weights.
    (best_run,) = [run for run in trials if run.data.tags["mixer.trial_id"] == result["best_trial_id"]]
    assert parent.data.metrics["val_top1"] == best_run.data.metrics["val_top1"]
    assert parent.data.params["train.lr"] == best_run.data.params["train.lr"]
    assert parent.data.metrics["trials_finished"] == 2 and parent.data.metrics["trials_failed"] == 0
    assert parent.data.tags["mixer.best_run_id"] == best_run.info.run_id
    assert result["best_checkpoint"] == f"runs:/{parent.info.run_id}/best_checkpoint"
    assert [item.path for item in client.list_artifacts(parent.info.run_id, "best_checkpoint")] == [
        "best_checkpoint/state.pt"
    ]
    # ... from which `mixer train` fine-tunes: at a learning rate of 1e-9 the model keeps the best trial's accuracy.
    status, tuned = run_cli(capsys, "train", str(spec), "--set", f"train.init_from={result['best_checkpoint']}",
                            "--set", "train.epochs=1", "--set", "train.lr=1e-9", "--no-checkpoints")
    assert status == 0
    assert tuned["test_top1"] == pytest.approx(best_run.data.metrics["test_top1"], abs=0.02)




# Two linked values: each model with its own learning rate (labels: the default, the variant; and a given one).
RECIPES = [
    {"model.variant": "Ti/4", "train.lr": 0.001},
    {"label": "Ti/2-fast", "model.variant": "Ti/2", "train.lr": 0.003},
]


@pytest.mark.parametrize("searcher", ["grid", "optuna-tpe"])
def test_linked_grid_values_reach_each_trial_together(ray_address, mlflow_store, tiny_spec, capsys, searcher):
    spec = tiny_spec(f"linked-{searcher}", base={"train": {"epochs": 1}}, grid={"recipe": RECIPES},
                     searcher=searcher, num_samples=1 if searcher == "grid" else 2)
    status, result = run_cli(capsys, "sweep", "run", str(spec), "--address", ray_address)
    assert status == 0
    labels = {trial["trial_id"]: trial["params"]["recipe"] for trial in result["trials"]}  # the results table's column
    assert sorted(labels.values()) == ["Ti/2-fast", "Ti/4"]  # TPE's two random start-up draws (seed 0) differ
    if searcher != "grid":  # Optuna chooses among the labels (its categorical choices are plain values)
        (summary,) = optuna.study.get_all_study_summaries(result["optuna_storage"])
        study = optuna.load_study(study_name=summary.study_name, storage=result["optuna_storage"])
        assert sorted(trial.params["recipe"] for trial in study.trials) == ["Ti/2-fast", "Ti/4"]
    parent = MlflowClient(mlflow_store).get_run(result["parent_run_id"])
    trials = queries.trial_runs(mlflow_store, parent.info.experiment_id, parent.info.run_id)
    recipes = {"Ti/4": ("Ti/4", "0.001"), "Ti/2-fast": ("Ti/2", "0.003")}
    for run in trials:  # MLflow params stay the flattened config: the linked lr beside its variant
        label = labels[run.data.tags["mixer.trial_id"]]
        assert (run.data.params["model.variant"], run.data.params["train.lr"]) == recipes[label]
        assert run.data.tags["mixer.model"] == recipes[label][0]


def test_optuna_asha_sweep_keeps_its_study_beside_mlflow(ray_address, mlflow_store, tiny_spec, tmp_path, capsys):
    # The data path is relative to where the sweep is run from, which is not the trials' working directory.
    (tmp_path / "mnist").symlink_to(MNIST)
    spec = tiny_spec(
        "tpe",
        base={"data": {"name": "mnist_idx", "path": "mnist", "fraction": 0.05}},
        searcher="optuna-tpe",
        search={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        scheduler={"type": "asha", "grace_period": 1, "max_t": 2, "reduction_factor": 2},
        num_samples=2,
        seed=3,
    )
    status, result = run_cli(capsys, "sweep", "run", str(spec), "--address", ray_address)
    assert status == 0
    assert result["optuna_storage"] == f"sqlite:///{tmp_path / 'optuna.db'}"
    (summary,) = optuna.study.get_all_study_summaries(result["optuna_storage"])
    study = optuna.load_study(study_name=summary.study_name, storage=result["optuna_storage"])
    assert summary.study_name.startswith("tpe-")
    lrs = sorted(trial.params["train.lr"] for trial in study.trials)
    assert len(lrs) == 2 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials)
    assert sorted(t["params"]["train.lr"] for t in result["trials"]) == lrs

    parent = MlflowClient(mlflow_store).get_run(result["parent_run_id"])
    trials = queries.trial_runs(mlflow_store, parent.info.experiment_id, parent.info.run_id)
    assert sorted(float(run.data.params["train.lr"]) for run in trials) == lrs


def test_optuna_storage_is_a_spec_setting_with_a_default_that_outlives_the_working_dir(tiny_spec, tmp_path,
                                                                                        monkeypatch):
    spec = tiny_spec("tpe", searcher="optuna-tpe", search={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    postgres = "postgresql://mixer@db.example:5432/optuna"
    assert optuna_storage_url(load_spec(spec, [f"optuna_storage={postgres}"]), "http://mlflow:5000") == postgres
    # Beside a SQLite MLflow store, else in ~/.mixer: never in the working directory `ray job submit` deletes.
    assert optuna_storage_url(load_spec(spec), "sqlite:////data/mlflow.db") == "sqlite:////data/optuna.db"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert optuna_storage_url(load_spec(spec), "http://mlflow:5000") == f"sqlite:///{tmp_path}/home/.mixer/optuna.db"
    assert (tmp_path / "home" / ".mixer").is_dir()
    with pytest.raises(SpecError, match="optuna_storage"):
        load_spec(spec, ["optuna_storage=optuna.db"])


def test_sweep_bench_runs_the_same_trials_directly_and_through_the_engine(ray_address, mlflow_store, tiny_spec,
                                                                          capsys):
    spec = tiny_spec("bench", grid={"train.lr": [0.001, 0.003]}, num_samples=1)
    status, figures = run_cli(capsys, "sweep", "bench", str(spec), "--trials", "2")
    assert status == 0
    assert figures["trials"] == 2 and figures["failed_trials"] == 0
    direct, engine = figures["direct_seconds"], figures["engine_seconds"]
    assert figures["efficiency"] == pytest.approx(direct / engine)
    assert figures["startup_seconds_per_trial"] == pytest.approx((engine - direct) / 2)
    assert 0 < figures["efficiency"] < 1  # a trial's processes, imports and MLflow run are never free
    # The split adds up: the first trial's and the later trials' start-up and the close are the engine's extra time.
    split = figures["first_trial_startup_seconds"] + figures["later_trial_startup_seconds"] + figures[
        "sweep_close_seconds"]
    assert split == pytest.approx(engine - direct)
    assert figures["sweep_close_seconds"] > 0
    # Each side's training loop alone (its wall_seconds): a part of one trial, the same work on both sides.
    for side in ("direct", "engine_first", "engine_later"):
        assert 0 < figures[f"training_seconds_{side}"] < figures["trial_seconds_direct"] + figures[
            "first_trial_startup_seconds"]
    assert figures["training_seconds_direct"] < figures["trial_seconds_direct"]
    assert 0 < figures["training_spread_direct"] < 1  # two runs of the same loop never take the same time
    assert not Path("mlflow.db").exists()  # the bench logs to a scratch store, not the user's


def live_actor_classes() -> list[str]:
    """Class names of this Ray's live actors (the GCS actor table; the state API needs the dashboard, which the
    tests' Ray does not start)."""
    import ray._private.state

    return [actor["ActorClassName"] for actor in ray._private.state.actors().values() if actor["State"] == "ALIVE"]


def test_asha_stops_poor_trials_midway_and_optuna_records_them_as_pruned(ray_address, mlflow_store, tiny_spec,
                                                                         capsys):
    # lr 1e-6 barely moves a Ti/4 in 4 epochs: ASHA (rungs at 1 and 2 evaluations) stops such a trial once trials
    # with lr 3e-3 have set the rung's bar. TPE's random start-up draws with seed 6 are 3e-3, 3e-3, 1e-6, 3e-3, 1e-6
    # (identical configs train identically, so a repeat of the first draw would tie the bar, not fall below it).
    spec = tiny_spec(
        "asha",
        base={"train": {"epochs": 4}},
        searcher="optuna-tpe",
        search={"train.lr": {"type": "categorical", "choices": [0.003, 1.0e-6]}},
        scheduler={"type": "asha", "grace_period": 1, "max_t": 4, "reduction_factor": 2},
        num_samples=5,
        seed=6,
    )
    status, result = run_cli(capsys, "sweep", "run", str(spec), "--address", ray_address)
    assert status == 0
    by_status: dict[str, list[dict]] = {}
    for trial in result["trials"]:
        by_status.setdefault(trial["status"], []).append(trial)
    assert set(by_status) == {"TERMINATED", "STOPPED"}, by_status.keys()
    assert all(trial["metrics"]["step"] < trial["metrics"]["total_steps"] for trial in by_status["STOPPED"])

    parent = MlflowClient(mlflow_store).get_run(result["parent_run_id"])
    runs = {run.data.tags["mixer.trial_id"]: run for run in
            queries.trial_runs(mlflow_store, parent.info.experiment_id, parent.info.run_id)}
    assert len(runs) == 5 and all(run.info.status == "FINISHED" for run in runs.values())
    for trial in by_status["STOPPED"]:
        run = runs[trial["trial_id"]]
        assert run.data.tags["mixer.stopped_early"] == "true"
        assert int(run.data.tags["mixer.stopped_at_step"]) == trial["metrics"]["step"]
        assert len(MlflowClient(mlflow_store).get_metric_history(run.info.run_id, "val_top1")) < 4
    for trial in by_status["TERMINATED"]:
        assert "mixer.stopped_early" not in runs[trial["trial_id"]].data.tags

    # Optuna learns a stopped trial as PRUNED with its intermediate values, not as COMPLETE at its early value.
    (summary,) = optuna.study.get_all_study_summaries(result["optuna_storage"])
    study = optuna.load_study(study_name=summary.study_name, storage=result["optuna_storage"])
    states = sorted(trial.state.name for trial in study.trials)
    assert states == sorted(["PRUNED"] * len(by_status["STOPPED"]) + ["COMPLETE"] * len(by_status["TERMINATED"]))
    stopped_at = {trial["params"]["train.lr"]: trial["metrics"]["training_iteration"] for trial in by_status["STOPPED"]}
    for trial in study.trials:
        if trial.state.name == "PRUNED":  # every evaluation up to the one it was stopped at
            assert sorted(trial.intermediate_values) == list(range(1, stopped_at[trial.params["train.lr"]] + 1))

    # Nothing of the sweep is left holding the CPUs: no trial process, no Ray Train worker or controller.
    assert not {"ImplicitFunc", "RayTrainWorker", "TrainController"} & set(live_actor_classes())
