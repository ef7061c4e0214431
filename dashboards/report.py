"""The sweep report: one self-contained HTML page (figures inlined as base64, a sortable trial table, the
fitted laws with intervals, links into MLflow), saved with its PNGs and logged on the sweep's parent run."""

from __future__ import annotations

import base64
import json
import math
import re
import time
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

from dashboards.analysis import ReportFigure, SweepAnalysis, metric_label
from dashboards.holdout import INTERVAL_KIND, Prediction
from dashboards.runs import SweepRuns, trial_rows
from dashboards.scaling import ScalingFit
from mixer_core.metrics import IMAGES_PER_SEC, TRAIN_FLOPS, TRAIN_SIZE, WALL_SECONDS
from sweeps.tables import format_value
from sweeps.tracking.schema import TAG_GIT_COMMIT, TAG_SPEC_HASH
from sweeps.tracking.store import RetryingMlflowClient

REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
ARTIFACT_PATH = "report"  # folder of the parent run's artifacts that holds the report
_WIDE_FIGURES = ("permutation_study", "token_mixing")  # multi-panel figures take a full row

_STYLESHEET = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; min-height: 100vh; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 10px;
     border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.meta { color: #57606a; margin: 0 0 8px; }
a { color: #0969da; text-decoration: none; } a:hover { text-decoration: underline; }
nav a { margin-right: 14px; font-size: 13px; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 18px; }
figure { margin: 0; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 12.5px; color: #57606a; margin-top: 6px; } figcaption b { color: #1f2328; }
figure.wide { grid-column: 1 / -1; }
figure.wide img { max-width: 920px; margin: 0 auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 8px; border-bottom: 1px solid #eaeef2; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
thead th { background: #f6f8fa; position: sticky; top: 0; white-space: normal; vertical-align: bottom; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th::after { content: "\\00a0\\2195"; color: #8c959f; font-size: 11px; }
table.sortable th[data-order=asc]::after { content: "\\00a0\\25B2"; color: #1f2328; }
table.sortable th[data-order=desc]::after { content: "\\00a0\\25BC"; color: #1f2328; }
tbody tr:hover { background: #f6f8fa; }
.scroll { overflow-x: auto; max-height: 640px; overflow-y: auto; border: 1px solid #d0d7de; border-radius: 6px; }
.ci { color: #57606a; font-size: 11.5px; display: block; }
h3 { font-size: 15px; margin: 22px 0 8px; }
ul.notes { color: #9a6700; background: #fff8c5; border: 1px solid #eac54f; border-radius: 6px;
           padding: 8px 8px 8px 28px; }
.status-FINISHED { color: #1a7f37; } .status-FAILED, .status-KILLED { color: #cf222e; }
"""

# Click a header to sort by it; numbers numerically, empty cells always last.
_SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((header, column) => {
  header.addEventListener("click", () => {
    const table = header.closest("table"), body = table.tBodies[0];
    const ascending = header.dataset.order !== "asc";
    table.querySelectorAll("th").forEach(other => delete other.dataset.order);
    header.dataset.order = ascending ? "asc" : "desc";
    const key = row => row.cells[column].dataset.sort ?? row.cells[column].textContent.trim();
    const compare = (a, b) => {
      if (a === "" || b === "") return (a === "") - (b === "");
      const x = Number(a), y = Number(b);
      const order = Number.isNaN(x) || Number.isNaN(y) ? a.localeCompare(b) : x - y;
      return ascending ? order : -order;
    };
    body.append(...[...body.rows].sort((r, s) => compare(key(r), key(s))));
  });
});
"""


def run_url(mlflow_url: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run."""
    return f"{mlflow_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _cell(value: Any, text: str | None = None, link: str | None = None, css: str = "") -> str:
    sort_key = "" if value is None else str(value)
    shown = escape(format_value(value) if text is None else text)
    if link:
        shown = f'<a href="{escape(link)}">{shown}</a>'
    css_attribute = f' class="{css}"' if css else ""
    return f'<td data-sort="{escape(sort_key)}"{css_attribute}>{shown}</td>'


def _trial_table(sweep: SweepRuns, analysis: SweepAnalysis, mlflow_url: str) -> str:
    metric_columns = [*analysis.metrics, TRAIN_SIZE, TRAIN_FLOPS, IMAGES_PER_SEC, WALL_SECONDS]
    short_labels = {TRAIN_SIZE: "train size", TRAIN_FLOPS: "train FLOPs",
                    IMAGES_PER_SEC: "img/s", WALL_SECONDS: "wall s"}
    header = ["trial", "model", "permutation", "fraction", "params", "GMACs", "status",
              *[short_labels.get(name) or metric_label(name) for name in metric_columns]]
    rows = []
    for trial in sweep.trials:
        cells = [
            _cell(trial.trial_id, link=run_url(mlflow_url, sweep.experiment_id, trial.run_id), css="text"),
            _cell(trial.model, css="text"),
            _cell(trial.permutation, css="text"),
            _cell(trial.data_fraction),
            _cell(trial.params_count, text=f"{trial.params_count:,}" if trial.params_count else "-"),
            _cell(trial.gmacs),
            _cell(trial.status, css=f"text status-{escape(trial.status)}"),
        ]
        for name in metric_columns:
            value = trial.metric(name)
            cells.append(_cell(value, text=_percent(value) if name in analysis.metrics else None))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    text_columns = ("trial", "model", "permutation", "status")
    head = "".join(f'<th class="text">{h}</th>' if h in text_columns else f"<th>{escape(h)}</th>" for h in header)
    return (f'<div class="scroll"><table class="sortable" id="trials"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def parameter_text(fit: ScalingFit, name: str) -> tuple[str, str]:
    """A fitted parameter and its 95% interval as text, or "not identified" when the data do not pin it down."""
    if not fit.identified[name]:
        return f"{fit.parameters[name]:.3g}", "not identified"
    low, high = fit.intervals[name]
    return f"{fit.parameters[name]:.3g}", f"[{low:.3g}, {high:.3g}]"


def _format_parameter(fit: ScalingFit, name: str) -> str:
    value, interval = parameter_text(fit, name)
    return f'{escape(name)} = {value} <span class="ci">{escape(interval)}</span>'


_FIT_COLUMNS = ("series", "metric", "law", "points", "parameters [95% interval]", "accuracy ceiling / loss floor",
                "bootstrap fits")


def _fit_row(fit: ScalingFit) -> str:
    text = (fit.series, metric_label(fit.metric), fit.law_fit.law.formula.replace("x", fit.x_name))
    cells = [f'<td class="text">{escape(value)}</td>' for value in text]
    parameters = " ".join(f'<span style="display:inline-block;margin-right:10px">{_format_parameter(fit, name)}</span>'
                          for name in fit.parameters)
    floor = fit.parameters.get("c", fit.parameters.get("E_inf"))
    limit = _percent(1 - floor) if fit.kind.higher_is_better else f"{floor:.4g}"
    cells += [f"<td>{fit.n_points}</td>", f'<td class="text">{parameters}</td>', f"<td>{limit}</td>",
              f"<td>{len(fit.law_fit.draws)}</td>"]
    return f"<tr>{''.join(cells)}</tr>"


def _fit_table(analysis: SweepAnalysis) -> str:
    if not analysis.fits:
        return "<p>No series had enough points to fit; see the notes.</p>"
    head = "".join(f'<th class="text">{name}</th>' if i in (0, 1, 2, 4) else f"<th>{name}</th>"
                   for i, name in enumerate(_FIT_COLUMNS))
    return (
        f'<h3>Fitted laws</h3><div class="scroll"><table id="fits"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(map(_fit_row, analysis.fits))}</tbody></table></div>"
        '<p class="meta">Laws fitted to 1 − accuracy (or the loss) of every trial of the best configuration per size '
        "(Huber loss on the log); brackets are 95% residual-bootstrap intervals widened by t(n − p)/z, and a "
        "parameter is \"not identified\" when fewer than 2 residual degrees of freedom are left or its interval "
        "spans more than three decades (half its range for an exponent).</p>"
    )


def prediction_rows(predictions: list[Prediction]) -> list[dict[str, Any]]:
    """One table row per held-back point: measured and predicted value (accuracy in %, a loss as it is), interval,
    error (accuracy points, or percent of the loss) and coverage."""
    def row(p: Prediction) -> dict[str, Any]:
        scale, unit = (100, " %") if p.kind.higher_is_better else (1, "")
        error = {"error (points)": p.error_points} if p.kind.higher_is_better else \
            {"error (%)": 100 * p.relative_error}
        return {"series": p.series, "metric": p.metric, "params": p.params, "x": p.x,
                f"measured{unit}": scale * p.measured, f"predicted{unit}": scale * p.predicted,
                f"95% interval{unit}": f"[{scale * p.interval[0]:.4g}, {scale * p.interval[1]:.4g}]",
                **error, "covered": "yes" if p.covered else "NO"}
    return [row(p) for p in predictions]


def _prediction_table(analysis: SweepAnalysis) -> str:
    if not analysis.predictions:
        return ""
    rows = prediction_rows(analysis.predictions)
    head = "".join(f"<th>{escape(name)}</th>" for name in rows[0])
    body = "".join(
        "<tr>" + "".join(_cell(value, css="text" if isinstance(value, str) else "") for value in row.values()) + "</tr>"
        for row in rows
    )
    return (f'<h3>Held-back predictions</h3><div class="scroll"><table id="predictions"><thead><tr>{head}</tr>'
            f"</thead><tbody>{body}</tbody></table></div><p class=\"meta\">Intervals: {escape(INTERVAL_KIND)}. "
            "Error: predicted − measured accuracy.</p>")


def _figure_html(figure: ReportFigure) -> str:
    encoded = base64.b64encode(figure.png).decode("ascii")
    wide = ' class="wide"' if figure.name.startswith(("cost_", "allocation_")) or figure.name in _WIDE_FIGURES else ""
    return (
        f'<figure{wide} id="fig-{escape(figure.name)}"><img alt="{escape(figure.title)}" '
        f'src="data:image/png;base64,{encoded}"><figcaption><b>{escape(figure.title)}.</b> '
        f"{escape(figure.caption)}</figcaption></figure>"
    )


def render_page(title: str, meta: str, analysis: SweepAnalysis, runs_table: str) -> str:
    """A report page as one HTML string with every figure inlined: `title` (text), `meta` (an HTML line under
    it), the analysis's figures, fits, predictions and notes, then `runs_table` (HTML)."""
    groups = {
        "scaling": ("Scaling with data and compute", [f for f in analysis.figures if f.name.startswith("scaling_")]),
        "holdout": ("Held-back prediction", [f for f in analysis.figures if f.name.startswith("holdout_")]),
        "allocation": ("Compute-optimal allocation",
                       [f for f in analysis.figures if f.name.startswith("allocation_")]),
        "cost": ("Accuracy vs cost", [f for f in analysis.figures if f.name.startswith("cost_")]),
        "permutation": ("Permutation study", [f for f in analysis.figures if f.name == "permutation_study"]),
        "weights": ("Learned weights", [f for f in analysis.figures if f.name in ("stem_filters", "token_mixing")]),
    }
    sections, nav = [], []
    for anchor, (heading, figures) in groups.items():
        if not figures:
            continue
        body = "".join(map(_figure_html, figures))
        fits = {"scaling": _fit_table(analysis), "holdout": _prediction_table(analysis)}.get(anchor, "")
        sections.append(f'<section id="{anchor}"><h2>{heading}</h2><div class="figures">{body}</div>{fits}</section>')
        nav.append(f'<a href="#{anchor}">{heading}</a>')
    if analysis.notes:
        items = "".join(f"<li>{escape(note)}</li>" for note in analysis.notes)
        sections.append(f'<section id="notes"><h2>Notes</h2><ul class="notes">{items}</ul></section>')
        nav.append('<a href="#notes">Notes</a>')
    nav.append('<a href="#trials-section">Trials</a>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · mixer report</title><style>{_STYLESHEET}</style></head>
<body><main>
<h1>{escape(title)}</h1>
<p class="meta">{meta} · generated {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}</p>
<nav>{"".join(nav)}</nav>
{"".join(sections)}
<section id="trials-section"><h2>Trials</h2>{runs_table}</section>
</main><script>{_SORT_SCRIPT}</script></body></html>
"""


def render_html(sweep: SweepRuns, analysis: SweepAnalysis, mlflow_url: str) -> str:
    """The sweep's report page as one HTML string with every figure inlined."""
    finished = sum(t.status == "FINISHED" for t in sweep.trials)
    tags = sweep.parent_tags
    provenance = " · ".join(
        f"{label} <code>{escape(tags[key][:12])}</code>"
        for label, key in (("spec", TAG_SPEC_HASH), ("commit", TAG_GIT_COMMIT))
        if tags.get(key)
    )
    parent_link = run_url(mlflow_url, sweep.experiment_id, sweep.parent_run_id)
    meta = (f'experiment <b>{escape(sweep.experiment_name)}</b> · <a href="{escape(parent_link)}">sweep run in '
            f"MLflow</a> · {len(sweep.trials)} trials ({finished} finished)" + (f" · {provenance}" if provenance else ""))
    runs_table = ('<p class="meta">Click a column to sort; a trial id opens its MLflow run.</p>'
                  + _trial_table(sweep, analysis, mlflow_url))
    return render_page(f"Sweep {sweep.name}", meta, analysis, runs_table)


def write_figures(analysis: SweepAnalysis, out_dir: Path) -> list[str]:
    """Save every figure as `out_dir`/figures/NAME.png; returns their paths."""
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    for figure in analysis.figures:
        (figures_dir / f"{figure.name}.png").write_bytes(figure.png)
    return [str(figures_dir / f"{figure.name}.png") for figure in analysis.figures]


def analysis_summary(analysis: SweepAnalysis) -> dict[str, Any]:
    """The fits, held-back predictions, compute-optimal points and notes as a JSON-ready document."""
    return {
        "metrics": analysis.metrics,
        "fits": [fit.to_dict() for fit in analysis.fits],
        "predictions": [prediction.to_dict() for prediction in analysis.predictions],
        "compute_optimal": [optimum.to_dict() for optimum in analysis.optima],
        "notes": analysis.notes,
    }


def summary(sweep: SweepRuns, analysis: SweepAnalysis, out_dir: Path, mlflow_url: str) -> dict[str, Any]:
    """The report as one JSON-ready document (what `mixer report --json` prints)."""
    return {
        "sweep": sweep.name,
        "experiment": sweep.experiment_name,
        "experiment_id": sweep.experiment_id,
        "parent_run_id": sweep.parent_run_id,
        "parent_run_url": run_url(mlflow_url, sweep.experiment_id, sweep.parent_run_id),
        "tracking_uri": sweep.tracking_uri,
        "report": str(out_dir / REPORT_FILE),
        "figures": [str(out_dir / "figures" / f"{figure.name}.png") for figure in analysis.figures],
        **analysis_summary(analysis),
        "weights_trial": analysis.weights_trial,
        "trials": trial_rows(sweep, analysis.metrics),
    }


def write_report(sweep: SweepRuns, analysis: SweepAnalysis, out_dir: Path, mlflow_url: str) -> dict[str, Any]:
    """Write report.html, figures/*.png and summary.json into `out_dir`; return the summary."""
    write_figures(analysis, out_dir)
    (out_dir / REPORT_FILE).write_text(render_html(sweep, analysis, mlflow_url), encoding="utf-8")
    document = summary(sweep, analysis, out_dir, mlflow_url)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    return document


def log_report(sweep: SweepRuns, out_dir: Path) -> str:
    """Log the report folder as artifacts of the sweep's parent run; return the artifacts' URI."""
    client = RetryingMlflowClient(sweep.tracking_uri)
    client.log_artifacts(sweep.parent_run_id, str(out_dir), artifact_path=ARTIFACT_PATH)
    return f"{client.get_run(sweep.parent_run_id).info.artifact_uri}/{ARTIFACT_PATH}"


_UNSAFE_IN_METRIC_NAMES = re.compile(r"[^A-Za-z0-9_\-. /]")


def fit_metrics(analysis: SweepAnalysis) -> dict[str, float]:
    """Every fitted parameter with its interval bounds, and every held-back prediction's error and coverage,
    as MLflow metric names and values (`scaling/test_top1/train_size/Ti_7/b_low`, `holdout/...`)."""
    metrics = {}
    for fit in analysis.fits:
        prefix = f"scaling/{fit.metric}/{'_and_'.join(fit.inputs)}/{fit.series}"
        for name, value in fit.parameters.items():
            low, high = fit.intervals[name]
            metrics |= {f"{prefix}/{name}": value, f"{prefix}/{name}_low": low, f"{prefix}/{name}_high": high}
    for prediction in analysis.predictions:
        prefix = f"holdout/{prediction.metric}/{prediction.series}/at_{prediction.x:g}"
        metrics |= {f"{prefix}/relative_error": prediction.relative_error, f"{prefix}/covered": float(prediction.covered)}
        if prediction.error_points is not None:
            metrics[f"{prefix}/error_points"] = prediction.error_points
    return {_UNSAFE_IN_METRIC_NAMES.sub("_", name): value for name, value in metrics.items() if math.isfinite(value)}


def log_fit_metrics(sweep: SweepRuns, analysis: SweepAnalysis) -> int:
    """Log `fit_metrics` on the sweep's parent run, so MLflow's compare view lines sweeps up; returns how many."""
    now = int(time.time() * 1000)
    metrics = [Metric(name, float(value), now, 0) for name, value in fit_metrics(analysis).items()]
    client = RetryingMlflowClient(sweep.tracking_uri)
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(sweep.parent_run_id, metrics=metrics[start:start + 1000])
    return len(metrics)
