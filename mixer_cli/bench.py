"""`mixer bench`: inference and training throughput of Mixer variants, optionally against timm's MlpMixer."""

from __future__ import annotations

import argparse

from mixer_cli.output import add_json_flag, emit_json
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
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    """Benchmark and print one row per variant, mode and model (ours/timm ratio on our rows)."""
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
