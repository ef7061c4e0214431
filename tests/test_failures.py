"""Cluster time is never wasted, without Ray: which errors a retry can cure, what `mixer sweep validate` refuses
before compute, an MLflow store that does not answer refused in seconds, and one driver per sweep name."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray.exceptions
import torch.distributed
import yaml
from mlflow.tracking import MlflowClient
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError  # private, as the errors it raises

from mixer_cli import main
from sweeps.engine.driver import STALE_SECONDS, driving
from sweeps.engine.failures import is_infrastructure
from sweeps.engine.sweep_runs import SweepConflict
from sweeps.tracking import schema

MIXER = str(Path(sys.executable).with_name("mixer"))


@pytest.mark.parametrize("error", [
    ConnectionResetError("peer reset"),
    OSError(errno.ESTALE, "stale NFS file handle"),
    OSError(errno.ETIMEDOUT, "timed out"),
    TimeoutError("no answer"),
    ray.exceptions.NodeDiedError("node lost"),
    ray.exceptions.RayActorError(preempted=True),
    torch.distributed.DistNetworkError("rank 1 went away"),
    # what Ray Train reports of a DDP worker whose process was killed
    WorkerHealthCheckFailedError("A worker health check failed.", ray.exceptions.ActorDiedError()),
], ids=lambda error: type(error).__name__)
def test_infrastructure_failures_are_retried(error):
    assert is_infrastructure(error)


@pytest.mark.parametrize("error", [
    ValueError("data.batch_size 64 is not divisible by the 3 ranks"),
    TypeError("unsupported operand"),
    FileNotFoundError(errno.ENOENT, "no such file"),
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
    torch.OutOfMemoryError("CUDA out of memory"),
    KeyError("head.weight"),
], ids=lambda error: type(error).__name__ + str(getattr(error, "errno", "") or ""))
def test_deterministic_errors_are_not(error):
    assert not is_infrastructure(error)


def write_spec(tmp_path: Path, **fields) -> Path:
    spec = {"name": "pre", "base": {"data": {"name": "digits", "batch_size": 64}}, **fields}
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("fields, message", [
    ({"resources": {"workers_per_trial": 3}},
     "base.data.batch_size: 64 does not split evenly between resources.workers_per_trial=3 workers"),
    ({"grid": {"data.batch_size": [60, 64]}, "resources": {"workers_per_trial": 3}},
     "grid.data.batch_size[1]: 64 does not split evenly"),
    ({"grid": {"recipe": [{"model.timm_model": "resnet_nope", "label": "nope"}]}},
     "grid.recipe[0].model.timm_model: timm has no model 'resnet_nope'"),
])
def test_validate_refuses_what_would_fail_after_compute(tmp_path, capsys, monkeypatch, fields, message):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "validate", str(write_spec(tmp_path, **fields))]) == 2
    assert message in capsys.readouterr().err


MISSING_FILES = [
    ({"base": {"data": {"name": "imagefolder", "path": "no/such/folder"}}},
     "base.data.path: no such file or folder: no/such/folder"),
    ({"grid": {"train.init_from": ["no/such/checkpoint"]}}, "grid.train.init_from[0]: no such checkpoint"),
]


@pytest.mark.parametrize("fields, message", MISSING_FILES)
def test_missing_files_are_refused_where_trials_read_them(tmp_path, capsys, monkeypatch, mlflow_store, fields,
                                                          message):
    spec = str(write_spec(tmp_path, **fields))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["sweep", "run", spec]) == 2  # Ray would start here: the trials read this machine's files
    assert message in capsys.readouterr().err
    # A spec bound for a cluster names the nodes' paths: away from them, validate warns.
    assert main(["sweep", "validate", spec]) == 0
    assert f"warning: {spec}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["sweep", "ls"], ["sweep", "resume", "somesweep"], ["sweep", "run", "SPEC"], ["report", "somesweep"],
    ["predict", "somesweep", "--examples", "1e6"],
])
def test_an_unreachable_store_is_refused_in_seconds_before_ray_starts(tmp_path, command):
    refused = "http://127.0.0.1:9"  # the discard port: nothing listens there
    command = [str(write_spec(tmp_path)) if word == "SPEC" else word for word in command]
    started = time.monotonic()
    done = subprocess.run([MIXER, *command], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": refused, "RAY_ADDRESS": ""})
    seconds = time.monotonic() - started
    lines = [line for line in done.stderr.splitlines() if not line.startswith("[mixer report]")]
    assert done.returncode == 2, done.stderr
    assert seconds <= 10
    assert lines == [f"mixer {' '.join(command[:2 if command[0] == 'sweep' else 1])}: MLflow store {refused} cannot"
                     " be reached (connection refused); start it, or point MLFLOW_TRACKING_URI at one that runs"]
    assert not (tmp_path / "mlflow.db").exists()


def lock_of(uri: str, name: str):
    return MlflowClient(uri).get_experiment_by_name(schema.DRIVER_LOCK_PREFIX + name)


def plant_lock(uri: str, name: str, host: str, pid: int, heartbeat_age: float) -> None:
    """The lock a driver left behind: on `host`, process `pid`, last heartbeat `heartbeat_age` seconds ago."""
    MlflowClient(uri).create_experiment(schema.DRIVER_LOCK_PREFIX + name, tags={
        schema.TAG_DRIVER_HOST: host, schema.TAG_DRIVER_PID: str(pid), schema.TAG_SWEEP_ID: "0badc0de",
        schema.TAG_DRIVER_HEARTBEAT: str(time.time() - heartbeat_age)})


def test_a_live_driver_holds_its_sweep_name_even_against_force(mlflow_store):
    with driving(mlflow_store, "held", "11111111"):
        for force in (False, True):
            with pytest.raises(SweepConflict, match=r"sweep held has a live driver \(sweep id 11111111, driver pid"):
                with driving(mlflow_store, "held", "22222222", force=force):
                    pass
    assert lock_of(mlflow_store, "held") is None  # released: the name is free again
    with driving(mlflow_store, "held", "33333333"):
        assert lock_of(mlflow_store, "held").tags[schema.TAG_SWEEP_ID] == "33333333"


def test_a_killed_drivers_lock_is_taken_over(mlflow_store):
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id on this host that no longer runs
    plant_lock(mlflow_store, "killed", socket.gethostname(), gone.pid, heartbeat_age=1)
    with driving(mlflow_store, "killed", "11111111"):
        assert lock_of(mlflow_store, "killed").tags[schema.TAG_SWEEP_ID] == "11111111"


def test_a_driver_elsewhere_is_alive_until_its_heartbeat_is_stale_or_force_says_otherwise(mlflow_store):
    plant_lock(mlflow_store, "remote", "another-host", 4242, heartbeat_age=1)
    with pytest.raises(SweepConflict, match="driver pid 4242 on host another-host.*take over with --force"):
        with driving(mlflow_store, "remote", "11111111"):
            pass
    with driving(mlflow_store, "remote", "11111111", force=True):
        assert lock_of(mlflow_store, "remote").tags[schema.TAG_SWEEP_ID] == "11111111"
    plant_lock(mlflow_store, "stale", "another-host", 4242, heartbeat_age=STALE_SECONDS + 1)
    with driving(mlflow_store, "stale", "22222222"):
        assert lock_of(mlflow_store, "stale").tags[schema.TAG_SWEEP_ID] == "22222222"


def test_drivers_starting_one_name_at_once_hold_it_one_at_a_time(mlflow_store):
    holding, refused, barrier = [], [], threading.Barrier(4)

    def start(sweep_id: str) -> None:
        barrier.wait()
        try:
            with driving(mlflow_store, "race", sweep_id):
                holding.append(sweep_id)
                time.sleep(2)
        except SweepConflict:
            refused.append(sweep_id)

    threads = [threading.Thread(target=start, args=(f"{i:08d}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(holding) == 1 and len(refused) == 3

