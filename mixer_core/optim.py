"""The paper's two optimisation recipes (Appendix B and C): optimizer, learning-rate schedule, step count.

- `pretrain`: Adam (β1 0.9, β2 0.999) with decoupled weight decay on kernels only, linear warm-up then
  linear decay to zero.
- `finetune`: SGD with momentum 0.9, no weight decay, linear warm-up then cosine decay to zero.
Both clip the global gradient norm (at `train.grad_clip`, 1 in the paper); the training loop does that.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mixer_core.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device | None = None) -> torch.optim.Optimizer:
    """AdamW for `pretrain`, SGD momentum for `finetune`; weight decay only on kernels (matrices, conv filters).
    On CUDA, AdamW is torch's fused kernel (one launch for all parameters instead of several per tensor).

    Decay is decided by shape as in nanoGPT's `configure_optimizers`: every parameter with two or more
    dimensions is a kernel and decays; biases, LayerNorm scales and shifts (one dimension) do not.
    torch's AdamW applies decoupled decay (Loshchilov & Hutter): p ← p − lr·wd·p, outside the Adam moments.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.recipe == "finetune":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=0.0)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=fused or None)


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, decay: str) -> float:
    """The factor on the base learning rate for optimizer step `step` (0-based).

    Linear warm-up reaches 1 at the end of warm-up; then `linear` or `cosine` decay reaches 0 at `total_steps`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    progress = min(progress, 1.0)
    if decay == "linear":
        return 1.0 - progress
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown decay {decay!r}; expected 'linear' or 'cosine'")


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's schedule as a `LambdaLR` stepped once per optimizer step (linear or cosine decay)."""
    decay = "cosine" if cfg.recipe == "finetune" else "linear"
    warmup = min(cfg.warmup_steps, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup, decay)
    )


def total_steps(cfg: TrainConfig, steps_per_epoch: int, global_batch_size: int) -> int:
    """Optimizer steps for the whole run.

    Budget mode (`train.steps` or `train.examples`) fixes the step count whatever the data fraction, as in the
    paper's JFT subset study (3/10/30/100% for 233/70/23/7 epochs); otherwise `train.epochs` passes over the
    training split.
    """
    if cfg.steps is not None:
        return cfg.steps
    if cfg.examples is not None:
        return math.ceil(cfg.examples / global_batch_size)
    return max(1, math.ceil(cfg.epochs * steps_per_epoch))
