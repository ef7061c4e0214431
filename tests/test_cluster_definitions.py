"""The cloud definitions in cluster/: Ray cluster-launcher YAMLs pass Ray's own validation, KubeRay manifests
carry the fields KubeRay requires, the MLflow server definition parses with MLflow's own CLI and auth-config
reader, and nothing is exposed outside its cluster by default.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from mlflow.cli import server as mlflow_server_command
from ray._private.accelerators.tpu import TPUAcceleratorManager
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import start as ray_start_command

from sweeps.engine.ray_session import WORKER_SOFT_LIMIT_ENV, worker_soft_limit
from sweeps.spec import load_spec

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER_YAMLS = sorted((CLUSTER / "launcher").glob("*.yaml"))
RAY_START_OPTIONS = {option for param in ray_start_command.params for option in param.opts}
PUBLIC_SERVICE_TYPES = {"NodePort", "LoadBalancer"}


def load_documents(path: Path) -> list[dict]:
    """Every YAML document of a manifest file (empty documents dropped)."""
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def ray_start_invocations(command: str) -> list[list[str]]:
    """The argument lists of every `ray start` in a shell command line (up to the next `;`, `&&`, `|`, ...)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    invocations = []
    for index in range(len(words) - 1):
        if words[index : index + 2] == ["ray", "start"]:
            arguments = []
            for word in words[index + 2 :]:
                if set(word) <= set(";&|()<>"):
                    break
                arguments.append(word)
            invocations.append(arguments)
    return invocations


def soft_limit_set_by(command: str) -> int:
    """The worker soft limit a shell command line sets for its `ray start` on this machine (bash evaluates it)."""
    match = re.search(rf"{WORKER_SOFT_LIMIT_ENV}=(\$\(\(.*?\)\))", command)
    assert match, f"no {WORKER_SOFT_LIMIT_ENV}=$((...)) in {command!r}"
    return int(subprocess.run(["bash", "-c", f"echo {match.group(1)}"], capture_output=True, text=True).stdout)


def option_names(arguments: list[str]) -> set[str]:
    """`--port=6379 --head` -> {"--port", "--head"}."""
    return {argument.split("=", 1)[0] for argument in arguments if argument.startswith("--")}


# ------------------------------------------------------------------------------------- ray up launcher YAMLs


def test_there_are_launcher_yamls_for_aws_gcp_gpus_and_a_tpu_pod():
    assert {path.name for path in LAUNCHER_YAMLS} == {"aws-gpu.yaml", "gcp-gpu.yaml", "gcp-tpu-pod.yaml"}


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda path: path.name)
def test_launcher_yaml_passes_ray_validation(path):
    # What `ray up` does before touching the cloud: merge the provider's defaults, then validate.
    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


def test_ray_validation_rejects_a_broken_launcher_yaml():
    config = prepare_config(yaml.safe_load(LAUNCHER_YAMLS[0].read_text()))
    broken = copy.deepcopy(config)
    broken["available_node_types"]["head"]["min_workers"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda path: path.name)
def test_launcher_yaml_starts_ray_with_real_options_token_auth_and_a_loopback_dashboard(path):
    config = yaml.safe_load(path.read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [(command, args) for command in config[key] for args in ray_start_invocations(command)]
        assert starts, f"{path.name}: {key} never runs `ray start`"
        for command, arguments in starts:
            unknown = option_names(arguments) - RAY_START_OPTIONS
            assert not unknown, f"{path.name}: {key}: not `ray start` options: {unknown}"
            assert "RAY_AUTH_MODE=token" in command, f"{path.name}: {key} starts Ray without token auth"
            assert soft_limit_set_by(command) == worker_soft_limit(os.cpu_count()), path.name
    head_arguments = [args for command in config["head_start_ray_commands"] for args in ray_start_invocations(command)]
    assert all("--dashboard-host=127.0.0.1" in arguments for arguments in head_arguments)
    # Every node needs the token the local `ray get-auth-token --generate` wrote.
    assert any(local.endswith(".ray/auth_token") for local in config["file_mounts"].values())
    # and the MLflow login head-mlflow.sh starts its server with, which trials log in with.
    assert any(local == "~/.mlflow/credentials" for local in config["file_mounts"].values())


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda path: path.name)
def test_launcher_yaml_installs_the_project_it_syncs_and_runs_mlflow_on_the_head(path):
    config = yaml.safe_load(path.read_text())
    project = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    assert any(f"-e {project}" in command for command in config["setup_commands"])
    # The head's server runs MLflow's basic-auth app, which needs the auth extra.
    assert any("'mlflow[auth]>=3.17'" in shlex.split(command, posix=False)
               for command in config["head_setup_commands"])
    # The head's MLflow server keeps artifacts in the cloud's object store.
    mlflow_commands = [command for command in config["head_start_ray_commands"] if "head-mlflow.sh" in command]
    assert len(mlflow_commands) == 1
    script, artifacts_uri = shlex.split(mlflow_commands[0])[1:]
    assert script == f"{project}/cluster/launcher/head-mlflow.sh"
    assert (CLUSTER / "launcher" / "head-mlflow.sh").is_file()
    assert artifacts_uri.split("://")[0] == ("s3" if config["provider"]["type"] == "aws" else "gs")


