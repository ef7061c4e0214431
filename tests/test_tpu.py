"""TPU trials without TPU hardware, the way Ray's own TPU tests run: a local Ray cluster whose second node
advertises TPU chips (`TPU`, `accelerator_type:TPU-V6E`, the slice head resource and Ray's slice labels), and
Ray's TPU accelerator manager patched where this machine's chips are read.

What only a real slice shows (README, "TPUs"): torch_tpu's `tpu_dist` process group joining the workers, the
training loop's numbers on device `tpu` (bf16 autocast, DDP, the step time), and checkpoints resumed there.

The sweeps run through the `mixer` command in subprocesses: a test process joins one Ray at a time, and the
session's local Ray (`conftest.ray_address`) must stay the one the other tests use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray._private.accelerators.tpu import TPUAcceleratorManager
from ray.cluster_utils import Cluster

from sweeps.spec import SpecError, validate_spec
from sweeps.engine.tpu import tpu_problem

MIXER = str(Path(sys.executable).with_name("mixer"))


def tpu_spec(tmp_path: Path, topology: str = "2x4") -> Path:
    spec = {
        "name": "tpu_sweep",
        "base": {"model": {"variant": "Ti/4"}, "data": {"name": "digits", "batch_size": 64},
                 "train": {"epochs": 1}, "eval": {"fewshot_shots": []}},
        "resources": {"use_tpu": True, "tpu_topology": topology, "accelerator_type": "TPU-V6E",
                      "cpus_per_worker": 0.5},
        "storage_path": str(tmp_path / "ray_results"),
    }
    path = tmp_path / "tpu.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def fake_tpu_software(root: Path, torch_range: str = ">=2.11.0,<=2.15.0") -> Path:
    """Stand-ins for `torch_tpu` and `libtpu`, found by name as the refusal looks for them. Importing the
    torch_tpu stand-in only names torch's extension device `tpu`, as torch_tpu's loader does (Ray Train's TPU
    device manager imports it and asks for that device); it has no kernels. Its distribution's metadata asks for
    torch in `torch_range` (0.2.0's own range by default)."""
    for name, code in (("torch_tpu", "import torch\n\ntorch.utils.rename_privateuse1_backend('tpu')\n"),
                       ("libtpu", "raise ImportError('a test stand-in, never to be imported')\n")):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(code)
    metadata = root / "torch_tpu-0.2.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch-tpu\nVersion: 0.2.0\n"
                                       f"Requires-Dist: torch{torch_range}\n")
    return root


def run_mixer(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`mixer ARGS` run in `cwd` (where its MLflow store would be), and its wall-clock seconds. A TPU host has
    30 s to answer the probe: on these shared test cores a fresh worker process takes longer than a cluster's 3."""
    started = time.perf_counter()
    result = subprocess.run([MIXER, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
                                 "MIXER_TPU_PROBE_TIMEOUT_S": "30"})
    return result, time.perf_counter() - started


def test_a_tpu_spec_is_one_worker_per_chip_on_device_tpu(tmp_path):
    spec = validate_spec(yaml.safe_load(tpu_spec(tmp_path).read_text()))
    assert spec.resources.workers_per_trial == 8
    assert spec.base.train.device == "tpu"
    data = yaml.safe_load(tpu_spec(tmp_path).read_text())
    data["resources"]["workers_per_trial"] = 4
    with pytest.raises(SpecError, match="a 2x4 slice runs one worker per chip: 8"):
        validate_spec(data)
    data["resources"].pop("workers_per_trial")
    data["resources"]["use_gpu"] = True
    with pytest.raises(SpecError, match="use_tpu and use_gpu are both true"):
        validate_spec(data)


def test_a_tpu_sweep_on_a_machine_without_torch_tpu_is_refused_in_one_line_with_exit_2(tmp_path):
    result, seconds = run_mixer("sweep", "run", str(tpu_spec(tmp_path)), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "resources.use_tpu: torch_tpu and libtpu not installed on this machine" in line
    assert seconds < 5, f"refused after {seconds:.1f} s"
    assert not (tmp_path / "ray_results").exists()


def test_on_a_tpu_vm_the_refusal_counts_its_chips(tmp_path, monkeypatch):
    """This machine with torch_tpu and libtpu installed, and Ray's TPU accelerator manager patched to see chips."""
    monkeypatch.syspath_prepend(str(fake_tpu_software(tmp_path / "site")))
    spec = validate_spec(yaml.safe_load(tpu_spec(tmp_path).read_text()))
    monkeypatch.setattr(TPUAcceleratorManager, "get_current_node_num_accelerators", staticmethod(lambda: 4))
    assert tpu_problem(spec, on_cluster=False) == (
        "this machine has 4 TPU chips, a trial needs 8 TPU-V6E chips (2x4); run on a TPU cluster (--address) "
        "or a TPU VM")
    monkeypatch.setattr(TPUAcceleratorManager, "get_current_node_num_accelerators", staticmethod(lambda: 8))
    assert tpu_problem(spec, on_cluster=False) is None


def test_a_torch_tpu_built_for_another_torch_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(fake_tpu_software(tmp_path / "site", torch_range=">=2.5,<2.6")))
    spec = validate_spec(yaml.safe_load(tpu_spec(tmp_path).read_text()))
    problem = tpu_problem(spec, on_cluster=False)
    assert problem.startswith("on this machine, torch 2.14.1") and "does not pair with torch_tpu's torch<2.6,>=2.5" in problem


@pytest.fixture
def fake_tpu_cluster():
    """A head without TPUs; `add_slice(env)` adds a one-host v6e slice of 1 chip (topology 1x1) as Ray labels it."""
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})

    def add_slice(env_vars: dict[str, str]) -> None:
        cluster.add_node(
            num_cpus=1,
            resources={"TPU": 1, "accelerator_type:TPU-V6E": 1, "TPU-v6e-1-head": 1},
            labels={"ray.io/tpu-slice-name": "slice-a", "ray.io/tpu-worker-id": "0",
                    "ray.io/tpu-pod-type": "v6e-1", "ray.io/tpu-topology": "1x1"},
            env_vars={"TPU_NAME": "slice-a", "TPU_WORKER_ID": "0", "TPU_ACCELERATOR_TYPE": "v6e-1",
                      "TPU_TOPOLOGY": "1x1", **env_vars},
        )
        cluster.wait_for_nodes()

    cluster.add_slice = add_slice
    yield cluster
    cluster.shutdown()


