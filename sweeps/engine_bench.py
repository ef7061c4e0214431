"""Engine efficiency: K identical trials through Ray Tune/Train vs. the same `train()` calls in one process.

efficiency = direct seconds / engine seconds; start-up per trial = (engine - direct) / K, split into each trial's
way from its start to its first training step (Ray Train's processes, imports, data, model, the MLflow run) and
the sweep's own overhead. Both sides train with one worker of the spec's CPUs (the direct side sets torch's thread
count to match), one trial at a time, and log to a throwaway MLflow store (created before timing) so the engine
pays its real tracking cost.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mixer_core import metrics as metric_names
from sweeps.spec import SweepSpec, validate_spec


def bench_spec(spec: SweepSpec, trials: int, storage_path: Path) -> SweepSpec:
    """`spec` reduced to `trials` identical runs of its base config, one worker each, one at a time."""
    data = spec.model_dump(mode="json", exclude_unset=True)
    data.update(
        name=f"{spec.name}-bench-{time.strftime('%Y%m%d-%H%M%S')}",
        grid={},
        search={},
        searcher="random",
        num_samples=trials,
        storage_path=str(storage_path),
    )
    data["scheduler"] = {"type": "fifo"}
    data["resources"] = {**data.get("resources", {}), "workers_per_trial": 1, "max_concurrent_trials": 1}
    return validate_spec(data, spec.source)


# What each figure of `measure` is, for the printed table.
FIGURE_MEANINGS = {
    "trials": "identical one-worker trials, one at a time",
    "direct_seconds": "the same train() calls in one process",
    "engine_seconds": "through Ray Tune + Ray Train + MLflow (after Ray is up)",
    "ray_init_seconds": "starting Ray on this machine (not in engine_seconds)",
    "efficiency": "direct_seconds / engine_seconds",
    "startup_seconds_per_trial": "(engine - direct) / trials",
    "trial_seconds_direct": "one trial's training, directly",
    "fit_to_training_seconds": "per trial: from its start to its first training step",
    "sweep_overhead_seconds": "in all: Tune's set-up, trial processes, fit() returning, gaps",
    "failed_trials": "trials that raised",
}


def measure(spec: SweepSpec, spec_path: Path, trials: int) -> dict[str, Any]:
    """Run both sides and return the figures (seconds, efficiency, start-up seconds per trial)."""
    import torch

    from mixer_core.train import train
    from sweeps import engine, tracking
    from sweeps.spec import build_run_config

    with tempfile.TemporaryDirectory(prefix="mixer-bench-") as scratch:
        scratch_dir = Path(scratch)
        uri = f"sqlite:///{scratch_dir / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        # Created before the clock starts: sweeps meet an existing store, except a user's very first one
        # (creating its tables takes about 1.5 s).
        tracking.ensure_experiment(tracking.MlflowClient(uri), spec.experiment)
        reduced = bench_spec(spec, trials, scratch_dir / "ray_results")
        config = build_run_config(reduced, {})

        torch.set_num_threads(max(int(reduced.resources.cpus_per_worker), 1))
        direct_start = time.perf_counter()
        for index in range(trials):
            train(config, work_dir=scratch_dir / f"direct-{index}")
        direct_seconds = time.perf_counter() - direct_start

        init_start = time.perf_counter()
        engine.init_ray()
        ray_init_seconds = time.perf_counter() - init_start
        engine_start = time.perf_counter()
        result = engine.run_sweep(reduced, spec_path, total_trials=trials)
        engine_seconds = time.perf_counter() - engine_start
    # Tune's `time_total_s` runs from a trial's start to its last report; `wall_seconds` from its first training
    # step to that report. What is left of the engine's time is the sweep's: Tune's set-up, the trials' process,
    # fit() returning, and the gaps between trials.
    trial_seconds = [trial.metrics.get("time_total_s", 0.0) for trial in result.trials]
    training_seconds = [trial.metrics.get(metric_names.WALL_SECONDS, 0.0) for trial in result.trials]
    return {
        "trials": trials,
        "direct_seconds": direct_seconds,
        "engine_seconds": engine_seconds,
        "ray_init_seconds": ray_init_seconds,
        "efficiency": direct_seconds / engine_seconds,
        "startup_seconds_per_trial": (engine_seconds - direct_seconds) / trials,
        "trial_seconds_direct": direct_seconds / trials,
        "fit_to_training_seconds": (sum(trial_seconds) - sum(training_seconds)) / trials,
        "sweep_overhead_seconds": engine_seconds - sum(trial_seconds),
        "failed_trials": sum(trial.status == "ERROR" for trial in result.trials),
    }
