"""`mixer data`: inspect a dataset, convert it to Parquet shards, and measure its loader's throughput.

SRC is a dataset name (`digits`, `mnist_idx`, ...) or a YAML run config / sweep spec whose `data` section is
used; `--set data.KEY=VALUE` then sets its fields, as `mixer train` does:
`mixer data info mnist_idx --set data.path=data/mnist-t10k`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mixer_core.config import DATASET_NAMES, ConfigError, DataConfig, apply_override, load_config, parse_as, suggestion
from mixer_core.data import DataError, build_splits, make_loader
from mixer_core.data.convert import convert
from sweeps.cli.output import add_json_flag, emit_json, format_table, refuse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands `info`, `convert` and `bench`, each taking SRC plus `--set` data overrides."""
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    helps = {
        "info": "counts per split, classes and image shape after carving",
        "convert": "write a source as train/val/test Parquet shards (original image bytes) plus manifest.json",
        "bench": "training-loader throughput in images/s",
    }
    for name, help_text in helps.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("src", help=f"a dataset name ({', '.join(DATASET_NAMES)}) or a YAML config")
        if name == "convert":
            command.add_argument("dest", help="output folder or fsspec URL (e.g. s3://bucket/mnist)")
            command.add_argument("--shard-size", type=int, default=1024, help="examples per shard (default 1024)")
            command.add_argument("--processes", type=int, default=os.cpu_count(),
                                 help="shards written at once (default: one per CPU; 1 for memory:// URLs)")
        if name == "bench":
            command.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size")
            command.add_argument("--batches", type=int, default=50, help="timed batches (after 3 warm-up batches)")
            command.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: data.num_workers)")
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
    """Counts, classes and shape of the splits `build_splits` makes from `cfg`."""
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
    manifest = convert(cfg, args.dest, args.shard_size, args.processes, _progress, seed=args.seed)
    return {"dest": args.dest, **manifest}


def run_bench(cfg: DataConfig, args: argparse.Namespace) -> dict:
    """Images/s of the training loader with the configured augmentation, over N batches after 3 warm-up ones."""
    splits = build_splits(cfg, seed=args.seed)
    batch_size = args.batch_size or cfg.batch_size
    workers = cfg.num_workers if args.workers is None else args.workers
    loader = make_loader(splits.train, batch_size, shuffle=True, seed=0, num_workers=workers, drop_last=True)
    if len(loader) == 0:
        raise ConfigError(f"batch size {batch_size} exceeds the {len(splits.train)} training examples")
    epoch, batches, images, start = 0, iter(loader), 0, None
    for step in range(3 + args.batches):
        if step == 3:
            start, images = time.perf_counter(), 0
        try:
            batch = next(batches)
        except StopIteration:
            epoch += 1
            loader.sampler.set_epoch(epoch)
            batches = iter(loader)
            batch = next(batches)
        images += len(batch[0])
    seconds = time.perf_counter() - start
    return {
        "name": cfg.name,
        "image_shape": list(splits.image_shape),
        "batch_size": batch_size,
        "workers": workers,
        "augment": cfg.augment.model_dump(),
        "permutation": cfg.permutation,
        "images": images,
        "seconds": seconds,
        "images_per_sec": images / seconds,
    }


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
        print(format_table([{k: v for k, v in result.items() if k != "augment"}]))
    return 0
