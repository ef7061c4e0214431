"""The sweep's one MLflow writer: a Ray actor that writes every trial's run, so trial processes never import MLflow.

Rank 0 of each trial sends its reports here (`TrialLog`). MLflow takes about 1.5 s to import and more to open its
store; paid inside a trial's process, that time competes with the first trial's training for the interpreter.
In its own process, started when the sweep starts, it overlaps with the first trial importing torch, and later
trials hand over their runs in milliseconds. One writer per sweep also means one connection to a SQLite store,
whatever the number of concurrent trials, and it runs on the driver's node, where a local store lives.

Calls from one trial's process run in the order it sent them. Evaluation reports (what Tune, ASHA and the
driver see) wait until they are written, and every earlier report with them: nothing the driver knows of a
trial, and no step before a checkpoint, is missing from MLflow. Step metrics between evaluations are sent
without waiting. A retried trial continues its run (`sweeps.tracking.recording.TrialRun`), so no step is logged twice.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

WRITER_NAME_PREFIX = "mlflow-writer-"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class MlflowWriter:
    """Writes the trial runs of one sweep (experiment `experiment_id`, parent run `parent_run_id`)."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, sweep_name: str):
        from sweeps.tracking import recording  # this process's one import of MLflow

        self.recording = recording
        self.where = (uri, experiment_id, parent_run_id, sweep_name)
        self.runs: dict[str, Any] = {}  # trial id -> sweeps.tracking.recording.TrialRun, opened on first use

    def _run(self, trial_id: str, run_config: dict[str, Any]):
        if trial_id not in self.runs:
            from mixer_core.config_io import parse_config
            from sweeps.tracking.schema import flatten, trial_tags

            config = parse_config(run_config, source=f"trial {trial_id}")
            self.runs[trial_id] = self.recording.TrialRun(
                *self.where, trial_id, flatten(config.model_dump()), trial_tags(config)
            )
        return self.runs[trial_id]

    def open(self, trial_id: str, run_config: dict[str, Any]) -> None:
        """Create the trial's run, or continue it (a retry, a resumed sweep)."""
        from sweeps.tracking.store import best_effort

        best_effort(f"trial {trial_id}'s run", self._run, trial_id, run_config)

    def log(self, trial_id: str, run_config: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """Log one report of the trial at `step`."""
        from sweeps.tracking.store import best_effort

        best_effort(f"trial {trial_id} step {step}", lambda: self._run(trial_id, run_config).log(metrics, step=step))

    def drain(self) -> None:
        """Returns once every call that reached the writer before it is written."""


def writer_name(parent_run_id: str) -> str:
    """A Ray actor name for a writer of the sweep whose MLflow parent run is `parent_run_id`, new each time: the
    name of a writer just ended may not be released yet when the same process resumes that sweep."""
    return f"{WRITER_NAME_PREFIX}{parent_run_id}-{uuid.uuid4().hex[:8]}"


@contextmanager
def sweep_writer(uri: str, experiment_id: str, parent_run_id: str, sweep_name: str) -> Iterator[ray.actor.ActorHandle]:
    """The sweep's writer, on this (the driver's) node, for the life of the block. Leaving the block, the reports that
    reached it are written and its process ends, whatever ended the sweep: a process that runs sweep after sweep (a
    notebook, the test suite) keeps no finished sweep's writer, nor the memory of its MLflow."""
    node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    writer = MlflowWriter.options(name=writer_name(parent_run_id), scheduling_strategy=node).remote(
        uri, experiment_id, parent_run_id, sweep_name
    )
    try:
        yield writer
    finally:
        try:
            ray.get(writer.drain.remote())
        except ray.exceptions.RayError as error:
            print(f"MLflow: the last reports of sweep {sweep_name} may be missing: {error}", file=sys.stderr, flush=True)
        finally:
            ray.kill(writer)


class TrialLog:
    """Rank 0's side: sends the trial's reports to the sweep's writer, waiting on evaluation reports."""

    def __init__(self, writer: ray.actor.ActorHandle, trial_id: str, run_config: dict[str, Any]):
        self.writer, self.trial = writer, (trial_id, run_config)
        self.sent = writer.open.remote(*self.trial)  # the run exists before anything in training can fail

    def log(self, metrics: dict[str, float], step: int, wait: bool) -> None:
        self.sent = self.writer.log.remote(*self.trial, metrics, step)
        if wait:
            self.written()

    def written(self) -> None:
        """Waits until every report sent so far is written (calls from one process run in order)."""
        ray.get(self.sent)
