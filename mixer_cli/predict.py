"""`mixer predict SWEEP --examples D [--params N]`: the error a sweep's scaling laws predict at a size it never
ran, per model (or per model family with --params), with a prediction interval and the extrapolation factor."""

from __future__ import annotations

import argparse
import sys

from dashboards.holdout import INTERVAL_KIND
from mixer_cli.output import add_json_flag, emit_json, refuse
from sweeps.tables import format_table
from sweeps.tracking.reach import StoreUnreachable, require_reachable, tracking_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `mixer predict` options."""
    parser.add_argument("sweep", help="sweep name (the mixer.sweep tag of its MLflow runs)")
    parser.add_argument("--examples", type=float, required=True, metavar="D",
                        help="training-set size to predict at, in examples (e.g. 3e8)")
    parser.add_argument("--params", type=float, metavar="N",
                        help="model size in parameters: predict with the joint law of each model family")
    parser.add_argument("--experiment", help="MLflow experiment to look in (default: every experiment)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--metric", help="accuracy metric (default: as `mixer report`)")
    parser.add_argument("--bootstrap", type=int, default=300, metavar="N",
                        help="bootstrap resamples per fit (default: %(default)s)")
    add_json_flag(parser)


def _range(low: float, high: float) -> str:
    return f"[{100 * low:.2f}, {100 * high:.2f}]"


def run(args: argparse.Namespace) -> int:
    """Print the predictions; exit status 2 with one message on stderr when the store does not answer, 1 when
    nothing can be predicted."""
    if args.examples <= 0 or (args.params is not None and args.params <= 0):
        print("mixer predict: --examples and --params must be positive", file=sys.stderr)
        return 1
    uri = args.tracking_uri or tracking_uri()
    try:
        require_reachable(uri)  # before MLflow is imported
    except StoreUnreachable as problem:
        return refuse("predict", problem)
    from dashboards.predict import predict_at
    from dashboards.runs import SweepNotFound, load_sweep

    try:
        sweep = load_sweep(args.sweep, uri=uri, experiment=args.experiment)
        predictions, notes = predict_at(sweep, args.examples, params=args.params, metric=args.metric,
                                        n_bootstrap=args.bootstrap)
    except (SweepNotFound, ValueError) as problem:
        print(f"mixer predict: {problem}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not predictions:
        law = "joint law" if args.params else "law"
        print(f"mixer predict: no {law} of sweep {args.sweep!r} could be fitted; see the notes above", file=sys.stderr)
        return 1
    if args.json:
        emit_json([prediction.to_dict() for prediction in predictions])
        return 0
    print(format_table([
        {"series": p.series, "metric": p.metric, "error %": 100 * p.predicted, "95% interval %": _range(*p.interval),
         "accuracy %": 100 * (1 - p.predicted), "accuracy interval %": _range(1 - p.interval[1], 1 - p.interval[0]),
         "extrapolation": f"{p.extrapolation:.3g}x", "warning": p.warning or ""}
        for p in predictions
    ]))
    print(f"intervals: 95% {INTERVAL_KIND}")
    return 0
