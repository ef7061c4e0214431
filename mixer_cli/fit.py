"""`mixer fit TABLE`: the scaling laws, intervals, held-back predictions and report of `mixer report`, on a plain
table of runs (CSV, Parquet, JSON lines) instead of a sweep's MLflow runs; `--predict` reads the laws at every
row of another table."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dashboards.analysis import SweepAnalysis
from dashboards.holdout import INTERVAL_KIND
from dashboards.kinds import KINDS, MetricKind
from dashboards.report import REPORT_FILE, analysis_summary, prediction_rows, render_page, write_figures
from dashboards.scaling import ScalingFit
from dashboards.tables import (
    TABLE_HOLDOUTS,
    TableColumns,
    TableError,
    TableRuns,
    analyse_table,
    read_table,
    table_kind,
    table_runs,
)
from mixer_cli.output import add_json_flag, emit_json, refuse
from mixer_cli.report import parameter_cells
from sweeps.tables import format_table


def add_table_columns(parser: argparse.ArgumentParser, *, suffix: str = "") -> None:
    """The options that name a table's columns (`--params COL`, or with `suffix` `--params-column COL` where
    the plain names mean numbers, as in `mixer predict`), k and the metric's kind."""
    for name, what in (("params", "the model size N (parameters)"), ("data", "the data size D (examples or tokens)"),
                       ("flops", "the training compute C in FLOPs"),
                       ("group", "each run's model family (default: one family)")):
        parser.add_argument(f"--{name}{suffix}", dest=f"{name}_column", metavar="COL", help=f"column of {what}")
    parser.add_argument("--k", type=float, metavar="K",
                        help="FLOPs per parameter and example, C = K·N·D (e.g. 6): gives C without a compute "
                             "column, or D = C/(K·N) without a data column")
    parser.add_argument("--kind", choices=sorted(KINDS),
                        help="error: the metric is an accuracy in [0, 1], fitted as 1 − accuracy with binomial "
                             "noise; loss: positive, lower is better, log-normal noise (default: from the name)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `mixer fit` options."""
    parser.add_argument("table", type=Path, help="table of runs, one per row: .csv, .parquet or .jsonl")
    parser.add_argument("--metric", required=True, metavar="COL",
                        help="column of the metric: an accuracy (kind error) or a loss (kind loss)")
    add_table_columns(parser)
    parser.add_argument("--holdout", choices=list(TABLE_HOLDOUTS),
                        help="also fit without the largest data size, the largest model of each group, or the runs "
                             "above a tenth of the largest compute, and predict them")
    parser.add_argument("--predict", type=Path, metavar="OTHER_TABLE",
                        help="print the predicted metric with its 95%% prediction interval at every row of this table")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write the HTML report and its figures here")
    parser.add_argument("--bootstrap", type=int, default=300, metavar="N",
                        help="bootstrap resamples per fit (default: %(default)s)")
    add_json_flag(parser)


def columns_of(args: argparse.Namespace) -> TableColumns:
    """The table columns the command line names. Raises `TableError` when the model-size column is missing."""
    if not args.params_column:
        raise TableError("name the model-size column (--params in mixer fit, --params-column in mixer predict)")
    return TableColumns(params=args.params_column, metric=args.metric, data=args.data_column,
                        flops=args.flops_column, group=args.group_column, k=args.k)


def _law_for(fits: list[ScalingFit], group: str, series: str) -> ScalingFit | None:
    joint = {fit.series: fit for fit in fits if fit.is_joint}
    own = {fit.series: fit for fit in fits if not fit.is_joint}
    return joint.get(group) or own.get(series)


def table_predictions(analysis: SweepAnalysis, other: TableRuns, kind: MetricKind) -> tuple[list[dict[str, Any]],
                                                                                              list[str]]:
    """Per row of `other`, its columns plus the predicted metric, its 95% prediction interval for one run and,
    where `other` has the metric, whether the interval covered it and the relative error. Uses the joint law of
    the row's group, else the law of its series. Returns the rows and a note per row no law covers."""
    rows, notes = [], []
    for i, (group, series) in enumerate(zip(other.groups, other.series)):
        fit = _law_for(analysis.fits, group, series)
        if fit is None:
            notes.append(f"{other.source}, row {i + 1}: no law was fitted for group {group!r} or series {series!r}")
            continue
        inputs = np.array([[other.params[i], other.data[i]]]) if fit.is_joint else np.array([other.data[i]])
        (low,), (high,) = fit.metric_band(inputs, one_run=True)
        row = {**other.frame.iloc[i].to_dict(), "predicted": float(fit.metric_at(inputs)[0]),
               "interval": [float(low), float(high)], "law": "joint" if fit.is_joint else "per series"}
        if other.metric is not None:
            measured = float(other.metric[i])
            row |= {"covered": bool(low <= measured <= high),
                    "relative_error": (row["predicted"] - measured) / measured}
        rows.append(row)
    return rows, notes


def write_table_report(runs: TableRuns, analysis: SweepAnalysis, out_dir: Path) -> Path:
    """Write report.html and figures/*.png for a table's analysis into `out_dir`; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_figures(analysis, out_dir)
    shown = runs.frame.head(500)
    head = "".join(f"<th>{column}</th>" for column in shown.columns)
    body = "".join("<tr>" + "".join(f"<td>{value}</td>" for value in row) + "</tr>" for row in shown.itertuples(False))
    table = (f'<p class="meta">The first {len(shown)} of {len(runs.frame)} rows.</p><div class="scroll">'
             f'<table class="sortable" id="trials"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
    path = out_dir / REPORT_FILE
    path.write_text(render_page(f"Table {Path(runs.source).name}", f"{len(runs.frame)} runs from {runs.source}",
                                analysis, table), encoding="utf-8")
    return path


def _print_analysis(analysis: SweepAnalysis, holdout: str | None) -> None:
    print(format_table([{"series": fit.series, "points": fit.n_points,
                         **{f"{name} [95% interval]": cell for name, cell in parameter_cells(fit.to_dict()).items()}}
                        for fit in analysis.fits if not fit.is_joint]))
    for fit in (fit for fit in analysis.fits if fit.is_joint):
        print(f"joint law, {fit.series}, {fit.n_points} runs: " + ", ".join(
            f"{name} = {cell}" for name, cell in parameter_cells(fit.to_dict()).items()))
    if analysis.predictions:
        print(f"\nheld back ({holdout}); intervals are 95% {INTERVAL_KIND}")
        print(format_table(prediction_rows(analysis.predictions)))
        errors = np.abs([p.relative_error for p in analysis.predictions])
        covered = np.mean([p.covered for p in analysis.predictions])
        print(f"mean |relative error| {100 * errors.mean():.2f}%, covered {100 * covered:.0f}% "
              f"of {len(errors)} held-back runs")
    for optimum in analysis.optima:
        print(f"compute-optimal at {optimum.flops:.3g} FLOPs ({optimum.series}): N = {optimum.params:.3g}, "
              f"D = {optimum.data:.3g}, {optimum.metric} = {optimum.predicted:.4g}")


def run(args: argparse.Namespace) -> int:
    """Fit the table; exit status 2 with one message naming the column and row when a table is malformed, 1 when
    no law could be fitted."""
    try:
        kind = table_kind(args.metric, args.kind)
        columns = columns_of(args)
        runs = table_runs(read_table(args.table), columns, source=str(args.table), kind=kind)
        other = None
        if args.predict:
            frame = read_table(args.predict)
            measured = args.metric if args.metric in frame.columns else None
            other = table_runs(frame, replace(columns, metric=measured), source=str(args.predict), kind=kind)
    except TableError as problem:
        return refuse("fit", problem)
    analysis = analyse_table(runs, metric=args.metric, kind=kind, holdout=args.holdout, n_bootstrap=args.bootstrap)
    if not analysis.fits:
        for note in analysis.notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"mixer fit: no law could be fitted to {args.table}; see the notes above", file=sys.stderr)
        return 1
    report = write_table_report(runs, analysis, args.out) if args.out else None
    rows, notes = table_predictions(analysis, other, kind) if other is not None else ([], [])
    analysis.notes += notes
    if args.json:
        emit_json(rows if other is not None else {**analysis_summary(analysis), "report": report and str(report)})
        return 0
    _print_analysis(analysis, args.holdout)
    if other is not None:
        print(f"\npredictions for {args.predict}; intervals are 95% {INTERVAL_KIND}")
        print(format_table([{key: value for key, value in row.items() if key != "interval"}
                            | {"95% interval": f"[{row['interval'][0]:.4g}, {row['interval'][1]:.4g}]"}
                            for row in rows]))
    for note in analysis.notes:
        print(f"note: {note}")
    if report:
        print(f"report: {report}")
    return 0
