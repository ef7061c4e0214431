"""MLflow tracking on a real SQLite store: the schema, what the MLflow UI shows, the sweep's outcome on its parent
run, continued trial runs without duplicated steps, and checkpoints as run artifacts."""

from __future__ import annotations

import getpass
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from mixer_core.checkpoint import STATE_FILE, save_checkpoint
from mixer_core.config import RunConfig
from sweeps.tracking import queries, recording, schema, store
from sweeps.tracking.artifacts import fetch_init_from, log_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_default_uri_is_absolute_sqlite_under_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert store.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert store.tracking_uri() == "http://mlflow.example:5000"


def test_ui_hint_is_the_servers_page_of_the_experiment_in_the_model_training_view():
    page = "#/experiments/3?workflowType=machine_learning"
    assert store.ui_hint("http://mlflow.example:5000/", "3") == f"http://mlflow.example:5000/{page}"
    assert store.ui_hint("sqlite:////data/mlflow.db", "3") == (
        f"mlflow ui --backend-store-uri sqlite:////data/mlflow.db, then http://127.0.0.1:5000/{page}"
    )


def _sweep(uri: str, tmp_path: Path, name: str = "s1") -> str:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"name: {name}\n")
    return recording.start_sweep_run(
        uri, "exp", name, f"{name}-id", "abc123", spec_file, {"name": name}, {"name": name, "seed": 0},
        str(tmp_path / name),
    )


def _trial(uri: str, parent_id: str, trial_id: str, config: RunConfig) -> recording.TrialRun:
    experiment_id = MlflowClient(uri).get_run(parent_id).info.experiment_id
    params = schema.flatten(config.model_dump())
    return recording.TrialRun(uri, experiment_id, parent_id, "s1", trial_id, params, schema.trial_tags(config))


def test_parent_run_has_schema_tags_spec_and_resolved_spec(mlflow_store, tmp_path):
    parent_id = _sweep(mlflow_store, tmp_path)
    parent = MlflowClient(mlflow_store).get_run(parent_id)
    assert parent.data.tags["mixer.sweep"] == "s1"
    assert parent.data.tags["mixer.role"] == "sweep"
    assert parent.data.tags["mixer.spec_hash"] == "abc123"
    # What `mlflow.start_run` records, so the UI's User and Source columns are filled; the spec is the source.
    assert parent.data.tags["mlflow.user"] == getpass.getuser()
    assert parent.data.tags["mlflow.source.name"] == str(tmp_path.resolve() / "spec.yaml")
    assert parent.data.tags["mlflow.source.type"] == "LOCAL"
    assert "mlflow.source.git.commit" not in parent.data.tags  # tmp_path is no git repository
    artifacts = {item.path for item in MlflowClient(mlflow_store).list_artifacts(parent_id)}
    assert artifacts == {"spec.yaml", schema.RESOLVED_SPEC_ARTIFACT, schema.VALIDATED_SPEC_ARTIFACT}
    assert queries.load_spec_artifact(mlflow_store, parent_id) == {"name": "s1"}
    assert queries.load_spec_artifact(mlflow_store, parent_id, schema.VALIDATED_SPEC_ARTIFACT)["seed"] == 0
    assert queries.find_sweep_run(mlflow_store, "s1").info.run_id == parent_id
    assert queries.find_sweep_run(mlflow_store, "s1-id").info.run_id == parent_id  # by the sweep's id
    assert queries.find_sweep_run(mlflow_store, "no-such-sweep") is None
    assert (tmp_path / "mlartifacts").is_dir()  # local store: artifacts beside the database


