"""Few-shot sets that read only what they score (generated ImageNet-shaped folders and their shards), big_vision's
evaluation crop, the in-memory limit, and a trial's peak memory that does not grow with the few-shot dataset."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from image_folders import write_jpeg_folder
from PIL import Image

from mixer_core.config import DataConfig
from mixer_core.data import DataError, build_splits
from mixer_core.data import fewshot as fewshot_module
from mixer_core.data.convert import convert
from mixer_core.data.fewshot import Share, decode_for_eval, load_fewshot_set


def imagenet_folder(root: Path, per_class: int, classes: int = 5, val_per_class: int = 4, size=(40, 64)) -> Path:
    """ImageNet's layout, generated: train/<class>/*.jpg and val/<class>/*.jpg."""
    write_jpeg_folder(root / "train", count=per_class * classes, classes=classes, sides=size)
    write_jpeg_folder(root / "val", count=val_per_class * classes, classes=classes, sides=size, seed=1)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return imagenet_folder(tmp_path_factory.mktemp("fewshot") / "imagenet", per_class=12)


def test_only_the_shots_and_the_capped_test_set_are_decoded_once_per_process(folder, tmp_path, monkeypatch):
    decoded = []
    monkeypatch.setattr(fewshot_module, "decode_for_eval",
                        lambda encoded, *args: decoded.append(args[-1]) or decode_for_eval(encoded, *args))
    shards = tmp_path / "shards"
    convert(DataConfig(name="imagefolder", path=str(folder)), str(shards), shard_size=16, processes=1)
    sets = {}
    for name, path in (("imagefolder", folder), ("parquet", shards)):
        cfg = DataConfig(name=name, path=str(path), eval_resize=36)
        sets[name] = load_fewshot_set(cfg, 32, max_shots=2, seeds=2, max_examples=7)
        count = len(decoded)
        assert load_fewshot_set(cfg, 32, max_shots=2, seeds=2, max_examples=7) is sets[name]  # cached
        assert len(decoded) == count
    fewshot = sets["imagefolder"]
    assert len(decoded) == sum(len(s.pool) + len(s.test) for s in sets.values()) < 2 * (60 + 20)
    assert len(fewshot.pool) == fewshot.pool_size <= 2 * 2 * 5 and len(fewshot.test) == 7 and fewshot.listed == 60
    for positions in fewshot.shots:  # each seed: 2 per class, the first of each class first
        labels = fewshot.pool.labels[positions]
        assert torch.bincount(labels[:5], minlength=5).tolist() == [1] * 5
        assert torch.bincount(labels, minlength=5).tolist() == [2] * 5
    # ImageNet's val/ is the shards' test split: the same keys capped alike, decoded alike
    assert sets["parquet"].test.keys == fewshot.test.keys
    assert torch.equal(sets["parquet"].test.images, fewshot.test.images)
    assert all(key.startswith("val/") for key in fewshot.test.keys)
    # The second of two data-parallel ranks decodes every second image of both, and nothing else.
    count = len(decoded)
    half = load_fewshot_set(DataConfig(name="imagefolder", path=str(folder), eval_resize=36), 32, max_shots=2,
                            seeds=2, max_examples=7, share=Share(1, 2))
    assert half.pool.keys == fewshot.pool.keys[1::2] and half.test.keys == fewshot.test.keys[1::2]
    assert (half.pool_size, half.test_size) == (len(fewshot.pool), 7)
    assert all(np.array_equal(a, b) for a, b in zip(half.shots, fewshot.shots, strict=True))
    assert len(decoded) - count == len(half.pool) + len(half.test) == len(fewshot.pool) // 2 + 3


