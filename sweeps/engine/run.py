"""Running and resuming a sweep: Ray Tune chooses trials (`sweeps.engine.search`, `sweeps.engine.schedulers`), each
trial trains in its own reused Tune process (one worker) or through a Ray Train `TorchTrainer` (several workers;
`sweeps.engine.trial`), the sweep's MLflow writer records a run per trial, `SweepCallback` reports progress, and
`finish_sweep` summarises. `mixer sweep resume` restores an interrupted sweep with `Tuner.restore`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
import ray.tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from mixer_core.redact import redacted
from sweeps.engine import sweep_runs
from sweeps.engine.driver import driving
from sweeps.engine.progress import SweepCallback
from sweeps.engine.schedulers import max_concurrent_trials, scheduler
from sweeps.engine.search import optuna_storage_url, search_algorithm
from sweeps.engine.summary import SweepResult, finish_sweep
from sweeps.engine.trial import SweepContext, run_trial, runs_in_trial_process, trial_resources
from sweeps.spec import SweepSpec, spec_hash, validate_spec
from sweeps.tracking import queries, recording, schema, store
from sweeps.tracking.store import best_effort
from sweeps.tracking.writer import sweep_writer


def _trainable(context: SweepContext, writer: ray.actor.ActorHandle):
    trainable = ray.tune.with_parameters(run_trial, context=context, writer=writer)
    return ray.tune.with_resources(trainable, trial_resources(context.spec))


def _tune_run_config(spec: SweepSpec, directory: str, callback: SweepCallback) -> ray.tune.RunConfig:
    """Where Tune keeps the sweep, how it retries its trials (up to `max_failures` times each, for infrastructure
    failures only: `sweeps.engine.failures`) and checkpoints those that train in its processes.

    Trials of several workers keep their checkpoints in Ray Train (`sweeps.engine.trial`), which resumes a retried
    trial from them, so Tune keeps none of its own for them.
    """
    in_trial_process = runs_in_trial_process(spec)
    storage_path, name = directory.rsplit("/", 1)  # `sweeps.engine.sweep_runs.experiment_dir`
    return ray.tune.RunConfig(
        name=name,
        storage_path=storage_path,
        callbacks=[callback, CSVLoggerCallback(), JsonLoggerCallback()],  # not TensorBoard's (`sweeps.engine.ray_session`)
        verbose=0,
        failure_config=ray.tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=ray.tune.CheckpointConfig(
            num_to_keep=spec.checkpoint.num_to_keep,
            checkpoint_score_attribute=spec.checkpoint.score_attribute if in_trial_process else None,
            checkpoint_score_order=spec.checkpoint.score_order,
        ),
    )


def run_sweep(spec: SweepSpec, spec_path: Path, *, total_trials: int | None = None) -> SweepResult:
    """Run a whole sweep on the connected Ray cluster (call `sweeps.engine.ray_session.init_ray` first); log it to MLflow.

    Raises `SweepConflict` while another driver holds the sweep's name (`sweeps.engine.driver`), or a sweep of that
    name is left RUNNING by a driver that died (`mixer sweep resume` finishes it).
    """
    uri = store.tracking_uri()
    sweep_id = sweep_runs.new_sweep_id()
    with driving(uri, spec.name, sweep_id):
        sweep_runs.refuse_if_running(uri, spec.name)
        return _start_sweep(spec, spec_path, uri, sweep_id, total_trials)


def _start_sweep(spec: SweepSpec, spec_path: Path, uri: str, sweep_id: str, total_trials: int | None) -> SweepResult:
    directory = sweep_runs.experiment_dir(spec, sweep_id)
    study_storage = optuna_storage_url(spec, uri)
    # What was written and overridden (defaults stay implicit), with the storages made absolute for `resume`, and
    # what that validates to now (`resume` checks it still does).
    resolved = {**spec.model_dump(mode="json", exclude_unset=True), "storage_path": spec.resolved_storage_path()}
    if spec.searcher.startswith("optuna"):
        resolved["optuna_storage"] = study_storage
    validated = validate_spec(resolved, str(spec_path))
    parent_run_id = recording.start_sweep_run(
        uri, spec.experiment, spec.name, sweep_id, spec_hash(validated), spec_path, resolved,
        validated.model_dump(mode="json"), directory,
    )
    with _parent_run_ended_on_error(uri, parent_run_id):
        experiment_id = recording.ensure_experiment(store.RetryingMlflowClient(uri), spec.experiment)
        context = SweepContext(spec, uri, experiment_id, parent_run_id, f"{directory}/train")
        with _runs_killed_on_interrupt(context), sweep_writer(uri, experiment_id, parent_run_id, spec.name) as writer:
            # The writer imports MLflow while the study and Tune start.
            study_name = f"{spec.name}-{parent_run_id[:8]}"
            if spec.searcher.startswith("optuna"):
                print(f"Optuna study {study_name}: {redacted(study_storage)}", file=sys.stderr, flush=True)
            param_space, searcher = search_algorithm(spec, study_storage, study_name, max_concurrent_trials(spec))
            callback = SweepCallback(context, total_trials)
            tuner = ray.tune.Tuner(
                _trainable(context, writer),
                param_space=param_space,
                tune_config=ray.tune.TuneConfig(  # the searcher and ASHA carry the objective themselves
                    search_alg=searcher,
                    scheduler=scheduler(spec),
                    num_samples=spec.num_samples,
                    reuse_actors=True,  # a finished trial's process runs the next trial: torch and timm stay imported
                ),
                run_config=_tune_run_config(spec, directory, callback),
            )
            results = tuner.fit()
        return finish_sweep(context, results, callback, directory)


@contextmanager
def _parent_run_ended_on_error(uri: str, parent_run_id: str) -> Iterator[None]:
    """Whatever fails while the sweep's parent run is open ends it FAILED, tagged with the error, before the error
    propagates (an interrupted sweep has already been marked KILLED by `_runs_killed_on_interrupt`)."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        reason = f"{type(error).__name__}: {error}"
        tags = {schema.TAG_ERROR: reason}
        best_effort("the sweep's failure", recording.finish_run, uri, parent_run_id, "FAILED", tags)
        raise


