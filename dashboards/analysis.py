"""From a sweep's trials to what the report shows: scaling-law fits, figures, and notes on what was left out."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dashboards.allocation import ComputeOptimal, FlopsModel, compute_optimal
from dashboards.checkpoints import CheckpointError, load_trial_mixer
from dashboards.figures import (
    cost_figure,
    holdout_figure,
    iso_flop_figure,
    parity_figure,
    permutation_figure,
    png_bytes,
    scaling_figure,
    series_styles,
    stem_filters_figure,
    token_mixing_figure,
)
from dashboards.holdout import (
    HELD_BACK_COMPUTE,
    INTERVAL_KIND,
    HeldBackCurve,
    Prediction,
    SizedPoint,
    hold_back,
    predict_held_back,
)
from dashboards.kinds import MetricKind, kind_of_metric
from dashboards.runs import SweepRuns, Trial, metric_histories
from dashboards.scaling import (
    MIN_BAND_DOF,
    CannotFit,
    ScalingFit,
    chosen_trials,
    fit_joint,
    fit_series,
    replicate_key,
)
from mixer_core.metrics import (
    BEST_PREFIX,
    IMAGES_PER_SEC,
    TEST_TOP1,
    TRAIN_FLOPS,
    TRAIN_SIZE,
    VAL_TOP1,
    best,
    fewshot_top1,
)

TOP1_METRICS = (TEST_TOP1, VAL_TOP1)  # the first one any trial logged is the report's accuracy
FEWSHOT_SHOTS = 5  # the paper's headline few-shot number (Figures 2-right, 3)
# `fewshot_5shot_top1` (the pre-training data's own splits) or `fewshot_<label>_5shot_top1` (downstream)
_FEWSHOT_NAME = re.compile(rf"^fewshot_(?:(?P<label>.+)_)?{FEWSHOT_SHOTS}shot_top1$")
_TOP1_LABELS = {TEST_TOP1: "test top-1", VAL_TOP1: "validation top-1"}
ALLOCATION_REACH = 100.0  # the report's compute-optimal frontier runs to this many times the largest run's compute
BEST_NOTE = ("accuracies are the best/ metrics: each trial's test top-1 and few-shot accuracy measured at its "
             "evaluation with the best upstream validation top-1 (the paper's selection), not at the final step; "
             "pass --metric to analyse another metric (e.g. test_top1 for the final step)")


def metric_label(name: str) -> str:
    """A readable label for an accuracy metric (`best/fewshot_digits_5shot_top1` → `digits 5-shot linear top-1
    (best val)`); other names are returned as they are."""
    base = name.removeprefix(BEST_PREFIX)
    fewshot = _FEWSHOT_NAME.match(base)
    if fewshot:
        label = f"{fewshot['label'] + ' ' if fewshot['label'] else ''}{FEWSHOT_SHOTS}-shot linear top-1"
    elif base in _TOP1_LABELS:
        label = _TOP1_LABELS[base]
    else:
        return name
    return f"{label} (best val)" if name.startswith(BEST_PREFIX) else label


@dataclass(frozen=True)
class ReportFigure:
    """One PNG figure with the file name it is saved under and the sentence that explains it."""

    name: str
    title: str
    caption: str
    png: bytes


@dataclass
class SweepAnalysis:
    """Everything computed from a sweep: the accuracy metrics, the fits, the figures and the notes."""

    metrics: list[str]
    fits: list[ScalingFit] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    optima: list[ComputeOptimal] = field(default_factory=list)
    figures: list[ReportFigure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    weights_trial: str | None = None


def metric_kind(name: str) -> MetricKind:
    """The kind of law a metric of ours is fitted with, from its name (`val_loss`: loss, `*_top1`: error).
    Raises ValueError for a name that says neither."""
    kind = kind_of_metric(name)
    if kind is None:
        raise ValueError(f"cannot tell from its name whether {name} is an accuracy (*_top1) or a loss (*loss), "
                         "so no scaling law is fitted to it")
    return kind


def _file_name(metric: str) -> str:
    """`metric` as part of a figure's file name: `best/test_top1` → `best_test_top1`, `data.fraction` →
    `data_fraction`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", metric)


