# Shared settings of the local-cluster scripts (sourced by start.sh, add-node.sh and stop.sh).
# Every value can be overridden from the environment; the defaults are Ray's and MLflow's own ports.

MIXER_CLUSTER_DIR=${MIXER_CLUSTER_DIR:-$PWD/.mixer-cluster}   # logs and session ids of what these scripts started
RAY_PORT=${RAY_PORT:-6379}
RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
MLFLOW_WORKERS=${MLFLOW_WORKERS:-2}
# The same store `mixer sweep run` uses without a server, so laptop and local-cluster runs land side by side.
MLFLOW_DB=${MLFLOW_DB:-$PWD/mlflow.db}
MLFLOW_ARTIFACTS=${MLFLOW_ARTIFACTS:-$PWD/mlartifacts}
# Ray keeps Unix sockets under its temp dir and socket paths must stay under 107 bytes, so the default is short.
RAY_TEMP_DIR=${RAY_TEMP_DIR:-/tmp/ray-mixer-$RAY_PORT}

# Token authentication guards the GCS and raylet ports, which Ray binds on every interface for multi-node use.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-http://127.0.0.1:$MLFLOW_PORT}
# Worker processes each Ray node keeps: two per CPU and one (sweeps/engine/ray_session.py, worker_soft_limit), so
# streamed training data's reading tasks do not push decoding processes out between their tasks.
export RAY_num_workers_soft_limit=${RAY_num_workers_soft_limit:-$((2 * $(getconf _NPROCESSORS_ONLN) + 1))}
# Ray processes that look the cluster up (Train's placement-group cleaner, job drivers) find this one even
# when other Ray clusters run on the same machine.
export RAY_ADDRESS=${RAY_HEAD_ADDRESS:-127.0.0.1:$RAY_PORT}

# Run "$@" as the leader of a new session, recorded in $MIXER_CLUSTER_DIR/$1.sid, its arguments in $1.args.
# Every process it leaves behind stays in that session (Ray's workers get process groups of their own, not
# sessions), so stop.sh ends exactly these processes; never `ray stop`, which ends every Ray process on the
# machine.
start_session() {
    local name=$1
    shift
    setsid "$@" >"$MIXER_CLUSTER_DIR/$name.log" 2>&1 &
    echo $! >"$MIXER_CLUSTER_DIR/$name.sid"
    echo "${*:2}" >"$MIXER_CLUSTER_DIR/$name.args"
}

# True unless a process leads session $1 whose command line lacks the arguments recorded in $2 (an .args file):
# then the recorded id is stale, reused by another program's session. A session whose leader has exited (as
# `ray start` does) keeps its id, which no new session can take while a process of the old one lives.
session_is_ours() {
    local leader
    leader=$(ps -ww -o args= -p "$1" 2>/dev/null) || return 0
    [[ -s $2 && $leader == *"$(cat "$2")"* ]]
}

# True while session $1 has a process that is not a zombie.
session_alive() {
    ps -o stat= -s "$1" 2>/dev/null | grep -qv '^Z'
}

fail() {
    echo "cluster/local: $*" >&2
    exit 1
}
