"""Multiply-accumulates (MACs) of a forward pass: analytic for our Mixer, counted for any model.

What is counted: the matrix multiplies (stem, token mixing, channel mixing, head) — the work a matmul peak
bounds. B/16 at 224 px is 12.60 GMACs. timm's published 12.62 comes from fvcore, which also books 5 operations
per element for every LayerNorm (2L + 1 of them: 0.019 GMACs for B/16); `count_layer_norm=True` reproduces that
convention in both functions. Bias adds, GELU, residual adds and pooling are left out in both conventions.
Training costs 3 × 2 × forward MACs per example (forward, and backward to inputs and to weights).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mixer_core.model import MlpMixer, count_parameters, create_mixer
from mixer_core.variants import VARIANTS

LAYER_NORM_OPS_PER_ELEMENT = 5  # fvcore's count: mean, variance, normalise, scale, shift
TRAIN_FLOPS_PER_MAC = 6  # forward + backward ≈ 3 forward passes, 2 FLOPs per multiply-accumulate (paper Figure 2)


def training_flops(forward_macs: float, examples: float) -> float:
    """FLOPs of training on `examples` examples of a model with `forward_macs` MACs per example."""
    return TRAIN_FLOPS_PER_MAC * forward_macs * examples


def analytic_macs(model: MlpMixer, *, count_layer_norm: bool = False) -> int:
    """MACs of one image's forward pass through `model`, from its sizes (no forward is run)."""
    variant = model.variant
    tokens, hidden = model.num_tokens, variant.hidden_dim
    stem = tokens * hidden * model.in_chans * variant.patch_size**2
    token_mixing = 2 * hidden * tokens * variant.tokens_mlp_dim
    channel_mixing = 2 * tokens * hidden * variant.channels_mlp_dim
    head = hidden * model.num_classes
    macs = stem + variant.num_blocks * (token_mixing + channel_mixing) + head
    if count_layer_norm:
        macs += (2 * variant.num_blocks + 1) * tokens * hidden * LAYER_NORM_OPS_PER_ELEMENT
    return macs


def _layer_norm_flops(input_shape: torch.Size, *args: Any, **kwargs: Any) -> int:
    # FlopCounterMode counts FLOPs = 2 × MACs; this books LAYER_NORM_OPS_PER_ELEMENT MACs per element.
    return 2 * LAYER_NORM_OPS_PER_ELEMENT * math.prod(input_shape)


def measured_macs(model: nn.Module, input_shape: tuple[int, int, int], *, count_layer_norm: bool = False) -> int:
    """MACs of one image's forward pass, counted by running `model` (any model, e.g. a timm baseline) on one
    zero image of `input_shape` (C, H, W) under `torch.utils.flop_counter`. A model on the meta device costs
    no compute."""
    parameter = next(model.parameters())
    images = torch.zeros(1, *input_shape, device=parameter.device, dtype=parameter.dtype)
    custom = {torch.ops.aten.native_layer_norm: _layer_norm_flops} if count_layer_norm else {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
            model(images)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def variant_table(image_size: int = 224, num_classes: int = 1000) -> list[dict[str, Any]]:
    """One row per variant in `VARIANTS`: sizes, parameter counts (millions) and forward GMACs per image at
    `image_size`. Parameters depend on the resolution (token mixing is S × D_S); a variant whose patch size
    does not divide `image_size` gets None for the resolution-dependent columns."""
    rows = []
    for name, variant in VARIANTS.items():
        row = {
            "variant": name,
            "layers": variant.num_blocks,
            "hidden": variant.hidden_dim,
            "tokens_mlp": variant.tokens_mlp_dim,
            "channels_mlp": variant.channels_mlp_dim,
            "patch": variant.patch_size,
            "tokens": None,
            "params_m_no_head": None,
            "params_m": None,
            "gmacs": None,
        }
        if image_size % variant.patch_size == 0:
            with torch.device("meta"):  # sizes only: no memory, no initialisation work
                model = create_mixer(name, num_classes=num_classes, image_size=image_size)
            row.update(
                tokens=model.num_tokens,
                params_m_no_head=count_parameters(model, include_head=False) / 1e6,
                params_m=count_parameters(model) / 1e6,
                gmacs=analytic_macs(model) / 1e9,
            )
        rows.append(row)
    return rows