def accuracy_metrics(trials: list[Trial], requested: str | None = None) -> list[str]:
    """The metrics to analyse: `requested`, else the first top-1 metric any trial logged plus every 5-shot
    accuracy (downstream datasets first), each as its `best/` version (measured at the best upstream
    validation) when logged. Raises ValueError when no trial logged any of them."""
    def logged(name: str) -> bool:
        return any(t.metric(name) is not None for t in trials)

    def preferred(name: str) -> str:
        return best(name) if logged(best(name)) else name

    if requested:
        if not logged(requested):
            raise ValueError(f"no finished trial of this sweep logged {requested}")
        return [requested]
    top1 = next((preferred(name) for name in TOP1_METRICS if logged(name) or logged(best(name))), None)
    names = {name.removeprefix(BEST_PREFIX) for t in trials for name in t.metrics}
    own = fewshot_top1(FEWSHOT_SHOTS)
    fewshot = sorted((name for name in names if _FEWSHOT_NAME.match(name)), key=lambda name: (name == own, name))
    found = [name for name in (top1, *(preferred(name) for name in fewshot)) if name]
    if not found:
        wanted = " or ".join((*TOP1_METRICS, fewshot_top1(FEWSHOT_SHOTS), fewshot_top1(FEWSHOT_SHOTS, "<label>")))
        raise ValueError(f"no finished trial of this sweep logged {wanted}")
    return found


@dataclass(frozen=True)
class ScalingAxis:
    """What a scaling law is a function of: its name in fits, its axis label, and how to read it off a trial."""

    name: str
    label: str
    value: Callable[[Trial], float | None]


COMPUTE_AXIS = ScalingAxis(TRAIN_FLOPS, "training FLOPs", lambda t: t.metric(TRAIN_FLOPS))


def data_axis(trials: list[Trial]) -> ScalingAxis:
    """Training-set size in examples when every trial logged it, else the data fraction."""
    if all(t.metric(TRAIN_SIZE) for t in trials):
        return ScalingAxis(TRAIN_SIZE, "training examples", lambda t: t.metric(TRAIN_SIZE))
    return ScalingAxis("data.fraction", "fraction of the training set", lambda t: t.data_fraction)


def family(trial: Trial) -> str:
    """The trials one joint law spans across model sizes: every Mixer variant together, each timm model on
    its own, separately per input permutation."""
    name = "Mixer" if trial.is_mixer else trial.model
    return name if trial.permutation == "none" else f"{name} ({trial.permutation})"


def sized_points(trials: list[Trial], metric: str, axis: ScalingAxis, group: Callable[[Trial], str]
                 ) -> dict[str, list[SizedPoint]]:
    """Per group (a series or a family), every trial of the best configuration per model size and x,
    seeds included, as (params, x, metric) points."""
    usable = [t for t in trials if axis.value(t) and t.metric(metric) is not None]
    chosen = chosen_trials(
        (((group(t), t.params_count or 0), axis.value(t), t.metric(metric), replicate_key(t.config)) for t in usable),
        higher_is_better=metric_kind(metric).higher_is_better,
    )
    points: dict[str, list[SizedPoint]] = defaultdict(list)
    for (name, params), series_points in chosen.items():
        points[name] += [SizedPoint(params, x, value) for x, value in series_points]
    return dict(points)


def _law_caption(kind: MetricKind) -> str:
    if kind.higher_is_better:
        return "the fitted error law E = a·x^(−b) + c drawn as 1 − E"
    return "the fitted loss law L = a·x^(−b) + c (log-normal noise)"


def band_caption(fits: list[ScalingFit], band: str) -> str:
    """How the figure's fits are shaded: by `band`, and for each fit with too few residual degrees of freedom,
    why it has none."""
    bare = [fit for fit in fits if not fit.has_band]
    if not bare:
        return f"shaded by {band}"
    why = "; ".join(f"{fit.series}: {fit.n_points} points for {len(fit.parameters)} parameters leave "
                    f"{fit.law_fit.dof} residual degree(s) of freedom" for fit in bare)
    shaded = f"shaded by {band} where it means something; " if len(bare) < len(fits) else ""
    return (f"{shaded}no band around {', '.join(fit.series for fit in bare)} ({why}; a band needs at least "
            f"{MIN_BAND_DOF}, so run more sizes)")


