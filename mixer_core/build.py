"""The network of a run: a Mixer variant from `ModelConfig`, or a timm baseline when `model.timm_model` is set.

Everything downstream (training loop, evaluators) uses `pre_logits` to read features, so Mixers and timm
models share one code path.
"""

from __future__ import annotations

import math
from pathlib import Path

import safetensors.torch
import timm
import torch
from torch import nn

from mixer_core.checkpoint import load_checkpoint
from mixer_core.config import ModelConfig, image_shape_problem
from mixer_core.flops import analytic_macs, measured_macs
from mixer_core.model import MlpMixer, create_mixer, load_timm_state_dict, resize_token_mixing
from mixer_core.variants import VARIANTS


def build_model(
    cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int], init_from: Path | None = None
) -> nn.Module:
    """The network for images of `image_shape` (C, H, W) and `num_classes` classes.

    Randomly initialised, or with `init_from` started from pre-trained Mixer weights (see `load_pretrained`);
    with activation checkpointing when `model.grad_checkpointing` is set.
    """
    model = _build(cfg, num_classes, image_shape, init_from)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)  # ours and timm's models share the method
    return model


def _build(
    cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int], init_from: Path | None
) -> nn.Module:
    channels, height, width = image_shape
    if cfg.timm_model:
        if not timm.is_model(cfg.timm_model):
            raise ValueError(f"model.timm_model: timm has no model {cfg.timm_model!r} (see timm.list_models())")
        if init_from is not None:
            raise ValueError(f"train.init_from loads Mixer weights; model.timm_model is {cfg.timm_model!r}")
        kwargs = dict(num_classes=num_classes, in_chans=channels, drop_rate=cfg.dropout, drop_path_rate=cfg.stoch_depth)
        # Patch-based models (ViT, timm's Mixer) size their position embeddings / token MLPs for one input
        # size; timm marks them `fixed_input_size`. Convolutional nets take any size and reject `img_size`.
        pretrained_cfg = timm.models.get_pretrained_cfg(cfg.timm_model)
        if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
            kwargs["img_size"] = (height, width)
            if cfg.timm_patch_size:
                kwargs["patch_size"] = cfg.timm_patch_size
        model = timm.create_model(cfg.timm_model, pretrained=False, **kwargs)
        if num_classes:  # a model built without a head (classes unknown, e.g. when planning) has no bias to set
            _init_head_bias(model, cfg)
        return model
    problem = image_shape_problem(cfg, height, width)
    if problem:
        raise ValueError(problem)
    if init_from is not None:
        return load_pretrained(cfg, num_classes, image_shape, Path(init_from))
    return _create(cfg, num_classes, height, channels)


def _init_head_bias(model: nn.Module, cfg: ModelConfig) -> None:
    """Start a timm model's classifier bias at `model.head_bias_init`, as the Mixer's, so a comparison under the
    sigmoid loss starts every model alike (big_vision's JFT configs do the same); a head without a bias is refused."""
    if cfg.head_bias_init == 0.0:
        return
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)  # distilled models have two heads
    for head in heads:
        bias = getattr(head, "bias", None)
        if not isinstance(bias, nn.Parameter):
            raise ValueError(
                f"model.head_bias_init: timm model {cfg.timm_model!r} has a {type(head).__name__} classifier without "
                f"a bias to start at {cfg.head_bias_init}; set model.head_bias_init: 0 or pick another model"
            )
        with torch.no_grad():
            bias.fill_(cfg.head_bias_init)


def _create(cfg: ModelConfig, num_classes: int, image_size: int, in_chans: int, **sizes: int) -> MlpMixer:
    return create_mixer(
        cfg.variant,
        num_classes=num_classes,
        image_size=image_size,
        in_chans=in_chans,
        dropout=cfg.dropout,
        stoch_depth=cfg.stoch_depth,
        gelu_approximate=cfg.gelu_approximate,
        head_bias_init=cfg.head_bias_init,
        **sizes,
    )


def load_pretrained(
    cfg: ModelConfig, num_classes: int, image_shape: tuple[int, int, int], path: Path
) -> MlpMixer:
    """A Mixer started from pre-trained weights for fine-tuning (paper Appendix C).

    `path` is one of our checkpoints (a checkpoint directory, its `state.pt`, or a run directory whose newest
    checkpoint is used) or a timm Mixer state dict
    (`.pth`/`.bin` via `torch.load`, or `.safetensors`). The weights are loaded at the resolution they were
    trained at; the head is kept only when its class count matches (otherwise it stays zero, the paper's new
    head); then the token-mixing MLPs are resized to the new patch grid: block-diagonally when the new grid is
    a multiple of the old one (the paper's method), bilinearly otherwise (see `resize_token_mixing`).
    """
    state = safetensors.torch.load_file(path) if path.suffix == ".safetensors" else load_checkpoint(path)
    ours = "model" in state
    if ours:
        state = state["model"]
    tokens_kernel = state.get("blocks.0.mlp_tokens.fc1.weight")
    if tokens_kernel is None:
        raise ValueError(f"{path}: not a Mixer state dict (no blocks.0.mlp_tokens.fc1.weight)")
    channels, image_size, _ = image_shape
    patch_size = VARIANTS[cfg.variant].patch_size
    trained_grid = math.isqrt(tokens_kernel.shape[1])
    model = _create(cfg, num_classes, trained_grid * patch_size, channels, tokens_mlp_dim=tokens_kernel.shape[0])
    try:
        if ours:
            own = model.state_dict()
            kept = {k: v for k, v in state.items() if not (k.startswith("head.") and v.shape != own[k].shape)}
            model.load_state_dict(kept, strict=len(kept) == len(state))
        else:
            load_timm_state_dict(model, state)
    except (RuntimeError, ValueError) as error:  # missing, unknown or mis-shaped keys
        raise ValueError(f"{path}: weights do not fit model.variant {cfg.variant}: {error}") from None
    new_grid = image_size // patch_size
    if new_grid != trained_grid:
        resize_token_mixing(model, new_grid, "block_diagonal" if new_grid % trained_grid == 0 else "bilinear")
    return model


def pre_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The (B, D) features the head reads: Mixer's `pre_logits`, timm's `forward_head(pre_logits=True)`."""
    if isinstance(model, MlpMixer):
        return model(images, return_features=True)[1]["pre_logits"]
    return model.forward_head(model.forward_features(images), pre_logits=True)


def forward_macs(model: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass per image: analytic for a Mixer, counted for anything else."""
    if isinstance(model, MlpMixer):
        return analytic_macs(model)
    return measured_macs(model, image_shape)

