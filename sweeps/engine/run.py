"""The sweep engine: Ray Tune chooses trials (grid, random or Optuna; FIFO or ASHA), each trial trains in its own
reused Tune process (one worker) or through a Ray Train `TorchTrainer` (several workers; `sweeps.trial`), and
MLflow records a run per trial. The driver-side `SweepCallback` prints progress and closes the trials' MLflow
runs: FINISHED, FINISHED with `mixer.stopped_early` when the scheduler stopped it, FAILED, or KILLED when the
sweep was interrupted (Ctrl-C, SIGTERM) and is left for `mixer sweep resume`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
import ray.tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from mixer_core import metrics as metric_names
from sweeps import sweep_runs, tracking
from sweeps.mlflow_retry import best_effort
from sweeps.mlflow_writer import start_writer
from sweeps.run_artifacts import log_checkpoint
from sweeps.spec import Distribution, SweepSpec, grid_choices, spec_hash, validate_spec
from sweeps.trial import SweepContext, run_trial, runs_in_trial_process, trial_resources
from sweeps.worker import FINAL_ERROR

# Tune's status of trials it has not started (or has paused); left so at the end, the sweep was interrupted.
_NOT_STARTED = ("PENDING", "PAUSED")


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

    @property
    def mlflow_ui(self) -> str:
        return tracking.ui_hint(self.tracking_uri, self.experiment_id)


def objective_metrics(spec: SweepSpec) -> tuple[list[str], list[str]]:
    """The objective's metric names and modes (`max`/`min`), one or two of each."""
    return [objective.metric for objective in spec.objective], [objective.mode for objective in spec.objective]


def optuna_storage_url(spec: SweepSpec, tracking_uri: str) -> str:
    """Where the Optuna study lives: the spec's `optuna_storage` (any SQLAlchemy URL), else `optuna.db` beside a
    SQLite `mlflow.db`, else `~/.mixer/optuna.db` (created). Never the working directory, which under
    `ray job submit --working-dir` is a temporary copy that Ray deletes."""
    if spec.optuna_storage:
        return spec.optuna_storage
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).parent / 'optuna.db'}"
    directory = Path.home() / ".mixer"
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'optuna.db'}"


def _tune_domain(distribution: Distribution) -> Any:
    """A spec search distribution as a Tune search domain (random searcher); bounds are inclusive."""
    if distribution.type == "categorical":
        return ray.tune.choice(list(distribution.choices))
    if distribution.type == "int":
        low, high = int(distribution.low), int(distribution.high)
        if distribution.log:
            return ray.tune.lograndint(low, high + 1)  # Tune's randint upper bounds are exclusive
        return ray.tune.qrandint(low, high, int(distribution.step or 1))  # qrandint's is inclusive
    if distribution.log:
        return ray.tune.loguniform(distribution.low, distribution.high)
    if distribution.step:
        return ray.tune.quniform(distribution.low, distribution.high, distribution.step)
    return ray.tune.uniform(distribution.low, distribution.high)


def _optuna_distribution(distribution: Distribution) -> optuna.distributions.BaseDistribution:
    """A spec search distribution as an Optuna distribution."""
    if distribution.type == "categorical":
        return optuna.distributions.CategoricalDistribution(list(distribution.choices))
    if distribution.type == "int":
        step = int(distribution.step or 1)
        return optuna.distributions.IntDistribution(
            int(distribution.low), int(distribution.high), log=distribution.log, step=step
        )
    return optuna.distributions.FloatDistribution(
        distribution.low, distribution.high, log=distribution.log, step=distribution.step
    )


