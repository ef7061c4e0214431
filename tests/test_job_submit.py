"""The cluster path for real: a Ray head started with `ray start --head`, a sweep submitted with
`ray job submit --working-dir . -- mixer sweep run SPEC`, its runs read back from MLflow.

The head runs with `--block` in its own temp dir on port 6390 (dashboard 8270): stopping it is ending that one
process, whose reaper takes its Ray processes down with it. `ray stop` would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeps.tracking import queries

GCS_PORT = 6390
DASHBOARD_PORT = 8270
AGENT_PORT = 52390
DASHBOARD = f"http://127.0.0.1:{DASHBOARD_PORT}"


def dashboard_is_up() -> bool:
    try:
        urllib.request.urlopen(f"{DASHBOARD}/api/version", timeout=2)
    except urllib.error.HTTPError:
        return True  # it answered (token auth may refuse the request itself)
    except OSError:
        return False
    return True


def job_agent_is_up() -> bool:
    """Whether the head's dashboard agent, which runs submitted jobs, listens yet. The dashboard answers first; a
    job submitted while the agent is still starting fails after 10 s ("No available agent to submit job"), which a
    loaded 2-core machine once took."""
    try:
        socket.create_connection(("127.0.0.1", AGENT_PORT), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture
def ray_head(tmp_path: Path):
    """A Ray head of 2 CPUs in its own short temp dir (socket paths must stay short); yields the job address."""
    bin_dir = Path(sys.executable).parent
    # Token auth, as `cluster/local/common.sh` starts Ray: `ray start` turns it on by itself, and a client left
    # in the default mode sends no token ("Missing authentication token").
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="ray6390-")
    log = (tmp_path / "ray_head.log").open("w")
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={GCS_PORT}", "--num-cpus=2",
         f"--dashboard-port={DASHBOARD_PORT}", f"--dashboard-agent-listen-port={AGENT_PORT}", f"--temp-dir={temp_dir}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        deadline = time.monotonic() + 180
        while not (dashboard_is_up() and job_agent_is_up()):
            assert head.poll() is None, f"ray start exited: {(tmp_path / 'ray_head.log').read_text()}"
            assert time.monotonic() < deadline, "the Ray head's dashboard and job agent did not come up"
            time.sleep(1)
        yield DASHBOARD, env
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_sweep(ray_head, mlflow_store, tiny_spec, tmp_path):
    address, env = ray_head
    spec = tiny_spec("jobsweep")
    submitted = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--working-dir", ".",
         "--runtime-env-json", f'{{"env_vars": {{"MLFLOW_TRACKING_URI": "{mlflow_store}"}}}}',
         "--", "mixer", "sweep", "run", spec.name],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "mlflow ui --backend-store-uri" in submitted.stdout  # the sweep's closing lines, streamed back

    parent = queries.find_sweep_run(mlflow_store, "jobsweep")
    assert parent is not None and parent.info.status == "FINISHED"
    (trial,) = queries.trial_runs(mlflow_store, parent.info.experiment_id, parent.info.run_id)
    assert trial.info.status == "FINISHED"
    assert len(MlflowClient(mlflow_store).get_metric_history(trial.info.run_id, "val_top1")) == 2
