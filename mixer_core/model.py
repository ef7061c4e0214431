"""MLP-Mixer (Tolstikhin et al. 2021) exactly as the paper defines it, with the paper's variants.

Model sizes live in `mixer_core.variants`; `create_mixer("B/16", ...)` is the one entry point.
timm weights cross the border in `load_timm_state_dict` / `to_timm_state_dict` (the model never knows where
its weights came from); `resize_token_mixing` adapts a trained model to a finer patch grid (paper Appendix C).
"""

from __future__ import annotations

import dataclasses
import re
from functools import partial

import timm.models.mlp_mixer
import torch
import torch.nn.functional as F
from timm.layers import DropPath, lecun_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from mixer_core.variants import VARIANTS, MixerVariant


class MlpBlock(nn.Module):
    """Dense → GELU → Dense, with dropout after the activation and after the output (timm's `Mlp` layout)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float, gelu_approximate: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.act = nn.GELU(approximate=gelu_approximate)
        self.fc2 = nn.Linear(mlp_dim, dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP along the token axis of x (B, S, C): W2 · act(W1 · x_b + b1) + b2 for every image b.

        One batched matmul per layer against the (stride-0) expanded weight reads x in place; the transposed
        form `mlp(x.transpose(1, 2)).transpose(1, 2)` copies x and the output, which costs ~25% of
        token-mixing time on CPU. Biases are added in place: bmm does not save its output for backward.
        """
        batch = x.shape[0]
        hidden = torch.bmm(self.fc1.weight.expand(batch, -1, -1), x).add_(self.fc1.bias[:, None])
        hidden = self.drop(self.act(hidden))
        return self.drop(torch.bmm(self.fc2.weight.expand(batch, -1, -1), hidden).add_(self.fc2.bias[:, None]))


class MixerBlock(nn.Module):
    """LayerNorm → token-mixing MLP → residual; LayerNorm → channel-mixing MLP → residual."""

    def __init__(
        self,
        num_tokens: int,
        variant: MixerVariant,
        dropout: float,
        drop_path: float,
        gelu_approximate: str,
    ):
        super().__init__()
        self.norm_tokens = nn.LayerNorm(variant.hidden_dim, eps=1e-6)
        self.mlp_tokens = MlpBlock(num_tokens, variant.tokens_mlp_dim, dropout, gelu_approximate)
        self.norm_channels = nn.LayerNorm(variant.hidden_dim, eps=1e-6)
        self.mlp_channels = MlpBlock(variant.hidden_dim, variant.channels_mlp_dim, dropout, gelu_approximate)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Residuals are added into the branch's fresh output (no op saves it for backward): a new
        # activation-sized buffer per add costs page faults on CPU, ~8% of S/32 inference time.
        x = self.drop_path(self.mlp_tokens.forward_tokens(self.norm_tokens(x))).add_(x)
        return self.drop_path(self.mlp_channels(self.norm_channels(x))).add_(x)


