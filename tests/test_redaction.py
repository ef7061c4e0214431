"""Passwords in storage URLs never reach stderr, `--json` output, MLflow artifacts or tags: one redaction
(`mixer_core.redact`) everywhere, and a sweep recorded with a redacted spec still resumes (its hash agrees)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mixer_cli import main
from mixer_cli.sweep import _print_result
from mixer_core.redact import redacted
from sweeps.engine.summary import SweepResult
from sweeps.spec import load_spec, spec_hash, validate_spec
from sweeps.tracking import queries, recording, schema
from sweeps.tracking.store import RetryingMlflowClient

PASSWORD = "hunter2-not-for-logs"
STORAGE = f"postgresql://mixer:{PASSWORD}@optuna-db:5432/optuna"


@pytest.mark.parametrize("text, expected", [
    (STORAGE, "postgresql://mixer:***@optuna-db:5432/optuna"),
    ("mysql+pymysql://root:p@ss/w@db/x and http://u:t@mlflow:5000", "mysql+pymysql://root:***@db/x and http://u:***@mlflow:5000"),
    ("postgresql://u@h/db?password=abc&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("http://mlflow:5000/#/experiments/1", "http://mlflow:5000/#/experiments/1"),
    ("sqlite:////data/optuna.db", "sqlite:////data/optuna.db"),
])
def test_redaction_hides_passwords_and_keeps_everything_else(text, expected):
    assert redacted(text) == expected
    assert redacted({"storage": [text], text: 1}) == {"storage": [expected], expected: 1}


def _spec(tmp_path: Path, **fields) -> Path:
    spec = {"name": "secret", "base": {"train": {"epochs": 1}}, "searcher": "optuna-tpe",
            "grid": {"data.fraction": [0.5, 1.0]}, "optuna_storage": STORAGE, **fields}
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_refusal_on_stderr_shows_no_password(tmp_path, capsys):
    assert main(["sweep", "validate", str(_spec(tmp_path, optuna_storage=[STORAGE]))]) == 2
    err = capsys.readouterr().err
    assert "optuna_storage" in err and "postgresql://mixer:***@optuna-db" in err and PASSWORD not in err


def test_the_results_json_and_table_show_no_password(capsys):
    result = SweepResult(name="secret", experiment_dir="/tmp/ray_results/secret", objective=["val_top1"],
                         tracking_uri=f"http://mixer:{PASSWORD}@mlflow:5000", experiment_id="1", parent_run_id="abc",
                         optuna_storage=STORAGE)
    _print_result(result, as_json=True)
    document = json.loads(capsys.readouterr().out)
    assert document["optuna_storage"] == "postgresql://mixer:***@optuna-db:5432/optuna"
    assert document["tracking_uri"] == "http://mixer:***@mlflow:5000"
    _print_result(result, as_json=False)
    table = capsys.readouterr().out
    assert "optuna-dashboard postgresql://mixer:***@optuna-db" in table and PASSWORD not in table


def test_the_sweep_runs_artifacts_and_tags_show_no_password_and_its_spec_hash_still_agrees(tmp_path, mlflow_store):
    path = _spec(tmp_path)
    spec = load_spec(path)
    resolved = spec.model_dump(mode="json", exclude_unset=True)
    run_id = recording.start_sweep_run(
        mlflow_store, "secrets", spec.name, "0123abcd", spec_hash(spec), path, resolved,
        spec.model_dump(mode="json"), str(tmp_path / "ray_results" / "secret"),
    )
    client = RetryingMlflowClient(mlflow_store)
    written = [Path(client.download_artifacts(run_id, artifact.path, str(tmp_path / "download"))).read_text()
               for artifact in client.list_artifacts(run_id)]
    assert len(written) == 3 and all(PASSWORD not in text for text in written)
    assert PASSWORD not in json.dumps(client.get_run(run_id).data.tags)
    # What `mixer sweep resume` reads back validates to the hash the sweep was tagged with.
    recorded = validate_spec(queries.load_spec_artifact(mlflow_store, run_id), "recorded")
    assert recorded.optuna_storage == "postgresql://mixer:***@optuna-db:5432/optuna"
    assert spec_hash(recorded) == client.get_run(run_id).data.tags[schema.TAG_SPEC_HASH]
