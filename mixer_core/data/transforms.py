"""From stored uint8 images to model inputs: augmentation (train only), resize, [-1, 1] scaling, permutation.

Datasets fetch whole batches through `__getitems__` (which DataLoader prefers), so resizing, scaling and the
Section 3.4 permutation are single tensor ops per batch and the no-augmentation path costs a tensor index.
Augmentation (train only) draws from the global RNGs: DataLoader seeds them per worker, the trainer saves
them in checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import auto_augment
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from mixer_core.config import AugmentConfig
from mixer_core.data import decode
from mixer_core.data.examples import Examples
from mixer_core.data.permutations import apply_permutation


def inception_crop_boxes(count: int, height: int, width: int) -> torch.Tensor:
    """(count, 4) float32 crop boxes (top, left, crop height, crop width) in pixels, drawn from torch's RNG by
    `decode.inception_crop_boxes`' rule, vectorised over the batch."""
    uniform = torch.rand(count, decode.CROP_DRAWS, dtype=torch.float64).numpy()
    return torch.from_numpy(decode.inception_crop_boxes(uniform, height, width)).float()


class Augmentation:
    """Training augmentation of a uint8 batch (n, C, h, w) → float (n, C, ·, ·) on the 0..255 scale.

    Inception crop and flip are one batched affine resampling (crop boxes drawn like torchvision's
    RandomResizedCrop); timm's RandAugment (2 layers, magnitude m ≤ 20) then runs per image on PIL, as timm writes it.
    """

    def __init__(self, augment: AugmentConfig, image_size: int, channels: int):
        self.image_size = image_size
        self.inception_crop = augment.inception_crop
        self.flip = augment.flip
        self.randaugment = decode.randaugment_transform(augment, image_size, channels, auto_augment)

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return self.inception_crop or self.flip or self.randaugment is not None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.float()
        if self.inception_crop or self.flip:
            batch = self._crop_and_flip(batch)
        if self.randaugment is not None:
            batch = torch.stack([self._randaugment(image) for image in batch.round().clamp(0, 255).to(torch.uint8)])
        return batch

    def _crop_and_flip(self, batch: torch.Tensor) -> torch.Tensor:
        count, channels, height, width = batch.shape
        theta = torch.zeros(count, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        out_size = (height, width)
        if self.inception_crop:
            top, left, crop_h, crop_w = inception_crop_boxes(count, height, width).unbind(1)
            # affine_grid maps output [-1, 1] to input [-1, 1]: scale by the crop's size, shift to its centre
            theta[:, 0, 0], theta[:, 0, 2] = crop_w / width, (2 * left + crop_w) / width - 1
            theta[:, 1, 1], theta[:, 1, 2] = crop_h / height, (2 * top + crop_h) / height - 1
            out_size = (self.image_size, self.image_size)
        if self.flip:
            theta[:, 0, 0] *= torch.where(torch.rand(count) < 0.5, -1.0, 1.0)
        grid = F.affine_grid(theta, [count, channels, *out_size], align_corners=False)
        return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _randaugment(self, image: torch.Tensor) -> torch.Tensor:
        return pil_to_tensor(self.randaugment(to_pil_image(image))).float()


def to_model_input(
    images: torch.Tensor, image_size: int, permutation: torch.Tensor | None, resize_smaller: int | None = None
) -> torch.Tensor:
    """uint8 or 0..255 float (N, C, h, w) → float32 (N, C, S, S) in [-1, 1] (big_vision's value_range), permuted.

    With `resize_smaller` the shorter side is resized to it keeping the aspect ratio and the centre S×S is cut
    (evaluation at 256 → 224 in the paper); without, the images are squashed to S×S.
    """
    batch = images.float()
    if resize_smaller is not None:
        height, width = batch.shape[-2:]
        scale = resize_smaller / min(height, width)
        resized = (round(height * scale), round(width * scale))
        if resized != (height, width):
            batch = F.interpolate(batch, size=resized, mode="bilinear", antialias=True, align_corners=False)
        top, left = (resized[0] - image_size) // 2, (resized[1] - image_size) // 2
        batch = batch[..., top : top + image_size, left : left + image_size]
    elif batch.shape[-2:] != (image_size, image_size):
        batch = F.interpolate(batch, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return apply_permutation(batch.div_(127.5).sub_(1.0).clamp_(-1.0, 1.0), permutation)


class ImageDataset(Dataset):
    """The examples at `positions` of a source split, yielding (float32 (C, S, S) in [-1, 1], int label), or
    (image, padded class list) for multi-label sources."""

    def __init__(
        self,
        examples: Examples,
        positions: np.ndarray,
        image_size: int,
        permutation: torch.Tensor | None = None,
        augmentation: Augmentation | None = None,
        eval_resize: int | None = None,
    ):
        self.examples = examples
        self.positions = torch.as_tensor(positions, dtype=torch.int64)
        self.image_size = image_size
        self.permutation = permutation
        self.augmentation = augmentation
        self.eval_resize = eval_resize

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def keys(self) -> list[str]:
        """The stable key of every example, in dataset order."""
        return [self.examples.keys[p] for p in self.positions.tolist()]

    @property
    def labels(self) -> torch.Tensor:
        """All labels, in dataset order (int64), without touching any image."""
        return self.examples.labels[self.positions]

    def without_augmentation(self) -> ImageDataset:
        """The same examples, resized and permuted alike, with no augmentation (e.g. for few-shot features)."""
        return ImageDataset(self.examples, self.positions.numpy(), self.image_size, self.permutation,
                            eval_resize=self.eval_resize)

    def batch(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (n, C, S, S) and labels (n,) for dataset indices, as one tensor op where no augmentation runs."""
        positions = self.positions[torch.as_tensor(indices, dtype=torch.int64)]
        images = self.examples.images[positions]
        if self.augmentation is not None:
            images = self.augmentation(images)
        cropped = self.augmentation is not None and self.augmentation.inception_crop  # already S×S: no centre crop
        resize = None if cropped else self.eval_resize
        return to_model_input(images, self.image_size, self.permutation, resize), self.examples.labels[positions]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int | torch.Tensor]]:
        images, labels = self.batch(indices)
        return list(zip(images.unbind(0), labels.unbind(0) if labels.dim() == 2 else labels.tolist()))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]
