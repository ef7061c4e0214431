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


class SessionRay:
    """The session's local Ray (2 logical CPUs, no dashboard), started anew when a test leaves it unusable."""

    def __init__(self) -> None:
        self.address = self._start()

    @staticmethod
    def _start() -> str:
        import ray

        from sweeps.engine.ray_session import init_ray

        init_ray(num_cpus=2)
        return ray.get_runtime_context().gcs_address

    def restart(self) -> None:
        import ray

        ray.shutdown()
        self.address = self._start()


@pytest.fixture(scope="session")
def session_ray() -> SessionRay:
    import ray

    session = SessionRay()
    yield session
    ray.shutdown()


@pytest.fixture
def ray_address(session_ray: SessionRay) -> str:
    """The GCS address of the session's Ray."""
    return session_ray.address


def ray_worker_titles() -> list[str]:
    """The titles of this machine's busy Ray workers (`ray::<task or actor>`; idle ones and Ray's agents left out)."""
    titles = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and title not in ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent"):
            titles.append(title)
    return sorted(titles)


@pytest.fixture(autouse=True)
def ray_released(request: pytest.FixtureRequest):
    """After a test on the session's Ray, every CPU is free again within two minutes: a trial, decoding task or
    actor left holding one would stall every later test (a rehearsal's decoding task then waits for a CPU forever).
    No sweep's MLflow writer outlives its sweep either: each holds a process with MLflow loaded (twenty were alive
    when this 2-core machine's rehearsals once stalled). A test that leaves either fails, and the session's Ray is
    started anew, so that the tests after it run on a clean one rather than stalling one by one."""
    yield
    if "ray_address" not in request.fixturenames:
        return
    import time

    import ray

    from sweeps.tracking.writer import WRITER_NAME_PREFIX

    def held_cpus() -> str | None:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources()["CPU"]:
            return None
        # Ray's state API needs the dashboard, which the session's Ray leaves out: ask the GCS and /proc.
        actors = [actor["ActorClassName"] for actor in ray._private.state.actors().values()
                  if actor["State"] == "ALIVE"]
        groups = [group["strategy"] for group in ray.util.placement_group_table().values()
                  if group["state"] != "REMOVED"]
        return (f"Ray CPUs held: {ray.available_resources()}; live actors {actors}; placement groups {groups}; "
                f"Ray workers {ray_worker_titles()}")

    def live_writers() -> str | None:
        writers = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                   if actor["name"].startswith(WRITER_NAME_PREFIX)]
        return f"sweep writers alive: {writers}" if writers else None

    # A trial's processes end within seconds; a killed writer's name is released shortly after.
    for leftover, seconds in ((held_cpus, 120), (live_writers, 30)):
        deadline = time.monotonic() + seconds
        while (found := leftover()) and time.monotonic() < deadline:
            time.sleep(0.5)
        if found:
            request.getfixturevalue("session_ray").restart()
            pytest.fail(f"{request.node.nodeid} left {found} (Ray was started anew for the tests after it)")


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
