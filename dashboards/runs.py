"""Read a sweep back from MLflow: its parent run and one `Trial` per child run (schema in `sweeps.tracking.schema`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Run

from sweeps.tracking.queries import find_sweep_run, trial_runs
from sweeps.tracking.schema import (
    ROLE_SWEEP,
    ROLE_TRIAL,
    TAG_CHECKPOINT,
    TAG_DATA_FRACTION,
    TAG_GMACS,
    TAG_MODEL,
    TAG_PARAMS,
    TAG_PATCH_SIZE,
    TAG_PERMUTATION,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_TRIAL_ID,
)
from sweeps.tracking.store import RetryingMlflowClient, tracking_uri


class SweepNotFound(LookupError):
    """No parent run carries the requested `mixer.sweep` tag; the message lists the sweeps that exist."""


@dataclass(frozen=True)
class Trial:
    """One child run: the tags that place it on the sweep's axes, its params and its latest metric values."""

    run_id: str
    trial_id: str
    status: str
    model: str
    patch_size: int | None
    data_fraction: float | None
    permutation: str
    params_count: int | None
    gmacs: float | None
    checkpoint: str | None
    config: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def series(self) -> str:
        """The curve this trial belongs to: its model, and its input permutation when there is one."""
        return self.model if self.permutation == "none" else f"{self.model} ({self.permutation})"

    @property
    def is_mixer(self) -> bool:
        """False for a timm baseline. The flattened config logs an unset `model.timm_model` as 'None'."""
        return self.config.get("model.timm_model") in (None, "", "None")

    def metric(self, name: str) -> float | None:
        """The latest finite value of metric `name`, or None when the run never logged it."""
        value = self.metrics.get(name)
        return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class SweepRuns:
    """A sweep as recorded in MLflow: where it lives, its parent run and its trials."""

    name: str
    tracking_uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str
    parent_tags: dict[str, str]
    trials: list[Trial]

    @property
    def has_permutation_axis(self) -> bool:
        """True when trials differ in their input permutation (the paper's Figure 4 study)."""
        return len({trial.permutation for trial in self.trials}) > 1


def _optional(value: str | None, kind: type) -> Any:
    """A tag as `kind`, or None when absent or empty. Integers pass through float: counts arrive as '534938.0'."""
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        return None


def _trial_from_run(run: Run) -> Trial:
    tags = run.data.tags
    config = dict(run.data.params)
    return Trial(
        run_id=run.info.run_id,
        trial_id=tags.get(TAG_TRIAL_ID, run.info.run_name or run.info.run_id),
        status=run.info.status,
        model=tags.get(TAG_MODEL) or config.get("model.variant", "?"),
        patch_size=_optional(tags.get(TAG_PATCH_SIZE), int),
        data_fraction=_optional(tags.get(TAG_DATA_FRACTION, config.get("data.fraction")), float),
        permutation=tags.get(TAG_PERMUTATION) or config.get("data.permutation") or "none",
        params_count=_optional(tags.get(TAG_PARAMS), int),
        gmacs=_optional(tags.get(TAG_GMACS), float),
        checkpoint=tags.get(TAG_CHECKPOINT),
        config=config,
        metrics=dict(run.data.metrics),
    )


def _search_all(client: RetryingMlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiment_ids(client: RetryingMlflowClient, experiment: str | None, uri: str) -> list[str]:
    if experiment is None:
        return [found.experiment_id for found in client.search_experiments()]
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SweepNotFound(f"{uri}: no MLflow experiment named {experiment!r}")
    return [found.experiment_id]


def load_sweep(name: str, *, uri: str | None = None, experiment: str | None = None) -> SweepRuns:
    """The sweep whose parent run is tagged `mixer.sweep=name` (the newest one when it ran more than once),
    with every child run of that parent as a `Trial`. Raises `SweepNotFound` naming the sweeps that exist."""
    if "'" in name:
        raise ValueError(f"sweep name {name!r} contains a quote, which MLflow filters cannot hold")
    uri = uri or tracking_uri()
    sqlite_file = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if sqlite_file is not None and not sqlite_file.is_file():  # MLflow would create an empty store here
        raise SweepNotFound(f"{uri}: no MLflow store here; run the sweep from this folder or set MLFLOW_TRACKING_URI")
    client = RetryingMlflowClient(uri)
    experiment_ids = _experiment_ids(client, experiment, uri)
    parent = find_sweep_run(uri, name, experiment_ids)
    if parent is None:
        every_sweep = _search_all(client, experiment_ids, f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}'")
        known = sorted({run.data.tags[TAG_SWEEP] for run in every_sweep})
        raise SweepNotFound(
            f"{uri}: no sweep run tagged {TAG_SWEEP}={name!r}"
            + (f" in experiment {experiment!r}" if experiment else "")
            + f"; sweeps recorded there: {', '.join(known) or 'none'}"
        )
    children = trial_runs(uri, parent.info.experiment_id, parent.info.run_id)
    trials = sorted(
        (_trial_from_run(run) for run in children if run.data.tags.get(TAG_ROLE, ROLE_TRIAL) == ROLE_TRIAL),
        key=lambda trial: (trial.model, trial.permutation, trial.data_fraction or 0.0, trial.trial_id),
    )
    return SweepRuns(
        name=name,
        tracking_uri=uri,
        experiment_id=parent.info.experiment_id,
        experiment_name=client.get_experiment(parent.info.experiment_id).name,
        parent_run_id=parent.info.run_id,
        parent_tags=dict(parent.data.tags),
        trials=trials,
    )


def metric_histories(sweep: SweepRuns, metric: str) -> dict[str, list[tuple[int, float]]]:
    """Per trial run id, the (step, value) history of `metric`, ordered by step (training curves)."""
    client = RetryingMlflowClient(sweep.tracking_uri)
    histories = {}
    for trial in sweep.trials:
        points = sorted((m.step, m.value) for m in client.get_metric_history(trial.run_id, metric))
        if points:
            histories[trial.run_id] = points
    return histories


def trial_rows(sweep: SweepRuns, metric_names: list[str]) -> list[dict[str, Any]]:
    """One flat row per trial (axes, size, status and the named metrics) for tables and JSON."""
    return [
        {
            "trial_id": trial.trial_id,
            "model": trial.model,
            "permutation": trial.permutation,
            "data_fraction": trial.data_fraction,
            "params": trial.params_count,
            "gmacs": trial.gmacs,
            "status": trial.status,
            **{name: trial.metric(name) for name in metric_names},
            "run_id": trial.run_id,
        }
        for trial in sweep.trials
    ]
