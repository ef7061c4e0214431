"""The search: a spec's grid and distributions as Tune's param space and search algorithm (grid and random through
Tune's `BasicVariantGenerator`, TPE and NSGA-II through Optuna, whose study lives beside the MLflow store), and the
objective's metrics and modes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import ray.tune
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from mixer_core import metrics as metric_names
from sweeps.engine.worker import FINAL_ERROR
from sweeps.spec import Distribution, SweepSpec, grid_choices


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


def tune_domain(distribution: Distribution) -> Any:
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


def optuna_distribution(distribution: Distribution) -> optuna.distributions.BaseDistribution:
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


def search_algorithm(
    spec: SweepSpec, study_storage: str, study_name: str, max_concurrent: int
) -> tuple[dict[str, Any], Any]:
    """Tune's param space and search algorithm for the spec's searcher. Keys are dotted config paths, or linked
    grid axes whose values are labels (`build_run_config` expands them)."""
    metrics, modes = objective_metrics(spec)
    if spec.searcher.startswith("optuna"):
        space = {key: optuna.distributions.CategoricalDistribution(choices) for key, choices in grid_choices(spec).items()}
        space.update({key: optuna_distribution(dist) for key, dist in spec.search.items()})
        sampler_class = optuna.samplers.NSGAIISampler if spec.searcher == "optuna-nsga2" else optuna.samplers.TPESampler
        optuna_search = PruningOptunaSearch(
            space=space,
            metric=metrics if len(metrics) > 1 else metrics[0],
            mode=modes if len(modes) > 1 else modes[0],
            sampler=sampler_class(seed=spec.seed),
            study_name=study_name,
            storage=optuna.storages.RDBStorage(study_storage),
        )
        return {}, ConcurrencyLimiter(optuna_search, max_concurrent=max_concurrent)
    param_space = {key: ray.tune.grid_search(values) for key, values in grid_choices(spec).items()}
    param_space.update({key: tune_domain(dist) for key, dist in spec.search.items()})
    return param_space, BasicVariantGenerator(random_state=spec.seed, max_concurrent=max_concurrent)


class PruningOptunaSearch(OptunaSearch):
    """Ray's `OptunaSearch`, except that a trial the scheduler stopped early is told to Optuna as PRUNED, and one
    that ended on a deterministic error (`sweeps.engine.worker.final_report`) as FAIL.

    Ray's tells a stopped trial COMPLETE with the value of its last rung, so TPE would rank an under-trained
    configuration as if it had finished; and it tells a failed trial's NaN objective as COMPLETE, which Optuna
    refuses, leaving the trial RUNNING in the study. PRUNED keeps the intermediate values (one per evaluation, the one it was stopped at
    included, which Tune does not pass to `on_trial_result`), and TPE compares pruned trials by the step they
    reached, like with like.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and FINAL_ERROR in result:  # ended on a deterministic error: FAIL (its NaN objective is no value)
            super().on_trial_complete(trial_id, None, error=True)
            return
        if error or not result or not metric_names.stopped_early(result) or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        optuna_trial = self._ot_trials[trial_id]
        if isinstance(self.metric, str) and self.metric in result:
            optuna_trial.report(result[self.metric], result[TRAINING_ITERATION])
        self._ot_study.tell(optuna_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def is_better(value: float, than: float, mode: str) -> bool:
    """Whether objective `value` beats `than` in `mode` (`max` or `min`)."""
    return value > than if mode == "max" else value < than
