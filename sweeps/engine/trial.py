"""What runs in each Tune trial's process: the trial's config, then one of two launchers of `sweeps.engine.worker`.

- One worker (`workers_per_trial: 1`): the worker function runs right here, in the trial's own process, which
  holds the worker's CPUs and GPUs and which Tune reuses for the next trial (`reuse_actors`). torch and timm
  are imported once per process, not once per trial; checkpoints and retries go through Tune
  (`ray.tune.report(..., checkpoint=...)`, Tune's `FailureConfig`). This is Ray's documented pattern for tuning
  single-worker training.
- Several workers: a Ray Train `TorchTrainer` runs `train_worker` on each (DDP, possibly across nodes), and its
  results reach Tune through `TuneReportCallback`. When a worker fails, Ray Train stops them all and this
  process decides (`ended_by`): a deterministic error on any rank ends the trial, else Tune retries it and Ray
  Train resumes from the trial's checkpoint.

This module is what a trial's process imports (Tune unpickles `run_trial` by reference), so it stays clear of
the driver's searchers and of MLflow, which the sweep's writer (`sweeps.tracking.writer`) imports instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import ray.tune
from ray.actor import ActorHandle
from ray.train import WorkerGroupError

from mixer_core.config import RunConfig
from mixer_core.config_io import resolve_paths
from sweeps.engine import tpu
from sweeps.engine.failures import is_infrastructure
from sweeps.engine.ray_session import set_ray_env_defaults
from sweeps.engine.worker import final_report, run_worker, train_worker
from sweeps.spec import Resources, SweepSpec, build_run_config

# A trial of several workers only waits on fit(); its Ray Train workers hold the CPUs and GPUs. Tune refuses an
# empty resource request, and any CPU held here would be missing for the workers, so it asks for one byte.
TRAIN_DRIVER_RESOURCES = {"memory": 1}


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep needs besides its own parameters."""

    spec: SweepSpec
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    train_storage_path: str  # where each trial's Ray Train run keeps its checkpoints (shared storage on a cluster)
    working_dir: str = field(default_factory=lambda: str(Path.cwd()))  # relative config paths are read from here


def runs_in_trial_process(spec: SweepSpec) -> bool:
    """Whether the spec's trials train in Tune's own trial process (one worker) rather than through Ray Train
    (several workers, or a TPU slice: Ray Train reserves the slice and sets up torch_tpu's process group)."""
    return spec.resources.workers_per_trial == 1 and not spec.resources.use_tpu


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What Tune reserves for each trial's process: the worker's CPUs and GPUs when it trains there itself."""
    if not runs_in_trial_process(spec):
        return TRAIN_DRIVER_RESOURCES
    resources = spec.resources
    return {"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker if resources.use_gpu else 0}


def scaling_config(resources: Resources) -> ray.train.ScalingConfig:
    """The Ray Train worker group of a trial: DDP workers with their CPUs and GPUs, or a TPU slice."""
    if resources.use_tpu:
        return tpu.scaling_config(resources)
    return ray.train.ScalingConfig(
        num_workers=resources.workers_per_trial,
        use_gpu=resources.use_gpu,
        resources_per_worker={"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker},
    )


def _report_to_tune(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
    checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.tune.report(metrics, checkpoint=checkpoint)


def run_trial(params: dict[str, Any], context: SweepContext, writer: ActorHandle) -> None:
    """One Tune trial of the config `params` picks; its runs (MLflow, Ray Train) are named by the trial id, and
    `writer` (`sweeps.tracking.writer`) writes its MLflow run."""
    spec = context.spec
    trial_id = ray.tune.get_context().get_trial_id()
    run_config = resolve_paths(build_run_config(spec, params), context.working_dir)
    loop_config = {
        "run_config": run_config.model_dump(mode="json"),
        "trial_id": trial_id,
        "tracking_uri": context.tracking_uri,
        "writer": writer,
        "objective": [objective.metric for objective in spec.objective],
    }
    if runs_in_trial_process(spec):
        run_worker(loop_config, _report_to_tune, ray.tune.get_checkpoint(), world_rank=0)
        return
    _fit_with_ray_train(loop_config, context, trial_id, run_config)


def _fit_with_ray_train(loop_config: dict[str, Any], context: SweepContext, trial_id: str, run_config: RunConfig) -> None:
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from sweeps.stream import training_dataset

    # A streamed source is one dataset that Ray Train splits between the workers, reshuffled every epoch.
    loop_config = {**loop_config, "streams": run_config.data.streams}
    datasets = None
    if run_config.data.streams:
        datasets = {"train": training_dataset(run_config.data, run_config.train.seed, reseed_each_epoch=True)}

    set_ray_env_defaults()
    spec = context.spec
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        datasets=datasets,
        scaling_config=scaling_config(spec.resources),  # on TPUs, TorchTrainer picks Ray's tpu_dist backend
        run_config=ray.train.RunConfig(
            name=trial_id,  # the same name on retry and restore, so Ray Train resumes from the trial's checkpoint
            storage_path=context.train_storage_path,
            # Tune retries the trial instead (`sweeps.engine.run`), when `ended_by` finds no deterministic error;
            # Ray Train still waits out preemptions, which it counts apart.
            failure_config=ray.train.FailureConfig(max_failures=0),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.checkpoint.num_to_keep,
                checkpoint_score_attribute=spec.checkpoint.score_attribute,
                checkpoint_score_order=spec.checkpoint.score_order,
            ),
            callbacks=[TuneReportCallback()],
        ),
    )
    try:
        trainer.fit()
    except WorkerGroupError as error:
        deterministic = ended_by(error)
        if deterministic is None:
            raise  # Tune retries the trial; Ray Train resumes it from its checkpoint (the run's name)
        ray.tune.report(final_report(deterministic, loop_config["objective"]))


def ended_by(error: WorkerGroupError) -> Exception | None:
    """The deterministic error (`sweeps.engine.failures`) of the lowest rank that raised one, if any: it ends the
    trial, whatever the other ranks met (a peer's collective broken off, a worker killed as the group stopped)."""
    return next((failure for _, failure in sorted(error.worker_failures.items()) if not is_infrastructure(failure)),
                None)
