"""Training memory measured: the peak bytes of a training step, and the largest micro-batch that runs.

`mixer bench --find-micro-batch` checks the plan of `mixer_core.memory` against the device. On CUDA a
micro-batch runs when its step raises no out-of-memory error, and the peak is the caching allocator's. On CPU
nothing runs out (the kernel swaps or kills), so a micro-batch "runs" when its step's peak resident memory
stays under a stated bound; each CPU step is measured in a fresh process, with glibc returning every large
block to the kernel on free, so one measurement's leftovers never hide in the next one's peak.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mixer_core.build import build_model
from mixer_core.config import ModelConfig, TrainConfig
from mixer_core.device import autocast
from mixer_core.optim import build_optimizer

# Without it glibc raises its mmap threshold after the first large free and keeps later blocks in the heap:
# a freed activation would stay resident and the next step's peak would read low.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _resident_bytes(field: str) -> int:
    """A `/proc/self/status` memory figure (`VmRSS`, `VmHWM`) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def training_step_peak_bytes(
    model_cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int, micro_batch_size: int,
    device: str = "cpu", bf16: bool = False, recipe: str = "pretrain",
) -> int:
    """Peak bytes that a model, its optimizer state and two training steps of `micro_batch_size` images add
    to this process on `device` (the second step is the peak: the optimizer state exists by then).

    On CPU this is resident memory above what the process held before (Linux; the peak is reset through
    `/proc/self/clear_refs`); on CUDA the allocator's peak. Run it in a fresh process for a clean figure.
    """
    target = torch.device(device)
    images = torch.randn(micro_batch_size, *image_shape, device=target)
    labels = torch.randint(0, num_classes, (micro_batch_size,), device=target)
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
        before = torch.cuda.memory_allocated(target)
    else:
        before = _resident_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS
    model = build_model(model_cfg, num_classes, image_shape).to(target)
    optimizer = build_optimizer(model, TrainConfig(recipe=recipe), target)
    for _ in range(2):
        with autocast(target, bf16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if target.type == "cuda":
        return torch.cuda.max_memory_allocated(target) - before
    return _resident_bytes("VmHWM") - before


def peak_bytes_in_fresh_process(cases: list[dict[str, Any]]) -> list[int]:
    """`training_step_peak_bytes(**case)` for each case, each measured in a new process (spawned, with large
    blocks returned to the kernel on free, and warmed up by a tiny step first). One process for several cases
    reads low: what the first case's tensors left in the heap, the next one reuses without growing."""
    saved = {name: os.environ.get(name) for name in _MALLOC_ENV}
    os.environ.update(_MALLOC_ENV)  # the spawned interpreter reads them as it starts
    try:
        context = multiprocessing.get_context("spawn")
        peaks = []
        for case in cases:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=_warm_up) as pool:
                peaks.append(pool.submit(_measure, case).result())
        return peaks
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _warm_up() -> None:
    # Maps the kernels' code and starts the thread pools, which are not the model's memory.
    training_step_peak_bytes(ModelConfig(variant="Ti/4"), (3, 8, 8), 2, 2)


def _measure(case: dict[str, Any]) -> int:
    return training_step_peak_bytes(**case)


def largest_micro_batch(runs: Callable[[int], bool], limit: int) -> int:
    """The largest micro-batch in 1..`limit` for which `runs` holds (0 if none), assuming what runs at one
    size runs at every smaller one: doubling up to the first failure, then bisection."""
    good, bad = 0, limit + 1
    size = 1
    while size < bad:
        if runs(size):
            good, size = size, size * 2
        else:
            bad = size
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if runs(middle) else (good, middle)
    return good


def cuda_step_runs(
    model_cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int, bf16: bool, device: str = "cuda"
) -> Callable[[int], bool]:
    """`runs(micro_batch)` for `largest_micro_batch`: whether a training step fits the CUDA device."""

    def runs(micro_batch_size: int) -> bool:
        try:
            training_step_peak_bytes(model_cfg, image_shape, num_classes, micro_batch_size, device, bf16)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    return runs


def cpu_step_runs(
    model_cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int, memory_bytes: float
) -> Callable[[int], bool]:
    """`runs(micro_batch)` for `largest_micro_batch` on CPU: whether a step's peak stays within `memory_bytes`."""

    def runs(micro_batch_size: int) -> bool:
        case = dict(model_cfg=model_cfg, image_shape=image_shape, num_classes=num_classes,
                    micro_batch_size=micro_batch_size)
        return peak_bytes_in_fresh_process([case])[0] <= memory_bytes

    return runs
