"""MLflow tracking on a real SQLite store: the schema, and continued trial runs without duplicated steps."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from mixer_core.config import RunConfig
from sweeps import tracking


def test_default_uri_is_absolute_sqlite_under_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri() == "http://mlflow.example:5000"


def _sweep(uri: str, tmp_path: Path, name: str = "s1") -> str:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"name: {name}\n")
    return tracking.start_sweep_run(
        uri, "exp", name, f"{name}-id", "abc123", spec_file, {"name": name}, {"name": name, "seed": 0},
        str(tmp_path / name),
    )


def test_parent_run_has_schema_tags_spec_and_resolved_spec(mlflow_store, tmp_path):
    parent_id = _sweep(mlflow_store, tmp_path)
    parent = MlflowClient(mlflow_store).get_run(parent_id)
    assert parent.data.tags["mixer.sweep"] == "s1"
    assert parent.data.tags["mixer.role"] == "sweep"
    assert parent.data.tags["mixer.spec_hash"] == "abc123"
    assert "mixer.git_commit" in parent.data.tags
    artifacts = {item.path for item in MlflowClient(mlflow_store).list_artifacts(parent_id)}
    assert artifacts == {"spec.yaml", tracking.RESOLVED_SPEC_ARTIFACT, tracking.VALIDATED_SPEC_ARTIFACT}
    assert tracking.load_spec_artifact(mlflow_store, parent_id) == {"name": "s1"}
    assert tracking.load_spec_artifact(mlflow_store, parent_id, tracking.VALIDATED_SPEC_ARTIFACT)["seed"] == 0
    assert tracking.find_sweep_run(mlflow_store, "s1").info.run_id == parent_id
    assert tracking.find_sweep_run(mlflow_store, "s1-id").info.run_id == parent_id  # by the sweep's id
    assert tracking.find_sweep_run(mlflow_store, "no-such-sweep") is None
    assert (tmp_path / "mlartifacts").is_dir()  # local store: artifacts beside the database


def test_trial_run_continues_without_duplicated_steps(mlflow_store, tmp_path):
    parent_id = _sweep(mlflow_store, tmp_path)
    experiment_id = MlflowClient(mlflow_store).get_run(parent_id).info.experiment_id
    config = RunConfig.model_validate({"model": {"variant": "Ti/4"}, "data": {"fraction": 0.5}})
    params = tracking.flatten(config.model_dump())

    def attempt() -> tracking.TrialRun:
        return tracking.TrialRun(mlflow_store, experiment_id, parent_id, "s1", "t_00000", params,
                                 tracking.trial_tags(config))

    first = attempt()
    for step in (10, 20, 30):
        first.log({"train_loss": 1.0 / step, "step": step}, step=step)
    first.log({"val_top1": 0.5}, step=20, tags={"mixer.params": 123})
    # A retry resumes from the checkpoint at step 20 and reports steps 30 and 40 again/newly.
    second = attempt()
    assert second.run_id == first.run_id
    second.log({"train_loss": 0.5, "step": 30, "val_top1": 0.6}, step=30)
    second.log({"train_loss": 0.1, "step": 40, "test_top1": float("nan")}, step=40)

    client = MlflowClient(mlflow_store)
    runs = tracking.trial_runs(mlflow_store, experiment_id, parent_id)
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

    tracking.finish_run(mlflow_store, first.run_id, "FINISHED", {tracking.TAG_CHECKPOINT: "/ckpt"})
    (sweep,) = tracking.list_sweeps(mlflow_store)
    assert (sweep["name"], sweep["trials"], sweep["trial_states"]) == ("s1", 1, {"FINISHED": 1})
    assert client.get_run(first.run_id).data.tags["mixer.checkpoint"] == "/ckpt"


def test_flatten_nested_config():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
