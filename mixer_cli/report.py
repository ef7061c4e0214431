"""`mixer report SWEEP`: read a sweep from MLflow, fit its scaling laws, draw its figures, write the HTML
report and log it on the sweep's parent run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards.holdout import HOLDOUTS, INTERVAL_KIND
from mixer_cli.output import add_json_flag, emit_json, refuse
from mixer_core.redact import redacted
from sweeps.tables import format_table
from sweeps.tracking.reach import StoreUnreachable, require_reachable, tracking_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `mixer report` options."""
    parser.add_argument("sweep", help="sweep id, or name (the mixer.sweep tag of its MLflow runs; its latest run)")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/SWEEP under the working dir)")
    parser.add_argument("--experiment", help="MLflow experiment to look in (default: every experiment)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--mlflow-url", default="http://127.0.0.1:5000",
                        help="MLflow UI base URL for the report's run links (default: %(default)s)")
    parser.add_argument("--metric", help="accuracy metric to analyse (default: test_top1 or val_top1 plus every "
                                         "5-shot accuracy logged, each as its best/ version, measured at the "
                                         "best upstream validation, when logged)")
    parser.add_argument("--bootstrap", type=int, default=300, metavar="N",
                        help="bootstrap resamples per fit (default: %(default)s)")
    parser.add_argument("--weights-trial", metavar="TRIAL_ID",
                        help="trial whose checkpoint the weight figures show (default: best Mixer trial)")
    parser.add_argument("--holdout", choices=HOLDOUTS,
                        help="also fit without the largest data size (largest) or the largest model of each family "
                             "(largest-model), predict those points and report how close the prediction came")
    parser.add_argument("--no-log", action="store_true",
                        help="do not log the report and the fitted parameters on the sweep's parent run")
    add_json_flag(parser)


def _progress(message: str) -> None:
    print(f"[mixer report] {message}", file=sys.stderr, flush=True)


def parameter_cells(fit: dict) -> dict[str, str]:
    """Per parameter of a fit's JSON summary, its value and 95% interval as text, or "not identified"."""
    return {name: f"{value:.3g} " + (f"[{fit['intervals'][name][0]:.3g}, {fit['intervals'][name][1]:.3g}]"
                                     if fit["identified"][name] else "not identified")
            for name, value in fit["parameters"].items()}


def run(args: argparse.Namespace) -> int:
    """Build the report; one message on stderr and exit status 2 when the store does not answer or has no such
    sweep, 1 when its data cannot be analysed."""
    uri = args.tracking_uri or tracking_uri()
    _progress(f"reading sweep {args.sweep!r} from {redacted(uri)}")
    try:
        require_reachable(uri)  # before MLflow and the figures' libraries are imported: seconds
    except StoreUnreachable as problem:
        return refuse("report", problem)
    from dashboards.analysis import analyse_sweep
    from dashboards.report import log_fit_metrics, log_report, prediction_rows, write_report
    from dashboards.runs import SweepNotFound, load_sweep

    try:
        sweep = load_sweep(args.sweep, uri=uri, experiment=args.experiment)
    except (SweepNotFound, ValueError) as problem:  # no such sweep, or a name no sweep can have
        return refuse("report", problem)
    _progress(f"{len(sweep.trials)} trials under parent run {sweep.parent_run_id}")
    try:
        analysis = analyse_sweep(
            sweep, metric=args.metric, n_bootstrap=args.bootstrap, weights_trial=args.weights_trial,
            holdout=args.holdout, progress=_progress,
        )
    except ValueError as problem:
        print(f"mixer report: {problem}", file=sys.stderr)
        return 1
    out_dir = (args.out or Path("reports") / args.sweep).resolve()
    _progress(f"writing {out_dir}")
    document = write_report(sweep, analysis, out_dir, args.mlflow_url)
    if not args.no_log:
        document["artifact_uri"] = log_report(sweep, out_dir)
        _progress(f"logged as artifacts {document['artifact_uri']}, and {log_fit_metrics(sweep, analysis)} "
                  "fitted parameters, bounds and held-back errors as metrics of the sweep run")
    if args.json:
        emit_json(document)
        return 0
    print(format_table([
        {"series": f["series"], "metric": f["metric"], "x": " and ".join(f["inputs"]), "points": f["n_points"],
         **{f"{name} [95% interval]": cell for name, cell in parameter_cells(f).items()}}
        for f in document["fits"] if len(f["inputs"]) == 1
    ]))
    for f in (f for f in document["fits"] if len(f["inputs"]) > 1):
        print(f"joint law, {f['series']}, {f['metric']} vs params and {f['x']}: " + ", ".join(
            f"{name} = {cell}" for name, cell in parameter_cells(f).items()))
    if analysis.predictions:
        print(f"\nheld back ({args.holdout}); intervals are 95% {INTERVAL_KIND}")
        print(format_table(prediction_rows(analysis.predictions)))
    for note in analysis.notes:
        print(f"note: {note}")
    print(f"report: {document['report']}")
    return 0
