"""What trains a trial: the `mixer_core` training loop, reporting to Ray, with rank 0 logging to MLflow through the
sweep's writer (`sweeps.tracking.writer`).

One worker function, two launchers (`sweeps.engine.trial`): a one-worker trial runs `run_worker` in its own Tune
process, which Tune reuses for the next trial, and reports through `ray.tune`; a trial of several DDP workers
runs `train_worker` on each Ray Train worker and reports through `ray.train`. Either way a retried or restored
trial resumes from its last reported checkpoint and continues the same MLflow run (Ray's MLflow helpers do not
work with Train V2).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train

from mixer_core import metrics as metric_names
from mixer_core.config_io import parse_config
from sweeps.engine.failures import is_infrastructure
from sweeps.engine.scratch import trial_scratch_dir
from sweeps.tracking.artifacts import fetch_init_from
from sweeps.tracking.writer import TrialLog

if TYPE_CHECKING:  # Ray Data is imported only by trials that stream
    from ray.data import DataIterator

# Hands one report to Ray: the metrics, and the checkpoint directory written with them (or None).
RayReport = Callable[[dict[str, float], Path | None], None]
# The result key of a trial's last report when it ended on a deterministic error (`final_report`).
FINAL_ERROR = "mixer_error"


def run_worker(
    loop_config: dict[str, Any],
    report_to_ray: RayReport,
    checkpoint: ray.train.Checkpoint | None,
    world_rank: int,
    world_size: int = 1,
    dataset_shard: DataIterator | None = None,
    *,
    ends_failed_trial: bool = True,
) -> None:
    """Train one worker of a trial. `loop_config` holds `run_config` (a RunConfig as a dict), `trial_id`,
    `tracking_uri`, `writer` (the sweep's `MlflowWriter`) and `objective` (the metric names); `checkpoint` is the
    one to resume from (None for a fresh start). A streamed source (`data.streams`) is read from `dataset_shard`
    (Ray Train) or, for a one-worker trial, from its own Ray Data pipeline (`sweeps.stream`).

    A deterministic error (`sweeps.engine.failures`) ends the trial with a last report (`final_report`) when
    `ends_failed_trial`; else it is raised for the trial's driver to end it (`sweeps.engine.trial`, for Ray Train's
    workers: one rank cannot end a trial alone, its peers wait for it in a collective).

    Only evaluation reports reach Ray: they carry the objective, and one Tune iteration per evaluation is what
    ASHA's `training_iteration` budget counts. Every report goes to MLflow from rank 0, an evaluation report
    written before Ray sees it. When Tune stops the trial (ASHA, a stop condition, Ctrl-C), `report_to_ray` does
    not return: the trial's thread exits there.
    """
    trial_id = loop_config["trial_id"]
    log = TrialLog(loop_config["writer"], trial_id, loop_config["run_config"]) if world_rank == 0 else None
    try:
        _train(loop_config, log, report_to_ray, checkpoint, world_rank, world_size, dataset_shard)
    except Exception as error:
        if is_infrastructure(error):
            raise  # Tune retries the trial from its last checkpoint, up to `max_failures` times
        # Anything else fails the same way on every retry (`sweeps.engine.failures`): the trial ends now, and the
        # sweep's driver (`sweeps.engine.progress.SweepCallback`) marks it failed with this message.
        if log is not None:
            log.written()  # the driver closes the run on this report: it must exist, with every step before
        if not ends_failed_trial:
            raise
        report_to_ray(final_report(error, loop_config["objective"]), None)


def final_report(error: Exception, objective: list[str]) -> dict[str, Any]:
    """The last report of a trial ended by `error`: its message, and NaN for each objective metric (Tune insists
    on them; ASHA and the searchers take NaN as no value)."""
    return {FINAL_ERROR: f"{type(error).__name__}: {error}", **{name: float("nan") for name in objective}}


def _train(
    loop_config: dict[str, Any],
    log: TrialLog | None,
    report_to_ray: RayReport,
    checkpoint: ray.train.Checkpoint | None,
    world_rank: int,
    world_size: int,
    dataset_shard: DataIterator | None,
) -> None:
    from mixer_core.train import train

    config = parse_config(loop_config["run_config"], source=f"trial {loop_config['trial_id']}")
    with trial_scratch_dir() as work:
        local_config = fetch_init_from(config, work / "init_from", loop_config["tracking_uri"])

        def on_report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
            evaluated = metric_names.is_eval_report(metrics)
            if log is not None:
                log.log(metrics, step=int(metrics[metric_names.STEP]), wait=evaluated)
            if evaluated:
                report_to_ray(metrics, checkpoint_dir)

        stream = None
        if config.data.streams:
            from sweeps.stream import open_stream

            stream = open_stream(config.data, config.eval, config.train.seed, world_rank, world_size, dataset_shard)
        if checkpoint is None:
            train(local_config, on_report, work_dir=work, stream=stream)
            return
        with checkpoint.as_directory() as resume_dir:
            train(local_config, on_report, resume_from=Path(resume_dir), work_dir=work, stream=stream)


def _report_to_ray_train(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def train_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train launcher's per-worker loop (trials of several DDP workers).

    `loop_config` is plain data (and the writer's actor handle) because Ray Train's controller unpickles it too: a
    class from this module would make every controller import torch, timm and `mixer_core` (about 2 s per trial
    on 2 cores).
    """
    context = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train") if loop_config["streams"] else None
    run_worker(loop_config, _report_to_ray_train, ray.train.get_checkpoint(), context.get_world_rank(),
               context.get_world_size(), shard, ends_failed_trial=False)
