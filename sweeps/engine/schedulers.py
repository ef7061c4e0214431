"""Scheduling: which trials Tune stops early (FIFO: none; ASHA: those behind at a rung) and how many run at once."""

from __future__ import annotations

import ray
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from sweeps.engine.search import objective_metrics
from sweeps.spec import SweepSpec


def scheduler(spec: SweepSpec) -> FIFOScheduler | ASHAScheduler:
    """FIFO, or ASHA stopping trials on the (single) objective at the spec's rungs."""
    settings = spec.scheduler
    if settings.type != "asha":
        return FIFOScheduler()
    metrics, modes = objective_metrics(spec)
    return ASHAScheduler(
        time_attr=settings.time_attr,
        metric=metrics[0],
        mode=modes[0],
        max_t=settings.max_t,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )


def max_concurrent_trials(spec: SweepSpec) -> int:
    """The spec's limit, else as many trials as the cluster's CPUs (GPUs) hold at once (trials hold 0 CPU)."""
    resources = spec.resources
    if resources.max_concurrent_trials:
        return resources.max_concurrent_trials
    available = ray.cluster_resources()
    fits = available.get("CPU", 1) // max(resources.workers_per_trial * resources.cpus_per_worker, 1e-9)
    if resources.use_gpu and resources.gpus_per_worker:
        fits = min(fits, available.get("GPU", 0) // (resources.workers_per_trial * resources.gpus_per_worker))
    return max(int(fits), 1)
