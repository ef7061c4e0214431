"""Shared fixtures: one real local Ray for the whole session, and a fresh MLflow SQLite store per test."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

# Ray Train polls workers every 2 s by default; 0.2 s makes every trial end sooner (see sweeps.engine.ray_session).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# One intra-op thread (set before torch is imported): the tests' tiny models gain nothing from a second thread,
# and on shared cores torch's spinning threads made the training tests ~9x slower (331 s vs 36 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_address() -> str:
    """Start one local Ray (2 logical CPUs, no dashboard) for the session; returns its GCS address."""
    import ray

    from sweeps.engine.ray_session import init_ray

    init_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(autouse=True)
def ray_released(request: pytest.FixtureRequest):
    """After a test on the session's Ray, every CPU is free again within a minute: a trial, decoding task or actor
    left holding one would stall every later test (a rehearsal's decoding task then waits for a CPU forever). No
    sweep's MLflow writer outlives its sweep either: each holds a process with MLflow loaded (twenty were alive
    when this 2-core machine's rehearsals once stalled)."""
    yield
    if "ray_address" not in request.fixturenames:
        return
    import time

    import ray
    from ray.util import state

    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        if time.monotonic() > deadline:
            held = [(actor.class_name, actor.state) for actor in state.list_actors(filters=[("state", "=", "ALIVE")])]
            groups = [(group.name, group.state) for group in state.list_placement_groups()
                      if group.state != "REMOVED"]
            pytest.fail(f"{request.node.nodeid} left Ray CPUs held: {ray.available_resources()}; "
                        f"live actors {held}; placement groups {groups}")
        time.sleep(0.5)
    from sweeps.tracking.writer import WRITER_NAME_PREFIX

    deadline = time.monotonic() + 10  # a killed actor's name is released shortly after
    while writers := [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                      if actor["name"].startswith(WRITER_NAME_PREFIX)]:
        assert time.monotonic() < deadline, f"{request.node.nodeid} left sweep writers alive: {writers}"
        time.sleep(0.5)


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty MLflow store `sqlite:///<tmp_path>/mlflow.db`, with the test running in `tmp_path`."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


# A sweep of Ti/4 on half of scikit-learn's digits: seconds of training per trial.
TINY_SPEC: dict[str, Any] = {
    "experiment": "engine-tests",
    "base": {
        "model": {"variant": "Ti/4"},
        "data": {"name": "digits", "batch_size": 64, "fraction": 0.5},
        "train": {"epochs": 2, "eval_every_epochs": 1, "checkpoint_every_epochs": 1, "log_every_steps": 5},
        "eval": {"fewshot_shots": []},
    },
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
    "checkpoint": {"num_to_keep": 1},
}


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiny sweep spec: `tiny_spec(name, **fields)` replaces top-level fields and merges `base`
    sections into `TINY_SPEC`; results go under `tmp_path/ray_results`. Returns the YAML file."""

    def write(name: str, **fields: Any) -> Path:
        spec = copy.deepcopy(TINY_SPEC)
        for section, values in fields.pop("base", {}).items():
            spec["base"][section].update(values)
        spec.update({"name": name, "storage_path": str(tmp_path / "ray_results"), **fields})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write
