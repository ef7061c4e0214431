"""The MLflow schema of a sweep, whose names below are the only copy (`dashboards/` reads them from here).

The experiment carries `mlflow.experimentKind` so the MLflow UI opens it as model training. Every run carries
what `mlflow.start_run` would record (`mlflow.user`, `mlflow.source.name` = the spec file, `mlflow.source.type`,
and the commit, branch and remote of the spec's git repository); trial runs copy them from their parent. Parent
run tags `mixer.sweep`, `mixer.sweep_id`, `mixer.role=sweep`, `mixer.spec_hash`, `mixer.experiment_dir` and, at
the end, `mixer.best_trial_id`, `mixer.best_run_id`, the best trial's final metrics, the number of trials in each
state (`trials_finished`, `trials_failed`, ...) and, once every trial finished, the best trial's params. Child
run tags `mlflow.parentRunId`, `mixer.sweep`, `mixer.role=trial`, `mixer.trial_id`, `mixer.model`,
`mixer.patch_size`, `mixer.data_fraction`, `mixer.params`, `mixer.gmacs`, `mixer.permutation` and, at the end,
`mixer.checkpoint` (and `mixer.stopped_early`, `mixer.stopped_at_step` on a trial the scheduler stopped, or
`mixer.error` on one that ended on an error a retry would repeat); params are the flattened trial config;
metrics carry the training step.

This module imports no MLflow: its names are plain strings, so the driver's plan and `dashboards/` can use them
without paying for MLflow's import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mixer_core import metrics as metric_names
from mixer_core.config import RunConfig
from mixer_core.variants import VARIANTS

TAG_SWEEP = "mixer.sweep"
TAG_SWEEP_ID = "mixer.sweep_id"  # one run of a sweep: its Tune state is `<storage_path>/<name>-<id>`
TAG_ROLE = "mixer.role"
ROLE_SWEEP, ROLE_TRIAL = "sweep", "trial"  # the values of TAG_ROLE
TAG_TRIAL_ID = "mixer.trial_id"
TAG_SPEC_HASH = "mixer.spec_hash"
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own tag (`mlflow.utils.mlflow_tags`)
TAG_CHECKPOINT = "mixer.checkpoint"
TAG_STOPPED_EARLY = "mixer.stopped_early"  # "true" on a trial the scheduler (ASHA) stopped before its last step
TAG_STOPPED_AT_STEP = "mixer.stopped_at_step"
TAG_ERROR = "mixer.error"  # why a trial failed, on one that ended on an error a retry would repeat
TAG_EXPERIMENT_DIR = "mixer.experiment_dir"  # where Tune keeps the sweep's state (resume derives it from the spec)
# The lock of a sweep name (`sweeps.engine.driver`): an MLflow experiment `DRIVER_LOCK_PREFIX + name`, tagged with
# its driver's host, process id and sweep id, and the time of its latest heartbeat (Unix seconds).
DRIVER_LOCK_PREFIX = "mixer-driver: "
TAG_DRIVER_HOST = "mixer.driver_host"
TAG_DRIVER_PID = "mixer.driver_pid"
TAG_DRIVER_HEARTBEAT = "mixer.driver_heartbeat"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own tag (`mlflow.utils.mlflow_tags`)
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
TRIALS_METRIC = "trials"  # on the parent run, with `trials_<state>` per MLflow run state
RESOLVED_SPEC_ARTIFACT = "resolved_spec.json"
VALIDATED_SPEC_ARTIFACT = "validated_spec.json"  # every field, defaults included: what resume compares against
# A model's size is a metric and also a tag: the tags place a trial on the scaling plots.
SIZE_TAGS = {metric_names.PARAMS: TAG_PARAMS, metric_names.GMACS: TAG_GMACS}


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


def stopped_early_tags(step: int) -> dict[str, str]:
    """The tags of a trial the scheduler stopped at `step`, before its planned last step."""
    return {TAG_STOPPED_EARLY: "true", TAG_STOPPED_AT_STEP: str(step)}


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
