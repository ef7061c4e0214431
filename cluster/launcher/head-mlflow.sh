#!/usr/bin/env bash
# Start the MLflow tracking server on a `ray up` head node (see the launcher YAMLs beside this file), unless
# one already answers: SQLite store in ~/mlflow, artifacts at ARTIFACTS_URI (s3://... or gs://...).
# It listens on every interface because trials on worker nodes log to it, so it asks for a login (MLflow's
# basic-auth app): its admin is the user and password of ~/.mlflow/credentials, which the launcher YAMLs copy
# to every node and which MLflow clients read by themselves. The cloud firewall Ray sets up admits only SSH
# from outside the cluster. Usage: head-mlflow.sh ARTIFACTS_URI
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: head-mlflow.sh ARTIFACTS_URI" >&2; exit 1; }
MLFLOW_PORT=${MLFLOW_PORT:-5000}
mkdir -p ~/mlflow
if curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null; then
    exit 0
fi
read -r MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD < <(python -c '
from mlflow.utils.credentials import read_mlflow_creds
creds = read_mlflow_creds()
print(creds.username or "", creds.password or "")')
[[ -n $MLFLOW_AUTH_ADMIN_PASSWORD ]] || { echo "head-mlflow.sh: no user and password in ~/.mlflow/credentials" >&2; exit 1; }
export MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD
cd ~/mlflow  # basic-auth keeps its users in ./basic_auth.db
# MLflow's server-side job runner serves GenAI features that sweeps do not use.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_FLASK_SERVER_SECRET_KEY=$(openssl rand -hex 32) \
    nohup mlflow server --app-name basic-auth --host 0.0.0.0 --port "$MLFLOW_PORT" \
    --backend-store-uri "sqlite:///$HOME/mlflow/mlflow.db" --artifacts-destination "$1" \
    >~/mlflow/server.log 2>&1 &
