"""Whether the connected Ray cluster can grow: a sweep that its live nodes cannot hold yet (every shipped cluster
starts without GPU workers, and with a head that offers no CPUs for work) is for the autoscaler to make room for.

Ray 2.60 shows a driver neither the autoscaler's node types nor whether it could fit a request, so the engine can
tell only that an autoscaler is there; it warns instead of refusing (`mixer_cli.sweep`).
"""

from __future__ import annotations

import json

from ray._private import ray_constants
from ray.autoscaler._private.util import format_readonly_node_type
from ray.autoscaler.v2.utils import is_autoscaler_v2
from ray.experimental.internal_kv import _internal_kv_get


def autoscaler_running() -> bool:
    """Whether an autoscaler manages the connected cluster (call after `ray.init`).

    Autoscaler v1 (`ray up`, KubeRay's default) reports a summary on every update in the GCS; v2 marks itself there.
    A head started without an autoscaling config (`ray start --head`) runs the same monitor over a read-only
    provider, which adds no nodes: its summary names every node's type after the node itself.
    """
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = json.loads(status).get("autoscaler_report") if status else None
    if report is not None:
        node_types = (report.get("node_type_mapping") or {}).items()
        read_only = node_types and all(kind == format_readonly_node_type(node) for node, kind in node_types)
        return not read_only
    return is_autoscaler_v2(fetch_from_server=True)
