"""A GPU sweep on a cluster shaped like every shipped one: a head that offers no CPUs for work and no GPU worker
yet, with an autoscaler that can add one. Ray's fake multi-node provider stands in for the cloud; its worker
node type advertises one GPU (a count: the trial trains on the CPU)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from sweeps.tracking import queries, store

WAIT_SECONDS = 300
GPU_NODE = "ray.worker.gpu"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fake_autoscaling_config(gcs_address: str) -> dict:
    """A cluster-launcher config for Ray's fake provider: a head with nothing to offer, one GPU node type."""
    small_object_store = 100 * 1024 * 1024
    return {
        "cluster_name": "mixer-autoscaling-test",
        "max_workers": 1,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            GPU_NODE: {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": small_object_store},
                       "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default",
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 5, "docker": {}, "file_mounts": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [], "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }


def ray_status(env: dict[str, str], address: str) -> str:
    return subprocess.run([str(Path(sys.executable).with_name("ray")), "status", "--address", address],
                          env=env, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def autoscaling_cluster():
    """A head (0 CPUs, 0 GPUs) whose autoscaler can add one GPU node; yields (address, env for its clients)."""
    # Ray's Unix socket paths must stay under 107 bytes, so the cluster lives in a short /tmp directory.
    work_dir = Path(tempfile.mkdtemp(prefix="mxa", dir="/tmp"))
    (work_dir / "token").write_text(secrets.token_hex(16))
    port = free_port()
    address = f"127.0.0.1:{port}"
    (work_dir / "autoscaling.yaml").write_text(yaml.safe_dump(fake_autoscaling_config(address)))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "MLFLOW_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", OMP_NUM_THREADS="1",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(work_dir / "token"),
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")
    head_env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    # The head and every node its autoscaler adds stay in this session, which the test ends (never `ray stop`,
    # which ends every Ray process on the machine).
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=0", "--num-gpus=0", f"--object-store-memory={100 * 1024 * 1024}",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={work_dir / 'r'}",
         f"--autoscaling-config={work_dir / 'autoscaling.yaml'}"],
        env=head_env, stdout=(work_dir / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while "Autoscaler status" not in ray_status(env, address) or "Pending:" not in ray_status(env, address):
            assert head.poll() is None and time.monotonic() < deadline, (work_dir / "head.log").read_text()[-3000:]
            time.sleep(1)
        yield address, env
    finally:
        subprocess.run(["pkill", "-TERM", "-s", str(head.pid)])
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            subprocess.run(["pkill", "-KILL", "-s", str(head.pid)])
            head.wait()
        shutil.rmtree(work_dir, ignore_errors=True)


def test_a_gpu_sweep_is_accepted_before_any_gpu_node_exists_and_runs_once_the_autoscaler_adds_one(
    autoscaling_cluster, mlflow_store, tiny_spec
):
    address, env = autoscaling_cluster
    assert "GPU" not in ray_status(env, address).split("Usage:")[-1].split("Demands:")[0]  # no GPU node yet
    spec = tiny_spec("scale-up", base={"train": {"epochs": 1}},
                     resources={"workers_per_trial": 1, "cpus_per_worker": 1, "use_gpu": True})
    env = {**env, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}

    driver = subprocess.run([str(Path(sys.executable).with_name("mixer")), "sweep", "run", str(spec), "--address",
                             address, "--json"], env=env, capture_output=True, text=True, timeout=WAIT_SECONDS)

    assert driver.returncode == 0, driver.stderr[-3000:]
    assert "the cluster has no GPUs" in driver.stderr and "autoscaler" in driver.stderr  # warned, not refused
    result = json.loads(driver.stdout)
    assert [trial["status"] for trial in result["trials"]] == ["TERMINATED"]
    assert f"1 {GPU_NODE}" in ray_status(env, address)  # the node the autoscaler added for it
    [run] = queries.trial_runs(mlflow_store, *_parent_ids(mlflow_store, result["parent_run_id"]))
    assert run.info.status == "FINISHED"


def _parent_ids(uri: str, parent_run_id: str) -> tuple[str, str]:
    parent = store.RetryingMlflowClient(uri).get_run(parent_run_id)
    return parent.info.experiment_id, parent_run_id
