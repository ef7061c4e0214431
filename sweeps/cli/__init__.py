"""The `mixer` console script: one subcommand per module, each with `add_arguments` and `run`."""

from __future__ import annotations

import argparse
import logging
import os
import importlib
import sys
from importlib.metadata import version

# subcommand -> (module implementing it, one-line help). Modules are imported only when their command runs,
# so `mixer variants` does not pay for importing Ray.
COMMANDS = {
    "variants": ("sweeps.cli.variants", "print the Mixer variants with parameter counts and GMACs"),
    "bench": ("sweeps.cli.bench", "measure inference and training throughput (img/s)"),
    "train": ("sweeps.cli.train", "run one training run without Ray"),
    "data": ("sweeps.cli.data", "dataset tools: convert a source to Parquet shards"),
    "sweep": ("sweeps.cli.sweep", "validate, run, resume and list sweeps"),
    "report": ("dashboards.cli", "scaling-law fits, figures and an HTML report of a sweep"),
    "predict": ("dashboards.predict_cli", "predicted error at a data or model size a sweep never ran"),
    "fit": ("dashboards.fit_cli", "scaling-law fits, held-back predictions and a report of a table of runs"),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="mixer", description="MLP-Mixer sweeps on Ray, tracked in MLflow.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('mixer-sweeps')}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(subparser)
            subparser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mixer` console script; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    return args.run(args) or 0


def console() -> None:
    """The `mixer` console script: `main`, then Ray shut down, the output flushed and the process ended without
    Python's teardown of every module the driver imported (Ray Tune, Optuna, MLflow, pandas, torch), which takes
    about 2 s after a sweep's results are printed. Nothing is left to it: runs and studies are committed as they
    are written."""
    status = main()
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    console()