@contextmanager
def _runs_killed_on_interrupt(context: SweepContext) -> Iterator[None]:
    """A second Ctrl-C (which Tune does not catch) marks the parent run and its running trials KILLED, resumable:
    after the sweep's writer has written what reached it, so no late report reopens a trial's run."""
    try:
        yield
    except KeyboardInterrupt:
        best_effort(
            "the sweep's interruption",
            recording.kill_running_runs, context.tracking_uri, context.experiment_id, context.parent_run_id,
        )
        raise


def find_resumable(sweep: str) -> tuple[SweepContext, str]:
    """The context and Tune state directory of the sweep with id `sweep` (else the latest named `sweep`), read back
    from its MLflow parent run (`sweeps.engine.sweep_runs.resumable`).

    Raises `LookupError` when the MLflow store has no such sweep, its spec validates differently now, or Tune
    kept no state for it.
    """
    uri = store.tracking_uri()
    parent = queries.find_sweep_run(uri, sweep)
    if parent is None:
        raise LookupError(f"no sweep named {sweep!r} or with that id in {uri}")
    spec, directory = sweep_runs.resumable(uri, parent)
    if not ray.tune.Tuner.can_restore(directory):
        raise LookupError(f"sweep {sweep!r}: no Tune state to restore at {directory}")
    return SweepContext(spec, uri, parent.info.experiment_id, parent.info.run_id, f"{directory}/train"), directory


def resume_sweep(context: SweepContext, directory: str, *, force: bool = False) -> SweepResult:
    """Finish a sweep after its driver died: `Tuner.restore` runs only the unfinished trials again.

    Raises `SweepConflict` while the sweep's driver (or another of its name) is alive; `force` takes over from one
    that is gone though its heartbeat is still fresh (`sweeps.engine.driver`).
    """
    sweep_id = sweep_runs.sweep_id_of(directory)
    with driving(context.tracking_uri, context.spec.name, sweep_id, force=force):
        return _resume(context, directory)


def _resume(context: SweepContext, directory: str) -> SweepResult:
    store.RetryingMlflowClient(context.tracking_uri).update_run(context.parent_run_id, status="RUNNING")
    with _parent_run_ended_on_error(context.tracking_uri, context.parent_run_id):
        spec = context.spec
        with (
            _runs_killed_on_interrupt(context),
            sweep_writer(context.tracking_uri, context.experiment_id, context.parent_run_id, spec.name) as writer,
        ):
            tuner = ray.tune.Tuner.restore(
                directory, trainable=_trainable(context, writer), resume_unfinished=True, resume_errored=True
            )
            results = tuner.fit()
        return finish_sweep(context, results, SweepCallback.of_sweep(context.parent_run_id), directory)
