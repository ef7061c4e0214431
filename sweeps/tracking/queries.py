"""Reading sweeps back from MLflow: a sweep's parent run by id or name, its trial runs, every sweep in the store,
and the specs a sweep was started with. Every call is retried while the store is unavailable."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import Run

from sweeps.tracking.schema import (
    RESOLVED_SPEC_ARTIFACT,
    ROLE_SWEEP,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_SWEEP_ID,
    TAG_TRIAL_ID,
)
from sweeps.tracking.store import RetryingMlflowClient


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


def find_trial_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str):
    """The child run of trial `trial_id` under `parent_run_id`, or None."""
    runs = RetryingMlflowClient(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' AND tags.`{TAG_TRIAL_ID}` = '{trial_id}'",
        max_results=1,
    )
    return runs[0] if runs else None
