"""The `mixer` console script, the top floor: it assembles every command and imports downward only.

Each subcommand is a module of this package with `add_arguments(parser)` and `run(args)`. A command's module is
imported only when that command runs, so `mixer variants` does not pay for importing Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import version
from types import ModuleType

from mixer_cli.output import json_stdout


def _command_module(command: str) -> ModuleType:
    """The module of subcommand `command`, imported now (each import is written out, so the import graph shows it)."""
    if command == "variants":
        from mixer_cli import variants as module
    elif command == "bench":
        from mixer_cli import bench as module
    elif command == "train":
        from mixer_cli import train as module
    elif command == "data":
        from mixer_cli import data as module
    elif command == "sweep":
        from mixer_cli import sweep as module
    elif command == "report":
        from mixer_cli import report as module
    elif command == "predict":
        from mixer_cli import predict as module
    elif command == "fit":
        from mixer_cli import fit as module
    else:
        raise KeyError(command)
    return module


# subcommand -> one-line help; its module is `mixer_cli.<subcommand>`, imported by `_command_module` when it runs
COMMANDS = {
    "variants": "print the Mixer variants with parameter counts and GMACs",
    "bench": "measure inference and training throughput (img/s)",
    "train": "run one training run without Ray",
    "data": "dataset tools: convert a source to Parquet shards",
    "sweep": "validate, run, resume and list sweeps",
    "report": "scaling-law fits, figures and an HTML report of a sweep",
    "predict": "predicted error at a data or model size a sweep never ran, or the compute-optimal size (--flops)",
    "fit": "scaling-law fits, held-back predictions and a report of a table of runs",
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="mixer", description="MLP-Mixer sweeps on Ray, tracked in MLflow.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('mixer-sweeps')}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = _command_module(name)
            module.add_arguments(subparser)
            subparser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mixer` console script; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    # With torch_tpu installed and no libtpu, `import torch` would abort: it loads only where a run asks for a
    # TPU (`mixer_core.device`); `sweeps.engine.ray_session.WORKER_ENV` says the same to Ray's processes.
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    if getattr(args, "json", False):
        with json_stdout():
            return args.run(args) or 0
    return args.run(args) or 0


def console() -> None:
    """The `mixer` console script: `main`, then Ray shut down, the output flushed and the process ended without
    Python's teardown of every module the driver imported (Ray Tune, Optuna, MLflow, pandas, torch), which takes
    about 2 s after a sweep's results are printed. Nothing is left to it: runs and studies are committed as they
    are written."""
    status = main()
    sys.stdout.flush()
    sys.stdout = sys.stderr  # what Ray prints while it shuts down (its workers' last messages) is no result
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    console()
