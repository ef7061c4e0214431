"""Engine efficiency: K identical trials through Ray Tune vs. the same `train()` calls in one process.

efficiency = direct seconds / engine seconds; start-up per trial = (engine - direct) / K. That average is split
by when each trial ended: the first trial's start-up (the sweep's set-up, the trial's new process and its imports
of torch and timm) and each later trial's (Tune handing the reused process the next config, the data, the
model, the MLflow run), each measured against a direct trial's seconds. Both sides train with one worker of
the spec's CPUs (the direct side sets torch's thread count to match), one trial at a time, and log to a
throwaway MLflow store (created before timing) so the engine pays its real tracking cost. Half the direct trials
run before the engine's and half after: on a shared VM whose speed drifts by several per cent over minutes,
that drift then weighs on both sides alike.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mixer_core.metrics import WALL_SECONDS
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
    "direct_seconds": "the same train() calls in one process (half before the engine, half after)",
    "engine_seconds": "through Ray Tune + MLflow (after Ray is up)",
    "ray_init_seconds": "starting Ray on this machine (not in engine_seconds)",
    "efficiency": "direct_seconds / engine_seconds",
    "startup_seconds_per_trial": "(engine - direct) / trials",
    "trial_seconds_direct": "one trial's training, directly",
    "first_trial_startup_seconds": "the first trial: sweep set-up, a new trial process, its imports",
    "later_trial_startup_seconds": "each later trial, in the reused process (mean; needs K >= 2)",
    "sweep_close_seconds": "after the last trial: results, the parent run, Tune's clean-up",
    "training_seconds_direct": "one trial's training loop alone (its wall_seconds metric), directly",
    "training_seconds_engine_first": "the same in the first trial, in its new process (a gap here is slower training)",
    "training_seconds_engine_later": "the same in each later trial, in the reused process (mean; needs K >= 2)",
    "training_spread_direct": "(slowest - fastest) / mean of the direct loops: this machine's noise on identical work",
    "failed_trials": "trials that raised",
}


def measure(spec: SweepSpec, spec_path: Path, trials: int) -> dict[str, Any]:
    """Run both sides and return the figures (seconds, efficiency, start-up seconds per trial)."""
    import torch

    from mixer_core.train import train
    from sweeps.engine.ray_session import init_ray
    from sweeps.engine.run import run_sweep
    from sweeps.spec import build_run_config
    from sweeps.tracking import recording, store

    with tempfile.TemporaryDirectory(prefix="mixer-bench-") as scratch:
        scratch_dir = Path(scratch)
        uri = f"sqlite:///{scratch_dir / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        # Created before the clock starts: sweeps meet an existing store, except a user's very first one
        # (creating its tables takes about 1.5 s).
        recording.ensure_experiment(store.RetryingMlflowClient(uri), spec.experiment)
        reduced = bench_spec(spec, trials, scratch_dir / "ray_results")
        config = build_run_config(reduced, {})

        torch.set_num_threads(max(int(reduced.resources.cpus_per_worker), 1))

        def direct(indices: range) -> tuple[float, list[float]]:
            """(seconds, each trial's training-loop seconds) of the direct trials `indices`."""
            started = time.perf_counter()
            training = [train(config, work_dir=scratch_dir / f"direct-{index}")[WALL_SECONDS] for index in indices]
            return time.perf_counter() - started, training

        half = (trials + 1) // 2
        before_seconds, before_training = direct(range(half))
        init_start = time.perf_counter()
        init_ray()
        ray_init_seconds = time.perf_counter() - init_start
        engine_start = time.time()
        result = run_sweep(reduced, spec_path, total_trials=trials)
        engine_seconds = time.time() - engine_start
        after_seconds, after_training = direct(range(half, trials))
    direct_seconds = before_seconds + after_seconds
    direct_training = before_training + after_training
    trial_seconds_direct = direct_seconds / trials
    ended = sorted((trial for trial in result.trials if trial.ended_at is not None), key=lambda trial: trial.ended_at)
    # Each trial's training loop, in the order the trials ran (one at a time): the first in a new process; None
    # for a trial that failed before reporting.
    engine_training = [trial.metrics.get(WALL_SECONDS) for trial in ended]
    later_training = [seconds for seconds in engine_training[1:] if seconds is not None]
    # Each trial's share of the engine's time runs from the previous trial's end (the first's from the start).
    ends = [engine_start, *(trial.ended_at for trial in ended)]
    spans = [later - earlier for earlier, later in zip(ends, ends[1:])]
    later_spans = spans[1:]
    return {
        "trials": trials,
        "direct_seconds": direct_seconds,
        "engine_seconds": engine_seconds,
        "ray_init_seconds": ray_init_seconds,
        "efficiency": direct_seconds / engine_seconds,
        "startup_seconds_per_trial": (engine_seconds - direct_seconds) / trials,
        "trial_seconds_direct": trial_seconds_direct,
        "first_trial_startup_seconds": spans[0] - trial_seconds_direct if spans else None,
        "later_trial_startup_seconds": (
            sum(later_spans) / len(later_spans) - trial_seconds_direct if later_spans else None
        ),
        "sweep_close_seconds": engine_seconds - (ends[-1] - engine_start),
        "training_seconds_direct": sum(direct_training) / trials,
        "training_seconds_engine_first": engine_training[0] if engine_training else None,
        "training_seconds_engine_later": sum(later_training) / len(later_training) if later_training else None,
        "training_spread_direct": (max(direct_training) - min(direct_training)) / (sum(direct_training) / trials),
        "failed_trials": sum(trial.status == "ERROR" for trial in result.trials),
    }
