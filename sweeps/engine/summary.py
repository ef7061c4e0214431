"""The end of a sweep: every trial's outcome in a table, the best trial's metrics, params and final weights on the
sweep's parent run, and the parent run closed (KILLED when interrupted, FAILED when a trial failed, else FINISHED).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixer_core import metrics as metric_names
from sweeps.engine.progress import SweepCallback
from sweeps.engine.search import is_better, objective_metrics, optuna_storage_url
from sweeps.engine.trial import SweepContext
from sweeps.engine.worker import FINAL_ERROR
from sweeps.tracking import recording, schema, store
from sweeps.tracking.artifacts import log_checkpoint


@dataclass
class TrialSummary:
    """One row of the results table."""

    trial_id: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, float]
    ended_at: float | None = None  # when the driver saw it end (time.time()); None if it did not end this run


@dataclass
class SweepResult:
    """The outcome of `run_sweep`/`resume_sweep`: every trial, the best one, and where to look in MLflow."""

    name: str
    experiment_dir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    objective: list[str]
    trials: list[TrialSummary] = field(default_factory=list)
    best_trial_id: str | None = None
    best_checkpoint: str | None = None  # the best trial's final checkpoint, logged on the parent run (`runs:/...`)
    optuna_storage: str | None = None
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM: `mixer sweep resume NAME` finishes it
    not_recorded: str | None = None  # what of the outcome MLflow did not take, its store away past the retries

    @property
    def mlflow_ui(self) -> str:
        return store.ui_hint(self.tracking_uri, self.experiment_id)


def summary_status(trial_id: str, result, callback: SweepCallback) -> str:
    """A trial's state in the results table: Tune's ERROR and TERMINATED, or STOPPED (early) or INTERRUPTED."""
    if result.error or FINAL_ERROR in result.metrics:  # a trial that ended itself on an error a retry would repeat
        return "ERROR"
    if trial_id in callback.interrupted:
        return "INTERRUPTED"
    return "STOPPED" if metric_names.stopped_early(result.metrics) else "TERMINATED"


def finish_sweep(context: SweepContext, results, callback: SweepCallback, directory: str) -> SweepResult:
    """Summarise every trial from Tune's results, put the best one's metrics, params and final weights on the
    parent run, and close it: KILLED when interrupted, FAILED when a trial failed, else FINISHED.

    The MLflow calls are retried while the store is unavailable; if it stays away, the summary says what was not
    written (`not_recorded`) instead of raising, so the results table is still printed.
    """
    summary = _summarise(context, results, callback, directory)
    try:
        _record_outcome(context, summary)
    except Exception as error:
        if not store.is_unavailable(error):
            raise
        summary.not_recorded = (
            f"the sweep's outcome (best trial, trial counts, best weights, final status of run"
            f" {context.parent_run_id}): {type(error).__name__}: {error}"
        )
    return summary


def _summarise(context: SweepContext, results, callback: SweepCallback, directory: str) -> SweepResult:
    spec = context.spec
    metrics, modes = objective_metrics(spec)
    summary = SweepResult(
        name=spec.name,
        experiment_dir=directory,
        tracking_uri=context.tracking_uri,
        experiment_id=context.experiment_id,
        parent_run_id=context.parent_run_id,
        objective=metrics,
        optuna_storage=optuna_storage_url(spec, context.tracking_uri) if spec.searcher.startswith("optuna") else None,
        interrupted=callback.sweep_cut_short,
    )
    best_value = None
    for result in results:
        reported = {key: value for key, value in result.metrics.items() if isinstance(value, (int, float))}
        trial_id = result.metrics.get("trial_id") or Path(result.path).name
        status = summary_status(trial_id, result, callback)
        summary.trials.append(
            TrialSummary(trial_id, status, dict(result.config), reported, callback.ended_at.get(trial_id))
        )
        value = reported.get(metrics[0]) if status != "ERROR" else None
        if value is not None and (best_value is None or is_better(value, best_value, modes[0])):
            best_value, summary.best_trial_id = value, trial_id
    return summary


def _record_outcome(context: SweepContext, summary: SweepResult) -> None:
    failed = any(trial.status == "ERROR" for trial in summary.trials)
    best_run = recording.record_sweep_outcome(
        context.tracking_uri,
        context.experiment_id,
        context.parent_run_id,
        summary.best_trial_id,
        complete=not (failed or summary.interrupted),
    )
    checkpoint = best_run.data.tags.get(schema.TAG_CHECKPOINT) if best_run else None
    if checkpoint:
        summary.best_checkpoint = log_checkpoint(context.tracking_uri, context.parent_run_id, checkpoint)
    status = "KILLED" if summary.interrupted else "FAILED" if failed else "FINISHED"
    recording.finish_run(context.tracking_uri, context.parent_run_id, status)
