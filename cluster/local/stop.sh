#!/usr/bin/env bash
# Stop what start.sh and add-node.sh started, and nothing else: worker nodes, then the head, then MLflow.
# Each is a session recorded in $MIXER_CLUSTER_DIR; its processes get SIGTERM, then SIGKILL after a grace
# period (a Ray head can take longer to drain than its state is worth). A recorded session id now led by
# another program (the machine rebooted, the id was reused) is left alone.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
GRACE_SECONDS=${GRACE_SECONDS:-5}

stop_session() {
    local sid_file=$1 sid name
    sid=$(cat "$sid_file")
    name=$(basename "$sid_file" .sid)
    if ! session_is_ours "$sid" "${sid_file%.sid}.args"; then
        echo "$name: session $sid now belongs to another program ($(ps -ww -o args= -p "$sid")); left alone"
        rm -f "$sid_file" "${sid_file%.sid}.args"
        return
    fi
    pkill -TERM -s "$sid"
    for _ in $(seq 1 $((GRACE_SECONDS * 5))); do
        session_alive "$sid" || break
        sleep 0.2
    done
    if session_alive "$sid"; then
        pkill -KILL -s "$sid"
        echo "$name: killed after ${GRACE_SECONDS}s"
    fi
    rm -f "$sid_file" "${sid_file%.sid}.args"
    echo "stopped $name"
}

shopt -s nullglob
for sid_file in "$MIXER_CLUSTER_DIR"/ray-node-*.sid "$MIXER_CLUSTER_DIR"/ray-head.sid "$MIXER_CLUSTER_DIR"/mlflow.sid; do
    stop_session "$sid_file"
done