def _search(
    spec: SweepSpec, study_storage: str, study_name: str, max_concurrent: int
) -> tuple[dict[str, Any], Any]:
    """Tune's param space and search algorithm for the spec's searcher. Keys are dotted config paths, or linked
    grid axes whose values are labels (`build_run_config` expands them)."""
    metrics, modes = objective_metrics(spec)
    if spec.searcher.startswith("optuna"):
        space = {key: optuna.distributions.CategoricalDistribution(choices) for key, choices in grid_choices(spec).items()}
        space.update({key: _optuna_distribution(dist) for key, dist in spec.search.items()})
        sampler_class = optuna.samplers.NSGAIISampler if spec.searcher == "optuna-nsga2" else optuna.samplers.TPESampler
        optuna_search = _PruningOptunaSearch(
            space=space,
            metric=metrics if len(metrics) > 1 else metrics[0],
            mode=modes if len(modes) > 1 else modes[0],
            sampler=sampler_class(seed=spec.seed),
            study_name=study_name,
            storage=optuna.storages.RDBStorage(study_storage),
        )
        return {}, ConcurrencyLimiter(optuna_search, max_concurrent=max_concurrent)
    param_space = {key: ray.tune.grid_search(values) for key, values in grid_choices(spec).items()}
    param_space.update({key: _tune_domain(dist) for key, dist in spec.search.items()})
    return param_space, BasicVariantGenerator(random_state=spec.seed, max_concurrent=max_concurrent)


class _PruningOptunaSearch(OptunaSearch):
    """Ray's `OptunaSearch`, except that a trial the scheduler stopped early is told to Optuna as PRUNED.

    Ray's tells it COMPLETE with the value of its last rung, so TPE would rank an under-trained configuration as
    if it had finished. PRUNED keeps the intermediate values (one per evaluation, the one it was stopped at
    included, which Tune does not pass to `on_trial_result`), and TPE compares pruned trials by the step they
    reached, like with like.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        error = error or bool(result and FINAL_ERROR in result)  # ended on an error a retry would repeat
        if error or not result or not metric_names.stopped_early(result) or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        optuna_trial = self._ot_trials[trial_id]
        if isinstance(self.metric, str) and self.metric in result:
            optuna_trial.report(result[self.metric], result[TRAINING_ITERATION])
        self._ot_study.tell(optuna_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def _scheduler(spec: SweepSpec):
    """FIFO, or ASHA stopping trials on the (single) objective at the spec's rungs."""
    scheduler = spec.scheduler
    if scheduler.type != "asha":
        return FIFOScheduler()
    metrics, modes = objective_metrics(spec)
    return ASHAScheduler(
        time_attr=scheduler.time_attr,
        metric=metrics[0],
        mode=modes[0],
        max_t=scheduler.max_t,
        grace_period=scheduler.grace_period,
        reduction_factor=scheduler.reduction_factor,
    )


