"""Runs from a plain table (CSV, Parquet or JSON lines; one row per run) for `mixer fit` and `mixer predict`:
read, checked column by column, and turned into the points the scaling laws of `dashboards.analysis` fit.

A run is a model size N (`params`), a data size D (`data`, or C/(k·N) from a compute column and k), optionally
its training compute C (`flops`, or k·N·D) and a group (a model family); the metric is an accuracy (`error`
kind) or a loss. Each group's runs at one N form a series with its own law E(D); a group spanning several N
gets the joint law E(N, D).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dashboards.allocation import ComputeOptimal, optima_at
from dashboards.analysis import SweepAnalysis, add_allocation, add_holdout, add_scaling
from dashboards.figures import series_styles
from dashboards.holdout import SizedPoint
from dashboards.kinds import KINDS, MetricKind, kind_of_metric
from dashboards.scaling import fit_joint

_READERS: dict[str, tuple[str, Callable[[Path], pd.DataFrame]]] = {
    ".csv": ("CSV", pd.read_csv),
    ".parquet": ("Parquet", pd.read_parquet),
    ".jsonl": ("JSON lines", lambda path: pd.read_json(path, lines=True)),
    ".ndjson": ("JSON lines", lambda path: pd.read_json(path, lines=True)),
}
TABLE_HOLDOUTS = {"largest-data": "largest", "largest-params": "largest-model", "largest-flops": "largest-flops"}
_MIN_SERIES_SIZES = 4  # a per-series law E = a·D^(−b) + c needs one more data size than its 3 parameters


class TableError(ValueError):
    """The table cannot be read, or a column is missing or holds a value no law can use; the message names the
    file, the column and the row."""


def is_table(source: str) -> bool:
    """Whether `source` names a table file `read_table` reads (rather than a sweep)."""
    return Path(source).suffix.lower() in _READERS


def read_table(path: Path) -> pd.DataFrame:
    """The table at `path`, by its suffix (.csv, .parquet, .jsonl, .ndjson). Raises `TableError` for a missing
    file, an unknown suffix or a file its reader rejects."""
    path = Path(path)
    if path.suffix.lower() not in _READERS:
        raise TableError(f"{path}: unknown table format {path.suffix!r}; expected {', '.join(_READERS)}")
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    name, reader = _READERS[path.suffix.lower()]
    try:
        return reader(path)
    except (ValueError, OSError) as problem:
        raise TableError(f"{path}: cannot be read as {name}: {problem}") from problem


@dataclass(frozen=True)
class TableColumns:
    """Which columns hold what; `k` makes C = k·N·D (or D = C/(k·N) without a data column)."""

    params: str
    metric: str | None = None
    data: str | None = None
    flops: str | None = None
    group: str | None = None
    k: float | None = None


@dataclass(frozen=True)
class TableRuns:
    """A table's runs, checked: one entry per row, in the table's order."""

    source: str
    frame: pd.DataFrame
    params: np.ndarray
    data: np.ndarray
    flops: np.ndarray | None
    metric: np.ndarray | None
    groups: list[str]

    @property
    def series(self) -> list[str]:
        """Per run, its series: the group and, when the group spans several model sizes, N."""
        sizes = defaultdict(set)
        for group, params in zip(self.groups, self.params):
            sizes[group].add(params)
        return [group if len(sizes[group]) == 1 else f"{group} N={params:.3g}"
                for group, params in zip(self.groups, self.params)]


def _numbers(frame: pd.DataFrame, column: str, source: str, *, positive: bool) -> np.ndarray:
    if column not in frame.columns:
        raise TableError(f"{source}: no column {column!r}; columns: {', '.join(map(str, frame.columns))}")
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) | ((values <= 0) if positive else False)
    if bad.any():
        row = int(np.argmax(bad))
        wanted = "a positive number" if positive else "a number"
        raise TableError(f"{source}: column {column!r}, row {row + 1} (data rows counted from 1): "
                         f"{frame[column].iloc[row]!r} is not {wanted}")
    return values


def table_runs(frame: pd.DataFrame, columns: TableColumns, *, source: str, kind: MetricKind | None = None
               ) -> TableRuns:
    """The table's runs with every named column checked: sizes and compute must be positive numbers, the metric a
    number (in [0, 1] for an accuracy, positive for a loss). Returns them; raises `TableError` naming the first
    bad column and row, or a missing column."""
    params = _numbers(frame, columns.params, source, positive=True)
    flops = _numbers(frame, columns.flops, source, positive=True) if columns.flops else None
    if columns.data:
        data = _numbers(frame, columns.data, source, positive=True)
    elif flops is not None and columns.k:
        data = flops / (columns.k * params)
    else:
        raise TableError(f"{source}: name the data-size column (--data), or a compute column (--flops) and k (--k) "
                         "to derive it as D = C/(k·N)")
    if flops is None and columns.k:
        flops = columns.k * params * data
    metric = None
    if columns.metric:
        metric = _numbers(frame, columns.metric, source, positive=kind is not None and not kind.higher_is_better)
        if kind is not None and kind.higher_is_better and ((metric < 0) | (metric > 1)).any():
            row = int(np.argmax((metric < 0) | (metric > 1)))
            raise TableError(f"{source}: column {columns.metric!r}, row {row + 1} (data rows counted from 1): "
                             f"{metric[row]!r} is not an accuracy in [0, 1] (pass --kind loss for a loss)")
    if columns.group and columns.group not in frame.columns:
        raise TableError(f"{source}: no column {columns.group!r}; columns: {', '.join(map(str, frame.columns))}")
    groups = frame[columns.group].astype(str).tolist() if columns.group else ["all runs"] * len(frame)
    return TableRuns(source, frame, params, data, flops, metric, groups)


def table_kind(metric: str, requested: str | None) -> MetricKind:
    """The kind named by `requested` (--kind), else the one the metric's name implies. Raises `TableError` when
    neither says."""
    if requested:
        return KINDS[requested]
    kind = kind_of_metric(metric)
    if kind is None:
        raise TableError(f"cannot tell from its name whether column {metric!r} is an accuracy or a loss; "
                         "pass --kind error (an accuracy in [0, 1]) or --kind loss (positive, lower is better)")
    return kind


def _points(runs: TableRuns, keys: list[str]) -> dict[str, list[SizedPoint]]:
    points: dict[str, list[SizedPoint]] = defaultdict(list)
    for i, key in enumerate(keys):
        points[key].append(SizedPoint(float(runs.params[i]), float(runs.data[i]), float(runs.metric[i]),
                                      None if runs.flops is None else float(runs.flops[i])))
    return dict(points)


def analyse_table(runs: TableRuns, *, metric: str, kind: MetricKind, holdout: str | None = None,
                  n_bootstrap: int = 300) -> SweepAnalysis:
    """Fit the table's laws as `mixer report` fits a sweep's: per series E(D) where a series has at least 4 data
    sizes, each group's joint law E(N, D) over 3 or more sizes, the compute-optimal frontier where compute is
    known, and with `holdout` (a key of `TABLE_HOLDOUTS`) predictions of the runs held back. Returns the
    analysis; series too small for a law of their own are counted in one note."""
    analysis = SweepAnalysis(metrics=[metric])
    series = _points(runs, runs.series)
    fittable = {name: points for name, points in series.items()
                if len({point.x for point in points}) >= _MIN_SERIES_SIZES}
    if len(fittable) < len(series):
        analysis.notes.append(f"{len(series) - len(fittable)} of {len(series)} series have fewer than "
                              f"{_MIN_SERIES_SIZES} data sizes, too few for a law E(D) of their own; the joint law "
                              "of their group covers them")
    families = _points(runs, runs.groups)
    members = {name: (group, params) for name, group, params in zip(runs.series, runs.groups, runs.params)
               if name in fittable}
    styles = series_styles(list(fittable))
    options = dict(metric=metric, label=metric, kind=kind, x_name="data", x_label="data size D", styles=styles,
                   n_bootstrap=n_bootstrap)
    add_scaling(analysis, fittable, families, members, **options)
    if runs.flops is not None:
        for fit in [fit for fit in analysis.fits if fit.is_joint]:
            points = families[fit.series]
            add_allocation(analysis, fit, [(p.params, p.x, p.flops) for p in points], label=metric)
    if holdout:
        mode = TABLE_HOLDOUTS[holdout]
        add_holdout(analysis, families if mode != "largest" else series, mode, **options)
    return analysis


def optima_of_table(runs: TableRuns, flops: float, *, metric: str, kind: MetricKind, n_bootstrap: int = 300
                    ) -> tuple[list[ComputeOptimal], list[str]]:
    """The compute-optimal N, D and metric at budget `flops` of each group's joint law, its FLOPs model fitted to
    the table's compute (a column, or k·N·D). Returns the optima and why any group has none."""
    if runs.flops is None:
        raise TableError(f"{runs.source}: name the compute column (--flops-column) or k (--k, C = k·N·D)")
    families = _points(runs, runs.groups)
    fits, notes = fit_joint({name: [(p.params, p.x, p.value) for p in points] for name, points in families.items()},
                            x_name="data", metric=metric, kind=kind, n_bootstrap=n_bootstrap)
    optima, refusals = optima_at(fits, {name: [(p.params, p.x, p.flops) for p in points]
                                        for name, points in families.items()}, flops)
    return optima, notes + refusals