def test_tpu_pod_yaml_asks_for_a_slice_ray_recognises_and_installs_torch_tpu_on_its_hosts_only():
    config = yaml.safe_load((CLUSTER / "launcher" / "gcp-tpu-pod.yaml").read_text())
    tpu_types = [node for node in config["available_node_types"].values() if "acceleratorType" in node["node_config"]]
    assert len(tpu_types) == 1
    accelerator = tpu_types[0]["node_config"]["acceleratorType"]
    assert TPUAcceleratorManager.is_valid_tpu_accelerator_type(accelerator)
    # torch_tpu and libtpu (the `tpu` extra) on the TPU hosts, never on the head, where `import torch` would abort.
    assert any("[tpu]" in command for command in config["worker_setup_commands"])
    assert not any("tpu" in command for key in ("setup_commands", "head_setup_commands") for command in config[key])


def test_tpu_extra_pins_torch_tpu_and_libtpu_that_pair_with_our_torch():
    """torch-tpu 0.2.0 requires torch >= 2.11, <= 2.15 and libtpu >= 0.0.50 (its wheel's metadata)."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())["project"]
    tpu = {requirement.name: requirement.specifier for requirement in map(Requirement, project["optional-dependencies"]["tpu"])}
    assert set(tpu) == {"torch-tpu", "libtpu"}
    torch_pin = next(Requirement(r) for r in project["dependencies"] if r.startswith("torch>"))
    assert "2.14.1" in torch_pin.specifier and "0.2.0" in tpu["torch-tpu"]
    assert all(Version(spec.version) >= Version("0.0.50") for spec in tpu["libtpu"])


def test_kuberay_tpu_example_has_what_kuberay_requires_and_asks_gke_for_a_v6e_slice():
    (cluster,) = load_documents(CLUSTER / "kuberay" / "raycluster-tpu.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    check_ray_cluster_spec(cluster["spec"], "raycluster-tpu.yaml")
    (group,) = cluster["spec"]["workerGroupSpecs"]
    selector = group["template"]["spec"]["nodeSelector"]
    assert TPUAcceleratorManager.is_valid_tpu_accelerator_topology("v6e", selector["cloud.google.com/gke-tpu-topology"])
    (worker,) = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["google.com/tpu"] == "8"


# ------------------------------------------------------------------------------------------ KubeRay manifests


def check_ray_cluster_spec(spec: dict, where: str) -> None:
    """The fields KubeRay's RayCluster CRD requires, and values it accepts (rayStartParams are strings)."""
    head = spec["headGroupSpec"]
    groups = [("headGroupSpec", head)] + [
        (f"workerGroupSpecs[{index}]", group) for index, group in enumerate(spec.get("workerGroupSpecs", []))
    ]
    for name, group in groups:
        params = group["rayStartParams"]
        assert all(isinstance(value, str) for value in params.values()), f"{where}: {name}.rayStartParams not strings"
        unknown = {f"--{key}" for key in params} - RAY_START_OPTIONS
        assert not unknown, f"{where}: {name}.rayStartParams: not `ray start` options: {unknown}"
        containers = group["template"]["spec"]["containers"]
        assert containers and all(container["name"] and container["image"] for container in containers)
        mounts = {mount["mountPath"] for container in containers for mount in container.get("volumeMounts", [])}
        assert "/mnt/shared" in mounts, f"{where}: {name} lacks the shared storage checkpoints need"
    assert head.get("serviceType", "ClusterIP") not in PUBLIC_SERVICE_TYPES and not head.get("enableIngress")
    assert spec["workerGroupSpecs"], f"{where}: no worker groups"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        for container in group["template"]["spec"]["containers"]:
            # KubeRay gives Ray the pod's CPU limit; the node keeps worker processes for that many CPUs.
            env = {variable["name"]: variable.get("value") for variable in container.get("env", [])}
            cpus = int(container["resources"]["limits"]["cpu"])
            assert env.get(WORKER_SOFT_LIMIT_ENV) == str(worker_soft_limit(cpus)), f"{where}: {group['groupName']}"


