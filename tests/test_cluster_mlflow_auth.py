"""The MLflow server of cluster/mlflow/, started for real from its manifest: same arguments, environment and
auth config, with only the stores swapped for local ones (SQLite instead of PostgreSQL, a directory instead
of the bucket). Requests without credentials are refused; a user created the way cluster/README.md shows
can log a run.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

MANIFESTS = Path(__file__).resolve().parents[1] / "cluster" / "mlflow"
ADMIN_PASSWORD = "admin-password-for-tests"
STARTUP_SECONDS = 240  # a fresh store is migrated on first start; slow on a busy 2-core machine


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def manifest_server(tmp_path: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The Deployment's command line and environment, pointed at local stores and a loopback port."""
    documents = [document for document in yaml.safe_load_all((MANIFESTS / "mlflow.yaml").read_text()) if document]
    (config_map,) = [document for document in documents if document["kind"] == "ConfigMap"]
    (deployment,) = [document for document in documents if document["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]

    auth_ini = tmp_path / "basic_auth.ini"
    auth_ini.write_text(
        "\n".join(
            f"database_uri = sqlite:///{tmp_path / 'auth.db'}" if line.startswith("database_uri") else line
            for line in config_map["data"]["basic_auth.ini"].splitlines()
        )
    )
    local = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--workers": "1",
        "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination": str(tmp_path / "mlartifacts"),
    }
    args = []
    for argument in container["args"]:
        option = argument.split("=", 1)[0]
        args.append(f"{option}={local[option]}" if option in local else argument)
    command = [str(Path(sys.executable).parent / "mlflow"), *args]

    secrets = {
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret-for-tests",
        "PGPASSWORD": "unused-with-sqlite",
    }
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    for variable in container["env"]:
        name = variable["name"]
        if "value" in variable:
            env[name] = variable["value"]
        elif name in secrets:
            env[name] = secrets[name]
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_ini)
    return command, env


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mlflow-auth")
    port = free_loopback_port()
    command, env = manifest_server(tmp_path, port)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"MLflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def request(url: str, user: str | None = None, password: str | None = None, body: dict | None = None) -> int:
    """The HTTP status of a GET (or a JSON POST when `body` is given), with basic auth when `user` is given."""
    headers = {"Content-Type": "application/json"}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_requests_without_credentials_are_refused(auth_server):
    assert request(f"{auth_server}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert request(f"{auth_server}/api/2.0/mlflow/experiments/search?max_results=1", "admin", "wrong") == 401


def test_a_user_created_by_the_admin_logs_a_run(auth_server, monkeypatch):
    created = request(
        f"{auth_server}/api/2.0/mlflow/users/create", "admin", ADMIN_PASSWORD,
        body={"username": "mixer", "password": "mixer-password-for-tests"},
    )
    assert created == 200
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "mixer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mixer-password-for-tests")
    client = MlflowClient(auth_server)
    run = client.create_run(client.create_experiment("cluster-auth"))
    client.log_metric(run.info.run_id, "val_top1", 0.5, step=1)
    assert client.get_run(run.info.run_id).data.metrics == {"val_top1": 0.5}


def test_the_ray_up_heads_mlflow_server_binds_one_address_and_gives_the_nodes_an_ordinary_user(tmp_path):
    # cluster/launcher/head-mlflow.sh, run as the launcher runs it, with HOME and the artifact store made local
    # and the head's private address played by loopback.
    password = "node-password-for-tests"
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = mixer\nmlflow_tracking_password = {password}\n"
    )
    port = free_loopback_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(HOME=str(tmp_path), MLFLOW_PORT=str(port), MLFLOW_HOST="127.0.0.1",
               STARTUP_SECONDS=str(STARTUP_SECONDS), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    script = MANIFESTS.parent / "launcher" / "head-mlflow.sh"
    # The script leaves the server running in its own process group, which the test ends.
    starter = subprocess.Popen(["bash", str(script), str(tmp_path / "mlartifacts")], env=env, start_new_session=True,
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert starter.wait(timeout=STARTUP_SECONDS + 60) == 0, starter.stderr.read()
        assert request(f"{url}/health") == 200  # it returned once the server answered
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert request(search) == 401
        assert request(search, "mixer", password) == 200
        # The nodes' user is not an admin: it cannot create users; the admin's login stays on the head, private.
        new_user = {"username": "intruder", "password": "intruder-password"}
        assert request(f"{url}/api/2.0/mlflow/users/create", "mixer", password, body=new_user) == 403
        admin_file = tmp_path / "mlflow" / "admin-credentials"
        admin, admin_password = admin_file.read_text().split()
        assert admin == "admin" and admin_password != password and admin_file.stat().st_mode & 0o077 == 0
        assert request(search, admin, admin_password) == 200
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert {line.split()[3] for line in listening.splitlines()} == {f"127.0.0.1:{port}"}  # not 0.0.0.0
    finally:
        os.killpg(starter.pid, signal.SIGTERM)


def test_the_ray_up_heads_script_refuses_the_admin_as_the_nodes_user(tmp_path):
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text("[mlflow]\nmlflow_tracking_username = admin\n"
                                                      "mlflow_tracking_password = secret\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(HOME=str(tmp_path), MLFLOW_PORT=str(free_loopback_port()), MLFLOW_HOST="127.0.0.1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    script = MANIFESTS.parent / "launcher" / "head-mlflow.sh"
    result = subprocess.run(["bash", str(script), str(tmp_path / "a")], env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "name an ordinary user there" in result.stderr
    assert not (tmp_path / "mlflow" / "admin-credentials").exists()
