#!/usr/bin/env bash
# Start the MLflow tracking server on a `ray up` head node (see the launcher YAMLs beside this file), unless
# one already answers, and return once its /health answers: SQLite store in ~/mlflow, artifacts at
# ARTIFACTS_URI (s3://... or gs://...). It listens on the head's private address (MLFLOW_HOST, default the
# address Ray gives the node), which the cluster's nodes reach and, through the cloud firewall Ray sets up
# (SSH only from outside), nothing else; never on 0.0.0.0. It asks for a login (MLflow's basic-auth app, from
# `mlflow[auth]`): the admin's password is made here on first start and stays on the head, in
# ~/mlflow/admin-credentials; the user of ~/.mlflow/credentials, which the launcher YAMLs copy to every node
# and which MLflow clients read by themselves, is created as an ordinary user, not an admin.
# Usage: head-mlflow.sh ARTIFACTS_URI
set -euo pipefail
umask 077  # the admin's password, the store and the log: readable by the head's user only
[[ $# -eq 1 ]] || { echo "usage: head-mlflow.sh ARTIFACTS_URI" >&2; exit 1; }
MLFLOW_PORT=${MLFLOW_PORT:-5000}
MLFLOW_HOST=${MLFLOW_HOST:-$(python -c 'import ray.util; print(ray.util.get_node_ip_address())')}
STARTUP_SECONDS=${STARTUP_SECONDS:-240}  # a fresh store is migrated on first start
URL="http://$MLFLOW_HOST:$MLFLOW_PORT"
mkdir -p ~/mlflow
if curl -sf "$URL/health" >/dev/null; then
    exit 0
fi
NODE_USER=$(python -c '
from mlflow.utils.credentials import read_mlflow_creds
creds = read_mlflow_creds()
print(creds.username if creds.username and creds.password else "")')
[[ -n $NODE_USER ]] || { echo "head-mlflow.sh: no user and password in ~/.mlflow/credentials" >&2; exit 1; }
[[ $NODE_USER != admin ]] || { echo "head-mlflow.sh: ~/.mlflow/credentials names admin; every node holds that" \
    "file, so name an ordinary user there (e.g. mixer)" >&2; exit 1; }
[[ -s ~/mlflow/admin-credentials ]] || echo "admin $(openssl rand -hex 24)" >~/mlflow/admin-credentials
read -r MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD <~/mlflow/admin-credentials
export MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD

cd ~/mlflow  # basic-auth keeps its users in ./basic_auth.db
# MLflow's server-side job runner serves GenAI features that sweeps do not use.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_FLASK_SERVER_SECRET_KEY=$(openssl rand -hex 32) \
    nohup mlflow server --app-name basic-auth --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" \
    --backend-store-uri "sqlite:///$HOME/mlflow/mlflow.db" --artifacts-destination "$1" \
    >~/mlflow/server.log 2>&1 &
server=$!
deadline=$((SECONDS + STARTUP_SECONDS))
until curl -sf "$URL/health" >/dev/null; do
    if ! kill -0 "$server" 2>/dev/null || ((SECONDS > deadline)); then
        echo "head-mlflow.sh: MLflow did not answer $URL/health; the end of ~/mlflow/server.log:" >&2
        tail -n 20 ~/mlflow/server.log >&2
        exit 1
    fi
    sleep 1
done

# The nodes' user, created by the admin (again on a restart: "already exists" is fine).
python - "$URL" <<'EOF'
import base64, json, os, sys, urllib.error, urllib.request
from mlflow.utils.credentials import read_mlflow_creds

creds = read_mlflow_creds()
admin = f"{os.environ['MLFLOW_AUTH_ADMIN_USERNAME']}:{os.environ['MLFLOW_AUTH_ADMIN_PASSWORD']}"
request = urllib.request.Request(
    f"{sys.argv[1]}/api/2.0/mlflow/users/create",
    data=json.dumps({"username": creds.username, "password": creds.password}).encode(),
    headers={"Content-Type": "application/json", "Authorization": "Basic " + base64.b64encode(admin.encode()).decode()},
)
try:
    urllib.request.urlopen(request, timeout=30).close()
except urllib.error.HTTPError as error:
    if b"RESOURCE_ALREADY_EXISTS" not in error.read():
        sys.exit(f"head-mlflow.sh: creating MLflow user {creds.username} failed: HTTP {error.code}")
EOF
