"""MLflow for sweeps: a parent run per sweep, a child run per trial, keyed so that retries continue their run.

Every call to the store is retried while it is unavailable (`sweeps.mlflow_retry`).

The schema, whose names below are the only copy (`dashboards/` reads them from here): the experiment carries
`mlflow.experimentKind` so the MLflow UI opens it as model training. Every run carries what `mlflow.start_run`
would record (`mlflow.user`, `mlflow.source.name` = the spec file, `mlflow.source.type`, and the commit, branch
and remote of the spec's git repository); trial runs copy them from their parent. Parent run tags
`mixer.sweep`, `mixer.sweep_id`, `mixer.role=sweep`, `mixer.spec_hash`, `mixer.experiment_dir` and, at the end,
`mixer.best_trial_id`, `mixer.best_run_id`, the best trial's final metrics, the number of trials in each state
(`trials_finished`, `trials_failed`, ...) and, once every trial finished, the best trial's params. Child run
tags `mlflow.parentRunId`, `mixer.sweep`, `mixer.role=trial`, `mixer.trial_id`, `mixer.model`,
`mixer.patch_size`, `mixer.data_fraction`, `mixer.params`, `mixer.gmacs`, `mixer.permutation` and, at the end,
`mixer.checkpoint` (and `mixer.stopped_early`, `mixer.stopped_at_step` on a trial the scheduler stopped, or
`mixer.error` on one that ended on an error a retry would repeat); params
are the flattened trial config; metrics carry the training step.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.git_context import GitRunContext
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils import git_utils
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_SOURCE_NAME,
    MLFLOW_USER,
)

from mixer_core import metrics as metric_names
from mixer_core.config import RunConfig
from mixer_core.variants import VARIANTS
from sweeps.mlflow_retry import RetryingMlflowClient

TAG_SWEEP = "mixer.sweep"
TAG_SWEEP_ID = "mixer.sweep_id"  # one run of a sweep: its Tune state is `<storage_path>/<name>-<id>`
TAG_ROLE = "mixer.role"
ROLE_SWEEP, ROLE_TRIAL = "sweep", "trial"  # the values of TAG_ROLE
TAG_TRIAL_ID = "mixer.trial_id"
TAG_SPEC_HASH = "mixer.spec_hash"
TAG_GIT_COMMIT = MLFLOW_GIT_COMMIT
TAG_CHECKPOINT = "mixer.checkpoint"
TAG_STOPPED_EARLY = "mixer.stopped_early"  # "true" on a trial the scheduler (ASHA) stopped before its last step
TAG_STOPPED_AT_STEP = "mixer.stopped_at_step"
TAG_ERROR = "mixer.error"  # why a trial failed, on one that ended on an error a retry would repeat
TAG_EXPERIMENT_DIR = "mixer.experiment_dir"  # where Tune keeps the sweep's state (resume derives it from the spec)
TAG_PARENT = MLFLOW_PARENT_RUN_ID
TAG_MODEL = "mixer.model"
TAG_PATCH_SIZE = "mixer.patch_size"
TAG_DATA_FRACTION = "mixer.data_fraction"
TAG_PERMUTATION = "mixer.permutation"
TAG_PARAMS = f"mixer.{metric_names.PARAMS}"
TAG_GMACS = f"mixer.{metric_names.GMACS}"
TAG_BEST_TRIAL_ID = "mixer.best_trial_id"
TAG_BEST_RUN_ID = "mixer.best_run_id"
# MLflow 3's experiment type, "Model training" rather than "GenAI" (read by 3.x UIs before 3.17's switch).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
LOCAL_UI_URL = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
TRIALS_METRIC = "trials"  # on the parent run, with `trials_<state>` per MLflow run state
RESOLVED_SPEC_ARTIFACT = "resolved_spec.json"
VALIDATED_SPEC_ARTIFACT = "validated_spec.json"  # every field, defaults included: what resume compares against
# MLflow's log_batch limits (1000 metrics, 100 params, 100 tags per call).
_BATCH_PARAMS = 100
_BATCH_METRICS = 1000
_SIZE_TAGS = {metric_names.PARAMS: TAG_PARAMS, metric_names.GMACS: TAG_GMACS}
_RUN_STATES = [RunStatus.to_string(status) for status in RunStatus.all_status()]


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else an absolute `sqlite:///<cwd>/mlflow.db` (MLflow 3 refuses ./mlruns)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def experiment_url(ui_url: str, experiment_id: str) -> str:
    """The experiment's runs in the MLflow UI at `ui_url`, in its model-training view.

    MLflow 3.17's UI picks the view from a per-browser GenAI / Model training switch (GenAI until a person flips
    it) rather than from the experiment's kind tag; `workflowType` in the link sets that switch.
    """
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def ui_hint(uri: str, experiment_id: str) -> str:
    """Where to see an experiment of the store `uri`: its page on a tracking server, else the `mlflow ui` command
    that serves this store and the page to open there."""
    if uri.startswith(("http://", "https://")):
        return experiment_url(uri, experiment_id)
    return f"mlflow ui --backend-store-uri {uri}, then {experiment_url(LOCAL_UI_URL, experiment_id)}"


def ensure_experiment(client: MlflowClient | RetryingMlflowClient, name: str) -> str:
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
        MLFLOW_GIT_COMMIT: git_utils.get_git_commit(path),
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
    back, and the validated spec (defaults filled in) that it checks the resolved one still validates to.
    """
    client = RetryingMlflowClient(uri)
    experiment_id = ensure_experiment(client, experiment)
    tags = {
        **run_context_tags(spec_path),
        TAG_SWEEP: sweep_name,
        TAG_SWEEP_ID: sweep_id,
        TAG_ROLE: ROLE_SWEEP,
        TAG_SPEC_HASH: spec_hash,
        TAG_EXPERIMENT_DIR: experiment_dir,
    }
    run = client.create_run(experiment_id, tags=tags, run_name=sweep_name)
    client.log_artifact(run.info.run_id, str(spec_path))
    client.log_dict(run.info.run_id, resolved_spec, RESOLVED_SPEC_ARTIFACT)
    client.log_dict(run.info.run_id, validated_spec, VALIDATED_SPEC_ARTIFACT)
    return run.info.run_id


