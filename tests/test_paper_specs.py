"""The shipped paper-scale specs rehearsed as shipped: only sizes and paths overridden, through `mixer sweep run` on a
real local Ray (two DDP workers per trial, streamed multi-label shards), with a generated ImageNet-shaped image
folder as the few-shot set; and every model's head started alike."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from image_folders import write_jpeg_folder
from PIL import Image

from mixer_core.config import DataConfig, ModelConfig
from mixer_core.data.convert import convert
from mixer_core.data.fractions import subset_ranks
from mixer_core.model import create_mixer

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
JFT_CLASSES = 6
# Tiny models of the line-up's families (Mixer, ViT, BiT), each with its recipe's lr and weight decay.
TINY_RECIPES = [
    {"label": "Mixer-Ti/4", "model.variant": "Ti/4", "train.lr": 0.003, "train.weight_decay": 0.03},
    {"label": "ViT-Ti/8", "model.timm_model": "vit_tiny_patch16_224", "model.timm_patch_size": 8,
     "train.lr": 0.0008, "train.weight_decay": 0.1},
    {"label": "BiT-R50x1", "model.timm_model": "resnetv2_50x1_bit", "train.lr": 0.001, "train.weight_decay": 0.1},
]


def _jpeg(rng: np.random.Generator, classes: list[int]) -> bytes:
    side = int(rng.integers(36, 48))
    colour = np.array([40 * classes[0], 120, 250 - 40 * classes[0]])
    pixels = (rng.integers(0, 48, size=(side, side, 3)) + colour).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def write_multilabel_shards(dest: Path, counts: dict[str, int]) -> Path:
    """JFT-shaped shards: train/val/test Parquet of JPEGs whose labels are lists of one or two classes."""
    rng = np.random.default_rng(0)
    dest.mkdir(parents=True)
    for split, count in counts.items():
        keys = [f"{split}/{index:05d}" for index in range(count)]
        labels = [[i % JFT_CLASSES] + ([JFT_CLASSES - 1] if i % 3 == 0 else []) for i in range(count)]
        ranks = subset_ranks(keys) if split == "train" else np.full(count, np.nan)
        pq.write_table(pa.table({
            "key": keys,
            "label": pa.array(labels, pa.list_(pa.int64())),
            "image": pa.array([_jpeg(rng, label) for label in labels], pa.binary()),
            "subset_rank": ranks,
        }), dest / f"{split}-00000-of-00001.parquet")
    splits = {split: {"count": count, "shards": [f"{split}-00000-of-00001.parquet"]} for split, count in counts.items()}
    manifest = {"format": "mixer-parquet/2", "classes": [str(c) for c in range(JFT_CLASSES)], "channels": 3,
                "num_classes": JFT_CLASSES, "splits": splits}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def write_imagenet_folder(root: Path, per_class: int, classes: int = 4) -> Path:
    """ImageNet's layout: train/<class>/*.jpg and val/<class>/*.jpg."""
    write_jpeg_folder(root / "train", count=per_class * classes, classes=classes, sides=(40, 64))
    write_jpeg_folder(root / "val", count=2 * classes, classes=classes, sides=(40, 64), seed=1)
    return root


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paper")
    imagenet = write_imagenet_folder(root / "imagenet", per_class=6)
    convert(DataConfig(name="imagefolder", path=str(imagenet)), str(root / "imagenet-parquet"), shard_size=8,
            processes=1)
    return {"jft": write_multilabel_shards(root / "jft", {"train": 48, "val": 4, "test": 4}), "imagenet": imagenet,
            "imagenet-parquet": root / "imagenet-parquet"}


def rehearsal_overrides(paper_data: dict[str, Path], storage: Path) -> list[str]:
    """Sizes and paths of a paper-scale spec brought down to two CPU workers and a few steps."""
    fewshot = [{"name": "imagefolder", "path": str(paper_data["imagenet"]), "label": "imagenet", "image_size": 32,
                "eval_resize": 36}]
    settings = {
        "base.data.path": str(paper_data["jft"]), "base.data.image_size": 32, "base.data.eval_resize": 36,
        "base.data.batch_size": 4, "base.data.loader_processes": 1, "base.data.shuffle_buffer": 8,
        "base.train.examples": 12, "base.train.warmup_steps": 1, "base.train.checkpoint_every_epochs": None,
        "base.eval.max_examples": 4,
        "base.eval.fewshot_datasets": fewshot, "base.data.permutation_patch_size": 4,
        "resources.use_gpu": False, "resources.gpus_per_worker": 0, "resources.workers_per_trial": 2,
        # one trial at a time, its two workers on one CPU, the other CPU for its decoding task
        "resources.cpus_per_worker": 0.5, "resources.max_concurrent_trials": 1, "storage_path": str(storage),
    }
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def _finished_trials(mlflow_store: str, sweep: str) -> list:
    from sweeps.tracking import queries

    parent = queries.find_sweep_run(mlflow_store, sweep)
    return queries.trial_runs(mlflow_store, parent.info.experiment_id, parent.info.run_id)


