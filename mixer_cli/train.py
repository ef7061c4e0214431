"""`mixer train CONFIG.yaml [--set key=value ...] [--json] [--resume DIR] [--out DIR]`: one run, without Ray
unless its data streams (Parquet, `data.stream`), which then flows through a Ray started on this machine.

CONFIG is a run config or a sweep spec (its `base:` is used), so a single run and a sweep trial are configured
alike. `train.init_from` may name an MLflow run's artifact, such as a sweep's best weights
(`runs:/RUN_ID/best_checkpoint`); it is downloaded before training. Progress goes to stderr; the final metrics
are printed as a table, or with `--json` as one JSON document.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

from mixer_cli.output import add_json_flag, emit_json, refuse
from mixer_core import metrics
from mixer_core.config_io import ConfigError, load_config
from mixer_core.data import DataError
from mixer_core.train import TrainingError, train
from sweeps.tables import format_table
from sweeps.tracking.artifacts import fetch_init_from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mixer train`."""
    parser.add_argument("config", type=Path, help="run config YAML, or a sweep spec whose base config is used")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=0.003 (repeatable)")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directory for checkpoints, empty or new unless --resume (default: "
                             "runs/<config name>-<UTC time>-<random suffix>)")
    parser.add_argument("--resume", type=Path, default=None, metavar="DIR",
                        help="continue from a checkpoint directory, or from a run directory's newest checkpoint")
    parser.add_argument("--no-checkpoints", action="store_true", help="write no checkpoints")
    add_json_flag(parser)


def _run_dir_of(resume: Path | None) -> Path | None:
    """The run directory a resumed run keeps writing to: `DIR` itself, or `RUN` for `RUN/checkpoints/step_N`."""
    if resume is None:
        return None
    return resume.parent.parent if resume.parent.name == "checkpoints" else resume


def _new_run_dir(config: Path) -> Path:
    """`runs/<config name>-<UTC time>-<6 random hex digits>`: two runs started in one second get two folders."""
    started = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path("runs") / f"{config.stem}-{started}-{secrets.token_hex(3)}"


def run(args: argparse.Namespace) -> int:
    """Train one run; exit status 0 on success, 2 for a bad config or dataset, 1 when training fails."""
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        return refuse("train", error)
    work_dir = None
    if not args.no_checkpoints:
        work_dir = args.out or _run_dir_of(args.resume) or _new_run_dir(args.config)
        if args.resume is None and work_dir.is_dir() and any(work_dir.iterdir()):
            return refuse("train", f"{work_dir}: holds another run; continue it with --resume {work_dir}, "
                                   "or name an empty folder with --out")
    try:
        with tempfile.TemporaryDirectory(prefix="mixer-init-") as download_dir:
            config = fetch_init_from(config, Path(download_dir))
            stream = None
            if config.data.streams:
                from sweeps.engine.ray_session import init_ray
                from sweeps.stream import open_stream

                init_ray()
                stream = open_stream(config.data, config.eval, config.train.seed, rank=0, world_size=1)
            final = train(config, resume_from=args.resume, work_dir=work_dir, progress=True, stream=stream)
    except (DataError, ValueError, FileNotFoundError) as error:  # a dataset, value or checkpoint we cannot use
        return refuse("train", f"{args.config}: {error}")
    except TrainingError as error:
        print(f"mixer train: {args.config}: {error}", file=sys.stderr)
        return 1
    if args.json:
        emit_json(final)
        return 0
    known = metrics.all_metric_names(config.eval.fewshot_shots, config.eval.fewshot_labels)
    names = [name for name in known if name in final]
    print(format_table([{"metric": name, "value": final[name]} for name in names]))
    if work_dir is not None:
        print(f"checkpoints: {work_dir / 'checkpoints'}")
    return 0