def test_experiment_opens_as_model_training_in_the_mlflow_ui(mlflow_store, tmp_path):
    client = MlflowClient(mlflow_store)
    _sweep(mlflow_store, tmp_path)
    assert client.get_experiment_by_name("exp").tags["mlflow.experimentKind"] == "custom_model_development"
    # An experiment made before the schema had the tag gets it from the next sweep.
    client.create_experiment("older", artifact_location=(tmp_path / "older").as_uri())
    recording.ensure_experiment(client, "older")
    assert client.get_experiment_by_name("older").tags["mlflow.experimentKind"] == "custom_model_development"


def test_runs_record_the_git_commit_of_the_spec_and_trials_inherit_user_and_source(mlflow_store):
    spec_path = REPO / "sweeps" / "quickstart.yaml"
    parent_id = recording.start_sweep_run(mlflow_store, "exp", "s1", "s1-id", "abc123", spec_path, {}, {}, "/tmp/s1")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    client = MlflowClient(mlflow_store)
    parent_tags = client.get_run(parent_id).data.tags
    assert parent_tags["mlflow.source.git.commit"] == head.strip()
    assert parent_tags["mlflow.source.name"] == str(spec_path)
    trial = _trial(mlflow_store, parent_id, "t_00000", RunConfig())
    trial_tags = client.get_run(trial.run_id).data.tags
    for key in ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit"):
        assert trial_tags[key] == parent_tags[key]


def test_trial_run_continues_without_duplicated_steps(mlflow_store, tmp_path):
    parent_id = _sweep(mlflow_store, tmp_path)
    experiment_id = MlflowClient(mlflow_store).get_run(parent_id).info.experiment_id
    config = RunConfig.model_validate({"model": {"variant": "Ti/4"}, "data": {"fraction": 0.5}})

    def attempt() -> recording.TrialRun:
        return _trial(mlflow_store, parent_id, "t_00000", config)

    first = attempt()
    for step in (10, 20, 30):
        first.log({"train_loss": 1.0 / step, "step": step}, step=step)
    first.log({"val_top1": 0.5, "params": 123}, step=20)  # the model's size becomes a tag too
    # A retry resumes from the checkpoint at step 20 and reports steps 30 and 40 again/newly.
    second = attempt()
    assert second.run_id == first.run_id
    second.log({"train_loss": 0.5, "step": 30, "val_top1": 0.6}, step=30)
    second.log({"train_loss": 0.1, "step": 40, "test_top1": float("nan")}, step=40)

    client = MlflowClient(mlflow_store)
    runs = queries.trial_runs(mlflow_store, experiment_id, parent_id)
    assert [run.info.run_id for run in runs] == [first.run_id]
    assert [m.step for m in client.get_metric_history(first.run_id, "train_loss")] == [10, 20, 30, 40]
    assert client.get_metric_history(first.run_id, "train_loss")[2].value == 1.0 / 30  # the first report kept
    assert [m.step for m in client.get_metric_history(first.run_id, "val_top1")] == [20, 30]
    assert client.get_metric_history(first.run_id, "test_top1") == []  # non-finite values are not logged
    run = client.get_run(first.run_id)
    assert run.data.params["model.variant"] == "Ti/4"
    assert run.data.params["data.fraction"] == "0.5"
    assert run.data.tags["mixer.model"] == "Ti/4"
    assert run.data.tags["mixer.patch_size"] == "4"
    assert run.data.tags["mixer.data_fraction"] == "0.5"
    assert run.data.tags["mixer.permutation"] == "none"
    assert run.data.tags["mixer.params"] == "123"
    assert run.data.tags["mixer.role"] == "trial"
    assert run.data.tags["mlflow.parentRunId"] == parent_id

    recording.finish_run(mlflow_store, first.run_id, "FINISHED", {schema.TAG_CHECKPOINT: "/ckpt"})
    (sweep,) = queries.list_sweeps(mlflow_store)
    assert (sweep["name"], sweep["trials"], sweep["trial_states"]) == ("s1", 1, {"FINISHED": 1})
    assert client.get_run(first.run_id).data.tags["mixer.checkpoint"] == "/ckpt"