def add_scaling(analysis: SweepAnalysis, series_points: dict[str, list[SizedPoint]],
                family_points: dict[str, list[SizedPoint]], members: dict[str, tuple[str, float]], *, metric: str,
                label: str, kind: MetricKind, x_name: str, x_label: str, styles: dict[str, dict],
                n_bootstrap: int) -> None:
    """Fit the per-series laws and each family's joint law of one metric against one axis, and add the fits,
    the refusals (as notes) and the figure to `analysis`. `members` maps a series to its (family, model size)."""
    points = {series: [(p.x, p.value) for p in sized] for series, sized in series_points.items()}
    if not points and not family_points:
        analysis.notes.append(f"{label} vs {x_label}: no trial logged both; no figure")
        return
    fits, refusals = fit_series(points, x_name=x_name, metric=metric, kind=kind, n_bootstrap=n_bootstrap)
    families = {name: [(p.params, p.x, p.value) for p in sized] for name, sized in family_points.items()}
    joint_fits, joint_refusals = fit_joint(families, x_name=x_name, metric=metric, kind=kind, n_bootstrap=n_bootstrap)
    analysis.fits += fits + joint_fits
    analysis.notes += refusals + joint_refusals
    joint_by_family = {fit.series: fit for fit in joint_fits}
    joint = {series: (joint_by_family[name], params) for series, (name, params) in members.items()
             if name in joint_by_family}
    joint_caption = " Dotted: the joint law E∞ + A·N^(−α) + B·x^(−β) of the model's family at its size N." \
        if joint else ""
    if not points:
        return
    analysis.figures.append(
        ReportFigure(
            name=f"scaling_{_file_name(metric)}_vs_{_file_name(x_name)}",
            title=f"{label} vs {x_label}",
            caption=f"Every trial of the best configuration per model and {x_label} (points); lines are "
            f"{_law_caption(kind)}, {band_caption(fits, 'its bootstrap 95% confidence band')} (paper Figures "
            f"2-right, 3).{joint_caption}",
            png=png_bytes(scaling_figure(points, fits, styles, x_label=f"{x_label} (log scale)", y_label=label,
                                         joint=joint, percent=kind.higher_is_better)),
        )
    )


def _scaling(
    trials: list[Trial], metric: str, axis: ScalingAxis, styles: dict[str, dict], n_bootstrap: int,
    analysis: SweepAnalysis,
) -> None:
    add_scaling(analysis, sized_points(trials, metric, axis, lambda t: t.series),
                sized_points(trials, metric, axis, family), {t.series: (family(t), t.params_count) for t in trials},
                metric=metric, label=metric_label(metric), kind=metric_kind(metric), x_name=axis.name,
                x_label=axis.label, styles=styles, n_bootstrap=n_bootstrap)


def add_holdout(analysis: SweepAnalysis, groups: dict[str, list[SizedPoint]], holdout: str, *, metric: str,
                label: str, kind: MetricKind, x_name: str, x_label: str, styles: dict[str, dict],
                n_bootstrap: int) -> None:
    """Hold back `holdout`'s points of every group (a series, or a family for 'largest-model' and
    'largest-flops'), predict them from the rest, and add the predictions, refusals and figure to `analysis`."""
    curves: list[HeldBackCurve] = []
    for name, points in groups.items():
        try:
            curves.append(hold_back(holdout, name, points, x_name=x_name, metric=metric, kind=kind,
                                    n_bootstrap=n_bootstrap))
        except CannotFit as refusal:
            analysis.notes.append(f"holdout {holdout}: {refusal}")
    if not curves:
        return
    predictions = [prediction for curve in curves for prediction in predict_held_back(curve)]
    analysis.predictions += predictions
    held_back = {"largest-model": "the largest model", "largest-flops": HELD_BACK_COMPUTE}.get(
        holdout, f"the largest {x_label}")
    if holdout == "largest-flops":
        png = png_bytes(parity_figure(curves, predictions, y_label=label, percent=kind.higher_is_better))
        caption = (f"The joint law fitted without {held_back} predicts each held-back run (stars, bars: the "
                   f"{INTERVAL_KIND}, 95%); points on the diagonal are predicted exactly. Circles: runs fitted.")
    else:
        png = png_bytes(holdout_figure(curves, styles, x_label=f"{x_label} (log scale)", y_label=label,
                                       percent=kind.higher_is_better))
        caption = (f"Laws fitted without {held_back} (filled points), extended past the fitted range (dashed), "
                   f"predict the held-back trials (open stars); "
                   f"{band_caption([curve.fit for curve in curves], f'the {INTERVAL_KIND}, 95%')}.")
    analysis.figures.append(ReportFigure(name=f"holdout_{holdout.replace('-', '_')}_{_file_name(metric)}",
                                         title=f"{label}: predicting {held_back} from the rest", caption=caption,
                                         png=png))


def _holdout(trials: list[Trial], metric: str, axis: ScalingAxis, holdout: str, styles: dict[str, dict],
             n_bootstrap: int, analysis: SweepAnalysis) -> None:
    group = family if holdout == "largest-model" else (lambda t: t.series)
    add_holdout(analysis, sized_points(trials, metric, axis, group), holdout, metric=metric,
                label=metric_label(metric), kind=metric_kind(metric), x_name=axis.name, x_label=axis.label,
                styles=styles, n_bootstrap=n_bootstrap)


