"""Multiply-accumulates (MACs) of a forward pass: analytic for our Mixer (`mixer_core.sizes`), counted for any
model, in the same conventions (see `mixer_core.sizes` for what is counted).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mixer_core.model import MlpMixer
from mixer_core.sizes import LAYER_NORM_OPS_PER_ELEMENT, mixer_macs


def analytic_macs(model: MlpMixer, *, count_layer_norm: bool = False) -> int:
    """MACs of one image's forward pass through `model`, from its sizes (no forward is run)."""
    return mixer_macs(
        model.variant, model.image_size, model.in_chans, model.num_classes, count_layer_norm=count_layer_norm
    )


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
