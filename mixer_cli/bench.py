"""`mixer bench`: inference and training throughput of Mixer variants, optionally against timm's MlpMixer;
with `--find-micro-batch`, the largest training micro-batch that runs on the device beside the memory plan's."""

from __future__ import annotations

import argparse

from mixer_cli.output import add_json_flag, emit_json, refuse
from mixer_core.bench import DTYPES, MODES, BenchSettings, run_bench
from mixer_core.variants import VARIANTS
from sweeps.tables import format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Variants, input, device/dtype/compile, timing, `--vs-timm` and `--json`."""
    defaults = BenchSettings()
    parser.add_argument(
        "--variant", action="append", choices=list(VARIANTS), metavar="NAME",
        help=f"Mixer variant, repeatable (default S/32); one of {', '.join(VARIANTS)}",
    )
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both", help="what to time (default both)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--num-classes", type=int, default=defaults.num_classes)
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=defaults.dtype, help="fp32, or bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument(
        "--timm-eager", action="store_true", help="with --compile, still run timm's model eager (compiled vs eager)"
    )
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed steps per model")
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed steps per model (median)")
    parser.add_argument("--vs-timm", action="store_true", help="also time timm's MlpMixer of the same configuration")
    parser.add_argument(
        "--find-micro-batch", action="store_true",
        help="instead of timing: the largest training micro-batch (up to --batch-size) that runs on --device, "
             "beside the memory plan's; on CPU, 'runs' means a peak resident memory within --memory-gb",
    )
    parser.add_argument("--grad-checkpointing", action="store_true", help="with --find-micro-batch: checkpointed")
    parser.add_argument("--memory-gb", type=float, help="with --find-micro-batch: the device memory (needed on CPU)")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    """Benchmark and print one row per variant, mode and model (ours/timm ratio on our rows)."""
    if args.find_micro_batch:
        return find_micro_batch(args)
    settings = BenchSettings(
        batch_size=args.batch_size,
        image_size=args.image_size,
        num_classes=args.num_classes,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        compile_timm=not args.timm_eager,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    modes = MODES if args.mode == "both" else (args.mode,)
    result = run_bench(args.variant or ["S/32"], modes, settings, vs_timm=args.vs_timm)
    if args.json:
        emit_json(result)
        return 0
    print(
        f"{settings.device} {settings.dtype}{' compiled' if settings.compile else ''}, batch {settings.batch_size}, "
        f"{settings.image_size} px, median of {settings.repeats}; matmul peak {result['matmul_peak_tflops']:.3g} TFLOP/s"
    )
    print(format_table(result["rows"]))
    return 0


def find_micro_batch(args: argparse.Namespace) -> int:
    """Print, per variant, the largest micro-batch that trains on the device and the plan's (same memory)."""
    from mixer_core.memory import (
        mixer_activation_bytes,
        mixer_transient_bytes,
        training_memory,
        usable_device_bytes,
    )
    from mixer_core.sizes import mixer_parameters

    on_cpu = args.device == "cpu"
    if on_cpu and args.memory_gb is None:
        return refuse("bench --find-micro-batch", ValueError(
            "on CPU nothing runs out of memory before the machine swaps; give the bound: --memory-gb GB"))
    import torch

    from mixer_core.config import ModelConfig
    from mixer_core.memory_bench import cpu_step_runs, cuda_step_runs, largest_micro_batch

    bf16 = args.dtype == "bf16" and not on_cpu
    memory_gb = args.memory_gb or torch.cuda.get_device_properties(args.device).total_memory / 1e9
    rows = []
    for name in args.variant or ["S/32"]:
        model_cfg = ModelConfig(variant=name, grad_checkpointing=args.grad_checkpointing)
        shape = (3, args.image_size, args.image_size)
        if on_cpu:
            runs = cpu_step_runs(model_cfg, shape, args.num_classes, memory_gb * 1e9)
        else:
            runs = cuda_step_runs(model_cfg, shape, args.num_classes, bf16, args.device)
        variant = VARIANTS[name]
        activations = mixer_activation_bytes(variant, args.image_size, 3, args.num_classes, bf16)

        def plan(micro_batch: int):
            return training_memory(
                mixer_parameters(variant, args.image_size, 3, args.num_classes), activations,
                mixer_transient_bytes(variant, args.image_size, bf16), micro_batch,
                checkpointing=args.grad_checkpointing, bf16=bf16)

        device_bytes = memory_gb * 1e9 if on_cpu else usable_device_bytes(memory_gb)
        batches = range(1, args.batch_size + 1)
        planned = max((size for size in batches if plan(size).total <= device_bytes), default=0)
        rows.append({
            "variant": name, "device": args.device, "memory_gb": memory_gb, "precision": "bf16" if bf16 else "fp32",
            "checkpointing": args.grad_checkpointing,
            "largest_micro_batch": largest_micro_batch(runs, args.batch_size),
            "planned_micro_batch": planned,
        })
    if args.json:
        emit_json(rows)
    else:
        print(format_table(rows))
    return 0
