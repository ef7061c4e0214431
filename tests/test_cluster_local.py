"""The one-machine cluster of cluster/local/, for real: start.sh brings up a Ray head and an MLflow server on
loopback, add-node.sh joins a second Ray node, a sweep submitted with `ray job submit` runs a trial with one
Ray Train worker on each node, checkpoints in shared storage and results in MLflow, and stop.sh ends exactly
the processes the scripts started.

Ports 6391+ and dashboard 8271 keep clear of other Ray clusters on the machine (never `ray stop` here).
"""

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
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

LOCAL = Path(__file__).resolve().parents[1] / "cluster" / "local"
RAY_PORT, DASHBOARD_PORT, MLFLOW_PORT = 6391, 8271, 5391
# Every port a Ray node binds by default is fixed per node, so two nodes (and other clusters) never collide.
HEAD_PORTS = [
    "--ray-client-server-port", "6392", "--dashboard-agent-listen-port", "6393",
    "--dashboard-agent-grpc-port", "6394", "--runtime-env-agent-port", "6395", "--metrics-export-port", "6396",
    "--min-worker-port", "20100", "--max-worker-port", "20199",
]
WORKER_PORTS = [
    "--dashboard-agent-listen-port", "6397", "--dashboard-agent-grpc-port", "6398",
    "--runtime-env-agent-port", "6399", "--metrics-export-port", "6400",
    "--min-worker-port", "20200", "--max-worker-port", "20299",
]
SCRIPT_SECONDS = 300
SWEEP_SECONDS = 480
STATUS_SECONDS = 60  # a fresh head's first resource report
# One trial with two DDP workers of one CPU each: the head and the added node have one CPU apiece, so Ray
# must put one worker on each.
TWO_WORKERS = {"workers_per_trial": 2, "cpus_per_worker": 1, "max_concurrent_trials": 1}


@dataclass
class LocalCluster:
    """A running cluster/local/ cluster: where it lives and the environment its clients need."""

    work_dir: Path
    env: dict[str, str]
    token: str

    def script(self, name: str, *args: str) -> subprocess.CompletedProcess:
        """Run cluster/local/NAME in the cluster's working directory; fails the test on a non-zero exit."""
        result = subprocess.run(
            [str(LOCAL / name), *args], cwd=self.work_dir, env=self.env, capture_output=True, text=True,
            timeout=SCRIPT_SECONDS,
        )
        assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def sessions(self) -> list[int]:
        """The session ids the scripts recorded (one per Ray node and one for MLflow)."""
        return [int(path.read_text()) for path in (self.work_dir / ".mixer-cluster").glob("*.sid")]


@pytest.fixture(scope="module")
def local_cluster():
    # Ray's Unix socket paths must stay under 107 bytes, so the cluster lives in a short /tmp directory.
    work_dir = Path(tempfile.mkdtemp(prefix="mxc", dir="/tmp"))
    token = secrets.token_hex(16)
    (work_dir / "token").write_text(token)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "MLFLOW_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",  # ray, mlflow and mixer of this venv
        OMP_NUM_THREADS="1",
        RAY_AUTH_TOKEN_PATH=str(work_dir / "token"),
        RAY_PORT=str(RAY_PORT),
        RAY_DASHBOARD_PORT=str(DASHBOARD_PORT),
        MLFLOW_PORT=str(MLFLOW_PORT),
        MLFLOW_WORKERS="1",
        RAY_TEMP_DIR=str(work_dir / "r"),
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
    )
    cluster = LocalCluster(work_dir, env, token)
    try:
        cluster.script("start.sh", "--num-cpus", "1", "--resources", '{"node_head": 1}', *HEAD_PORTS)
        yield cluster
    finally:
        subprocess.run([str(LOCAL / "stop.sh")], cwd=work_dir, env=env, capture_output=True, timeout=SCRIPT_SECONDS)
        shutil.rmtree(work_dir, ignore_errors=True)


def http_status(url: str, token: str | None = None) -> int:
    """The HTTP status of a GET, with Ray's bearer token when `token` is given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# Run in a child process: Ray caches the auth token per process, and this one must not keep the cluster's.
STATE_QUERY = f"""
import json
from ray.util.state import list_actors, list_nodes
dashboard = "http://127.0.0.1:{DASHBOARD_PORT}"
workers = list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker")], detail=True)
print(json.dumps({{"nodes": [node.node_id for node in list_nodes(address=dashboard)],
                  "worker_nodes": [worker.node_id for worker in workers]}}))
"""


def run_python(code: str, env: dict[str, str]) -> str:
    """The stdout of `python -c code` in `env`; fails the test on a non-zero exit."""
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def client_env(cluster: LocalCluster) -> dict[str, str]:
    """What a user's shell needs for `ray status` / `ray job submit` against the token-protected cluster."""
    return {**cluster.env, "RAY_AUTH_MODE": "token"}


def ray_status_once_reported(cluster: LocalCluster) -> subprocess.CompletedProcess:
    """`ray status` once the head has reported its resources, or its last answer at the deadline.

    A head that has just started answers "No cluster status. It may take a few seconds..." until its first
    resource report reaches the GCS.
    """
    deadline = time.monotonic() + STATUS_SECONDS
    while True:
        status = subprocess.run(
            ["ray", "status", "--address", f"127.0.0.1:{RAY_PORT}"], env=client_env(cluster),
            capture_output=True, text=True, timeout=120,
        )
        if (status.returncode == 0 and "No cluster status" not in status.stdout) or time.monotonic() > deadline:
            return status
        time.sleep(1)


