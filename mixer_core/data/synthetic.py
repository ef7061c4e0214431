"""A deterministic, class-conditional image generator with a difficulty knob, for tests and benchmarks.

Each class is a prototype of a few coloured Gaussian blobs. An example re-renders its class's blobs with jittered
centres (a small deformation plus a global shift), blends in another class's prototype and adds pixel noise;
`difficulty` in [0, 1] scales all three. Shifted, deformed, confusable examples need many samples to classify
well, so accuracy rises visibly with the training fraction. Examples are generated in fixed blocks seeded by
(seed, block), so example i is the same whatever the total count: a larger synthetic set contains a smaller one.
"""

from __future__ import annotations

import math

import torch

from mixer_core.data.examples import Examples, Source
from mixer_core.data.facts import SYNTHETIC_CHANNELS

BLOBS_PER_CLASS = 4
BLOCK = 1024


def _render(centres: torch.Tensor, widths: torch.Tensor, colours: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, C, size, size) summing Gaussian blobs: centres (N, B, 2) in [0, 1], widths (N, B), colours (N, B, C)."""
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    dy = grid.view(1, 1, size, 1) - centres[..., 0, None, None]
    dx = grid.view(1, 1, 1, size) - centres[..., 1, None, None]
    blobs = torch.exp(-(dx**2 + dy**2) / (2 * widths[..., None, None] ** 2))  # (N, B, H, W)
    return torch.einsum("nbhw,nbc->nchw", blobs, colours)


def generate_synthetic(
    num_examples: int, num_classes: int, difficulty: float, image_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, S, S) and int64 labels (N,), fully determined by the arguments."""
    prototypes = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    centres = 0.2 + 0.6 * torch.rand(num_classes, BLOBS_PER_CLASS, 2, generator=prototypes)
    widths = 0.06 + 0.1 * torch.rand(num_classes, BLOBS_PER_CLASS, generator=prototypes)
    colours = 2 * torch.rand(num_classes, BLOBS_PER_CLASS, SYNTHETIC_CHANNELS, generator=prototypes) - 1
    images, labels = [], []
    for block in range(math.ceil(num_examples / BLOCK)):
        rng = torch.Generator().manual_seed(seed * 1_000_003 + 1_009 * (block + 1))
        label = torch.randint(num_classes, (BLOCK,), generator=rng)
        confuser = (label + torch.randint(1, num_classes, (BLOCK,), generator=rng)) % num_classes
        shift = 0.4 * difficulty * (2 * torch.rand(BLOCK, 1, 2, generator=rng) - 1)
        deform = 0.1 * difficulty * torch.randn(BLOCK, BLOBS_PER_CLASS, 2, generator=rng)
        image = _render(centres[label] + shift + deform, widths[label], colours[label], image_size)
        blend = 0.8 * difficulty * torch.rand(BLOCK, 1, 1, 1, generator=rng)
        image = (1 - blend) * image + blend * _render(centres[confuser] + shift, widths[confuser], colours[confuser], image_size)
        image = image + 0.8 * difficulty * torch.randn(image.shape, generator=rng)
        images.append(((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        labels.append(label)
    return torch.cat(images)[:num_examples], torch.cat(labels)[:num_examples]


def load_synthetic(num_examples: int, num_classes: int, difficulty: float, image_size: int, seed: int) -> Source:
    """The synthetic source: a training split only (test is carved), keys `synthetic/<seed>/<i>`."""
    images, labels = generate_synthetic(num_examples, num_classes, difficulty, image_size, seed)
    keys = [f"synthetic/{seed}/{index}" for index in range(num_examples)]
    classes = [f"class_{c}" for c in range(num_classes)]
    return Source(Examples(images, labels, keys), None, classes, (SYNTHETIC_CHANNELS, image_size, image_size))