def load_spec_artifact(uri: str, run_id: str, artifact: str = RESOLVED_SPEC_ARTIFACT) -> dict[str, Any]:
    """A spec a sweep's parent run was started with: the resolved one, or `VALIDATED_SPEC_ARTIFACT`."""
    with tempfile.TemporaryDirectory() as directory:
        path = RetryingMlflowClient(uri).download_artifacts(run_id, artifact, directory)
        return json.loads(Path(path).read_text())


def find_sweep_run(uri: str, sweep: str, experiment_ids: list[str] | None = None, status: str | None = None):
    """The parent run of the sweep whose id is `sweep`, else the latest of those named `sweep`, in `experiment_ids`
    (default: every experiment) and with `status` (default: any); None when there is none."""
    client = RetryingMlflowClient(uri)
    if experiment_ids is None:
        experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiment_ids:
        return None
    status_filter = f" AND attributes.status = '{status}'" if status else ""
    for tag in (TAG_SWEEP_ID, TAG_SWEEP):
        runs = client.search_runs(
            experiment_ids,
            filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}' AND tags.`{tag}` = '{sweep}'{status_filter}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            return runs[0]
    return None


def list_sweeps(uri: str) -> list[dict[str, Any]]:
    """Every sweep in the store, newest first: name, experiment, status, start time and its trials' states."""
    client = RetryingMlflowClient(uri)
    experiments = {experiment.experiment_id: experiment.name for experiment in client.search_experiments()}
    if not experiments:
        return []
    parents = client.search_runs(
        list(experiments), filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}'", order_by=["attributes.start_time DESC"]
    )
    sweeps = []
    for parent in parents:
        trials = trial_runs(uri, parent.info.experiment_id, parent.info.run_id)
        states = trial_states(trials)
        sweeps.append(
            {
                "name": parent.data.tags.get(TAG_SWEEP),
                "id": parent.data.tags.get(TAG_SWEEP_ID),
                "experiment": experiments[parent.info.experiment_id],
                "status": parent.info.status,
                "run_id": parent.info.run_id,
                "start_time": parent.info.start_time,
                "trials": len(trials),
                "trial_states": states,
            }
        )
    return sweeps


def trial_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    """The child runs of a sweep's parent run."""
    return RetryingMlflowClient(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'", max_results=10000
    )


def trial_states(trials: list[Run]) -> dict[str, int]:
    """How many of `trials` are in each MLflow run state (`FINISHED`, `FAILED`, ...), for the states present."""
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.info.status] = states.get(trial.info.status, 0) + 1
    return states


def record_sweep_outcome(
    uri: str, experiment_id: str, parent_run_id: str, best_trial_id: str | None, *, complete: bool
) -> Run | None:
    """Put what compares sweeps on the parent run; returns the best trial's run (None without one).

    Metrics: `trials` and `trials_<state>` for every MLflow run state, and the best trial's final metrics under
    their own names (its objective among them). Tags `mixer.best_trial_id`, `mixer.best_run_id`. Params: the best
    trial's, only once the sweep is `complete` (every trial finished), since MLflow never changes a logged param
    and a resumed sweep may still find a better trial.
    """
    client = MlflowClient(uri)
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


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), _BATCH_PARAMS):
        client.log_batch(run_id, params=items[start : start + _BATCH_PARAMS])


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 0.1}}` -> `{"train.lr": 0.1}` (the MLflow params of a trial)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def finish_run(uri: str, run_id: str, status: str, tags: Mapping[str, str] | None = None) -> None:
    """Set final tags and the terminal status (`FINISHED`, `FAILED`, `KILLED`) of a run."""
    client = RetryingMlflowClient(uri)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status)


def stopped_early_tags(step: int) -> dict[str, str]:
    """The tags of a trial the scheduler stopped at `step`, before its planned last step."""
    return {TAG_STOPPED_EARLY: "true", TAG_STOPPED_AT_STEP: str(step)}


def kill_running_runs(uri: str, experiment_id: str, parent_run_id: str) -> None:
    """Mark a sweep's parent run and its still running trial runs KILLED (an interrupted, resumable sweep)."""
    for run in trial_runs(uri, experiment_id, parent_run_id):
        if run.info.status == "RUNNING":
            finish_run(uri, run.info.run_id, "KILLED")
    finish_run(uri, parent_run_id, "KILLED")


def find_trial_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str):
    """The child run of trial `trial_id` under `parent_run_id`, or None."""
    runs = RetryingMlflowClient(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' AND tags.`{TAG_TRIAL_ID}` = '{trial_id}'",
        max_results=1,
    )
    return runs[0] if runs else None


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
        tags = {tag: metrics[name] for name, tag in _SIZE_TAGS.items() if name in metrics}
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


def trial_tags(config: RunConfig) -> dict[str, str]:
    """The schema's per-trial tags known before training: model, patch size, data fraction, permutation."""
    timm_model = config.model.timm_model
    variant = VARIANTS.get(config.model.variant)
    return {
        TAG_MODEL: timm_model or config.model.variant,
        TAG_PATCH_SIZE: "" if timm_model or variant is None else str(variant.patch_size),
        TAG_DATA_FRACTION: str(config.data.fraction),
        TAG_PERMUTATION: config.data.permutation,
    }