def test_mlflow_and_the_ray_dashboard_answer_on_loopback_and_the_dashboard_needs_the_token(local_cluster):
    with urllib.request.urlopen(f"http://127.0.0.1:{MLFLOW_PORT}/health", timeout=30) as response:
        assert response.read().decode().strip() == "OK"
    assert http_status(f"http://127.0.0.1:{DASHBOARD_PORT}/api/version") == 401
    assert http_status(f"http://127.0.0.1:{DASHBOARD_PORT}/api/version", local_cluster.token) == 200
    status = ray_status_once_reported(local_cluster)
    assert status.returncode == 0, status.stderr
    assert "node_head" in status.stdout


def test_mlflow_and_the_dashboard_are_not_reachable_on_the_machine_address(local_cluster):
    from ray.util import get_node_ip_address

    address = get_node_ip_address()
    if address.startswith("127."):
        pytest.skip("this machine has no address besides loopback")
    for port in (MLFLOW_PORT, DASHBOARD_PORT):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=10).close()


def test_a_sweep_job_runs_a_two_worker_trial_across_two_nodes_into_mlflow(local_cluster, tiny_spec):
    local_cluster.script("add-node.sh", "w1", "--num-cpus", "1", *WORKER_PORTS)
    spec = tiny_spec("two-node", experiment="cluster-two-node", base={"train": {"epochs": 1}}, resources=TWO_WORKERS)
    shared = yaml.safe_load(spec.read_text())["storage_path"]
    # The README's path: the spec's folder is the job's working directory on the head.
    job = subprocess.run(
        ["ray", "job", "submit", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}", "--working-dir", str(spec.parent),
         "--", "mixer", "sweep", "run", spec.name],
        env=client_env(local_cluster), capture_output=True, text=True, timeout=SWEEP_SECONDS,
    )
    assert job.returncode == 0, f"{job.stdout[-4000:]}\n{job.stderr[-4000:]}"

    # Ray's own record of the trial's workers: one on the head, one on the added node.
    placement = json.loads(run_python(STATE_QUERY, client_env(local_cluster)))
    assert len(placement["nodes"]) == 2
    assert sorted(placement["worker_nodes"]) == sorted(placement["nodes"])

    client = MlflowClient(f"http://127.0.0.1:{MLFLOW_PORT}")
    experiment = client.get_experiment_by_name("cluster-two-node")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`mixer.role` = 'trial'")
    assert [run.info.status for run in runs] == ["FINISHED"]
    (trial,) = runs
    assert 0.0 <= trial.data.metrics["val_top1"] <= 1.0
    assert trial.data.tags["mixer.model"] == "Ti/4"
    # Rank 0's final checkpoint sits in the shared storage every node writes to.
    checkpoint = Path(trial.data.tags["mixer.checkpoint"])
    assert checkpoint.is_relative_to(shared) and any(checkpoint.iterdir())
    # The sweep's parent run logged its spec through the server into the artifacts folder on disk.
    assert list((local_cluster.work_dir / "mlartifacts").rglob(spec.name))


def test_every_node_keeps_two_worker_processes_per_cpu_and_one(local_cluster):
    from sweeps.engine.ray_session import WORKER_SOFT_LIMIT_ENV, worker_soft_limit

    sessions = ",".join(map(str, local_cluster.sessions()))
    listing = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-s", sessions], capture_output=True,
                             text=True).stdout
    raylets = [int(line.split()[0]) for line in listing.splitlines() if "/raylet/raylet " in line]
    assert raylets, listing
    for pid in raylets:
        entries = Path(f"/proc/{pid}/environ").read_text().split("\0")
        environ = dict(entry.split("=", 1) for entry in entries if "=" in entry)
        assert environ[WORKER_SOFT_LIMIT_ENV] == str(worker_soft_limit(os.cpu_count()))


def test_stop_ends_every_process_the_scripts_started(local_cluster):
    sessions = local_cluster.sessions()
    assert sessions
    local_cluster.script("stop.sh")
    survivors = subprocess.run(
        ["ps", "-o", "pid=,stat=,args=", "-s", ",".join(map(str, sessions))], capture_output=True, text=True
    ).stdout.splitlines()
    assert [line for line in survivors if line.split()[1][0] != "Z"] == []
    assert local_cluster.sessions() == []
    for port in (RAY_PORT, DASHBOARD_PORT, MLFLOW_PORT):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()


def test_stop_leaves_alone_a_session_whose_recorded_id_another_program_now_leads(tmp_path):
    # The recorded head session id is stale: the id now leads a program the scripts never started.
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        cluster_dir = tmp_path / ".mixer-cluster"
        cluster_dir.mkdir()
        (cluster_dir / "ray-head.sid").write_text(f"{stranger.pid}\n")
        (cluster_dir / "ray-head.args").write_text("start --head --node-ip-address 127.0.0.1 --port 6391\n")
        result = subprocess.run([str(LOCAL / "stop.sh")], cwd=tmp_path, capture_output=True, text=True,
                                env={**os.environ, "MIXER_CLUSTER_DIR": str(cluster_dir)}, timeout=SCRIPT_SECONDS)
        assert result.returncode == 0, result.stderr
        assert f"ray-head: session {stranger.pid} now belongs to another program (sleep 300); left alone" in result.stdout
        assert stranger.poll() is None and not (cluster_dir / "ray-head.sid").exists()
    finally:
        stranger.kill()
        stranger.wait()
