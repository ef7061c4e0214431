"""MLP-Mixer (Tolstikhin et al. 2021) exactly as the paper defines it, with the paper's variants.

`VARIANTS` is the only place model sizes live; `create_mixer("B/16", ...)` is the one entry point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import DropPath, lecun_normal_
from torch import nn


@dataclass(frozen=True)
class MixerVariant:
    """The hyperparameters of Table 1: blocks L, hidden C, token-mixing D_S, channel-mixing D_C, patch P."""

    num_blocks: int
    hidden_dim: int
    tokens_mlp_dim: int
    channels_mlp_dim: int
    patch_size: int


_SIZES = {  # name -> (L, C, D_S, D_C); S/B/L/H from the paper's Table 1, Ti and XS for CPU-scale work
    "Ti": (4, 128, 64, 512),
    "XS": (6, 192, 96, 768),
    "S": (8, 512, 256, 2048),
    "B": (12, 768, 384, 3072),
    "L": (24, 1024, 512, 4096),
    "H": (32, 1280, 640, 5120),
}
_PAPER_NAMES = ("S/32", "S/16", "B/32", "B/16", "L/32", "L/16", "H/14")
_SMALL_NAMES = ("Ti/2", "Ti/4", "Ti/7", "XS/4", "XS/7")
VARIANTS: dict[str, MixerVariant] = {
    name: MixerVariant(*_SIZES[name.split("/")[0]], patch_size=int(name.split("/")[1]))
    for name in _SMALL_NAMES + _PAPER_NAMES
}


class MlpBlock(nn.Module):
    """Dense → GELU → Dense, with dropout after the activation and after the output (timm's `Mlp` layout)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float, gelu_approximate: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.act = nn.GELU(approximate=gelu_approximate)
        self.fc2 = nn.Linear(mlp_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP along the token axis of x (B, S, C) without transposing x.

        W1 @ x mixes tokens for every channel at once; it avoids the two transposed copies that
        `mlp(x.transpose(1, 2)).transpose(1, 2)` makes, which dominate small-batch CPU time.
        """
        hidden = torch.matmul(self.fc1.weight, x) + self.fc1.bias[:, None]
        hidden = self.drop(self.act(hidden))
        return self.drop(torch.matmul(self.fc2.weight, hidden) + self.fc2.bias[:, None])


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
        x = x + self.drop_path(self.mlp_tokens.forward_tokens(self.norm_tokens(x)))
        return x + self.drop_path(self.mlp_channels(self.norm_channels(x)))


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
        self.reset_parameters(head_bias_init)

    def reset_parameters(self, head_bias_init: float = 0.0) -> None:
        """Initialise as the official Flax code: lecun-normal kernels, zero biases, zero head kernel."""
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
        for i, block in enumerate(self.blocks):
            x = block(x)
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