def add_allocation(analysis: SweepAnalysis, fit: ScalingFit, runs: list[tuple[float, float, float]], *,
                   label: str) -> None:
    """From joint law `fit` and its family's runs as (params, data, flops), fit the FLOPs model C = k·N^γ·D and
    add the compute-optimal N, D and metric at budgets from the smallest run's compute to 100 times the largest,
    with their iso-FLOP figure, to `analysis` (or a note saying why there is no optimum)."""
    params, data, flops = map(np.asarray, zip(*runs))
    budgets = np.geomspace(flops.min(), flops.max() * ALLOCATION_REACH, 7)
    try:
        flops_model = FlopsModel.fitted(params, data, flops, label=f"{fit.series}, {fit.metric}")
        optima = [compute_optimal(fit, flops_model, budget, fitted_flops=flops.max()) for budget in budgets]
    except CannotFit as refusal:
        analysis.notes.append(f"compute-optimal allocation: {refusal}")
        return
    analysis.optima += optima
    analysis.figures.append(ReportFigure(
        name=f"allocation_{_file_name(fit.metric)}_{_file_name(fit.series)}",
        title=f"{label}: compute-optimal model size, {fit.series}",
        caption=f"Chinchilla's approach 3 on the joint law with {flops_model.describe()} (fitted to the runs). "
        "Left: the law along iso-FLOP curves, the optimum of each marked. Right: the optimal model size against "
        "compute with its bootstrap 95% band; beyond the largest compute fitted (dotted line) the frontier is "
        "dashed and each optimum is labelled with how many times that compute it is.",
        png=png_bytes(iso_flop_figure(fit, flops_model, optima, list(zip(flops, params)), fitted_flops=flops.max(),
                                      y_label=label, percent=fit.kind.higher_is_better)),
    ))


def _cost(trials: list[Trial], metric: str, styles: dict[str, dict], analysis: SweepAnalysis) -> None:
    points = defaultdict(list)
    for t in trials:
        if t.metric(metric) is not None and (t.metric(TRAIN_FLOPS) or t.metric(IMAGES_PER_SEC)):
            points[t.series].append((t.metric(TRAIN_FLOPS), t.metric(IMAGES_PER_SEC), t.metric(metric)))
    if not points:
        analysis.notes.append(f"no trial logged {TRAIN_FLOPS} or {IMAGES_PER_SEC}; no cost figure")
        return
    label = metric_label(metric)
    analysis.figures.append(
        ReportFigure(
            name=f"cost_{_file_name(metric)}",
            title=f"{label} vs training compute and throughput",
            caption="Every finished trial; the dashed line is the Pareto frontier (paper Figure 2-left).",
            png=png_bytes(cost_figure(dict(points), styles, y_label=label)),
        )
    )


def curve_metric(metrics: list[str]) -> str:
    """The metric drawn as permutation-study curves: the first analysed 5-shot accuracy, as logged at every
    evaluation (not its `best/` version), else validation top-1."""
    fewshot = [name for name in (metric.removeprefix(BEST_PREFIX) for metric in metrics) if _FEWSHOT_NAME.match(name)]
    return fewshot[0] if fewshot else VAL_TOP1


def _permutation(sweep: SweepRuns, trials: list[Trial], analysis: SweepAnalysis) -> None:
    metric = curve_metric(analysis.metrics)
    histories = metric_histories(sweep, metric)
    # Per model and permutation, the curve of the trial that saw the most data (the paper uses full JFT).
    chosen: dict[tuple[str, str], Trial] = {}
    for t in trials:
        if len(histories.get(t.run_id, ())) > 1:
            key = (t.model, t.permutation)
            if key not in chosen or (t.data_fraction or 0) > (chosen[key].data_fraction or 0):
                chosen[key] = t
    if not chosen:
        analysis.notes.append(f"permutation study: no trial logged a {metric} curve (set "
                              "eval.fewshot_every_evaluation for few-shot curves); no figure")
        return
    curves: dict[str, dict[str, list]] = defaultdict(dict)
    for (model, permutation), t in chosen.items():
        curves[model][permutation] = histories[t.run_id]
    label = metric_label(metric)
    analysis.figures.append(
        ReportFigure(
            name="permutation_study",
            title="Input permutation study",
            caption=f"{label} during training on original inputs, with patch order and the pixels within patches "
            "shuffled together, or with all pixels shuffled globally, each by one fixed permutation (paper "
            "Figure 4). A model with no spatial prior draws the same curve under every permutation.",
            png=png_bytes(permutation_figure(dict(curves), x_label="training step", y_label=label)),
        )
    )


