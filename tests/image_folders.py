"""Generated image folders that look like ImageNet's (class folders of JPEGs of assorted sizes), kept tiny."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_jpeg_folder(root: Path, count: int, classes: int = 3, sides: tuple[int, int] = (64, 120), seed: int = 0) -> Path:
    """`count` JPEGs `root/class_k/img_i.jpg` with random sides in `sides` and class-dependent colours; returns root."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % classes
        height, width = rng.integers(sides[0], sides[1] + 1, size=2)
        pixels = rng.integers(0, 64, size=(height, width, 3)) + np.array([60 * label, 40, 200 - 60 * label])
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"img_{index:05d}.jpg", quality=90)
    return root