class SweepCallback(ray.tune.Callback):
    """Driver-side: progress on stderr (trials running/finished, best so far) and closing trials' MLflow runs.

    Tune pickles its callbacks into the experiment state, so a restored sweep gets this one back.
    """

    def __init__(self, context: SweepContext, total_trials: int | None):
        self.context = context
        self.metric, self.mode = (values[0] for values in objective_metrics(context.spec))
        self.total_trials = total_trials
        self.running: set[str] = set()
        self.finished: set[str] = set()
        self.ended_at: dict[str, float] = {}
        self.interrupted: list[str] = []  # trials left unfinished when the sweep stopped
        self.sweep_cut_short = False  # Ctrl-C or SIGTERM ended the sweep before all its trials
        self.best: tuple[float, str] | None = None
        self.started_at = time.time()

    def setup(self, **info):
        # A restored sweep unpickles this callback as it was when the driver stopped: start its run afresh.
        self.running, self.interrupted, self.sweep_cut_short, self.started_at = set(), [], False, time.time()

    def _say(self, message: str) -> None:
        elapsed = time.time() - self.started_at
        total = "?" if self.total_trials is None else self.total_trials
        best = "-" if self.best is None else f"{self.best[0]:.4g} ({self.best[1]})"
        print(
            f"[{elapsed:6.0f}s] {message} | running {len(self.running)}, finished {len(self.finished)}/{total},"
            f" best {self.metric} {best}",
            file=sys.stderr,
            flush=True,
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._say(f"trial {trial.trial_id} started {_format_params(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None or not math.isfinite(value):  # NaN: the last report of a trial that failed
            return
        if self.best is None or _better(value, self.best[0], self.mode):
            self.best = (float(value), trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if FINAL_ERROR in result:
            self._close(trial, "FAILED", "failed", {tracking.TAG_ERROR: result[FINAL_ERROR]})
            print(f"  {trial.trial_id}: {result[FINAL_ERROR]} (not retried)", file=sys.stderr, flush=True)
        elif metric_names.stopped_early(result):
            step = int(result[metric_names.STEP])
            self._close(trial, "FINISHED", f"stopped early at step {step}", tracking.stopped_early_tags(step))
        else:
            self._close(trial, "FINISHED", "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED", "failed")
        # Workers' logs stay off the driver's terminal (`init_ray`), so the failure is shown here, in one line,
        # with the file that holds the whole traceback.
        print(f"  {trial.trial_id}: {_error_summary(trial)} (traceback: {trial.error_file})", file=sys.stderr, flush=True)

    def on_experiment_end(self, trials, **info):
        # Tune ends its loop early only when interrupted (it then marks the running trials TERMINATED while it
        # stops them): those and the ones it had not started are left for `mixer sweep resume`.
        for trial in trials:
            if trial.trial_id in self.running:
                self.interrupted.append(trial.trial_id)
                self._close(trial, "KILLED", "interrupted")
            elif trial.status in _NOT_STARTED:
                self.interrupted.append(trial.trial_id)
        self.sweep_cut_short = bool(self.interrupted) or (
            self.total_trials is not None and len(trials) < self.total_trials
        )

    def _close(self, trial, status: str, outcome: str, tags: dict[str, str] | None = None) -> None:
        self.running.discard(trial.trial_id)
        if status != "KILLED":  # an interrupted trial runs again on resume
            self.finished.add(trial.trial_id)
            self.ended_at[trial.trial_id] = time.time()
        result = trial.last_result or {}
        # Ray Train's runs name their checkpoint in the result; Tune's own trials hold it themselves.
        checkpoint = result.get(CHECKPOINT_PATH_KEY) or (trial.checkpoint.path if trial.checkpoint else None)
        all_tags = {**({tracking.TAG_CHECKPOINT: checkpoint} if checkpoint else {}), **(tags or {})}
        best_effort(f"trial {trial.trial_id} {status}", self._close_run, trial.trial_id, status, all_tags)
        value = result.get(self.metric)
        shown = "-" if value is None else f"{value:.4g}"
        self._say(f"trial {trial.trial_id} {outcome} {self.metric}={shown}")

    def _close_run(self, trial_id: str, status: str, tags: dict[str, str]) -> None:
        context = self.context
        run = tracking.find_trial_run(context.tracking_uri, context.experiment_id, context.parent_run_id, trial_id)
        if run is not None:
            tracking.finish_run(context.tracking_uri, run.info.run_id, status, tags)


def _error_summary(trial) -> str:
    """The last line of a failed trial's traceback: the exception and its message."""
    path = trial.error_file
    text = Path(path).read_text() if path and Path(path).is_file() else str(trial.get_error() or "")
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _summary_status(trial_id: str, result, callback: SweepCallback) -> str:
    """A trial's state in the results table: Tune's ERROR and TERMINATED, or STOPPED (early) or INTERRUPTED."""
    if result.error or FINAL_ERROR in result.metrics:  # a trial that ended itself on an error a retry would repeat
        return "ERROR"
    if trial_id in callback.interrupted:
        return "INTERRUPTED"
    return "STOPPED" if metric_names.stopped_early(result.metrics) else "TERMINATED"


def _better(value: float, than: float, mode: str) -> bool:
    return value > than if mode == "max" else value < than


def _format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in params.items())


def _max_concurrent_trials(spec: SweepSpec) -> int:
    """The spec's limit, else as many trials as the cluster's CPUs (GPUs) hold at once (trials hold 0 CPU)."""
    resources = spec.resources
    if resources.max_concurrent_trials:
        return resources.max_concurrent_trials
    available = ray.cluster_resources()
    fits = available.get("CPU", 1) // max(resources.workers_per_trial * resources.cpus_per_worker, 1e-9)
    if resources.use_gpu and resources.gpus_per_worker:
        fits = min(fits, available.get("GPU", 0) // (resources.workers_per_trial * resources.gpus_per_worker))
    return max(int(fits), 1)


def _trainable(context: SweepContext, writer: ray.actor.ActorHandle):
    trainable = ray.tune.with_parameters(run_trial, context=context, writer=writer)
    return ray.tune.with_resources(trainable, trial_resources(context.spec))


def _tune_run_config(spec: SweepSpec, directory: str, callback: SweepCallback) -> ray.tune.RunConfig:
    """Where Tune keeps the sweep, and how it retries and checkpoints the trials that train in its processes.

    Trials of several workers leave both to Ray Train (`sweeps.trial`), so Tune neither retries them a second
    time nor keeps checkpoints of its own for them.
    """
    in_trial_process = runs_in_trial_process(spec)
    storage_path, name = directory.rsplit("/", 1)  # `sweeps.sweep_runs.experiment_dir`
    return ray.tune.RunConfig(
        name=name,
        storage_path=storage_path,
        callbacks=[callback, CSVLoggerCallback(), JsonLoggerCallback()],  # not TensorBoard's (`sweeps.ray_session`)
        verbose=0,
        failure_config=ray.tune.FailureConfig(max_failures=spec.max_failures if in_trial_process else 0),
        checkpoint_config=ray.tune.CheckpointConfig(
            num_to_keep=spec.checkpoint.num_to_keep,
            checkpoint_score_attribute=spec.checkpoint.score_attribute if in_trial_process else None,
            checkpoint_score_order=spec.checkpoint.score_order,
        ),
    )


def run_sweep(spec: SweepSpec, spec_path: Path, *, total_trials: int | None = None) -> SweepResult:
    """Run a whole sweep on the connected Ray cluster (call `sweeps.ray_session.init_ray` first); log it to MLflow.

    Raises `SweepConflict` while another sweep of the same name is running.
    """
    uri = tracking.tracking_uri()
    sweep_runs.refuse_if_running(uri, spec.name)
    sweep_id = sweep_runs.new_sweep_id()
    directory = sweep_runs.experiment_dir(spec, sweep_id)
    study_storage = optuna_storage_url(spec, uri)
    # What was written and overridden (defaults stay implicit), with the storages made absolute for `resume`, and
    # what that validates to now (`resume` checks it still does).
    resolved = {**spec.model_dump(mode="json", exclude_unset=True), "storage_path": spec.resolved_storage_path()}
    if spec.searcher.startswith("optuna"):
        resolved["optuna_storage"] = study_storage
    validated = validate_spec(resolved, str(spec_path))
    parent_run_id = tracking.start_sweep_run(
        uri, spec.experiment, spec.name, sweep_id, spec_hash(validated), spec_path, resolved,
        validated.model_dump(mode="json"), directory,
    )
    with _parent_run_ended_on_error(uri, parent_run_id):
        experiment_id = tracking.ensure_experiment(tracking.RetryingMlflowClient(uri), spec.experiment)
        context = SweepContext(spec, uri, experiment_id, parent_run_id, f"{directory}/train")
        writer = start_writer(uri, experiment_id, parent_run_id, spec.name)  # imports MLflow while Tune starts
        study_name = f"{spec.name}-{parent_run_id[:8]}"
        if spec.searcher.startswith("optuna"):
            print(f"Optuna study {study_name}: {study_storage}", file=sys.stderr, flush=True)
        param_space, searcher = _search(spec, study_storage, study_name, _max_concurrent_trials(spec))
        callback = SweepCallback(context, total_trials)
        tuner = ray.tune.Tuner(
            _trainable(context, writer),
            param_space=param_space,
            tune_config=ray.tune.TuneConfig(  # the searcher and ASHA carry the objective themselves
                search_alg=searcher,
                scheduler=_scheduler(spec),
                num_samples=spec.num_samples,
                reuse_actors=True,  # a finished trial's process runs the next trial: torch and timm stay imported
            ),
            run_config=_tune_run_config(spec, directory, callback),
        )
        return _finish(context, _fit(tuner, context, writer), callback, directory)


@contextmanager
def _parent_run_ended_on_error(uri: str, parent_run_id: str) -> Iterator[None]:
    """Whatever fails while the sweep's parent run is open ends it FAILED, tagged with the error, before the error
    propagates (an interrupted sweep has already been marked KILLED by `_fit`)."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        reason = f"{type(error).__name__}: {error}"
        tags = {tracking.TAG_ERROR: reason}
        best_effort("the sweep's failure", tracking.finish_run, uri, parent_run_id, "FAILED", tags)
        raise


def _fit(tuner: ray.tune.Tuner, context: SweepContext, writer: ray.actor.ActorHandle):
    """`tuner.fit()`, then every trial report written to MLflow. A second Ctrl-C (which Tune does not catch) marks
    the parent run and its running trials KILLED, resumable."""
    try:
        results = tuner.fit()
        ray.get(writer.drain.remote())  # what stopped trials sent after their last evaluation
        return results
    except KeyboardInterrupt:
        best_effort(
            "the sweep's interruption",
            tracking.kill_running_runs, context.tracking_uri, context.experiment_id, context.parent_run_id,
        )
        raise


def find_resumable(sweep: str) -> tuple[SweepContext, str]:
    """The context and Tune state directory of the sweep with id `sweep` (else the latest named `sweep`), read back
    from its MLflow parent run (`sweeps.sweep_runs.resumable`).

    Raises `LookupError` when the MLflow store has no such sweep, its spec validates differently now, or Tune
    kept no state for it.
    """
    uri = tracking.tracking_uri()
    parent = tracking.find_sweep_run(uri, sweep)
    if parent is None:
        raise LookupError(f"no sweep named {sweep!r} or with that id in {uri}")
    spec, directory = sweep_runs.resumable(uri, parent)
    if not ray.tune.Tuner.can_restore(directory):
        raise LookupError(f"sweep {sweep!r}: no Tune state to restore at {directory}")
    return SweepContext(spec, uri, parent.info.experiment_id, parent.info.run_id, f"{directory}/train"), directory


def resume_sweep(context: SweepContext, directory: str) -> SweepResult:
    """Finish a sweep after its driver died: `Tuner.restore` runs only the unfinished trials again."""
    tracking.RetryingMlflowClient(context.tracking_uri).update_run(context.parent_run_id, status="RUNNING")
    with _parent_run_ended_on_error(context.tracking_uri, context.parent_run_id):
        spec = context.spec
        writer = start_writer(context.tracking_uri, context.experiment_id, context.parent_run_id, spec.name)
        tuner = ray.tune.Tuner.restore(
            directory, trainable=_trainable(context, writer), resume_unfinished=True, resume_errored=True
        )
        return _finish(context, _fit(tuner, context, writer), _restored_callback(tuner), directory)


def _restored_callback(tuner: ray.tune.Tuner) -> SweepCallback:
    """The `SweepCallback` Tune unpickled from the sweep's state (its progress counts start where they were)."""
    callbacks = tuner._local_tuner.get_run_config().callbacks  # Tune keeps no public handle on restored callbacks
    return next(callback for callback in callbacks if isinstance(callback, SweepCallback))


def _finish(context: SweepContext, results, callback: SweepCallback, directory: str) -> SweepResult:
    """Summarise every trial, put the best one's metrics, params and final weights on the parent run, and close
    it: KILLED when interrupted, FAILED when a trial failed, else FINISHED."""
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
        status = _summary_status(trial_id, result, callback)
        summary.trials.append(
            TrialSummary(trial_id, status, dict(result.config), reported, callback.ended_at.get(trial_id))
        )
        value = reported.get(metrics[0]) if status != "ERROR" else None
        if value is not None and (best_value is None or _better(value, best_value, modes[0])):
            best_value, summary.best_trial_id = value, trial_id
    failed = any(trial.status == "ERROR" for trial in summary.trials)
    best_run = tracking.record_sweep_outcome(
        context.tracking_uri,
        context.experiment_id,
        context.parent_run_id,
        summary.best_trial_id,
        complete=not (failed or summary.interrupted),
    )
    checkpoint = best_run.data.tags.get(tracking.TAG_CHECKPOINT) if best_run else None
    if checkpoint:
        summary.best_checkpoint = log_checkpoint(context.tracking_uri, context.parent_run_id, checkpoint)
    status = "KILLED" if summary.interrupted else "FAILED" if failed else "FINISHED"
    tracking.finish_run(context.tracking_uri, context.parent_run_id, status)
    return summary
