"""Builds real MLflow records of sweeps in the schema the sweep engine writes (see the project brief), for the
dashboards tests: a parent run per sweep, a child run per trial with tags, params, metric histories."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from mixer_core.checkpoint import save_checkpoint
from mixer_core.model import count_parameters, create_mixer

FRACTIONS = (0.125, 0.25, 0.5, 1.0)
FULL_TRAIN_SIZE = 8000
# Error laws the synthetic accuracies follow, E(D) = a·D^(-b) + c, per model.
TRUE_LAWS = {"Ti/4": (3.0, 0.45, 0.04), "resnet18": (2.0, 0.35, 0.03)}
# A Mixer family whose sizes follow one joint law E(N, D) = E_inf + A·N^(-alpha) + B·D^(-beta).
FAMILY_PARAMS = {"S/4": 5e5, "M/4": 2e6, "B/4": 8e6, "L/4": 3e7}
TRUE_JOINT_LAW = {"E_inf": 0.02, "A": 5.0, "alpha": 0.35, "B": 3.0, "beta": 0.45}
FIVE_FRACTIONS = (0.0625, 0.125, 0.25, 0.5, 1.0)


def true_error(model: str, train_size: int) -> float:
    """The error the fixture's trials of `model` follow at `train_size`, before noise."""
    if model in FAMILY_PARAMS:
        law = TRUE_JOINT_LAW
        return law["E_inf"] + law["A"] * FAMILY_PARAMS[model] ** -law["alpha"] + law["B"] * train_size ** -law["beta"]
    a, b, c = TRUE_LAWS[model]
    return a * train_size ** (-b) + c


