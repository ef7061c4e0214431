"""Where a run computes: the device for this process, the autocast context for its precision, and the
device-dependent defaults (compile, fused AdamW, pinned host memory).

TPUs are PyTorch devices through torch_tpu (`torch.device("tpu")`). torch_tpu registers itself as a
`torch.backends` entry point, and on a host without libtpu that registration aborts `import torch`; our entry
points switch autoloading off (`TORCH_DEVICE_BACKEND_AUTOLOAD=0`, `mixer_cli`), so torch_tpu is imported only
here, only when a run asks for `tpu`, or by Ray Train's `tpu_dist` backend on TPU workers.
"""

from __future__ import annotations

import contextlib
import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`cpu`, `tpu` (this process's TPU chip), or the CUDA device of this process (`LOCAL_RANK` picks it under
    data parallelism).

    `auto` means CUDA when one is available, never TPU: a TPU run says so. Launchers such as Ray Train and
    torchrun set `LOCAL_RANK`; a process that sees a single GPU gets `cuda:0` whatever its rank.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "tpu":
        # The TPU runtime binds each process to one chip (Ray Train gives each worker one); no index to choose.
        import torch_tpu  # noqa: F401  (registers the tpu device with torch)

        return torch.device("tpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    index = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and TPU when `bf16` is set; full precision otherwise (CPU bf16 is slower than fp32)."""
    if device.type in ("cuda", "tpu") and bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (an accelerator runs ahead of Python); nothing on CPU."""
    if device.type != "cpu":
        torch.get_device_module(device).synchronize()


def compiles(setting: str | bool, device: torch.device, is_mixer: bool) -> bool:
    """Whether to `torch.compile` the model: `train.compile` true or false, or `auto`: a Mixer on CUDA
    (fused GELU and bias adds; eager on CPU, where compiling a short run costs more than it saves)."""
    if setting == "auto":
        return is_mixer and device.type == "cuda"
    return bool(setting)


def pins_memory(device: torch.device) -> bool:
    """Whether host batches should be page-locked so copies to `device` can overlap compute (CUDA only)."""
    return device.type == "cuda"