def _weights_trial(trials: list[Trial], metric: str, trial_id: str | None) -> Trial | None:
    if trial_id is not None:
        matches = [t for t in trials if t.trial_id == trial_id]
        if not matches:
            raise ValueError(f"no finished trial with id {trial_id!r}; known: {', '.join(t.trial_id for t in trials)}")
        return matches[0]
    mixers = [t for t in trials if t.checkpoint and t.is_mixer and t.metric(metric) is not None]
    return max(mixers, key=lambda t: t.metric(metric), default=None)


def _weights(trials: list[Trial], metric: str, trial_id: str | None, analysis: SweepAnalysis) -> None:
    trial = _weights_trial(trials, metric, trial_id)
    if trial is None:
        analysis.notes.append("no finished Mixer trial recorded a checkpoint (tag mixer.checkpoint); no weight figures")
        return
    try:
        model = load_trial_mixer(trial)
    except CheckpointError as failure:
        analysis.notes.append(f"weight figures skipped: {failure}")
        return
    analysis.weights_trial = trial.trial_id
    source = f"trial {trial.trial_id} ({trial.model})"
    analysis.figures += [
        ReportFigure(
            name="stem_filters",
            title=f"Stem filters of {source}",
            caption="The per-patch linear embedding's filters, each scaled to its own range (paper Figure 7).",
            png=png_bytes(stem_filters_figure(model)),
        ),
        ReportFigure(
            name="token_mixing",
            title=f"Token-mixing units of {source}",
            caption="Hidden units of the first token-mixing MLPs: each tile is one unit's weights over the "
            "patch grid, scaled to its largest magnitude, sorted by spatial frequency (low first) and each "
            "followed by its inverse-phase partner (paper Figures 5 and 6).",
            png=png_bytes(token_mixing_figure(model)),
        ),
    ]


def _allocation(trials: list[Trial], metric: str, analysis: SweepAnalysis) -> None:
    """The compute-optimal frontier of every joint law of `metric` against training examples, from the trials'
    logged training FLOPs."""
    for fit in [fit for fit in analysis.fits if fit.is_joint and fit.metric == metric and fit.x_name == TRAIN_SIZE]:
        runs = [(t.params_count, t.metric(TRAIN_SIZE), t.metric(TRAIN_FLOPS)) for t in trials
                if family(t) == fit.series and t.params_count and t.metric(TRAIN_SIZE) and t.metric(TRAIN_FLOPS)]
        if runs:
            add_allocation(analysis, fit, runs, label=metric_label(metric))


def analyse_sweep(
    sweep: SweepRuns,
    *,
    metric: str | None = None,
    n_bootstrap: int = 300,
    weights_trial: str | None = None,
    holdout: str | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> SweepAnalysis:
    """Fit scaling laws per model (and jointly across the sizes of a model family) against data size and
    compute, and draw every figure the sweep supports. With `holdout` ('largest' or 'largest-model'), also fit
    without those points and predict them. Only FINISHED trials enter fits and figures; anything left out is
    explained in `notes`."""
    finished = [t for t in sweep.trials if t.status == "FINISHED"]
    analysis = SweepAnalysis(metrics=accuracy_metrics(finished, metric))
    if any(name.startswith(BEST_PREFIX) for name in analysis.metrics):
        analysis.notes.append(BEST_NOTE)
    if len(finished) < len(sweep.trials):
        left_out = ", ".join(f"{t.trial_id} ({t.status})" for t in sweep.trials if t.status != "FINISHED")
        analysis.notes.append(f"{len(sweep.trials) - len(finished)} trial(s) not finished, left out: {left_out}")
    styles = series_styles({t.series for t in finished})
    for name in analysis.metrics:
        for axis in (data_axis(finished), COMPUTE_AXIS):
            progress(f"fitting {name} against {axis.label} ({n_bootstrap} bootstrap draws per model)")
            _scaling(finished, name, axis, styles, n_bootstrap, analysis)
        if name == analysis.metrics[0]:
            _allocation(finished, name, analysis)
        if holdout:
            progress(f"holding back {holdout} for {name}: fitting the rest and predicting it")
            _holdout(finished, name, data_axis(finished), holdout, styles, n_bootstrap, analysis)
    progress("drawing cost, permutation and weight figures")
    _cost(finished, analysis.metrics[0], styles, analysis)
    if sweep.has_permutation_axis:
        _permutation(sweep, finished, analysis)
    _weights(finished, analysis.metrics[0], weights_trial, analysis)
    return analysis