class MlpMixer(nn.Module):
    """Per-patch linear stem, Mixer blocks, pre-head LayerNorm, global average pooling, linear head."""

    def __init__(
        self,
        variant: MixerVariant,
        num_classes: int = 1000,
        image_size: int = 224,
        in_chans: int = 3,
        dropout: float = 0.0,
        stoch_depth: float = 0.0,
        gelu_approximate: str = "none",
        head_bias_init: float = 0.0,
    ):
        super().__init__()
        if image_size % variant.patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {variant.patch_size}")
        self.variant = variant
        self.num_classes = num_classes
        self.image_size = image_size
        self.in_chans = in_chans
        self.grid_size = image_size // variant.patch_size
        self.num_tokens = self.grid_size**2
        self.stem = nn.Conv2d(in_chans, variant.hidden_dim, variant.patch_size, stride=variant.patch_size)
        depth = variant.num_blocks
        self.blocks = nn.ModuleList(
            MixerBlock(
                self.num_tokens,
                variant,
                dropout,
                # Stochastic depth rises linearly from 0 at the first block to `stoch_depth` at the last
                # (paper Appendix B; big_vision's `i / (num_blocks - 1) * stoch_depth`).
                drop_path=stoch_depth * i / max(depth - 1, 1),
                gelu_approximate=gelu_approximate,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(variant.hidden_dim, eps=1e-6)
        self.head = nn.Linear(variant.hidden_dim, num_classes) if num_classes else nn.Identity()
        self.grad_checkpointing = False
        self.reset_parameters(head_bias_init)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Keep only each block's input for the backward pass and recompute the rest (timm's method name, so
        Mixers and timm baselines switch alike). The recomputation replays the saved random state, so dropout
        and stochastic depth draw the same masks: gradients are those of the plain forward."""
        self.grad_checkpointing = enable

    def reset_parameters(self, head_bias_init: float = 0.0) -> None:
        """Initialise as the official Flax code: lecun-normal kernels, zero biases, zero head kernel.

        Skipped on the meta device (models built only for their shapes), where truncated-normal sampling
        runs through slow Python decompositions and produces no values anyway."""
        if self.stem.weight.is_meta:
            return
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                lecun_normal_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.constant_(self.head.bias, head_bias_init)

    def forward(
        self, images: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits for `images` (B, C, H, W); with `return_features`, also the named intermediates
        `stem` (B, C, h, w), `input_tokens` (B, S, C), `block_i` (B, S, C) and `pre_logits` (B, C)."""
        stem = self.stem(images)
        x = stem.flatten(2).transpose(1, 2)
        features = {"stem": stem, "input_tokens": x} if return_features else None
        checkpointed = self.grad_checkpointing and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            # use_reentrant=False: the form torch recommends; it works when the input needs no gradient
            x = checkpoint(block, x, use_reentrant=False) if checkpointed else block(x)
            if features is not None:
                features[f"block_{i}"] = x
        pre_logits = self.norm(x).mean(dim=1)
        logits = self.head(pre_logits)
        if features is None:
            return logits
        features["pre_logits"] = pre_logits
        return logits, features


def create_mixer(
    variant: str = "B/16",
    num_classes: int = 1000,
    image_size: int = 224,
    in_chans: int = 3,
    **overrides,
) -> MlpMixer:
    """A randomly initialised `MlpMixer` of a named variant (see `VARIANTS`).

    `overrides` are `MlpMixer` keyword arguments (`dropout`, `stoch_depth`, `gelu_approximate`,
    `head_bias_init`) or variant fields (`num_blocks`, `hidden_dim`, ...) that replace the table's values.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown Mixer variant {variant!r}; known: {', '.join(VARIANTS)}")
    fields = {k: overrides.pop(k) for k in list(overrides) if k in MixerVariant.__dataclass_fields__}
    spec = MixerVariant(**{**VARIANTS[variant].__dict__, **fields})
    return MlpMixer(spec, num_classes=num_classes, image_size=image_size, in_chans=in_chans, **overrides)


def count_parameters(model: nn.Module, include_head: bool = True) -> int:
    """Number of parameters, optionally without the classification head (the paper's Table 1 counts)."""
    head = getattr(model, "head", None)
    head_params = {id(p) for p in head.parameters()} if head is not None and not include_head else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in head_params)


# Our parameter names <-> timm's `MlpMixer` names; everything else (mlp_tokens.fc1, head, ...) is shared.
_TO_TIMM = ((r"^stem\.", "stem.proj."), (r"\.norm_tokens\.", ".norm1."), (r"\.norm_channels\.", ".norm2."))
_FROM_TIMM = ((r"^stem\.proj\.", "stem."), (r"\.norm1\.", ".norm_tokens."), (r"\.norm2\.", ".norm_channels."))
_HEAD_KEYS = ("head.weight", "head.bias")


def _rename(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def to_timm_state_dict(model: MlpMixer) -> dict[str, torch.Tensor]:
    """`model`'s weights under timm's `MlpMixer` parameter names (loadable with `load_state_dict`)."""
    return {_rename(key, _TO_TIMM): value for key, value in model.state_dict().items()}


def load_timm_state_dict(model: MlpMixer, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load a timm `MlpMixer` state dict (e.g. a published `mixer_b16_224` checkpoint) into `model`.

    A head of another class count is left as initialised (zero, the paper's fine-tuning recipe) and its keys
    are returned; every other weight must exist with the same shape. Load at the checkpoint's resolution,
    then call `resize_token_mixing` for another one.
    """
    converted = {_rename(key, _FROM_TIMM): value for key, value in state_dict.items()}
    own = model.state_dict()
    skipped = [key for key in _HEAD_KEYS if key in converted and converted[key].shape != own[key].shape]
    for key in skipped:
        del converted[key]
    unknown = sorted(set(converted) - set(own))
    missing = sorted(set(own) - set(converted) - set(skipped))
    if unknown or missing:
        raise ValueError(f"timm state dict does not fit {model.variant}: unknown keys {unknown}, missing {missing}")
    for key, value in converted.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"timm state dict key {key!r} has shape {tuple(value.shape)}, the model needs "
                f"{tuple(own[key].shape)} (image size {model.image_size}: load at the checkpoint's size, "
                "then resize_token_mixing)"
            )
    model.load_state_dict(converted, strict=not skipped)
    return [_rename(key, _TO_TIMM) for key in skipped]


def create_timm_twin(model: MlpMixer) -> nn.Module:
    """timm's `MlpMixer` with `model`'s exact configuration (sizes, GELU, dropout, stochastic depth)."""
    variant = model.variant
    first, last = model.blocks[0], model.blocks[-1]
    return timm.models.mlp_mixer.MlpMixer(
        num_classes=model.num_classes,
        img_size=model.image_size,
        in_chans=model.in_chans,
        patch_size=variant.patch_size,
        num_blocks=variant.num_blocks,
        embed_dim=variant.hidden_dim,
        mlp_ratio=(variant.tokens_mlp_dim / variant.hidden_dim, variant.channels_mlp_dim / variant.hidden_dim),
        act_layer=partial(nn.GELU, approximate=first.mlp_tokens.act.approximate),
        proj_drop_rate=getattr(first.mlp_tokens.drop, "p", 0.0),
        # timm gives every block the same rate; ours rises linearly, so only the last block's rate is shared
        drop_path_rate=getattr(last.drop_path, "drop_prob", 0.0),
    )


def resize_token_mixing(model: MlpMixer, new_grid: int, method: str = "block_diagonal") -> MlpMixer:
    """Adapt `model` in place to a `new_grid` × `new_grid` patch grid (a larger image, same patch size).

    `block_diagonal` (paper Appendix C) needs new_grid = K · grid: S' = K²S tokens and D_S' = K²D_S hidden
    units, with weights that mix each of the K×K spatial parts of the new grid exactly as the old model mixed
    its whole grid. `bilinear` keeps D_S and interpolates every token-mixing weight row (as a √S×√S grid);
    the first layer is scaled by S/S' so that a spatially constant input keeps its hidden activations.
    Updates `image_size`, `grid_size`, `num_tokens` and `variant.tokens_mlp_dim`; returns `model`.
    """
    old_grid = model.grid_size
    if method == "block_diagonal":
        if new_grid % old_grid:
            raise ValueError(f"block_diagonal resizing needs a multiple of the grid {old_grid}, got {new_grid}")
        resize = partial(_block_diagonal, old_grid=old_grid, factor=new_grid // old_grid)
    elif method == "bilinear":
        resize = partial(_bilinear, old_grid=old_grid, new_grid=new_grid)
    else:
        raise ValueError(f"unknown token-mixing resize method {method!r}; known: block_diagonal, bilinear")
    for block in model.blocks:
        mlp = block.mlp_tokens
        with torch.no_grad():
            w1, b1, w2, b2 = resize(mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)
        mlp.fc1, mlp.fc2 = _linear_from(w1, b1), _linear_from(w2, b2)
    model.grid_size = new_grid
    model.num_tokens = new_grid**2
    model.image_size = new_grid * model.variant.patch_size
    model.variant = dataclasses.replace(model.variant, tokens_mlp_dim=model.blocks[0].mlp_tokens.fc1.out_features)
    return model


def _linear_from(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], device="meta")  # no throw-away initialisation
    layer.weight, layer.bias = nn.Parameter(weight), nn.Parameter(bias)
    return layer


def _block_diagonal(w1, b1, w2, b2, *, old_grid: int, factor: int):
    """Token-mixing weights for a grid `factor` times finer: part (p, q) of the new grid owns hidden units
    [k·D_S, (k+1)·D_S) with k = p·K + q and connects them to its own G×G tokens with the old weights."""
    new_grid = old_grid * factor
    hidden = w1.shape[0]
    new_w1 = w1.new_zeros(factor**2 * hidden, new_grid**2)
    new_w2 = w2.new_zeros(new_grid**2, factor**2 * hidden)
    new_b2 = b2.new_empty(new_grid**2)
    token_index = torch.arange(new_grid**2, device=w1.device).view(new_grid, new_grid)
    for p in range(factor):
        for q in range(factor):
            tokens = token_index[p * old_grid : (p + 1) * old_grid, q * old_grid : (q + 1) * old_grid].flatten()
            units = slice((p * factor + q) * hidden, (p * factor + q + 1) * hidden)
            new_w1[units, tokens] = w1
            new_w2[tokens, units] = w2
            new_b2[tokens] = b2
    return new_w1, b1.repeat(factor**2), new_w2, new_b2


def _bilinear(w1, b1, w2, b2, *, old_grid: int, new_grid: int):
    """Token-mixing weights with every token axis interpolated from old_grid² to new_grid² positions."""

    def along_tokens(values: torch.Tensor) -> torch.Tensor:  # (N, S) -> (N, S')
        grids = values.reshape(-1, 1, old_grid, old_grid)
        resized = F.interpolate(grids, size=(new_grid, new_grid), mode="bilinear", align_corners=False)
        return resized.reshape(values.shape[0], new_grid**2)

    new_w1 = along_tokens(w1) * (old_grid**2 / new_grid**2)
    return new_w1, b1.clone(), along_tokens(w2.t()).t().contiguous(), along_tokens(b2[None])[0]
