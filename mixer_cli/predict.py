"""`mixer predict SWEEP|TABLE`: with `--examples D [--params N]`, the error a sweep's scaling laws predict at a
size it never ran, per model (or per model family with --params), with a prediction interval and the
extrapolation factor; with `--flops C`, the compute-optimal model and data size at that budget (Chinchilla's
approach 3) from each family's joint law, for a sweep or a table of runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from dashboards.allocation import ComputeOptimal
from dashboards.holdout import INTERVAL_KIND
from dashboards.predict import SizePrediction, optima_of_sweep, predict_at
from dashboards.runs import SweepNotFound, load_sweep
from dashboards.scaling import CannotFit
from dashboards.tables import TableError, is_table, optima_of_table, read_table, table_kind, table_runs
from mixer_cli.fit import add_table_columns, columns_of
from mixer_cli.output import add_json_flag, emit_json, refuse
from sweeps.tables import format_table
from sweeps.tracking.reach import StoreUnreachable, require_reachable, tracking_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `mixer predict` options."""
    parser.add_argument("sweep", metavar="SWEEP|TABLE",
                        help="sweep name (the mixer.sweep tag of its MLflow runs), or a table of runs "
                             "(.csv, .parquet, .jsonl; with --flops)")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--examples", type=float, metavar="D",
                      help="training-set size to predict at, in examples (e.g. 3e8)")
    size.add_argument("--flops", type=float, metavar="C",
                      help="compute budget in FLOPs: print the compute-optimal model and data size")
    parser.add_argument("--params", type=float, metavar="N",
                        help="model size in parameters: predict with the joint law of each model family")
    parser.add_argument("--experiment", help="MLflow experiment to look in (default: every experiment)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--metric", help="metric (default: as `mixer report`); for a table, its column")
    parser.add_argument("--bootstrap", type=int, default=300, metavar="N",
                        help="bootstrap resamples per fit (default: %(default)s)")
    table = parser.add_argument_group("a table's columns (as `mixer fit`)")
    add_table_columns(table, suffix="-column")
    add_json_flag(parser)


def _range(low: float, high: float) -> str:
    return f"[{100 * low:.2f}, {100 * high:.2f}]"


def _optima(args: argparse.Namespace) -> tuple[list[ComputeOptimal], list[str]]:
    if is_table(args.sweep):
        if not args.metric:
            raise TableError("name the metric's column with --metric")
        kind = table_kind(args.metric, args.kind)
        runs = table_runs(read_table(args.sweep), columns_of(args), source=args.sweep, kind=kind)
        return optima_of_table(runs, args.flops, metric=args.metric, kind=kind, n_bootstrap=args.bootstrap)
    uri = args.tracking_uri or tracking_uri()
    require_reachable(uri)
    sweep = load_sweep(args.sweep, uri=uri, experiment=args.experiment)
    return optima_of_sweep(sweep, args.flops, metric=args.metric, n_bootstrap=args.bootstrap)


def _print_optima(optima: list[ComputeOptimal]) -> None:
    print(format_table([
        {"series": o.series, "metric": o.metric, "FLOPs": o.flops, "N": o.params,
         "N 95% interval": f"[{o.params_interval[0]:.3g}, {o.params_interval[1]:.3g}]", "D": o.data,
         "D 95% interval": f"[{o.data_interval[0]:.3g}, {o.data_interval[1]:.3g}]", "predicted": o.predicted,
         "95% interval": f"[{o.predicted_interval[0]:.4g}, {o.predicted_interval[1]:.4g}]",
         "extrapolation (C, N, D)": ", ".join(f"{value:.3g}x" for value in o.extrapolation.values()),
         "FLOPs model": o.flops_model}
        for o in optima
    ]))
    print("intervals: 95% bootstrap intervals of the law's optimum and of its value there; extrapolation: the "
          "budget, N and D over the largest the law was fitted on")


def _print_predictions(predictions: list[SizePrediction]) -> None:
    print(format_table([
        {"series": p.series, "metric": p.metric,
         **({"error %": 100 * p.predicted, "95% interval %": _range(*p.interval), "accuracy %": 100 * (1 - p.predicted),
             "accuracy interval %": _range(1 - p.interval[1], 1 - p.interval[0])} if p.kind.higher_is_better else
            {"loss": p.predicted, "95% interval": f"[{p.interval[0]:.4g}, {p.interval[1]:.4g}]"}),
         "extrapolation": f"{p.extrapolation:.3g}x", "warning": p.warning or ""}
        for p in predictions
    ]))
    print(f"intervals: 95% {INTERVAL_KIND}")


def _emit(results: list[SizePrediction] | list[ComputeOptimal], notes: list[str], nothing: str, as_json: bool,
          print_results: Callable[[list], None]) -> int:
    """Notes on stderr, then the results as JSON or a table; exit status 1 with `nothing` when there are none."""
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not results:
        print(f"mixer predict: {nothing}; see the notes above", file=sys.stderr)
        return 1
    if as_json:
        emit_json([result.to_dict() for result in results])
    else:
        print_results(results)
    return 0


def run(args: argparse.Namespace) -> int:
    """Print the predictions; exit status 2 for a malformed table or a missing sweep, 1 with one message on
    stderr when nothing can be predicted."""
    if any(value is not None and value <= 0 for value in (args.examples, args.flops, args.params)):
        print("mixer predict: --examples, --flops and --params must be positive", file=sys.stderr)
        return 1
    if args.flops is not None:
        try:
            optima, notes = _optima(args)
        except (TableError, SweepNotFound, StoreUnreachable) as problem:
            return refuse("predict", problem)
        except (CannotFit, ValueError) as problem:
            print(f"mixer predict: {problem}", file=sys.stderr)
            return 1
        return _emit(optima, notes, f"no joint law of {args.sweep!r} has a compute-optimal point", args.json,
                     _print_optima)
    if is_table(args.sweep):
        print("mixer predict: a table takes --flops; for predictions at its rows use mixer fit TABLE --predict",
              file=sys.stderr)
        return 1
    uri = args.tracking_uri or tracking_uri()
    try:
        require_reachable(uri)  # in seconds, not after MLflow's own retries
    except StoreUnreachable as problem:
        return refuse("predict", problem)
    try:
        sweep = load_sweep(args.sweep, uri=uri, experiment=args.experiment)
        predictions, notes = predict_at(sweep, args.examples, params=args.params, metric=args.metric,
                                        n_bootstrap=args.bootstrap)
    except (SweepNotFound, ValueError) as problem:
        print(f"mixer predict: {problem}", file=sys.stderr)
        return 1
    law = "joint law" if args.params else "law"
    return _emit(predictions, notes, f"no {law} of sweep {args.sweep!r} could be fitted", args.json,
                 _print_predictions)