def test_flatten_nested_config():
    assert schema.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_parent_run_carries_the_best_trial_and_the_trial_counts(mlflow_store, tmp_path):
    parent_id = _sweep(mlflow_store, tmp_path)
    experiment_id = MlflowClient(mlflow_store).get_run(parent_id).info.experiment_id
    for trial_id, lr, accuracy, status in (("t_0", 0.1, 0.6, "FINISHED"), ("t_1", 0.01, 0.8, "FINISHED"),
                                           ("t_2", 0.001, 0.7, "FAILED")):
        config = RunConfig.model_validate({"train": {"lr": lr}})
        run = _trial(mlflow_store, parent_id, trial_id, config)
        run.log({"val_top1": accuracy, "step": 40}, step=40)
        recording.finish_run(mlflow_store, run.run_id, status)

    # While a trial failed, the sweep may still be resumed: no params yet, since MLflow cannot change them.
    best = recording.record_sweep_outcome(mlflow_store, experiment_id, parent_id, "t_1", complete=False)
    client = MlflowClient(mlflow_store)
    parent = client.get_run(parent_id)
    assert parent.data.tags["mixer.best_trial_id"] == "t_1"
    assert parent.data.tags["mixer.best_run_id"] == best.info.run_id
    assert parent.data.metrics["val_top1"] == 0.8 and parent.data.metrics["step"] == 40
    assert parent.data.metrics["trials"] == 3
    assert parent.data.metrics["trials_finished"] == 2 and parent.data.metrics["trials_failed"] == 1
    assert parent.data.metrics["trials_killed"] == 0
    assert parent.data.params == {}

    recording.record_sweep_outcome(mlflow_store, experiment_id, parent_id, "t_1", complete=True)
    params = client.get_run(parent_id).data.params
    assert params["train.lr"] == "0.01" and params == best.data.params


def test_a_checkpoint_logged_on_a_run_is_an_init_from_for_training(mlflow_store, tmp_path):
    parent_id = _sweep(mlflow_store, tmp_path)
    weights = {"model": {"head.weight": torch.ones(2, 3)}}
    checkpoint = save_checkpoint(tmp_path / "ray_results" / "checkpoint_000001", weights)
    artifact = log_checkpoint(mlflow_store, parent_id, str(checkpoint))
    assert artifact == f"runs:/{parent_id}/best_checkpoint"

    config = RunConfig.model_validate({"train": {"init_from": artifact}})
    local = fetch_init_from(config, tmp_path / "downloads").train.init_from
    assert Path(local).parent == tmp_path / "downloads"
    assert torch.equal(torch.load(Path(local) / STATE_FILE)["model"]["head.weight"], torch.ones(2, 3))
    plain = RunConfig.model_validate({"train": {"init_from": "weights/ti4.pth"}})
    assert fetch_init_from(plain, tmp_path / "downloads") is plain

    missing = RunConfig.model_validate({"train": {"init_from": f"runs:/{parent_id}/no_such_artifact"}})
    with pytest.raises(FileNotFoundError, match="no_such_artifact"):
        fetch_init_from(missing, tmp_path / "missing")


# Each process imports MLflow, waits for the common start time, then opens the store.
OPEN_AT_ONCE = """
import sys, time
from sweeps.tracking.store import RetryingMlflowClient
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
RetryingMlflowClient(sys.argv[1]).search_experiments()
"""


def test_processes_that_open_a_new_sqlite_store_at_once_all_find_its_tables(tmp_path):
    # MLflow makes a SQLite store's tables on its first open; a sweep starting in a fresh folder and a reader
    # polling its store (a test, `mixer sweep ls`) once did so together, and one failed on a half-made table.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 15  # after every process has imported MLflow
    openers = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, uri, str(start)], cwd=REPO,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [opener.communicate(timeout=120)[1] for opener in openers]
    assert [opener.returncode for opener in openers] == [0, 0, 0], errors
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]
