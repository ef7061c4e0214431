"""A Mixer's parameter count and forward MACs from its sizes alone, and training FLOPs: arithmetic, no torch.

`mixer sweep validate` and `run` size every model of a plan with these before starting anything, so planning
L/16 on JFT costs microseconds and no `import torch`. `mixer_core.flops` checks them against counted MACs.

MACs count the matrix multiplies (stem, token mixing, channel mixing, head) — the work a matmul peak bounds.
B/16 at 224 px is 12.60 GMACs. timm's published 12.62 comes from fvcore, which also books 5 operations per
element for every LayerNorm (2L + 1 of them: 0.019 GMACs for B/16); `count_layer_norm=True` reproduces that
convention. Bias adds, GELU, residual adds and pooling are left out in both conventions. Training costs
3 × 2 × forward MACs per example (forward, and backward to inputs and to weights).
"""

from __future__ import annotations

from typing import Any

from mixer_core.variants import VARIANTS, MixerVariant

LAYER_NORM_OPS_PER_ELEMENT = 5  # fvcore's count: mean, variance, normalise, scale, shift
TRAIN_FLOPS_PER_MAC = 6  # forward + backward ≈ 3 forward passes, 2 FLOPs per multiply-accumulate (paper Figure 2)


def training_flops(forward_macs: float, examples: float) -> float:
    """FLOPs of training on `examples` examples of a model with `forward_macs` MACs per example."""
    return TRAIN_FLOPS_PER_MAC * forward_macs * examples


def num_tokens(variant: MixerVariant, image_size: int) -> int:
    """Patches S of a square `image_size` image (the patch size must divide it)."""
    return (image_size // variant.patch_size) ** 2


def mixer_parameters(variant: MixerVariant, image_size: int, in_chans: int, num_classes: int) -> int:
    """Parameters of `mixer_core.model.MlpMixer` (no head when `num_classes` is 0): stem, blocks of two
    LayerNorms and two MLPs, pre-head LayerNorm, head."""
    tokens, hidden = num_tokens(variant, image_size), variant.hidden_dim
    stem = in_chans * variant.patch_size**2 * hidden + hidden
    token_mlp = 2 * tokens * variant.tokens_mlp_dim + variant.tokens_mlp_dim + tokens
    channel_mlp = 2 * hidden * variant.channels_mlp_dim + variant.channels_mlp_dim + hidden
    block = 2 * 2 * hidden + token_mlp + channel_mlp
    head = hidden * num_classes + num_classes
    return stem + variant.num_blocks * block + 2 * hidden + head


def mixer_macs(
    variant: MixerVariant, image_size: int, in_chans: int, num_classes: int, *, count_layer_norm: bool = False
) -> int:
    """MACs of one image's forward pass through a Mixer of these sizes."""
    tokens, hidden = num_tokens(variant, image_size), variant.hidden_dim
    stem = tokens * hidden * in_chans * variant.patch_size**2
    token_mixing = 2 * hidden * tokens * variant.tokens_mlp_dim
    channel_mixing = 2 * tokens * hidden * variant.channels_mlp_dim
    macs = stem + variant.num_blocks * (token_mixing + channel_mixing) + hidden * num_classes
    if count_layer_norm:
        macs += (2 * variant.num_blocks + 1) * tokens * hidden * LAYER_NORM_OPS_PER_ELEMENT
    return macs


def variant_table(image_size: int = 224, num_classes: int = 1000) -> list[dict[str, Any]]:
    """One row per variant in `VARIANTS`: sizes, parameter counts (millions) and forward GMACs per image at
    `image_size`. Parameters depend on the resolution (token mixing is S × D_S); a variant whose patch size
    does not divide `image_size` gets None for the resolution-dependent columns."""
    rows = []
    for name, variant in VARIANTS.items():
        fits = image_size % variant.patch_size == 0
        rows.append({
            "variant": name,
            "layers": variant.num_blocks,
            "hidden": variant.hidden_dim,
            "tokens_mlp": variant.tokens_mlp_dim,
            "channels_mlp": variant.channels_mlp_dim,
            "patch": variant.patch_size,
            "tokens": num_tokens(variant, image_size) if fits else None,
            "params_m_no_head": mixer_parameters(variant, image_size, 3, 0) / 1e6 if fits else None,
            "params_m": mixer_parameters(variant, image_size, 3, num_classes) / 1e6 if fits else None,
            "gmacs": mixer_macs(variant, image_size, 3, num_classes) / 1e9 if fits else None,
        })
    return rows
