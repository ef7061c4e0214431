"""Throughput of Mixer variants (img/s), optionally against timm's `MlpMixer` of the same configuration.

Like timm's `benchmark.py`: warm-up steps (which also absorb `torch.compile`), then the median of repeated,
device-synchronised timings. With a timm twin the two models alternate step by step, so a machine whose load
changes during the run slows both alike and the ratio stays meaningful. Achieved FLOP/s is set against a
measured square-matmul peak of the same device and dtype: the practical ceiling for a network that is
almost only matmuls.

Throughput is reported per device (`img_per_sec`) and per core (`img_per_sec_per_core`), the paper's Table 2
unit (img/sec/core, on TPU-v3 cores, at the best batch size: pass the batch size to compare at). A CPU's cores
are the threads torch computes with; an accelerator counts as one core.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mixer_core.device import synchronize
from mixer_core.flops import analytic_macs, measured_macs
from mixer_core.model import create_mixer, create_timm_twin

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = ("inference", "train")
TRAIN_MACS_PER_FORWARD_MAC = 3  # forward, backward to activations, backward to weights


@dataclass(frozen=True)
class BenchSettings:
    """How every model is measured."""

    batch_size: int = 32
    image_size: int = 224
    num_classes: int = 1000
    device: str = "cpu"
    dtype: str = "fp32"  # fp32, or bf16 autocast
    compile: bool = False
    compile_timm: bool = True  # False: timm runs eager even with `compile` (the GPU comparison)
    warmup: int = 2
    repeats: int = 5


def compute_cores(device: torch.device) -> int:
    """The cores one device computes with: torch's intra-op threads on a CPU, 1 for an accelerator."""
    return torch.get_num_threads() if device.type == "cpu" else 1


def _autocast(settings: BenchSettings) -> contextlib.AbstractContextManager:
    if settings.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(settings.device).type, dtype=DTYPES[settings.dtype])


def matmul_peak_flops(device: str, dtype: str, size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of a square `size` matmul (median of `repeats`) on `device` in `dtype`. The default sizes are
    past the knee of the curve: on our CPUs 2048-4096 agree within 2%; GPUs need 8192 to fill."""
    target = torch.device(device)
    size = size or (3072 if target.type == "cpu" else 8192)
    a = torch.randn(size, size, device=target, dtype=DTYPES[dtype])
    b = torch.randn(size, size, device=target, dtype=DTYPES[dtype])
    timings = time_interleaved({"mm": lambda: torch.mm(a, b)}, warmup=1, repeats=repeats, device=target)["mm"]
    return 2 * size**3 / statistics.median(timings)


def make_step(model: nn.Module, mode: str, settings: BenchSettings) -> Callable[[], None]:
    """One inference batch, or one training step (forward, cross-entropy, backward, SGD update)."""
    device = torch.device(settings.device)
    images = torch.randn(settings.batch_size, 3, settings.image_size, settings.image_size, device=device)
    labels = torch.randint(0, settings.num_classes, (settings.batch_size,), device=device)
    if mode == "inference":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), _autocast(settings):
                model(images)

        return step
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        with _autocast(settings):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_interleaved(
    steps: dict[str, Callable[[], Any]], warmup: int, repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each step; the steps take turns so that they see the same machine load."""
    for step in steps.values():
        for _ in range(warmup):
            step()
        synchronize(device)
    timings: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            synchronize(device)
            timings[name].append(time.perf_counter() - start)
    return timings


def bench_variant(
    variant: str, mode: str, settings: BenchSettings, vs_timm: bool, peak_flops: float
) -> list[dict[str, Any]]:
    """Rows for `variant` in `mode`: ours, and timm's twin when `vs_timm` (with ours/timm on our row)."""
    device = torch.device(settings.device)
    ours = create_mixer(variant, num_classes=settings.num_classes, image_size=settings.image_size).to(device)
    models: dict[str, nn.Module] = {"mixer_core": ours}
    macs = {"mixer_core": analytic_macs(ours)}
    if vs_timm:
        twin = create_timm_twin(ours).to(device)
        models["timm"] = twin
        macs["timm"] = measured_macs(twin, (3, settings.image_size, settings.image_size))
    steps = {}
    for name, model in models.items():
        if settings.compile and (name != "timm" or settings.compile_timm):
            model = torch.compile(model)
        steps[name] = make_step(model, mode, settings)
    timings = time_interleaved(steps, settings.warmup, settings.repeats, device)

    macs_per_image = {"inference": 1, "train": TRAIN_MACS_PER_FORWARD_MAC}[mode]
    cores = compute_cores(device)
    rows = []
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        flops = 2 * macs_per_image * macs[name] * settings.batch_size / median
        rows.append(
            {
                "variant": variant,
                "mode": mode,
                "model": name,
                "img_per_sec": settings.batch_size / median,
                "img_per_sec_per_core": settings.batch_size / median / cores,
                "ms_per_batch": 1e3 * median,
                "tflops": flops / 1e12,
                "peak_fraction": flops / peak_flops,
                "vs_timm": None,
            }
        )
    if vs_timm:
        rows[0]["vs_timm"] = rows[0]["img_per_sec"] / rows[1]["img_per_sec"]
    return rows


def run_bench(
    variants: Iterable[str], modes: Iterable[str], settings: BenchSettings, vs_timm: bool = False
) -> dict[str, Any]:
    """Measure every variant in every mode; returns {settings, matmul_peak_tflops, rows}. Progress on stderr."""
    print(f"measuring the {settings.dtype} matmul peak on {settings.device} ...", file=sys.stderr)
    peak = matmul_peak_flops(settings.device, settings.dtype)
    rows = []
    for variant in variants:
        for mode in modes:
            print(f"benchmarking {variant} {mode} ...", file=sys.stderr)
            rows.extend(bench_variant(variant, mode, settings, vs_timm, peak))
    return {"settings": asdict(settings), "matmul_peak_tflops": peak / 1e12, "rows": rows}
