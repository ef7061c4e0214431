"""What every Ray Train worker of a trial runs: the `mixer_core` training loop, reporting to Ray Train.

Rank 0 also logs to the trial's MLflow run (Ray's MLflow helpers do not work with Train V2). A retried or
restored worker resumes from `ray.train.get_checkpoint()` and continues the same MLflow run.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train

from mixer_core import metrics as metric_names
from mixer_core.config import RunConfig, parse_config
from sweeps.run_artifacts import fetch_init_from


@dataclass(frozen=True)
class TrialTracking:
    """Where rank 0 logs this trial: the MLflow store, experiment, sweep parent run and Tune trial id."""

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep_name: str
    trial_id: str


def open_trial_run(tracking: TrialTracking, config: RunConfig):
    """The trial's MLflow run (`sweeps.tracking.TrialRun`), created or continued."""
    # Imported here: MLflow takes seconds to import and open its store, which `train_worker` overlaps with
    # building the data and model instead of paying before training starts.
    from sweeps.tracking import TrialRun, flatten, trial_tags

    return TrialRun(
        tracking.uri,
        tracking.experiment_id,
        tracking.parent_run_id,
        tracking.sweep_name,
        tracking.trial_id,
        params=flatten(config.model_dump()),
        tags=trial_tags(config),
    )


def train_worker(loop_config: dict[str, Any]) -> None:
    """The per-worker loop: `loop_config` holds `run_config` (a RunConfig as a dict) and `tracking` (a
    TrialTracking as a dict).

    Both are plain data because Ray Train's controller unpickles the loop config too: a class from this module
    would make every controller import torch, timm and `mixer_core` (about 2 s per trial on 2 cores).
    """
    # Imported here, not above: each trial's process imports this module only to hand `train_worker` to Ray
    # Train, and needs neither torch's training stack nor timm.
    from mixer_core.train import train

    tracking = TrialTracking(**loop_config["tracking"])
    config = parse_config(loop_config["run_config"], source=f"trial {tracking.trial_id}")
    trial_run: Future | None = None
    if ray.train.get_context().get_world_rank() == 0:
        trial_run = ThreadPoolExecutor(max_workers=1).submit(open_trial_run, tracking, config)

    def on_report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if trial_run is not None:
            trial_run.result().log(metrics, step=int(metrics[metric_names.STEP]))
        # Only evaluation reports reach Tune: they carry the objective, and one Tune iteration per evaluation
        # is what ASHA's `training_iteration` budget counts. Progress reports go to MLflow only.
        if metric_names.is_eval_report(metrics):
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            ray.train.report(metrics, checkpoint=checkpoint)

    with tempfile.TemporaryDirectory(prefix="mixer-trial-") as work_dir:
        config = fetch_init_from(config, Path(work_dir) / "init_from", tracking.uri)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            train(config, on_report, work_dir=Path(work_dir))
            return
        with checkpoint.as_directory() as resume_dir:
            train(config, on_report, resume_from=Path(resume_dir), work_dir=Path(work_dir))
