"""Writing a sweep to MLflow: the experiment, the parent run per sweep, a child run per trial (keyed so that retries
continue their run), and the outcome recorded on the parent run at the end. The names written are those of
`sweeps.tracking.schema`; every call goes through `RetryingMlflowClient`, so it outlasts a store that is briefly
unavailable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.tracking.context.git_context import GitRunContext
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils import git_utils
from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME, MLFLOW_USER

from mixer_core.redact import redacted
from sweeps.tracking.queries import find_trial_run, trial_runs, trial_states
from sweeps.tracking.schema import (
    EXPERIMENT_KIND_TRAINING,
    RESOLVED_SPEC_ARTIFACT,
    ROLE_SWEEP,
    ROLE_TRIAL,
    SIZE_TAGS,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL_ID,
    TAG_EXPERIMENT_DIR,
    TAG_EXPERIMENT_KIND,
    TAG_GIT_COMMIT,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SPEC_HASH,
    TAG_SWEEP,
    TAG_SWEEP_ID,
    TAG_TRIAL_ID,
    TRIALS_METRIC,
    VALIDATED_SPEC_ARTIFACT,
)
from sweeps.tracking.store import RetryingMlflowClient

# MLflow's log_batch limits (1000 metrics, 100 params, 100 tags per call).
_BATCH_PARAMS = 100
_BATCH_METRICS = 1000
_RUN_STATES = [RunStatus.to_string(status) for status in RunStatus.all_status()]


def ensure_experiment(client: RetryingMlflowClient, name: str) -> str:
    """The id of experiment `name`, created (artifacts under `<cwd>/mlartifacts` for a local store) if missing,
    and marked as model training for the MLflow UI."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = None
        if client.tracking_uri.startswith("sqlite:"):
            artifact_location = (Path.cwd().resolve() / "mlartifacts").as_uri()
        kind = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING}
        return client.create_experiment(name, artifact_location=artifact_location, tags=kind)
    if TAG_EXPERIMENT_KIND not in experiment.tags:  # created before the schema had the tag
        client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
    return experiment.experiment_id


def run_context_tags(source: Path) -> dict[str, str]:
    """The tags `mlflow.start_run` would set (user, source type, and those of any installed context plugin), with
    `source` as the run's source: its absolute path, and the commit, branch and remote of the git repository
    holding it."""
    path = str(source.resolve())
    # MLflow's git context looks at the running script, which for `mixer` is an entry point in a virtualenv.
    tags = resolve_tags(ignore=[GitRunContext])
    tags[MLFLOW_SOURCE_NAME] = path
    git = {
        TAG_GIT_COMMIT: git_utils.get_git_commit(path),
        MLFLOW_GIT_BRANCH: git_utils.get_git_branch(path),
        MLFLOW_GIT_REPO_URL: git_utils.get_git_repo_url(path),
    }
    tags.update({key: value for key, value in git.items() if value})
    return tags


def _inherited_context_tags(parent: Run) -> dict[str, str]:
    """The run-context tags (user and source) a trial run takes from its sweep's parent run."""
    return {
        key: value for key, value in parent.data.tags.items() if key == MLFLOW_USER or key.startswith("mlflow.source.")
    }


def start_sweep_run(
    uri: str,
    experiment: str,
    sweep_name: str,
    sweep_id: str,
    spec_hash: str,
    spec_path: Path,
    resolved_spec: dict[str, Any],
    validated_spec: dict[str, Any],
    experiment_dir: str,
) -> str:
    """Create the sweep's parent run; returns its run id.

    Artifacts: the spec file as written, the resolved spec (overrides applied) that `mixer sweep resume` reads
    back, and the validated spec (defaults filled in) that it checks the resolved one still validates to; in all
    of them and in the tags, passwords in URLs (`optuna_storage`, a git remote) are `mixer_core.redact`ed.
    """
    client = RetryingMlflowClient(uri)
    experiment_id = ensure_experiment(client, experiment)
    tags = redacted({
        **run_context_tags(spec_path),
        TAG_SWEEP: sweep_name,
        TAG_SWEEP_ID: sweep_id,
        TAG_ROLE: ROLE_SWEEP,
        TAG_SPEC_HASH: spec_hash,
        TAG_EXPERIMENT_DIR: experiment_dir,
    })
    run = client.create_run(experiment_id, tags=tags, run_name=sweep_name)
    client.log_text(run.info.run_id, redacted(spec_path.read_text(encoding="utf-8")), spec_path.name)
    client.log_dict(run.info.run_id, redacted(resolved_spec), RESOLVED_SPEC_ARTIFACT)
    client.log_dict(run.info.run_id, redacted(validated_spec), VALIDATED_SPEC_ARTIFACT)
    return run.info.run_id


