"""Starting Ray (or joining a cluster) for a sweep, a trial or `mixer train`; this module imports only Ray, so the
CLI can start Ray while it imports the sweep engine.
"""

from __future__ import annotations

import os

import ray

# Ray Train polls its workers every 2 s by default; a trial's fit() then ends up to 2 s after its last report
# (propagated by Ray Train from the trial's process to its controller and workers). Tune's new console output
# prints tables whatever `verbose` says; the legacy one is silent at verbose=0 and our callback reports progress.
# Tune snapshots the sweep's state whenever a trial has checkpointed `num_to_keep` times since the last snapshot
# (so no snapshot names a deleted checkpoint) and warns each time it does so within 5 s: with one checkpoint
# kept, that is every evaluation of a short trial, which is intended here. Tune's default result loggers include
# TensorBoard's, whose import makes the driver import torch (1.8 s before the first trial starts, on 2 cores);
# runs are in MLflow, so the sweep asks for Tune's CSV and JSON result files only (`sweeps.engine.run`).
# torch_tpu registers itself to load with `import torch`; on a host without libtpu that aborts the process, and on
# a TPU host it would claim the chips for whichever process imported torch first (a Tune trial's process, a
# decoding task). Only training processes load it: Ray Train's tpu_dist backend and `mixer_core.device` do.
WORKER_ENV = {"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
RAY_ENV_DEFAULTS = {
    **WORKER_ENV,
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}
# Ray keeps as many idle worker processes as a node has CPUs and ends the others after 1 s idle. A stream needs more
# at once: `loader_processes` decoding tasks of one CPU beside as many reading tasks of none (`sweeps.stream`). At
# Ray's limit every pause of a decoder (an epoch's end, a trainer slower than its input) ended a process, and its
# next task waited for a new one to import Ray, pyarrow and PIL (about 1 s of CPU): on 2 cores two decoding
# processes decoded 1.17-1.28x one's rows, and 1.37-1.65x with room for both readers (docs/benchmarks.md). Read by
# the raylet at start, so it is set for a Ray started here and by every node's start command in cluster/.
WORKER_SOFT_LIMIT_ENV = "RAY_num_workers_soft_limit"


def worker_soft_limit(cpus: int) -> int:
    """Worker processes a node keeps: one per CPU for one-CPU tasks, one per CPU for reading tasks, one spare."""
    return 2 * cpus + 1


def set_ray_env_defaults() -> None:
    """`RAY_ENV_DEFAULTS`, where the environment does not say otherwise."""
    for name, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the cluster at `address` (or `RAY_ADDRESS`), else start Ray on this machine.

    Reuses an already connected session, so trials never pay for a second `ray.init`.
    """
    set_ray_env_defaults()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Ray Train's workers and controllers log every checkpoint and report; `SweepCallback` prints the progress
    # a person reads, and failures with their traceback file, so their logs stay in Ray's log folder.
    if address:  # a cluster's processes inherit the environment of its nodes, not this one's
        ray.init(address=address, logging_level="WARNING", log_to_driver=False,
                 runtime_env={"env_vars": WORKER_ENV})
    else:
        start_local_ray(num_cpus)


def start_local_ray(num_cpus: int | None = None, object_store_memory: int | None = None) -> None:
    """Start Ray on this machine with `num_cpus` CPUs (all when None) and an object store of `object_store_memory`
    bytes (Ray's default when None), its workers' logs kept in Ray's log folder (see `init_ray`)."""
    set_ray_env_defaults()
    # Ray Train watches for nodes being drained (spot preemption) with one more actor per trial; a Ray started
    # here has no node to lose, so trials skip it.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault(WORKER_SOFT_LIMIT_ENV, str(worker_soft_limit(num_cpus or os.cpu_count() or 1)))
    ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, include_dashboard=False,
             logging_level="WARNING", log_to_driver=False)
