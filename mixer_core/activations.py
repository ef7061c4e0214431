"""Activation memory counted rather than derived: the bytes of the tensors autograd saves for the backward pass.

`mixer_core.memory` derives a Mixer's figure from its sizes; a timm baseline's comes from here, counted on
PyTorch's meta device (shapes only, no memory, no arithmetic), and the tests check the Mixer's derivation
against a real count.
"""

from __future__ import annotations

import torch
from torch import nn


def saved_activation_bytes(model: nn.Module, image_shape: tuple[int, int, int], batch_size: int = 1) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward of `batch_size` images
    through `model` (on the model's device), parameters and their views left out, each tensor counted once."""
    parameters = {id(p) for p in model.parameters()}
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor if tensor._base is None else tensor._base
        if id(base) not in parameters:
            saved.setdefault(id(base), base)  # kept referenced, so an id is never reused while counting
        return tensor

    device = next(model.parameters()).device
    images = torch.zeros(batch_size, *image_shape, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images)
    return sum(tensor.numel() * tensor.element_size() for tensor in saved.values())