def test_on_a_cluster_the_refusal_names_missing_tpus_then_the_host_without_torch_tpu(tmp_path, fake_tpu_cluster):
    spec = str(tpu_spec(tmp_path, topology="1x1"))
    result, _ = run_mixer("sweep", "run", spec, "--address", fake_tpu_cluster.address, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "resources.use_tpu: the cluster has 0 TPU chips and none of type TPU-V6E, a trial needs 1 TPU-V6E chips "
        "(1x1), and no autoscaler could add them")

    fake_tpu_cluster.add_slice({})  # a TPU host whose Python has neither torch_tpu nor libtpu
    result, seconds = run_mixer("sweep", "run", spec, "--address", fake_tpu_cluster.address, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "resources.use_tpu: torch_tpu and libtpu not installed on TPU host " in result.stderr.splitlines()[-1]
    print(f"refused on the cluster after {seconds:.1f} s")


WIRING = """
import json, sys
import ray
from ray.train.torch import TorchConfig, TorchTrainer
from sweeps.spec import load_spec
from sweeps.engine.tpu import tpu_problem
from sweeps.engine.trial import scaling_config

def where_i_run(config):
    # Ray Train V2 keeps no metrics without a checkpoint: the worker writes where it ran (the cluster is local).
    context = ray.get_runtime_context()
    with open(config["out"], "w") as out:
        json.dump({"node": context.get_node_id(), "tpu_ids": context.get_accelerator_ids()["TPU"],
                   "world_size": ray.train.get_context().get_world_size()}, out)

ray.init(address=sys.argv[2])
spec = load_spec(sys.argv[1])
scaling = scaling_config(spec.resources)
default_backend = TorchTrainer(where_i_run, scaling_config=scaling).backend_config.backend
# torch_tpu's tpu_dist process group needs real chips; gloo stands in for it on the reserved slice.
TorchTrainer(where_i_run, train_loop_config={"out": sys.argv[3]}, scaling_config=scaling,
             torch_config=TorchConfig(backend="gloo")).fit()
tpu_nodes = [n["NodeID"] for n in ray.nodes() if n["Resources"].get("TPU")]
print(json.dumps({"problem": tpu_problem(spec, on_cluster=True), "backend": default_backend,
                  "use_tpu": scaling.use_tpu, "topology": scaling.topology, "accelerator": scaling.accelerator_type,
                  "worker": json.load(open(sys.argv[3])), "tpu_nodes": tpu_nodes}))
"""


def test_a_tpu_trial_reserves_the_slice_and_runs_one_worker_per_chip_there(tmp_path, fake_tpu_cluster):
    """With torch_tpu and libtpu on the TPU host (stand-ins), nothing is refused, and the trial's Ray Train
    scaling reserves the slice through Ray's TPU support, on the tpu_dist backend."""
    site = fake_tpu_software(tmp_path / "site")
    fake_tpu_cluster.add_slice({"PYTHONPATH": f"{site}:{os.environ.get('PYTHONPATH', '')}"})
    spec = tpu_spec(tmp_path, topology="1x1")
    result = subprocess.run([sys.executable, "-c", WIRING, str(spec), fake_tpu_cluster.address,
                             str(tmp_path / "worker.json")],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "MIXER_TPU_PROBE_TIMEOUT_S": "30"})
    assert result.returncode == 0, result.stderr[-3000:]
    wiring = json.loads(result.stdout.strip().splitlines()[-1])
    assert wiring["problem"] is None
    assert (wiring["backend"], wiring["use_tpu"], wiring["topology"], wiring["accelerator"]) == (
        "tpu_dist", True, "1x1", "TPU-V6E")
    assert wiring["worker"]["world_size"] == 1
    assert wiring["worker"]["node"] in wiring["tpu_nodes"] and len(wiring["worker"]["tpu_ids"]) == 1
