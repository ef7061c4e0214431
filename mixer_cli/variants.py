"""`mixer variants`: the Mixer variants with their sizes, parameter counts and GMACs at a resolution."""

from __future__ import annotations

import argparse

from mixer_cli.output import add_json_flag, emit_json
from mixer_core.sizes import variant_table
from sweeps.tables import format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--image-size`, `--num-classes`, `--json`."""
    parser.add_argument("--image-size", type=int, default=224, help="square input size in pixels (default 224)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of the head (default 1000)")
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    """Print the table (params in millions, forward GMACs per image; '-' where the patch does not divide)."""
    rows = variant_table(image_size=args.image_size, num_classes=args.num_classes)
    if args.json:
        emit_json({"image_size": args.image_size, "num_classes": args.num_classes, "variants": rows})
    else:
        print(format_table(rows))
    return 0
