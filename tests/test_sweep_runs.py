"""Runs of the same sweep stay apart: each has an id and its own Tune folder, `resume` and `report` reach it by
id, a second run is refused while one is running, and `resume` restores only from the folder the sweep's own
spec names, only when that spec still validates as it did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixer_cli import main
from sweeps.engine.run import find_resumable
from sweeps.spec import load_spec, spec_hash
from sweeps.tracking import queries, recording


def run_cli(capsys, *argv: str) -> tuple[int, dict | list]:
    status = main([*argv, "--json"])
    return status, json.loads(capsys.readouterr().out)


def test_two_runs_of_one_sweep_keep_their_own_state_and_are_reached_by_id(ray_address, mlflow_store, tiny_spec,
                                                                          capsys):
    spec = tiny_spec("twice", base={"train": {"epochs": 1}})
    status, first = run_cli(capsys, "sweep", "run", str(spec), "--address", ray_address)
    assert status == 0
    status, second = run_cli(capsys, "sweep", "run", str(spec), "--address", ray_address)
    assert status == 0

    assert first["experiment_dir"] != second["experiment_dir"]
    assert Path(first["experiment_dir"]).parent == Path(second["experiment_dir"]).parent
    status, listed = run_cli(capsys, "sweep", "ls")
    ids = {sweep["run_id"]: sweep["id"] for sweep in listed}
    assert set(ids) == {first["parent_run_id"], second["parent_run_id"]}
    for result in (first, second):
        sweep_id = ids[result["parent_run_id"]]
        assert result["experiment_dir"].endswith(f"/twice-{sweep_id}")
        assert queries.find_sweep_run(mlflow_store, sweep_id).info.run_id == result["parent_run_id"]  # report
        context, directory = find_resumable(sweep_id)  # resume
        assert (context.parent_run_id, directory) == (result["parent_run_id"], result["experiment_dir"])
    assert queries.find_sweep_run(mlflow_store, "twice").info.run_id == second["parent_run_id"]  # the name: newest


def start_parent_run(uri: str, spec_path: Path, sweep_id: str, **recorded_changes) -> str:
    """A sweep's parent run as `mixer sweep run` opens it (and leaves RUNNING), with `recorded_changes` applied
    to the spec recorded as validated; returns the run id."""
    spec = load_spec(spec_path)
    resolved = {**spec.model_dump(mode="json", exclude_unset=True), "storage_path": spec.resolved_storage_path()}
    validated = {**spec.model_dump(mode="json"), **recorded_changes}
    digest = "0" * 16 if recorded_changes else spec_hash(spec)
    return recording.start_sweep_run(uri, spec.experiment, spec.name, sweep_id, digest, spec_path, resolved,
                                    validated, "/anywhere/the/tag/says")


def test_a_second_run_of_a_running_sweep_is_refused_naming_the_running_one(ray_address, mlflow_store, tiny_spec,
                                                                           capsys):
    spec = tiny_spec("busy")
    running = start_parent_run(mlflow_store, spec, "0123abcd")

    status = main(["sweep", "run", str(spec), "--address", ray_address])

    assert status == 2
    message = capsys.readouterr().err
    assert "sweep busy is already running (id 0123abcd" in message and running in message
    assert len(queries.list_sweeps(mlflow_store)) == 1  # nothing was started


def test_resume_restores_from_the_specs_own_folder_not_from_a_tag(mlflow_store, tiny_spec, tmp_path):
    spec = tiny_spec("tagged")
    start_parent_run(mlflow_store, spec, "89abcdef")
    with pytest.raises(LookupError, match=f"no Tune state to restore at {tmp_path}/ray_results/tagged-89abcdef$"):
        find_resumable("89abcdef")


def test_resume_refuses_a_spec_that_validates_differently_now_and_says_what_differs(mlflow_store, tiny_spec):
    spec = tiny_spec("changed")
    start_parent_run(mlflow_store, spec, "456789ab", seed=7, max_failures=2)
    with pytest.raises(LookupError, match=r"max_failures: 2 -> 3; seed: 7 -> 0"):
        find_resumable("changed")
