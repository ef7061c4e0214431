"""Where a run computes: the device for this process and the autocast context for its precision."""

from __future__ import annotations

import contextlib
import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`cpu`, or the CUDA device of this process (`LOCAL_RANK` picks it under data parallelism).

    `auto` means CUDA when one is available. Launchers such as Ray Train and torchrun set `LOCAL_RANK`;
    a process that sees a single GPU gets `cuda:0` whatever its rank.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    index = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `bf16` is set; full precision otherwise (CPU bf16 is slower than fp32)."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
