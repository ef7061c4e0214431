"""`mixer data`: inspect a dataset, convert it to Parquet shards, and measure its loader's throughput.

SRC is a dataset name (`digits`, `mnist_idx`, ...) or a YAML run config / sweep spec whose `data` section is
used; `--set data.KEY=VALUE` then sets its fields, as `mixer train` does:
`mixer data info mnist_idx --set data.path=data/mnist-t10k`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mixer_cli.output import add_json_flag, emit_json, refuse
from mixer_core.config import DATASET_NAMES, DataConfig
from mixer_core.config_io import ConfigError, apply_override, load_config, parse_as
from mixer_core.config_messages import suggestion
from mixer_core.data import DataError, build_splits
from mixer_core.data.convert import convert
from mixer_core.data.parquet import class_names, count_selected, decoded_size, find_shards, row_count
from sweeps.bench.data import PIPELINES, bench_loader
from sweeps.tables import format_table


# What `mixer data bench` prints (--json gives every field): throughput beside the cores it took, then memory.
BENCH_COLUMNS = (
    "pipeline", "processes", "images", "img_per_sec", "cores_busy", "img_per_sec_per_core", "processes_started",
    "peak_rss_mb",
    "peak_pss_mb", "loading_at_once", "peak_pss_mb_per_loading_process", "loading_processes_with_torch",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands `info`, `convert` and `bench`, each taking SRC plus `--set` data overrides."""
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    helps = {
        "info": "counts per split, classes and image shape after carving",
        "convert": "write a source as train/val/test Parquet shards (original image bytes) plus manifest.json",
        "bench": "training input pipeline throughput (img/s) and peak memory",
    }
    for name, help_text in helps.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("src", help=f"a dataset name ({', '.join(DATASET_NAMES)}) or a YAML config")
        if name == "convert":
            command.add_argument("dest", help="output folder or fsspec URL (e.g. s3://bucket/mnist)")
            command.add_argument("--shard-size", type=int, default=1024, help="examples per shard (default 1024)")
            command.add_argument("--processes", type=int, default=os.cpu_count(),
                                 help="shards written at once (default: one per CPU; 1 for memory:// URLs)")
            command.add_argument("--replace", action="store_true",
                                 help="convert into a folder that holds shards already, removing them first "
                                      "(without it, a non-empty DEST is refused)")
        if name == "bench":
            command.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size")
            command.add_argument("--batches", type=int, default=50, help="timed batches (default 50)")
            command.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
            command.add_argument("--processes", type=int, default=None,
                                 help="loading processes: Ray Data decoding tasks or DataLoader workers "
                                      "(default: data.num_workers)")
            command.add_argument("--pipeline", choices=list(PIPELINES), default=None,
                                 help="stream (Parquet via Ray Data), memory (DataLoader), or torchvision's "
                                      "ImageFolder reference on an image folder (default: as training reads SRC)")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="set a data field, e.g. data.path=data/mnist-t10k or data.augment.flip=true "
                                  "(repeatable)")
        command.add_argument("--seed", type=int, default=0, help="seed of the synthetic source (default 0)")
        add_json_flag(command)


def data_config(src: str, overrides: list[str]) -> DataConfig:
    """The DataConfig named by SRC (a dataset name or a YAML config file) with `data.KEY=VALUE` overrides applied."""
    if src in DATASET_NAMES:
        mapping, source = {"data": {"name": src}}, "command line"
    elif Path(src).is_file():
        mapping, source = {"data": load_config(src).data.model_dump()}, src
    else:
        raise ConfigError(
            f"{src}: neither a dataset name ({', '.join(DATASET_NAMES)}) nor a config file"
            f"{suggestion(src, list(DATASET_NAMES))}"
        )
    for override in overrides:
        key = apply_override(mapping, override)
        if not key.startswith("data."):
            raise ConfigError(f"--set {key}: mixer data sets data.* keys only")
    return parse_as(DataConfig, mapping["data"], source, prefix="data")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_info(cfg: DataConfig, args: argparse.Namespace) -> dict:
    """Counts, classes and shape of the splits training makes from `cfg` (a streamed source is not decoded)."""
    if cfg.streams:
        sets = find_shards(cfg.path)
        size, names = decoded_size(sets, cfg.image_size, cfg.path), class_names(sets, cfg.path)
        counts = {"train": count_selected(sets, cfg.fraction), "val": row_count(sets, "val"),
                  "test": row_count(sets, "test")}
        return {"name": cfg.name, "path": cfg.path, "num_classes": len(names), "class_names": names,
                "image_shape": [sets.channels, size, size], "train_size": counts["train"], "splits": counts}
    splits = build_splits(cfg, seed=args.seed)
    return {
        "name": cfg.name,
        "path": cfg.path,
        "num_classes": splits.num_classes,
        "class_names": splits.class_names,
        "image_shape": list(splits.image_shape),
        "train_size": splits.train_size,
        "splits": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
    }


def run_convert(cfg: DataConfig, args: argparse.Namespace) -> dict:
    """Write the source as train/val/test Parquet shard sets (`mixer_core.data.convert`); returns the manifest."""
    if args.shard_size <= 0 or args.processes <= 0:
        raise ConfigError(f"--shard-size and --processes must be positive, got {args.shard_size}, {args.processes}")
    manifest = convert(cfg, args.dest, args.shard_size, args.processes, _progress, seed=args.seed,
                       replace=args.replace)
    return {"dest": args.dest, **manifest}


def run_bench(cfg: DataConfig, args: argparse.Namespace) -> dict:
    """Images/s and peak memory of the training input pipeline (`sweeps.bench.data`)."""
    pipeline = args.pipeline or ("stream" if cfg.streams else "memory")
    processes = cfg.num_workers if args.processes is None else args.processes
    if pipeline == "stream" and processes == 0:
        processes = 1  # Ray Data decodes in at least one task
    return bench_loader(cfg, pipeline, processes, args.batch_size or cfg.batch_size, args.batches, args.warmup)


def run(args: argparse.Namespace) -> int:
    """Run `mixer data ACTION`; prints a table, or one JSON document with --json."""
    actions = {"info": run_info, "convert": run_convert, "bench": run_bench}
    try:
        result = actions[args.data_command](data_config(args.src, args.overrides), args)
    except (ConfigError, DataError) as error:
        return refuse(f"data {args.data_command}", error)
    if args.json:
        emit_json(result)
    elif args.data_command == "info":
        print(f"{result['name']}: {result['num_classes']} classes, image shape {tuple(result['image_shape'])}")
        print(format_table([{"split": split, "examples": count} for split, count in result["splits"].items()]))
    elif args.data_command == "convert":
        counts = {split: info["count"] for split, info in result["splits"].items()}
        print(f"wrote {counts} to {result['dest']} ({len(result['classes'])} classes)")
    else:
        print(format_table([{column: result[column] for column in BENCH_COLUMNS}]))
    return 0
