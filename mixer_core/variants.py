"""The Mixer variants: the paper's Table 1 (S, B, L, H at their patch sizes) and Ti/XS for CPU-scale work.

Plain data, so that validating a spec or naming a variant needs neither torch nor timm.
"""

from __future__ import annotations

from dataclasses import dataclass


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
