"""The driver's view of a running sweep: progress lines on stderr (trials started and ended, the best so far), and
each trial's MLflow run closed as it ends: FINISHED, FINISHED with `mixer.stopped_early` when the scheduler stopped
it, FAILED, or KILLED when the sweep was interrupted (Ctrl-C, SIGTERM) and is left for `mixer sweep resume`.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import ray.tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from mixer_core import metrics as metric_names
from sweeps.engine.search import is_better, objective_metrics
from sweeps.engine.trial import SweepContext
from sweeps.engine.worker import FINAL_ERROR
from sweeps.tracking import queries, recording, schema
from sweeps.tracking.store import best_effort

# Tune's status of trials it has not started (or has paused); left so at the end, the sweep was interrupted.
_NOT_STARTED = ("PENDING", "PAUSED")


class SweepCallback(ray.tune.Callback):
    """Driver-side: progress on stderr (trials running/finished, best so far) and closing trials' MLflow runs.

    Tune pickles its callbacks into the experiment state, so a restored sweep gets this one back; Tune keeps no
    public handle on the unpickled callback, so `setup` registers it under its sweep's parent run id
    (`SweepCallback.of_sweep`).
    """

    _running_sweeps: dict[str, SweepCallback] = {}  # parent run id -> the callback of that sweep in this driver

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
        SweepCallback._running_sweeps[self.context.parent_run_id] = self

    @classmethod
    def of_sweep(cls, parent_run_id: str) -> SweepCallback:
        """The callback Tune set up for the sweep whose parent run is `parent_run_id` (a restored one included)."""
        return cls._running_sweeps[parent_run_id]

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
        if self.best is None or is_better(value, self.best[0], self.mode):
            self.best = (float(value), trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if FINAL_ERROR in result:
            self._close(trial, "FAILED", "failed", {schema.TAG_ERROR: result[FINAL_ERROR]})
            print(f"  {trial.trial_id}: {result[FINAL_ERROR]} (not retried)", file=sys.stderr, flush=True)
        elif metric_names.stopped_early(result):
            step = int(result[metric_names.STEP])
            self._close(trial, "FINISHED", f"stopped early at step {step}", schema.stopped_early_tags(step))
        else:
            self._close(trial, "FINISHED", "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED", "failed")
        # Workers' logs stay off the driver's terminal (`init_ray`), so the failure is shown here, in one line,
        # with the file that holds the whole traceback.
        print(f"  {trial.trial_id}: {error_summary(trial)} (traceback: {trial.error_file})", file=sys.stderr, flush=True)

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
        all_tags = {**({schema.TAG_CHECKPOINT: checkpoint} if checkpoint else {}), **(tags or {})}
        best_effort(f"trial {trial.trial_id} {status}", self._close_run, trial.trial_id, status, all_tags)
        value = result.get(self.metric)
        shown = "-" if value is None else f"{value:.4g}"
        self._say(f"trial {trial.trial_id} {outcome} {self.metric}={shown}")

    def _close_run(self, trial_id: str, status: str, tags: dict[str, str]) -> None:
        context = self.context
        run = queries.find_trial_run(context.tracking_uri, context.experiment_id, context.parent_run_id, trial_id)
        if run is not None:
            recording.finish_run(context.tracking_uri, run.info.run_id, status, tags)


def error_summary(trial) -> str:
    """The last line of a failed trial's traceback: the exception and its message."""
    path = trial.error_file
    text = Path(path).read_text() if path and Path(path).is_file() else str(trial.get_error() or "")
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in params.items())
