#!/usr/bin/env bash
# Add a Ray worker node to a running head: on this machine (a second node with its own temp dir, which is
# how tests build a two-node cluster) or on another machine of the same network (set RAY_HEAD_ADDRESS and
# copy the head's auth token there). Usage: add-node.sh NAME [extra `ray start` arguments].
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -ge 1 ]] || fail "usage: add-node.sh NAME [ray start arguments...]"
name=ray-node-$1
shift
NODE_TEMP_DIR=${NODE_TEMP_DIR:-$RAY_TEMP_DIR-$name}
mkdir -p "$MIXER_CLUSTER_DIR"
if [[ -f $MIXER_CLUSTER_DIR/$name.sid ]] && session_alive "$(cat "$MIXER_CLUSTER_DIR/$name.sid")"; then
    fail "$name is already running; stop the cluster with cluster/local/stop.sh"
fi

start_session "$name" ray start --address "$RAY_ADDRESS" \
    --temp-dir "$NODE_TEMP_DIR" --disable-usage-stats "$@"
wait "$(cat "$MIXER_CLUSTER_DIR/$name.sid")" || fail "ray start failed; see $MIXER_CLUSTER_DIR/$name.log"
echo "$name joined the Ray cluster at $RAY_ADDRESS"
