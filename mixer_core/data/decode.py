"""Encoded image bytes → uint8 arrays at the training size, decoding no more pixels than the output needs.

JPEG decoding dominates the cost of an ImageNet input pipeline, so both paths first pick the crop (training)
or the whole image (evaluation) from the header's size, then ask libjpeg for the smallest DCT scale (1/2, 1/4,
1/8) that still covers it at the output size (PIL's `draft`), and resample only that region (`resize(box=)`).
The Inception crop is therefore cut from the original resolution, as in the paper, at a fraction of a full
decode. Other formats decode in full.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from mixer_core.config import AugmentConfig
from mixer_core.data.errors import DataError
from mixer_core.data.transforms import Augmentation, inception_crop_boxes


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
    """Decodes with the training augmentation: Inception crop from the original, flip, timm's RandAugment."""

    def __init__(self, augment: AugmentConfig, image_size: int, channels: int):
        self.augmentation = Augmentation(augment, image_size, channels)
        self.image_size = image_size
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, encoded: bytes, where: str) -> np.ndarray:
        """One augmented image: uint8 (S, S, C), or (S, S) for grayscale."""
        image = open_image(encoded, where)
        width, height = image.size
        box = (0.0, 0.0, float(width), float(height))
        if self.augmentation.inception_crop:
            top, left, crop_h, crop_w = inception_crop_boxes(1, height, width)[0].tolist()
            box = (left, top, left + crop_w, top + crop_h)
        image = _resample(image, box, self.image_size, self.mode, where)
        if self.augmentation.flip and np.random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.augmentation.randaugment is not None:
            image = self.augmentation.randaugment(image)
        return np.asarray(image)
