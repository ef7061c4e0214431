"""TPU trials: the Ray Train scaling of a TPU slice, and whether the slice's hosts can run them at all.

A trial with `resources.use_tpu` is a Ray `TorchTrainer` over one slice: one worker per chip, each bound to its
chip by the TPU runtime, in a slice Ray reserves whole (`ray.util.tpu.SlicePlacementGroup`, through
`ScalingConfig(use_tpu=True, topology=..., accelerator_type=...)`), joined by Ray's `tpu_dist` process group
(torch_tpu's). The training loop is the same loop with `train.device: tpu`.

Before a TPU sweep starts, `tpu_problem` says in one line what is missing where the trials would run: TPU
resources in the cluster (unless an autoscaler may add them), or torch_tpu / libtpu on its TPU hosts. Those hosts
are asked by name (`importlib.util.find_spec`, in a Ray task pinned to each), never by importing: on a host
without libtpu, importing torch_tpu (or torch, while torch_tpu is installed and autoloads) aborts the process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Imported where they are used: refusing on this machine must not wait for Ray, and the probe that runs on
    # each TPU host imports this module alone, in a fresh worker process, within the probe's time limit.
    import ray.train

    from sweeps.spec import Resources, SweepSpec

TPU_SOFTWARE = ("torch_tpu", "libtpu")  # module names; the `tpu` extra installs them (pyproject.toml)
# `mixer sweep run` refuses within 5 s: a host that cannot answer in 3 is not ready (a busy cluster may allow more)
PROBE_TIMEOUT_S = float(os.environ.get("MIXER_TPU_PROBE_TIMEOUT_S", "3"))


def scaling_config(resources: Resources) -> ray.train.ScalingConfig:
    """One TPU worker per chip of the `resources.tpu_topology` slice, with its CPUs."""
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=resources.workers_per_trial,
        use_tpu=True,
        topology=resources.tpu_topology,
        accelerator_type=resources.accelerator_type,
        resources_per_worker={"TPU": 1, "CPU": resources.cpus_per_worker},
    )


def missing_software() -> list[str]:
    """The TPU modules (`TPU_SOFTWARE`) this Python cannot find, found by name and never imported."""
    return [name for name in TPU_SOFTWARE if importlib.util.find_spec(name) is None]


def torch_pairing_problem() -> str | None:
    """Why the installed torch is outside the range the installed torch_tpu was built for, or None (also when
    either is missing: `missing_software` says so). Read from the packages' metadata, nothing imported."""
    from packaging.requirements import Requirement

    try:
        torch_version = importlib.metadata.version("torch")
        requirements = [Requirement(text) for text in importlib.metadata.requires("torch-tpu") or []]
    except importlib.metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        if requirement.name == "torch" and not requirement.specifier.contains(torch_version, prereleases=True):
            return f"torch {torch_version} does not pair with torch_tpu's torch{requirement.specifier}"
    return None


def host_report() -> dict[str, object]:
    """What a TPU host offers: missing TPU modules, chips the TPU runtime would see, a torch/torch_tpu mismatch."""
    from ray._private.accelerators import TPUAcceleratorManager

    return {
        "missing": missing_software(),
        "chips": TPUAcceleratorManager.get_current_node_num_accelerators(),
        "pairing": torch_pairing_problem(),
    }


def tpu_problem(spec: SweepSpec, on_cluster: bool) -> str | None:
    """Why `spec`'s TPU trials cannot run, in one line naming what is missing and where, or None.

    `on_cluster` False: the trials would run on a Ray started on this machine, so this machine is asked (before
    Ray starts). True: call after `ray.init`; the cluster's TPU resources, then each TPU host, are asked.
    """
    resources = spec.resources
    wanted = f"{resources.workers_per_trial} {resources.accelerator_type} chips ({resources.tpu_topology})"
    if not on_cluster:
        problem = _host_problem({"missing": missing_software(), "pairing": torch_pairing_problem()}, "this machine",
                                wanted)
        if problem:
            return problem
        chips = host_report()["chips"]
        return None if chips >= resources.workers_per_trial else (
            f"this machine has {chips} TPU chips, a trial needs {wanted}; run on a TPU cluster (--address) or a TPU VM"
        )
    import ray

    from sweeps.engine.autoscaling import autoscaler_running

    available = ray.cluster_resources()
    type_resource = f"accelerator_type:{resources.accelerator_type}"
    if available.get("TPU", 0) < resources.workers_per_trial or type_resource not in available:
        if autoscaler_running():
            return None  # the autoscaler may add a slice; `mixer_cli.sweep` says that trials wait for it
        return (f"the cluster has {available.get('TPU', 0):g} TPU chips"
                f"{'' if type_resource in available else ' and none of type ' + resources.accelerator_type}, "
                f"a trial needs {wanted}, and no autoscaler could add them")
    return _cluster_hosts_problem(type_resource, wanted)


def _cluster_hosts_problem(type_resource: str, wanted: str) -> str | None:
    """The first TPU host of the cluster that lacks torch_tpu or libtpu, or cannot answer in time."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    hosts = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get(type_resource)]
    probe = ray.remote(num_cpus=0)(host_report)
    reports = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
        for node in hosts
    ]
    ready, _ = ray.wait(reports, num_returns=len(reports), timeout=PROBE_TIMEOUT_S)
    for node, report in zip(hosts, reports):
        where = f"TPU host {node['NodeManagerAddress']}"
        if report not in ready:
            return f"{where} did not answer within {PROBE_TIMEOUT_S:g} s (is its raylet busy or the host down?)"
        problem = _host_problem(ray.get(report), where, wanted)
        if problem:
            return problem
    return None


def _host_problem(host: dict[str, object], where: str, wanted: str) -> str | None:
    advice = "(install mixer-sweeps[tpu] in the TPU image: cluster/launcher/gcp-tpu-pod.yaml)"
    if host["missing"]:
        return f"{' and '.join(host['missing'])} not installed on {where}, where trials on {wanted} would run {advice}"
    if host["pairing"]:
        return f"on {where}, {host['pairing']} {advice}"
    return None
