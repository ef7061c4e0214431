"""Encoded image bytes → uint8 arrays at the training size, decoding no more pixels than the output needs.

JPEG decoding dominates the cost of an ImageNet input pipeline, so both paths first pick the crop (training)
or the whole image (evaluation) from the header's size, then ask libjpeg for the smallest DCT scale (1/2, 1/4,
1/8) that still covers it at the output size (PIL's `draft`), and resample only that region (`resize(box=)`).
The Inception crop is therefore cut from the original resolution, as in the paper, at a fraction of a full
decode. Other formats decode in full.

This module imports PIL and numpy, never torch or timm's package: the streamed path decodes in many processes
at once, and each would otherwise carry torch's ~0.4 GB (`tests/test_stream.py` checks the decoding tasks).
The augmentation rules live here for both paths: the in-memory path (`transforms.py`) draws its crop boxes
through `inception_crop_boxes` and builds RandAugment with `randaugment_transform`.
"""

from __future__ import annotations

import importlib.util
import io
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
from PIL import Image

from mixer_core.config import RANDAUGMENT_MAX_MAGNITUDE, AugmentConfig
from mixer_core.data.errors import DataError

# The Inception crop of the paper's Appendix B: area fraction in [0.08, 1], aspect ratio in [3/4, 4/3].
CROP_SCALE = (0.08, 1.0)
CROP_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
CROP_TRIES = 10
CROP_DRAWS = 2 * CROP_TRIES + 2  # uniform numbers per box: area and ratio per try, then top and left