def _assert_every_trial_scored(runs: list, count: int) -> None:
    assert len(runs) == count
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags
        assert 0.0 <= run.data.metrics["best/fewshot_imagenet_5shot_top1"] <= 1.0


def test_jft_subsets_rehearses_as_shipped(ray_address, mlflow_store, paper_data, tmp_path):
    from mixer_cli import main

    subsets = [{"label": "50%", "data.fraction": 0.5, "train.eval_every_steps": 2},
               {"label": "100%", "data.fraction": 1.0, "train.eval_every_steps": 2}]
    args = ["sweep", "run", str(SWEEPS / "jft_subsets.yaml"), *rehearsal_overrides(paper_data, tmp_path / "ray"),
            "--set", f"grid.recipe={json.dumps(TINY_RECIPES)}", "--set", f"grid.subset={json.dumps(subsets)}",
            "--address", ray_address]
    assert main(args) == 0
    _assert_every_trial_scored(_finished_trials(mlflow_store, "jft_subsets"), 6)


def test_permutation_rehearses_as_shipped(ray_address, mlflow_store, paper_data, tmp_path):
    from mixer_cli import main

    recipes = [TINY_RECIPES[0], TINY_RECIPES[2]]
    args = ["sweep", "run", str(SWEEPS / "permutation.yaml"), *rehearsal_overrides(paper_data, tmp_path / "ray"),
            "--set", f"grid.recipe={json.dumps(recipes)}", "--set", "base.train.eval_every_steps=2",
            "--set", "grid.data.permutation=[patches_and_pixels_within_patches, pixels]", "--address", ray_address]
    assert main(args) == 0
    _assert_every_trial_scored(_finished_trials(mlflow_store, "permutation"), 4)


@pytest.mark.parametrize("study", ["imagenet", "regularization", "finetune_highres"])
def test_the_imagenet_studies_rehearse_as_shipped(ray_address, mlflow_store, paper_data, tmp_path, study):
    from mixer_cli import main

    sizes = {  # one small trial of each grid, two of the TPE search (ASHA's rungs brought down to its steps)
        "imagenet": {"grid.model.variant": ["Ti/4"], "base.train.eval_every_steps": 2},
        "regularization": {"base.model.variant": "Ti/4", "num_samples": 2, "scheduler.max_t": 2,
                           "scheduler.grace_period": 1, "base.train.eval_every_epochs": 1},
        "finetune_highres": {"base.model.variant": "Ti/4", "grid.train.lr": [0.003], "grid.train.steps": [4],
                             "base.train.examples": None, "base.train.warmup_steps": 1, "base.train.init_from": str(tmp_path / "ti4_16px.pth")},
    }[study]
    # fine-tuning starts from Ti/4 weights of 16 px images, as the study starts from 224 px ones, and doubles it
    torch.save(create_mixer("Ti/4", num_classes=10, image_size=16).state_dict(), tmp_path / "ti4_16px.pth")
    args = ["sweep", "run", str(SWEEPS / f"{study}.yaml"), *rehearsal_overrides(paper_data, tmp_path / "ray"),
            "--set", f"base.data.path={paper_data['imagenet-parquet']}", "--address", ray_address]
    args += [arg for key, value in sizes.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    assert main(args) == 0
    runs = _finished_trials(mlflow_store, study)
    assert len(runs) == (2 if study == "regularization" else 1)
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags
        assert 0.0 <= run.data.metrics["best/test_top1"] <= 1.0


def test_a_timm_baseline_starts_at_head_bias_init_and_a_head_without_bias_is_refused(paper_data, tmp_path, capsys):
    from mixer_cli import main
    from mixer_core.build import build_model

    for name in ("vit_tiny_patch16_224", "resnetv2_50x1_bit"):
        model = build_model(ModelConfig(timm_model=name, timm_patch_size=8, head_bias_init=-6.9), 7, (3, 32, 32))
        assert torch.equal(model.get_classifier().bias.detach(), torch.full((7,), -6.9))
    with pytest.raises(ValueError, match="levit_128s' has a NormLinear classifier without a bias"):
        build_model(ModelConfig(timm_model="levit_128s", head_bias_init=-6.9), 7, (3, 224, 224))

    spec = yaml.safe_load((SWEEPS / "jft_subsets.yaml").read_text())
    spec["grid"]["recipe"] = [{"label": "LeViT", "model.timm_model": "levit_128s"}]
    spec["base"]["data"]["path"] = str(paper_data["jft"])  # its manifest gives the class count
    (tmp_path / "levit.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sweep", "validate", str(tmp_path / "levit.yaml")]) == 2
    assert "grid.recipe: model.head_bias_init: timm model 'levit_128s'" in capsys.readouterr().err
