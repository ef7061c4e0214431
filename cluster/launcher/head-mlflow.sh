#!/usr/bin/env bash
# Start the MLflow tracking server on a `ray up` head node (see the launcher YAMLs beside this file), unless
# one already answers: SQLite store in ~/mlflow, artifacts at ARTIFACTS_URI (s3://... or gs://...).
# It listens on every interface because trials on worker nodes log to it; the cloud firewall Ray sets up
# admits only SSH from outside the cluster. Usage: head-mlflow.sh ARTIFACTS_URI
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: head-mlflow.sh ARTIFACTS_URI" >&2; exit 1; }
MLFLOW_PORT=${MLFLOW_PORT:-5000}
mkdir -p ~/mlflow
if curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null; then
    exit 0
fi
# MLflow's server-side job runner serves GenAI features that sweeps do not use.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup mlflow server --host 0.0.0.0 --port "$MLFLOW_PORT" \
    --backend-store-uri "sqlite:///$HOME/mlflow/mlflow.db" --artifacts-destination "$1" \
    >~/mlflow/server.log 2>&1 &
