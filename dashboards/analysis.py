"""From a sweep's trials to what the report shows: scaling-law fits, figures, and notes on what was left out."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from dashboards.checkpoints import CheckpointError, load_trial_mixer
from dashboards.figures import (
    cost_figure,
    holdout_figure,
    permutation_figure,
    png_bytes,
    scaling_figure,
    series_styles,
    stem_filters_figure,
    token_mixing_figure,
)
from dashboards.holdout import INTERVAL_KIND, HeldBackCurve, Prediction, SizedPoint, hold_back, predict_held_back
from dashboards.runs import SweepRuns, Trial, metric_histories
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
from dashboards.scaling import CannotFit, ScalingFit, chosen_trials, fit_joint, fit_series, replicate_key

TOP1_METRICS = (TEST_TOP1, VAL_TOP1)  # the first one any trial logged is the report's accuracy
FEWSHOT_SHOTS = 5  # the paper's headline few-shot number (Figures 2-right, 3)
# `fewshot_5shot_top1` (the pre-training data's own splits) or `fewshot_<label>_5shot_top1` (downstream)
_FEWSHOT_NAME = re.compile(rf"^fewshot_(?:(?P<label>.+)_)?{FEWSHOT_SHOTS}shot_top1$")
_TOP1_LABELS = {TEST_TOP1: "test top-1", VAL_TOP1: "validation top-1"}
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
    figures: list[ReportFigure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    weights_trial: str | None = None


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
    seeds included, as (params, x, accuracy) points."""
    usable = [t for t in trials if axis.value(t) and t.metric(metric) is not None]
    chosen = chosen_trials(
        ((group(t), t.params_count or 0), axis.value(t), t.metric(metric), replicate_key(t.config)) for t in usable
    )
    points: dict[str, list[SizedPoint]] = defaultdict(list)
    for (name, params), series_points in chosen.items():
        points[name] += [SizedPoint(params, x, accuracy) for x, accuracy in series_points]
    return dict(points)


def _scaling(
    trials: list[Trial], metric: str, axis: ScalingAxis, styles: dict[str, dict], n_bootstrap: int,
    analysis: SweepAnalysis,
) -> None:
    label = metric_label(metric)
    points = {series: [(p.x, p.accuracy) for p in sized]
              for series, sized in sized_points(trials, metric, axis, lambda t: t.series).items()}
    if not points:
        analysis.notes.append(f"{label} vs {axis.label}: no trial logged both; no figure")
        return
    fits, refusals = fit_series(points, x_name=axis.name, metric=metric, n_bootstrap=n_bootstrap)
    families = {name: [(p.params, p.x, p.accuracy) for p in sized]
                for name, sized in sized_points(trials, metric, axis, family).items()}
    joint_fits, joint_refusals = fit_joint(families, x_name=axis.name, metric=metric, n_bootstrap=n_bootstrap)
    analysis.fits += fits + joint_fits
    analysis.notes += refusals + joint_refusals
    joint_by_family = {fit.series: fit for fit in joint_fits}
    joint = {t.series: (joint_by_family[family(t)], t.params_count) for t in trials if family(t) in joint_by_family}
    joint_caption = " Dotted: the joint law E∞ + A·N^(−α) + B·x^(−β) of the model's family at its size N." \
        if joint else ""
    analysis.figures.append(
        ReportFigure(
            name=f"scaling_{_file_name(metric)}_vs_{_file_name(axis.name)}",
            title=f"{label} vs {axis.label}",
            caption=f"Every trial of the best configuration per model and {axis.label} (points); lines are the "
            "fitted error law E = a·x^(−b) + c drawn as 1 − E, shaded by its bootstrap 95% confidence band "
            f"(paper Figures 2-right, 3).{joint_caption}",
            png=png_bytes(scaling_figure(points, fits, styles, x_label=f"{axis.label} (log scale)", y_label=label,
                                         joint=joint)),
        )
    )


def _holdout(trials: list[Trial], metric: str, axis: ScalingAxis, holdout: str, styles: dict[str, dict],
             n_bootstrap: int, analysis: SweepAnalysis) -> None:
    label = metric_label(metric)
    group = family if holdout == "largest-model" else (lambda t: t.series)
    curves: list[HeldBackCurve] = []
    for name, points in sized_points(trials, metric, axis, group).items():
        try:
            curves.append(hold_back(holdout, name, points, x_name=axis.name, metric=metric, n_bootstrap=n_bootstrap))
        except CannotFit as refusal:
            analysis.notes.append(f"holdout {holdout}: {refusal}")
    if not curves:
        return
    analysis.predictions += [prediction for curve in curves for prediction in predict_held_back(curve)]
    held_back = "the largest model" if holdout == "largest-model" else f"the largest {axis.label}"
    analysis.figures.append(
        ReportFigure(
            name=f"holdout_{holdout.replace('-', '_')}_{_file_name(metric)}",
            title=f"{label}: predicting {held_back} from the rest",
            caption=f"Laws fitted without {held_back} (filled points), extended past the fitted range (dashed), "
            f"predict the held-back trials (open stars). Shading: the {INTERVAL_KIND}, 95%.",
            png=png_bytes(holdout_figure(curves, styles, x_label=f"{axis.label} (log scale)", y_label=label)),
        )
    )


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
        if holdout:
            progress(f"holding back {holdout} for {name}: fitting the rest and predicting it")
            _holdout(finished, name, data_axis(finished), holdout, styles, n_bootstrap, analysis)
    progress("drawing cost, permutation and weight figures")
    _cost(finished, analysis.metrics[0], styles, analysis)
    if sweep.has_permutation_axis:
        _permutation(sweep, finished, analysis)
    _weights(finished, analysis.metrics[0], weights_trial, analysis)
    return analysis
