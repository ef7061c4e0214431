"""What trains a trial: the `mixer_core` training loop, reporting to Ray, with rank 0 logging to MLflow.

One worker function, two launchers (`sweeps.trial`): a one-worker trial runs `run_worker` in its own Tune
process, which Tune reuses for the next trial, and reports through `ray.tune`; a trial of several DDP workers
runs `train_worker` on each Ray Train worker and reports through `ray.train`. Either way a retried or restored
trial resumes from its last reported checkpoint and continues the same MLflow run (Ray's MLflow helpers do not
work with Train V2).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train

from mixer_core import metrics as metric_names
from mixer_core.config import ConfigError, RunConfig, parse_config
from sweeps.run_artifacts import fetch_init_from

if TYPE_CHECKING:  # Ray Data is imported only by trials that stream
    from ray.data import DataIterator

# Hands one report to Ray: the metrics, and the checkpoint directory written with them (or None).
RayReport = Callable[[dict[str, float], Path | None], None]
# The result key of a trial's last report when it ended on an error that a retry would only repeat (`final_report`).
FINAL_ERROR = "mixer_error"


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
    # Imported here: MLflow takes seconds to import and open its store, which `run_worker` overlaps with
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


def run_worker(
    loop_config: dict[str, Any],
    report_to_ray: RayReport,
    checkpoint: ray.train.Checkpoint | None,
    world_rank: int,
    world_size: int = 1,
    dataset_shard: DataIterator | None = None,
) -> None:
    """Train one worker of a trial. `loop_config` holds `run_config` (a RunConfig as a dict), `tracking` (a
    TrialTracking as a dict) and `objective` (the metric names); `checkpoint` is the one to resume from (None for
    a fresh start). A streamed source (`data.streams`) is read from `dataset_shard` (Ray Train) or, for a
    one-worker trial, from its own Ray Data pipeline (`sweeps.stream`).

    Only evaluation reports reach Ray: they carry the objective, and one Tune iteration per evaluation is what
    ASHA's `training_iteration` budget counts. Every report goes to MLflow from rank 0. When Tune stops the trial
    (ASHA, a stop condition, Ctrl-C), `report_to_ray` does not return: the trial's thread exits there.
    """
    # Imported here, not above: a trial of several workers imports this module only to hand `train_worker` to
    # Ray Train, and needs neither torch's training stack nor timm in that process (`mixer_core.data` imports both).
    from mixer_core.data import DataError
    from mixer_core.train import TrainingError

    try:
        _train(loop_config, report_to_ray, checkpoint, world_rank, world_size, dataset_shard)
    except (TrainingError, DataError, ConfigError) as error:
        # A non-finite loss, unusable data or a bad config fails the same way on every retry: the trial ends
        # now, and the driver (`sweeps.engine.SweepCallback`) marks it failed with this message. Ray Train's
        # report is collective; every rank gets here at the same step (the loss checked is all-reduced).
        report_to_ray(final_report(error, loop_config["objective"]), None)


def final_report(error: Exception, objective: list[str]) -> dict[str, Any]:
    """The last report of a trial ended by `error`: its message, and NaN for each objective metric (Tune insists
    on them; ASHA and the searchers take NaN as no value)."""
    return {FINAL_ERROR: f"{type(error).__name__}: {error}", **{name: float("nan") for name in objective}}


def _train(
    loop_config: dict[str, Any],
    report_to_ray: RayReport,
    checkpoint: ray.train.Checkpoint | None,
    world_rank: int,
    world_size: int,
    dataset_shard: DataIterator | None,
) -> None:
    from mixer_core.train import train

    tracking = TrialTracking(**loop_config["tracking"])
    config = parse_config(loop_config["run_config"], source=f"trial {tracking.trial_id}")
    with ThreadPoolExecutor(max_workers=1) as background, tempfile.TemporaryDirectory(prefix="mixer-trial-") as work:
        # A `runs:/` init_from is downloaded first: that imports MLflow here, and MLflow fails when two threads
        # import it at once. The run's params keep the URI.
        local_config = fetch_init_from(config, Path(work) / "init_from", tracking.uri)
        trial_run: Future | None = background.submit(open_trial_run, tracking, config) if world_rank == 0 else None

        def on_report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
            if trial_run is not None:
                wait([trial_run])  # its thread imports MLflow, which fails if imported by two threads at once
                from sweeps.mlflow_retry import best_effort

                step = int(metrics[metric_names.STEP])
                best_effort(  # the store was unavailable past its retries: training goes on
                    f"trial {tracking.trial_id} step {step}", lambda: trial_run.result().log(metrics, step=step)
                )
            if metric_names.is_eval_report(metrics):
                report_to_ray(metrics, checkpoint_dir)

        stream = None
        if config.data.streams:
            from sweeps.stream import open_stream

            stream = open_stream(config.data, config.train.seed, config.eval.max_examples, world_rank, world_size,
                                 dataset_shard)
        if checkpoint is None:
            train(local_config, on_report, work_dir=Path(work), stream=stream)
            return
        with checkpoint.as_directory() as resume_dir:
            train(local_config, on_report, resume_from=Path(resume_dir), work_dir=Path(work), stream=stream)


def _report_to_ray_train(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def train_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train launcher's per-worker loop (trials of several DDP workers).

    `loop_config` is plain data because Ray Train's controller unpickles it too: a class from this module would
    make every controller import torch, timm and `mixer_core` (about 2 s per trial on 2 cores).
    """
    context = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train") if loop_config["streams"] else None
    run_worker(loop_config, _report_to_ray_train, ray.train.get_checkpoint(), context.get_world_rank(),
               context.get_world_size(), shard)
