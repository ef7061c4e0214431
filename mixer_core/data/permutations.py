"""Fixed input permutations for the paper's Section 3.4 study (invariance to input permutations).

Each permutation is an index over the H·W pixel positions, drawn once from a seed and applied identically to
every image of train, validation and test; channels of a pixel always move together.
"""

from __future__ import annotations

import torch

from mixer_core.data.errors import DataError


def permutation_index(kind: str, height: int, width: int, patch_size: int | None, seed: int) -> torch.Tensor | None:
    """Source position for every output pixel (flattened H·W), or None for `kind == "none"`.

    `patches` shuffles the order of the patch grid, `pixels_within_patches` applies one shuffle of the P·P
    positions inside every patch, `patches_and_pixels_within_patches` does both (the paper's "patch + pixel
    shuffling"), `pixels` shuffles all positions globally (the paper's "global shuffling").
    """
    if kind == "none":
        return None
    generator = torch.Generator().manual_seed(seed)
    if kind == "pixels":
        return torch.randperm(height * width, generator=generator)
    if patch_size is None:
        raise DataError(f"data.permutation={kind} needs data.permutation_patch_size (the model's patch size)")
    if height % patch_size or width % patch_size:
        raise DataError(
            f"data.permutation={kind}: image {height}x{width} is not divisible by patch size {patch_size}"
        )
    grid_h, grid_w = height // patch_size, width // patch_size
    # positions[patch, pixel_in_patch]: the flat image position of each pixel, grouped by patch
    positions = (
        torch.arange(height * width)
        .reshape(grid_h, patch_size, grid_w, patch_size)
        .permute(0, 2, 1, 3)
        .reshape(grid_h * grid_w, patch_size * patch_size)
    )
    if kind not in ("patches", "pixels_within_patches", "patches_and_pixels_within_patches"):
        raise DataError(f"data.permutation: unknown permutation {kind!r}")
    if kind.startswith("patches"):
        positions = positions[torch.randperm(grid_h * grid_w, generator=generator)]
    if kind.endswith("pixels_within_patches"):
        positions = positions[:, torch.randperm(patch_size * patch_size, generator=generator)]
    return positions.reshape(grid_h, grid_w, patch_size, patch_size).permute(0, 2, 1, 3).reshape(-1)


def apply_permutation(images: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Images (N, C, H, W) with pixel positions taken from `index` (no-op when index is None)."""
    if index is None:
        return images
    batch, channels, height, width = images.shape
    return images.reshape(batch, channels, height * width)[:, :, index].reshape(batch, channels, height, width)
