#!/usr/bin/env bash
# Start a one-machine cluster: a Ray head (dashboard and job API on 127.0.0.1) and an MLflow tracking
# server (SQLite backend, artifacts on disk, on 127.0.0.1). Submit sweeps to it with
#   ray job submit --address http://127.0.0.1:$RAY_DASHBOARD_PORT --working-dir . -- mixer sweep run SPEC
# Extra arguments go to `ray start --head` (e.g. --num-cpus 8 --num-gpus 1). Stop with cluster/local/stop.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

command -v ray >/dev/null || fail "ray is not on PATH; activate the project's virtualenv first"
command -v mlflow >/dev/null || fail "mlflow is not on PATH; activate the project's virtualenv first"
command -v setsid >/dev/null || fail "setsid (util-linux) is required to manage the cluster's processes"
mkdir -p "$MIXER_CLUSTER_DIR" "$MLFLOW_ARTIFACTS"
for name in mlflow ray-head; do
    if [[ -f $MIXER_CLUSTER_DIR/$name.sid ]] && session_alive "$(cat "$MIXER_CLUSTER_DIR/$name.sid")"; then
        fail "$name is already running (see $MIXER_CLUSTER_DIR); stop it with cluster/local/stop.sh"
    fi
done
# Ray with token auth needs a token (~/.ray/auth_token unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH is set).
if [[ $RAY_AUTH_MODE == token && -z ${RAY_AUTH_TOKEN:-} && -z ${RAY_AUTH_TOKEN_PATH:-} ]]; then
    ray get-auth-token --generate >/dev/null
fi

# Clients write artifacts straight to $MLFLOW_ARTIFACTS (one machine, one filesystem) rather than through the
# server, so runs logged here read back like laptop runs, with or without the server (`mixer report`).
# MLflow's server-side job runner serves GenAI features that sweeps do not use.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false start_session mlflow mlflow server \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
    --backend-store-uri "sqlite:///$MLFLOW_DB" \
    --default-artifact-root "$MLFLOW_ARTIFACTS" --no-serve-artifacts

start_session ray-head ray start --head \
    --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$RAY_DASHBOARD_PORT" \
    --temp-dir "$RAY_TEMP_DIR" --disable-usage-stats "$@"
# `ray start` returns once the head is up; the processes it started stay in the recorded session.
wait "$(cat "$MIXER_CLUSTER_DIR/ray-head.sid")" || fail "ray start failed; see $MIXER_CLUSTER_DIR/ray-head.log"

# A fresh SQLite store is migrated on first start, which takes a while on a busy machine.
for _ in $(seq 1 180); do
    if curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null; then
        echo "Ray dashboard and job API: http://127.0.0.1:$RAY_DASHBOARD_PORT (GCS at 127.0.0.1:$RAY_PORT)"
        echo "MLflow: $MLFLOW_TRACKING_URI (store sqlite:///$MLFLOW_DB, artifacts $MLFLOW_ARTIFACTS)"
        exit 0
    fi
    session_alive "$(cat "$MIXER_CLUSTER_DIR/mlflow.sid")" || break
    sleep 1
done
fail "MLflow did not answer on 127.0.0.1:$MLFLOW_PORT; see $MIXER_CLUSTER_DIR/mlflow.log"