def test_evaluation_images_keep_their_aspect_and_lose_their_borders():
    # A 60x120 horizontal gradient: shorter side to 36 (72 wide), then the central 32 columns of 72.
    gradient = np.tile(np.linspace(0, 255, 120, dtype=np.float32), (60, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.stack([gradient] * 3, axis=-1).astype(np.uint8)).save(buffer, format="PNG")
    image = decode_for_eval(buffer.getvalue(), 32, 36, "RGB", "gradient.png")
    assert image.shape == (32, 32, 3)
    left, right = image[16, 0, 0], image[16, -1, 0]  # original columns 20/72 and 51/72 of 120
    assert abs(int(left) - 255 * 20.5 / 72) < 6 and abs(int(right) - 255 * 51.5 / 72) < 6


def test_a_source_over_the_in_memory_limit_is_refused_before_decoding(folder, tmp_path, monkeypatch, capsys):
    from mixer_cli import main
    from mixer_core.data import memory

    monkeypatch.setattr(memory, "IN_MEMORY_LIMIT_BYTES", 80 * 3 * 32 * 32 - 1)  # one image fewer than the folder
    cfg = DataConfig(name="imagefolder", path=str(folder), image_size=32)
    with pytest.raises(DataError, match=r"80 images of 3x32x32 are 0.0 GB decoded, over the .* GiB.*mixer data convert "
                                        r"imagefolder DEST --set data.path="):
        build_splits(cfg)
    spec = {"name": "big", "base": {"data": cfg.model_dump(exclude_defaults=True), "eval": {"fewshot_shots": []}}}
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sweep", "validate", str(tmp_path / "big.yaml")]) == 2
    assert "base.data.path: data.path" in capsys.readouterr().err
    assert load_fewshot_set(cfg, 32, 1, 1, 4).test is not None  # listed, not loaded: never refused


# A trial's own process, peak RSS in kB: the trainer runs in one process (in-memory data, decoding in threads).
PEAK_RSS = """
import resource, subprocess, sys
status = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(status.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, status.stderr[-2000:])
"""


def _trial_peak_kb(fewshot_folder: Path, tmp_path: Path) -> int:
    pretraining = write_jpeg_folder(tmp_path / "pretraining", count=24)  # small beside the few-shot sets at 224 px
    config = {
        "model": {"variant": "Ti/7"},
        "data": {"name": "imagefolder", "path": str(pretraining), "image_size": 224, "batch_size": 8},
        "train": {"epochs": None, "steps": 2, "device": "cpu", "checkpoint_every_epochs": None},
        "eval": {"fewshot_datasets": [{"name": "imagefolder", "path": str(fewshot_folder), "label": "imagenet",
                                       "eval_resize": 256}],
                 "fewshot_pretraining": False, "fewshot_shots": [5], "fewshot_seeds": 3, "max_examples": 40},
    }
    path = tmp_path / f"{fewshot_folder.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    mixer = str(Path(sys.executable).parent / "mixer")
    command = [sys.executable, "-c", PEAK_RSS, mixer, "train", str(path), "--json", "--no-checkpoints"]
    status, peak_kb, stderr = subprocess.run(command, capture_output=True, text=True).stdout.split(" ", 2)
    assert status == "0", stderr
    return int(peak_kb)


def test_a_trials_peak_memory_does_not_grow_with_a_4x_larger_fewshot_set(tmp_path):
    """Same shots (5 x 10 classes x 3 seeds) and test cap (40) from 250 or 1,000 training images at 224 px:
    decoding them all (train/ and val/) would add 210 MB (4x) against 53 MB (1x) to a trial of about 1.2 GB (1.13x)."""
    peaks = {}
    for scale in (1, 4):
        root = imagenet_folder(tmp_path / f"imagenet_{scale}x", per_class=25 * scale, classes=10,
                               val_per_class=10 * scale, size=(240, 300))
        peaks[scale] = _trial_peak_kb(root, tmp_path)
    assert peaks[4] <= 1.1 * peaks[1], peaks
    print(json.dumps({"peak_rss_mb": {f"{scale}x": kb / 1024 for scale, kb in peaks.items()}}))