def inception_crop_boxes(uniform: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, 4) crop boxes (top, left, crop height, crop width) in pixels from `uniform` draws in [0, 1) of shape
    (n, CROP_DRAWS), sampled like torchvision's RandomResizedCrop (10 tries, then the whole image); the caller
    chooses the RNG (the in-memory path torch's, which the trainer checkpoints)."""
    area_draws, ratio_draws = uniform[:, :CROP_TRIES], uniform[:, CROP_TRIES : 2 * CROP_TRIES]
    area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * area_draws
    log_ratio = CROP_LOG_RATIO[0] + (CROP_LOG_RATIO[1] - CROP_LOG_RATIO[0]) * ratio_draws
    crop_w = np.sqrt(area * height * width * np.exp(log_ratio))
    crop_h = np.sqrt(area * height * width / np.exp(log_ratio))
    fits = (crop_w <= width) & (crop_h <= height)
    first = fits.argmax(axis=1)[:, None]  # first try that fits; rows with none use the whole image
    any_fit = fits.any(axis=1)
    crop_w = np.where(any_fit, np.take_along_axis(crop_w, first, 1)[:, 0], float(width))
    crop_h = np.where(any_fit, np.take_along_axis(crop_h, first, 1)[:, 0], float(height))
    top = uniform[:, -2] * (height - crop_h)
    left = uniform[:, -1] * (width - crop_w)
    return np.stack([top, left, crop_h, crop_w], axis=1)


def _timm_auto_augment() -> ModuleType:
    """timm's `timm.data.auto_augment` (PIL and numpy only), loaded from its file: importing it through its
    package runs `timm/__init__`, which imports torch and torchvision's model zoo."""
    name = f"{__name__}._timm_auto_augment"
    if name not in sys.modules:
        timm_root = importlib.util.find_spec("timm").submodule_search_locations[0]
        spec = importlib.util.spec_from_file_location(name, Path(timm_root, "data", "auto_augment.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def randaugment_transform(
    augment: AugmentConfig, image_size: int, channels: int, timm_auto_augment: ModuleType | None = None
) -> Callable[[Image.Image], Image.Image] | None:
    """timm's RandAugment for `augment` (PIL image → PIL image), or None when its magnitude is 0. Built by
    `timm_auto_augment` where torch is loaded anyway (its objects then pickle by reference to timm), else by the
    same module loaded from its file."""
    if augment.randaugment_magnitude == 0:
        return None
    hparams: dict[str, Any] = {
        "translate_const": int(image_size * 0.45),  # timm's rule: translations scale with the image
        "img_mean": (128,) * channels,
    }
    # timm clips magnitudes at 10 unless `mmax` raises the bound: without it 15 and 20 would silently be 10.
    # With it the ops scale as Google's TF RandAugment (level / 10 of each op's range, e.g. 30° per 10).
    config = (f"rand-m{augment.randaugment_magnitude}-n{augment.randaugment_layers}"
              f"-mmax{RANDAUGMENT_MAX_MAGNITUDE}")
    return (timm_auto_augment or _timm_auto_augment()).rand_augment_transform(config, hparams)


def open_image(encoded: bytes, where: str) -> Image.Image:
    """The image in `encoded`, header read; `DataError` naming `where` when it is not an image."""
    try:
        return Image.open(io.BytesIO(encoded))
    except Exception as error:  # PIL raises several types for undecodable bytes
        raise DataError(f"{where}: not a decodable image ({error})") from None


def _resample(image: Image.Image, box: tuple[float, float, float, float], size: int, mode: str, where: str) -> Image.Image:
    """The region `box` (left, top, right, bottom, in original pixels) of `image` as a `size` square in `mode`."""
    width, height = image.size
    crop_w, crop_h = box[2] - box[0], box[3] - box[1]
    image.draft(mode, (math.ceil(width * size / crop_w), math.ceil(height * size / crop_h)))
    scale_x, scale_y = image.size[0] / width, image.size[1] / height
    try:
        image = image if image.mode == mode else image.convert(mode)  # convert() copies even when it is a no-op
        scaled = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
        return image.resize((size, size), Image.Resampling.BILINEAR, box=scaled)
    except Exception as error:  # a truncated or corrupt file fails here, when its pixels are decoded
        raise DataError(f"{where}: not a decodable image ({error})") from None


def decode_resized(encoded: bytes, size: int, mode: str, where: str) -> np.ndarray:
    """The whole image resized to a `size` square: uint8 (size, size, C), or (size, size) for mode "L"."""
    image = open_image(encoded, where)
    return np.asarray(_resample(image, (0, 0, *image.size), size, mode, where))


class TrainingDecoder:
    """Decodes with the training augmentation: Inception crop from the original, flip, timm's RandAugment, drawn
    from numpy's and Python's global RNGs (each decoding process seeds its own)."""

    def __init__(self, augment: AugmentConfig, image_size: int, channels: int):
        self.augment = augment
        self.randaugment = randaugment_transform(augment, image_size, channels)
        self.image_size = image_size
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, encoded: bytes, where: str) -> np.ndarray:
        """One augmented image: uint8 (S, S, C), or (S, S) for grayscale."""
        image = open_image(encoded, where)
        width, height = image.size
        box = (0.0, 0.0, float(width), float(height))
        if self.augment.inception_crop:
            top, left, crop_h, crop_w = inception_crop_boxes(np.random.random((1, CROP_DRAWS)), height, width)[0]
            box = (left, top, left + crop_w, top + crop_h)
        image = _resample(image, box, self.image_size, self.mode, where)
        if self.augment.flip and np.random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.randaugment is not None:
            image = self.randaugment(image)
        return np.asarray(image)


class DecodeBatch:
    """A batch of Parquet rows (numpy columns "image", "path", "key", "label") → {"image": uint8 (n, S, S[, C]),
    "label", "key", "error"}: the decoding step of a streamed source, run in the loading processes.

    A row that does not decode keeps a blank image and its `DataError` message in "error", which the consumer
    raises: a task framework (Ray) would wrap an exception raised here in its own types and lose the DataError.
    """

    def __init__(self, augment: AugmentConfig, image_size: int, channels: int):
        self.settings = (augment, image_size, channels)
        self.decode = TrainingDecoder(augment, image_size, channels)
        self.blank = np.zeros((image_size, image_size, channels)[: 2 if channels == 1 else 3], np.uint8)

    def __reduce__(self) -> tuple[type, tuple[AugmentConfig, int, int]]:
        # Shipped as its settings and rebuilt where it runs: the RandAugment object would pickle by reference to
        # a module that only this process has loaded.
        return type(self), self.settings

    def _decoded(self, encoded: bytes, where: str) -> tuple[np.ndarray, str]:
        try:
            return self.decode(encoded, where), ""
        except DataError as error:
            return self.blank, str(error)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The decoded batch; see the class docstring."""
        images, errors = zip(*(
            self._decoded(encoded, f"{path}: row {key}")
            for encoded, path, key in zip(batch["image"], batch["path"], batch["key"])
        ))
        return {"image": np.stack(images), "label": batch["label"], "key": batch["key"], "error": np.array(errors)}