def new_store(root: Path) -> tuple[MlflowClient, str]:
    """A fresh sqlite tracking store under `root` and its tracking URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri), uri


def save_mixer_checkpoint(directory: Path) -> Path:
    """A Ti/4 checkpoint for 28×28 grey images, saved the way the training loop saves one."""
    torch.manual_seed(0)
    model = create_mixer("Ti/4", num_classes=10, image_size=28, in_chans=1)
    return save_checkpoint(directory, {"model": model.state_dict(), "position": {"step": 10}})


def record_sweep(
    client: MlflowClient,
    root: Path,
    sweep: str,
    *,
    experiment: str = "mixer-tests",
    models: dict[str, tuple[float, ...]] | None = None,
    permutations: tuple[str, ...] = ("none",),
    checkpoint: Path | None = None,
    failed_trials: int = 0,
    seeds: int = 1,
    seed: int = 0,
    downstream: str | None = None,
) -> str:
    """Record a finished sweep: `seeds` trials per model × fraction × permutation whose final test accuracy is
    1 − true_error(model, train_size) plus noise, and `failed_trials` extra FAILED trials. Returns the parent id.
    With `downstream` (a few-shot label) trials also log that dataset's 5-shot curve and the `best/` metrics, as
    `train` does with `eval.fewshot_datasets` and `eval.fewshot_every_evaluation`."""
    rng = np.random.default_rng(seed)
    models = models or {name: FRACTIONS for name in TRUE_LAWS}
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(
        experiment, artifact_location=(root / "mlartifacts").as_uri()
    )
    parent = client.create_run(experiment_id, run_name=sweep, tags={
        "mixer.sweep": sweep, "mixer.role": "sweep", "mixer.spec_hash": "3f2a9c1be0d4", "mlflow.source.git.commit": "abc1234",
    })
    parent_id = parent.info.run_id
    now = int(time.time() * 1000)
    index = 0
    for model, fractions in models.items():
        for permutation, fraction, train_seed in itertools.product(permutations, fractions, range(seeds)):
            train_size = int(fraction * FULL_TRAIN_SIZE)
            accuracy = 1 - true_error(model, train_size) + rng.normal(0, 0.004)
            if permutation != "none" and model == "resnet18":
                accuracy -= 0.1  # convolutions lose their spatial prior on permuted inputs
            is_mixer = not model.startswith("resnet")
            macs = 6e6 if is_mixer else 1.8e7
            params_count = FAMILY_PARAMS.get(model) or (count_parameters(create_mixer("Ti/4", 10, 28, 1))
                                                         if is_mixer else 11_000_000)
            tags = {
                "mlflow.parentRunId": parent_id, "mixer.sweep": sweep, "mixer.role": "trial",
                "mixer.trial_id": f"trial_{index:03d}", "mixer.model": model,
                "mixer.patch_size": "4" if is_mixer else "", "mixer.data_fraction": str(fraction),
                "mixer.params": str(int(params_count)),
                "mixer.gmacs": str(macs / 1e9), "mixer.permutation": permutation,
            }
            if is_mixer and checkpoint is not None:
                tags["mixer.checkpoint"] = str(checkpoint)
            run = client.create_run(experiment_id, run_name=f"trial_{index:03d}", tags=tags)
            # As the sweep engine logs the flattened config: an unset timm_model is the string 'None'.
            params = {"model.variant": "Ti/4", "model.timm_model": "None" if is_mixer else model,
                      "data.fraction": str(fraction), "data.permutation": permutation, "train.lr": "0.001",
                      "data.name": "mnist_idx", "train.seed": str(train_seed)}
            epochs = 5
            examples = epochs * train_size
            final = {"train_size": train_size, "test_top1": accuracy, "train_flops": 6 * macs * examples,
                     "images_per_sec": (900.0 if is_mixer else 400.0) * (1 + rng.normal(0, 0.05)),
                     "fewshot_5shot_top1": accuracy - 0.2 + rng.normal(0, 0.01), "wall_seconds": examples / 800}
            curve = [Metric("val_top1", float(accuracy * (1 - 0.5 ** (e + 1))), now, e * 10) for e in range(epochs)]
            if downstream:
                transfer = f"fewshot_{downstream}_5shot_top1"
                curve += [Metric(transfer, float(accuracy * (0.8 - 0.5 ** (e + 1))), now, e * 10)
                          for e in range(epochs)]
                final |= {"best/step": (epochs - 1) * 10.0, "best/test_top1": accuracy + 0.01,
                          f"best/{transfer}": accuracy * 0.8}
            client.log_batch(
                run.info.run_id,
                metrics=[*curve, *(Metric(k, float(v), now, epochs * 10) for k, v in final.items())],
                params=[Param(k, v) for k, v in params.items()],
            )
            client.set_terminated(run.info.run_id, "FINISHED")
            index += 1
    for _ in range(failed_trials):
        run = client.create_run(experiment_id, tags={
            "mlflow.parentRunId": parent_id, "mixer.sweep": sweep, "mixer.role": "trial",
            "mixer.trial_id": f"trial_{index:03d}", "mixer.model": "Ti/4", "mixer.permutation": "none",
            "mixer.data_fraction": "1.0",
        })
        client.log_batch(run.info.run_id, tags=[RunTag("note", "diverged")])
        client.set_terminated(run.info.run_id, "FAILED")
        index += 1
    client.set_terminated(parent_id, "FINISHED")
    return parent_id


_SHARED: dict[str, tuple[str, Path]] = {}


def shared_store(tmp_path_factory) -> tuple[str, Path]:
    """One sqlite store per test session holding the sweeps every dashboards test reads, and its root folder:
    creating an MLflow database runs its migrations, which costs seconds, so the tests share one.

    Sweeps: `fractions` (Ti/4 and resnet18 × 4 fractions, a Ti/4 checkpoint, one FAILED trial), `perm`
    (a permutation axis), `sparse` (resnet18 on only 2 fractions, too few for a fit), and `sizes` (four Mixer
    sizes on one joint law and resnet18, 5 fractions, 2 seeds each), `transfer` (downstream 5-shot curves, `best/` metrics and a permutation axis), and `transfer_five` (the same
    metrics, no permutation, 5 fractions: enough to hold the largest back)."""
    if "store" not in _SHARED:
        root = tmp_path_factory.mktemp("mlflow_store")
        client, uri = new_store(root)
        checkpoint = save_mixer_checkpoint(root / "checkpoints" / "trial_003")
        record_sweep(client, root, "fractions", checkpoint=checkpoint, failed_trials=1)
        record_sweep(client, root, "perm", permutations=("none", "patches", "pixels"),
                     models={"Ti/4": (0.5, 1.0), "resnet18": (0.5, 1.0)}, checkpoint=checkpoint, seed=1)
        record_sweep(client, root, "sparse", models={"Ti/4": FRACTIONS, "resnet18": (0.5, 1.0)}, seed=2)
        record_sweep(client, root, "sizes", models={name: FIVE_FRACTIONS for name in (*FAMILY_PARAMS, "resnet18")},
                     seeds=2, seed=3)
        record_sweep(client, root, "transfer", permutations=("none", "pixels"), seed=3, downstream="digits")
        record_sweep(client, root, "transfer_five", models={name: FIVE_FRACTIONS for name in TRUE_LAWS}, seed=4,
                     downstream="digits")
        _SHARED["store"] = (uri, root)
    return _SHARED["store"]