def test_raycluster_manifest_has_what_kuberay_requires():
    (cluster,) = load_documents(CLUSTER / "kuberay" / "raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["metadata"]["name"]
    check_ray_cluster_spec(cluster["spec"], "raycluster.yaml")


def test_rayjob_runs_a_sweep_spec_on_the_same_cluster_spec():
    (job,) = load_documents(CLUSTER / "kuberay" / "rayjob.yaml")
    (cluster,) = load_documents(CLUSTER / "kuberay" / "raycluster.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["metadata"]["name"]
    spec = job["spec"]
    check_ray_cluster_spec(spec["rayClusterSpec"], "rayjob.yaml")
    assert spec["rayClusterSpec"] == cluster["spec"], "rayjob.yaml and raycluster.yaml describe different clusters"
    assert spec["shutdownAfterJobFinishes"] is True
    entrypoint = shlex.split(spec["entrypoint"])
    assert entrypoint[:3] == ["mixer", "sweep", "run"]
    # The spec ships in the image's working directory and is valid with the job's overrides; checkpoints go
    # to the shared volume.
    overrides = [entrypoint[index + 1] for index, word in enumerate(entrypoint) if word == "--set"]
    sweep = load_spec(CLUSTER.parent / entrypoint[3], overrides)
    assert sweep.storage_path == "/mnt/shared/ray_results" and sweep.resources.use_gpu


def test_shared_storage_claim_is_read_write_many_and_named_by_the_ray_pods():
    (claim,) = load_documents(CLUSTER / "kuberay" / "shared-storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    (cluster,) = load_documents(CLUSTER / "kuberay" / "raycluster.yaml")
    claims = {volume["persistentVolumeClaim"]["claimName"] for volume in cluster["spec"]["headGroupSpec"]["template"]
              ["spec"]["volumes"] if "persistentVolumeClaim" in volume}
    assert claims == {claim["metadata"]["name"]}


def kuberay_cluster_specs() -> dict[str, dict]:
    """The Ray cluster spec of raycluster.yaml and of rayjob.yaml, by file name."""
    (cluster,) = load_documents(CLUSTER / "kuberay" / "raycluster.yaml")
    (job,) = load_documents(CLUSTER / "kuberay" / "rayjob.yaml")
    return {"raycluster.yaml": cluster["spec"], "rayjob.yaml": job["spec"]["rayClusterSpec"]}


def pod_labels(spec: dict) -> list[dict[str, str]]:
    """The labels of the head's and each worker group's pods."""
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [group["template"].get("metadata", {}).get("labels", {}) for group in groups]


def test_kuberay_clusters_require_rays_token_from_a_kubernetes_secret():
    for name, spec in kuberay_cluster_specs().items():
        assert spec["authOptions"] == {"mode": "token", "secretName": "mixer-ray-token"}, name
    # The submitter runs `ray job submit` against the cluster, so it carries the same token.
    (job,) = load_documents(CLUSTER / "kuberay" / "rayjob.yaml")
    (submitter,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    env = {variable["name"]: variable for variable in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "mixer-ray-token", "key": "auth_token"}


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels only) selects pods labelled `labels`."""
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is read here: {selector}"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def test_network_policy_admits_only_the_clusters_pods_and_on_the_job_api_the_operator_and_submitter():
    (policy,) = load_documents(CLUSTER / "kuberay" / "network-policy.yaml")
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    for name, cluster_spec in kuberay_cluster_specs().items():
        assert all(selects(spec["podSelector"], labels) for labels in pod_labels(cluster_spec)), name
    (job,) = load_documents(CLUSTER / "kuberay" / "rayjob.yaml")
    submitter_labels = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    operator_labels = {"app.kubernetes.io/name": "kuberay-operator"}  # the KubeRay Helm chart's operator pod
    ray_pod_labels = pod_labels(kuberay_cluster_specs()["raycluster.yaml"])[0]
    for rule in spec["ingress"]:
        sources = rule["from"]  # a rule without `from` would admit every source
        assert all(set(source) <= {"podSelector", "namespaceSelector"} for source in sources), "no ipBlock"
        if any(selects(source["podSelector"], ray_pod_labels) for source in sources):
            assert "ports" not in rule and len(sources) == 1  # the cluster's own pods, on any port
            assert "namespaceSelector" not in sources[0]  # and only from the policy's own namespace
        else:
            assert rule["ports"] == [{"protocol": "TCP", "port": 8265}]
            admitted = [source for source in sources if selects(source["podSelector"], submitter_labels)
                        or selects(source["podSelector"], operator_labels)]
            assert admitted == sources
            # The operator's pods are admitted from the one namespace cluster/README.md installs it in, not any.
            for source in sources:
                if "namespaceSelector" in source:
                    namespace = source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    assert f"kuberay/kuberay-operator --namespace {namespace} " in (CLUSTER / "README.md").read_text()
    assert any(selects(source["podSelector"], submitter_labels) for rule in spec["ingress"] for source in rule["from"])


# --------------------------------------------------------------------------------- MLflow tracking server


def mlflow_documents() -> list[dict]:
    kustomization = yaml.safe_load((CLUSTER / "mlflow" / "kustomization.yaml").read_text())
    return [document for name in kustomization["resources"] for document in load_documents(CLUSTER / "mlflow" / name)]


def mlflow_container() -> dict:
    (deployment,) = [document for document in mlflow_documents() if document["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_mlflow_server_arguments_parse_with_mlflow_own_cli():
    container = mlflow_container()
    assert container["command"] == ["mlflow"] and container["args"][0] == "server"
    options = mlflow_server_command.make_context("server", list(container["args"][1:])).params
    assert options["backend_store_uri"].startswith("postgresql")
    assert options["artifacts_destination"].split("://")[0] in {"s3", "gs"}
    assert options["app_name"] == "basic-auth"
    # The service name Ray pods use must be an allowed Host header.
    assert "mlflow.mlflow.svc.cluster.local:*" in options["allowed_hosts"].split(",")


def test_mlflow_auth_config_is_read_by_mlflow_and_holds_no_secret(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config
    from mlflow.server.auth.permissions import get_permission

    (config_map,) = [document for document in mlflow_documents() if document["metadata"]["name"] == "mlflow-auth"]
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(config_map["data"]["basic_auth.ini"])
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    auth = read_auth_config()
    assert auth.database_uri.startswith("postgresql") and get_permission(auth.default_permission)
    assert auth.admin_password is None  # it comes from the mlflow-secrets Secret
    env = {variable["name"]: variable for variable in mlflow_container()["env"]}
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == f"/etc/mlflow/{ini.name}"
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "PGPASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-secrets"


def test_mlflow_kustomization_names_existing_files_and_its_image():
    kustomization = yaml.safe_load((CLUSTER / "mlflow" / "kustomization.yaml").read_text())
    assert all((CLUSTER / "mlflow" / name).is_file() for name in kustomization["resources"])
    assert {image["name"] for image in kustomization["images"]} == {mlflow_container()["image"]}


def test_network_policies_admit_only_ray_pods_to_mlflow_and_only_mlflow_to_postgres():
    documents = mlflow_documents()
    policies = {document["metadata"]["name"]: document["spec"] for document in documents
                if document["kind"] == "NetworkPolicy"}
    pods = {document["metadata"]["name"]: document["spec"]["template"]["metadata"]["labels"]
            for document in documents if document["kind"] in ("Deployment", "StatefulSet")}
    assert set(policies) == {"mlflow", "mlflow-postgres"}
    ray_pod_labels = pod_labels(kuberay_cluster_specs()["raycluster.yaml"])[0]
    for name, port, admitted in (("mlflow", 5000, ray_pod_labels), ("mlflow-postgres", 5432, pods["mlflow"])):
        spec = policies[name]
        assert selects(spec["podSelector"], pods[name]) and spec["policyTypes"] == ["Ingress"]
        (rule,) = spec["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        (source,) = rule["from"]
        assert selects(source["podSelector"], admitted) and not selects(source["podSelector"], {})
    # The Ray pods live in another namespace, named, not any.
    (ray_source,) = policies["mlflow"]["ingress"][0]["from"]
    assert ray_source["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "default"}}
    assert "namespaceSelector" not in policies["mlflow-postgres"]["ingress"][0]["from"][0]


def test_head_mlflow_script_binds_no_wildcard_and_writes_with_a_private_umask():
    script = (CLUSTER / "launcher" / "head-mlflow.sh").read_text()
    assert "0.0.0.0" not in script.replace("never on 0.0.0.0", "")
    assert '--host "$MLFLOW_HOST"' in script
    assert script.index("\numask 077") < script.index(">~/mlflow/admin-credentials")


# --------------------------------------------------------------------------------------- nothing is public


def test_no_kubernetes_service_or_ingress_is_public():
    documents = [document for path in CLUSTER.rglob("*.yaml") if "launcher" not in path.parts
                 for document in load_documents(path)]
    kinds = {document.get("kind") for document in documents}
    assert "Service" in kinds and "Ingress" not in kinds
    for document in documents:
        if document.get("kind") == "Service":
            assert document["spec"].get("type", "ClusterIP") not in PUBLIC_SERVICE_TYPES, document["metadata"]
