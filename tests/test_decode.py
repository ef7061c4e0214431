"""The decoding that streamed training runs in its loading processes: torch-free, timm's RandAugment, and
shipped to those processes as its settings."""

from __future__ import annotations

import io
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mixer_core.config import AugmentConfig
from mixer_core.data.decode import DecodeBatch, inception_crop_boxes, randaugment_transform

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side + 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_the_decoding_module_imports_neither_torch_nor_timms_package():
    probe = ("import sys; from mixer_core.config import AugmentConfig; from mixer_core.data.decode import DecodeBatch; "
             "DecodeBatch(AugmentConfig(inception_crop=True, randaugment_magnitude=10), 32, 3); "
             "print(sorted({'torch', 'timm', 'torchvision'} & set(sys.modules)))")
    assert subprocess.check_output([sys.executable, "-c", probe], cwd=ROOT, text=True).strip() == "[]"


def test_randaugment_loaded_without_torch_is_timms():
    from timm.data import auto_augment

    augment = AugmentConfig(randaugment_magnitude=15, randaugment_layers=2)
    image = Image.open(io.BytesIO(_jpeg(48, seed=0))).convert("RGB")
    outputs = []
    for module in (None, auto_augment):  # loaded from timm's file, then imported through timm's package
        random.seed(0)  # timm draws ops and magnitudes from both RNGs
        np.random.seed(0)
        transform = randaugment_transform(augment, 48, 3, module)
        outputs.append([np.asarray(transform(image)) for _ in range(8)])
    assert all(np.array_equal(a, b) for a, b in zip(*outputs))
    assert len({first.tobytes() for first in outputs[0]}) > 1  # the ops do change the image


def test_inception_crop_boxes_stay_inside_the_image_and_fall_back_to_all_of_it():
    boxes = inception_crop_boxes(np.random.default_rng(0).random((2000, 22)), 30, 40)
    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 30).all() and (left + width <= 40).all()
    assert 0.08 - 1e-9 <= (height * width / 1200).min() and (height * width / 1200).max() <= 1 + 1e-9
    too_big = np.full((1, 22), 0.999)  # every try's area and ratio overflow a 1-pixel-wide image
    assert inception_crop_boxes(too_big, 30, 1).tolist() == [[0.0, 0.0, 30.0, 1.0]]


def test_a_decode_batch_travels_as_its_settings_and_decodes_after():
    decoder = pickle.loads(pickle.dumps(
        DecodeBatch(AugmentConfig(inception_crop=True, flip=True, randaugment_magnitude=10), 24, 3)
    ))
    batch = {
        "image": np.array([_jpeg(60, seed=1), b"\xff\xd8\xff not a jpeg"], dtype=object),
        "path": np.array(["train-0.parquet"] * 2),
        "key": np.array(["a", "b"]),
        "label": np.array([3, 4]),
    }
    decoded = decoder(batch)
    assert decoded["image"].shape == (2, 24, 24, 3) and decoded["image"].dtype == np.uint8
    assert decoded["error"][0] == "" and decoded["error"][1].startswith("train-0.parquet: row b: not a decodable image")
    assert decoded["label"].tolist() == [3, 4] and decoded["key"].tolist() == ["a", "b"]