def record_sweep_outcome(
    uri: str, experiment_id: str, parent_run_id: str, best_trial_id: str | None, *, complete: bool
) -> Run | None:
    """Put what compares sweeps on the parent run; returns the best trial's run (None without one).

    Metrics: `trials` and `trials_<state>` for every MLflow run state, and the best trial's final metrics under
    their own names (its objective among them). Tags `mixer.best_trial_id`, `mixer.best_run_id`. Params: the best
    trial's, only once the sweep is `complete` (every trial finished), since MLflow never changes a logged param
    and a resumed sweep may still find a better trial.
    """
    client = RetryingMlflowClient(uri)
    trials = trial_runs(uri, experiment_id, parent_run_id)
    states = trial_states(trials)
    counts = {TRIALS_METRIC: len(trials)}
    counts.update({f"{TRIALS_METRIC}_{state.lower()}": states.get(state, 0) for state in _RUN_STATES})
    best = next((run for run in trials if run.data.tags.get(TAG_TRIAL_ID) == best_trial_id), None)
    values = {**(best.data.metrics if best else {}), **counts}
    timestamp = int(time.time() * 1000)
    items = [Metric(key, float(value), timestamp, 0) for key, value in values.items()]
    for start in range(0, len(items), _BATCH_METRICS):
        client.log_batch(parent_run_id, metrics=items[start : start + _BATCH_METRICS])
    if best is None:
        return None
    client.set_tag(parent_run_id, TAG_BEST_TRIAL_ID, best_trial_id)
    client.set_tag(parent_run_id, TAG_BEST_RUN_ID, best.info.run_id)
    if complete:
        _log_params(client, parent_run_id, best.data.params)
    return best


def _log_params(client: RetryingMlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), _BATCH_PARAMS):
        client.log_batch(run_id, params=items[start : start + _BATCH_PARAMS])


def finish_run(uri: str, run_id: str, status: str, tags: Mapping[str, str] | None = None) -> None:
    """Set final tags and the terminal status (`FINISHED`, `FAILED`, `KILLED`) of a run."""
    client = RetryingMlflowClient(uri)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status)


def kill_running_runs(uri: str, experiment_id: str, parent_run_id: str) -> None:
    """Mark a sweep's parent run and its still running trial runs KILLED (an interrupted, resumable sweep)."""
    for run in trial_runs(uri, experiment_id, parent_run_id):
        if run.info.status == "RUNNING":
            finish_run(uri, run.info.run_id, "KILLED")
    finish_run(uri, parent_run_id, "KILLED")


class TrialRun:
    """The MLflow run of one trial, created on first use and continued by retries and restores.

    Steps already logged (by an attempt that died after logging but before its checkpoint) are skipped per
    metric key, so a continued run never holds the same step twice.
    """

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        sweep_name: str,
        trial_id: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any],
    ):
        self.client = RetryingMlflowClient(uri)
        existing = find_trial_run(uri, experiment_id, parent_run_id, trial_id)
        self.last_step: dict[str, int] = {}
        if existing is None:
            all_tags = _inherited_context_tags(self.client.get_run(parent_run_id))
            all_tags.update(
                {TAG_PARENT: parent_run_id, TAG_SWEEP: sweep_name, TAG_ROLE: ROLE_TRIAL, TAG_TRIAL_ID: trial_id}
            )
            all_tags.update({key: str(value) for key, value in tags.items()})
            run = self.client.create_run(experiment_id, tags=all_tags, run_name=trial_id)
            self.run_id = run.info.run_id
            _log_params(self.client, self.run_id, params)
        else:
            self.run_id = existing.info.run_id
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            for key in existing.data.metrics:
                self.last_step[key] = max(metric.step for metric in self.client.get_metric_history(self.run_id, key))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Log finite numeric `metrics` at `step` (keys already logged at or after `step` are skipped); the model's
        size (`params`, `gmacs`) also becomes tags, which place the trial on the scaling plots."""
        tags = {tag: metrics[name] for name, tag in SIZE_TAGS.items() if name in metrics}
        timestamp = int(time.time() * 1000)
        fresh = [
            Metric(key, float(value), timestamp, step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(value) and step > self.last_step.get(key, -1)
        ]
        tag_items = [RunTag(key, str(value)) for key, value in tags.items()]
        if fresh or tag_items:
            self.client.log_batch(self.run_id, metrics=fresh, tags=tag_items)
        for metric in fresh:
            self.last_step[metric.key] = step
