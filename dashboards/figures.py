"""The paper's figures as matplotlib `Figure`s (object API: no pyplot state, no display needed).

Scaling with data and compute (Figures 2-right and 3), accuracy against cost (Figure 2-left), the permutation
study (Figure 4), and the learned stem filters and token-mixing units drawn as grids (Figures 5–7).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

from dashboards.allocation import ComputeOptimal, FlopsModel, iso_flop_values
from dashboards.holdout import HeldBackCurve, Prediction
from dashboards.scaling import ScalingFit
from mixer_core.model import MlpMixer

# Plain, light figures close to the paper's: no top/right spines, faint grid, small type.
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "figure.dpi": 110,
    "savefig.bbox": "tight",
}
_MARKERS = "osD^v<>ph*"
_MAX_LEGEND_ENTRIES = 12  # beyond this a legend hides the axes (a table of runs can hold dozens of series)
_DIVERGING = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")


def series_styles(series: Sequence[str]) -> dict[str, dict]:
    """A colour and marker per series, stable across every figure of a report."""
    palette = matplotlib.colormaps["tab10"].colors
    return {
        name: {"color": palette[i % len(palette)], "marker": _MARKERS[i % len(_MARKERS)]}
        for i, name in enumerate(sorted(series))
    }


def png_bytes(figure: Figure) -> bytes:
    """The figure encoded as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _new_figure(width: float, height: float, columns: int = 1, share_y: bool = False) -> tuple[Figure, list]:
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(width, height), layout="constrained")
        axes = figure.subplots(1, columns, squeeze=False, sharey=share_y)[0]
    return figure, list(axes)


def _compact_number(value: float, _position: int = 0) -> str:
    """1.5k, 20M, 3T: tick labels short enough for data sizes and FLOP counts; fractions stay as they are."""
    for power, suffix in ((18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(value) >= 10**power:
            return f"{value / 10**power:g}{suffix}"
    return f"{value:g}"


def _log_x_axis(axes) -> None:
    """A log x axis labelled at 1, 2 and 5 times each power of ten (sweeps often span under a decade)."""
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(_compact_number))
    axes.xaxis.set_minor_formatter(NullFormatter())


def _decades(axis, formatter) -> None:
    """Ticks of a log axis at powers of ten only (for axes spanning many decades), labelled by `formatter`."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0,), numticks=12))
    axis.set_major_formatter(FuncFormatter(formatter))
    axis.set_minor_formatter(NullFormatter())


def _metric_axes(axes, x_label: str, y_label: str, percent: bool) -> None:
    """A log x axis and a y axis in percent (accuracies) or plain numbers (losses), labelled."""
    _log_x_axis(axes)
    if percent:
        axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    axes.set(xlabel=x_label, ylabel=y_label)


def scaling_figure(
    points: dict[str, list[tuple[float, float]]],
    fits: Sequence[ScalingFit],
    styles: dict[str, dict],
    *,
    x_label: str,
    y_label: str,
    joint: dict[str, tuple[ScalingFit, float]] | None = None,
    percent: bool = True,
) -> Figure:
    """The metric (accuracy as a `percent`, or a loss) against x on a log axis per series, with the fitted law
    and its bootstrap band (none for a fit with too few residual degrees of freedom), and dotted, the joint law
    of the series' model family at its size N (`joint`: series -> (joint fit, N))."""
    joint = joint or {}
    with matplotlib.rc_context(STYLE):
        figure, (axes,) = _new_figure(5.2, 3.6)
        fits_by_series = {fit.series: fit for fit in fits}
        for series, series_points in points.items():
            x, values = map(np.asarray, zip(*series_points))
            style = styles[series]
            axes.plot(x, values, linestyle="none", markersize=5, label=series, **style)
            if series in joint:
                joint_fit, params = joint[series]
                grid = np.geomspace(*joint_fit.x_range, 100)
                inputs = np.column_stack([np.full(len(grid), params), grid])
                axes.plot(grid, joint_fit.metric_at(inputs), color=style["color"], linewidth=1.1, linestyle=":")
            fit = fits_by_series.get(series)
            if fit is None:
                continue
            grid = np.geomspace(*fit.x_range, 100)
            axes.plot(grid, fit.metric_at(grid), color=style["color"], linewidth=1.4)
            if fit.has_band:
                axes.fill_between(grid, *fit.metric_band(grid), color=style["color"], alpha=0.15, lw=0)
        _metric_axes(axes, x_label, y_label, percent)
        if len(points) <= _MAX_LEGEND_ENTRIES:
            axes.legend(loc="best")
    return figure


def holdout_figure(
    curves: Sequence[HeldBackCurve],
    styles: dict[str, dict],
    *,
    x_label: str,
    y_label: str,
    percent: bool = True,
) -> Figure:
    """The metric against x per curve: the points a law was fitted on, the law extended past them (dashed) with
    its one-run prediction band (none with too few residual degrees of freedom), and the held-back points it
    predicts (open stars, labelled with the prediction's error: accuracy points, or percent of a loss)."""
    styles = {**series_styles([curve.fit.series for curve in curves]), **styles}
    with matplotlib.rc_context(STYLE):
        figure, (axes,) = _new_figure(5.6, 3.8)
        for curve in curves:
            style = styles[curve.fit.series]
            # A per-model curve is fitted up to its largest x; a joint one predicts a model size it never saw.
            fitted_x, fitted_values = np.array([(p.x, p.value) for p in curve.fitted]).T
            label = curve.fit.series if curve.params is None else f"{curve.fit.series}, smaller sizes (fitted)"
            axes.plot(fitted_x, fitted_values, linestyle="none", markersize=5, label=label,
                      alpha=1.0 if curve.params is None else 0.35, **style)
            held_x = np.array([p.x for p in curve.held_back])
            grid = np.geomspace(fitted_x.min(), max(held_x.max(), fitted_x.max()) * 1.25, 120)
            inside = grid <= (fitted_x.max() if curve.params is None else 0)
            values = curve.fit.metric_at(curve.inputs(grid))
            axes.plot(grid[inside], values[inside], color=style["color"], linewidth=1.4)
            axes.plot(grid[~inside], values[~inside], color=style["color"], linewidth=1.4, linestyle="--")
            if curve.fit.has_band:
                axes.fill_between(grid, *curve.fit.metric_band(curve.inputs(grid), one_run=True),
                                  color=style["color"], alpha=0.13, lw=0)
            held_values = np.array([p.value for p in curve.held_back])
            axes.plot(held_x, held_values, marker="*", markersize=12, markerfacecolor="white",
                      markeredgecolor=style["color"], markeredgewidth=1.3, linestyle="none")
            for x in np.unique(held_x):  # seeds at one x share a label: the mean error of their predictions
                measured = held_values[held_x == x].mean()
                predicted = curve.fit.metric_at(curve.inputs(np.array([x])))[0]
                miss = f"{100 * (predicted - measured):+.1f} pts" if percent else \
                    f"{100 * (predicted - measured) / measured:+.1f}%"
                axes.annotate(miss, (x, held_values[held_x == x].min()), xytext=(7, -10), textcoords="offset points",
                              fontsize=8, color=style["color"])
        axes.plot([], [], marker="*", markersize=10, markerfacecolor="white", markeredgecolor="0.3",
                  linestyle="none", label="held back (predicted − measured)")
        _metric_axes(axes, x_label, y_label, percent)
        axes.legend(loc="lower right" if percent else "upper right")
    return figure


def parity_figure(
    curves: Sequence[HeldBackCurve],
    predictions: Sequence[Prediction],
    *,
    y_label: str,
    percent: bool = True,
) -> Figure:
    """Predicted against measured metric for held-back runs (stars with their prediction intervals as bars) and,
    as circles, the fitted runs against the law's value there; the diagonal is a perfect prediction."""
    with matplotlib.rc_context(STYLE):
        figure, (axes,) = _new_figure(4.6, 4.2)
        for curve in curves:
            fitted = np.array([(p.params, p.x) for p in curve.fitted]) if curve.fit.is_joint else \
                np.array([p.x for p in curve.fitted])
            axes.plot([p.value for p in curve.fitted], curve.fit.metric_at(fitted), "o", color="0.6", markersize=3.5,
                      label=f"{curve.fit.series}: fitted runs")
        measured = np.array([p.measured for p in predictions])
        predicted = np.array([p.predicted for p in predictions])
        bars = np.abs(np.array([p.interval for p in predictions]).T - predicted)
        axes.errorbar(measured, predicted, yerr=bars, fmt="*", markersize=9, color="tab:red", ecolor="tab:red",
                      elinewidth=0.8, capsize=2, label="held back (95% prediction interval)")
        every = np.concatenate([measured, predicted, *[[p.value for p in curve.fitted] for curve in curves]])
        span = np.array([every.min(), every.max()])
        axes.plot(span, span, color="0.3", linewidth=0.8, linestyle="--", zorder=0)
        if percent:
            axes.xaxis.set_major_formatter(PercentFormatter(xmax=1))
            axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))
        axes.set(xlabel=f"measured {y_label}", ylabel=f"predicted {y_label}")
        axes.legend(loc="upper left")
    return figure


def iso_flop_figure(
    fit: ScalingFit,
    flops_model: FlopsModel,
    optima: Sequence[ComputeOptimal],
    runs: Sequence[tuple[float, float]],
    *,
    fitted_flops: float,
    y_label: str,
    percent: bool = True,
) -> Figure:
    """Two panels (Chinchilla's Figure 3): left, the joint law along iso-FLOP curves (metric against model size at
    each budget, its optimum marked); right, the optimal model size against compute with its 95% band, solid up
    to the largest compute fitted (`fitted_flops`, dotted line) and dashed beyond, each optimum labelled with how
    far it is extrapolated, and the runs fitted (`runs`: (flops, params)) as grey points."""
    with matplotlib.rc_context(STYLE):
        figure, (curves, frontier) = _new_figure(9.4, 3.6, columns=2)
        colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(optima)))
        for optimum, colour in zip(optima, colours):
            params = np.geomspace(optimum.params / 30, optimum.params * 30, 120)
            curves.plot(params, iso_flop_values(fit, flops_model, optimum.flops, params), color=colour,
                        linewidth=1.3, linestyle="-" if optimum.flops <= fitted_flops else "--",
                        label=f"C = {optimum.flops:.2g}")
            curves.plot([optimum.params], [optimum.predicted], "o", color=colour, markersize=5)
        _metric_axes(curves, "model size N (parameters, log scale)", y_label, percent)
        _decades(curves.xaxis, _compact_number)
        curves.legend(loc="best", fontsize=7)
        budgets = np.array([optimum.flops for optimum in optima])
        best = np.array([optimum.params for optimum in optima])
        low, high = np.array([optimum.params_interval for optimum in optima]).T
        inside = budgets <= fitted_flops
        frontier.fill_between(budgets, low, high, color="tab:blue", alpha=0.15, lw=0, label="95% interval")
        frontier.plot(budgets[inside], best[inside], color="tab:blue", linewidth=1.4, label="optimal N")
        frontier.plot(budgets[~inside | np.roll(inside, -1)], best[~inside | np.roll(inside, -1)], color="tab:blue",
                      linewidth=1.4, linestyle="--")
        for optimum in optima:
            if optimum.flops > fitted_flops:
                frontier.annotate(f"{optimum.extrapolation['flops']:.3g}x", (optimum.flops, optimum.params),
                                  xytext=(4, -10), textcoords="offset points", fontsize=7, color="tab:blue")
        if runs:
            frontier.plot(*zip(*runs), ".", color="0.55", markersize=4, label="runs fitted")
        frontier.axvline(fitted_flops, color="0.4", linewidth=0.8, linestyle=":")
        frontier.set(xscale="log", yscale="log")
        _decades(frontier.xaxis, lambda value, _position=0: f"{value:.0e}".replace("e+", "e"))
        _decades(frontier.yaxis, _compact_number)
        frontier.set(xlabel="training compute C (FLOPs, log scale)", ylabel="model size N")
        frontier.legend(loc="upper left", fontsize=7)
    return figure


def _pareto_front(x: np.ndarray, accuracy: np.ndarray, higher_x_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """The points no other point beats in both x and accuracy, ordered by x."""
    order = np.argsort(-x if higher_x_is_better else x, kind="stable")
    front, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    front = sorted(front, key=lambda i: x[i])
    return x[front], accuracy[front]


def cost_figure(
    points: dict[str, list[tuple[float | None, float | None, float]]],
    styles: dict[str, dict],
    *,
    y_label: str,
) -> Figure:
    """Two panels: accuracy against total training FLOPs and against training throughput (img/s), each
    with its Pareto frontier dashed (the paper's Figure 2-left). Points are (flops, img/s, accuracy)."""
    panels = (
        (0, "total training compute (FLOPs)", False),
        (1, "training throughput (images/s)", True),
    )
    with matplotlib.rc_context(STYLE):
        figure, axes_pair = _new_figure(9.4, 3.4, columns=2)
        for (column, x_label, higher_is_better), axes in zip(panels, axes_pair):
            every_x, every_accuracy = [], []
            for series, series_points in points.items():
                usable = [(p[column], p[2]) for p in series_points if p[column]]
                if not usable:
                    continue
                x, accuracy = zip(*usable)
                axes.plot(x, accuracy, linestyle="none", markersize=5, label=series, **styles[series])
                every_x += x
                every_accuracy += accuracy
            if every_x:
                front_x, front_accuracy = _pareto_front(np.array(every_x), np.array(every_accuracy), higher_is_better)
                axes.plot(front_x, front_accuracy, "--", color="0.45", linewidth=1, zorder=0, label="Pareto frontier")
                _log_x_axis(axes)
            axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))
            axes.set(xlabel=x_label, ylabel=y_label)
        figure.legend(*axes_pair[0].get_legend_handles_labels(), loc="outside right center")
    return figure


def permutation_figure(
    curves: dict[str, dict[str, list[tuple[float, float]]]],
    *,
    x_label: str,
    y_label: str,
) -> Figure:
    """One panel per model, one training curve per input permutation (the paper's Figure 4): a model that
    ignores spatial order draws the same curve for every permutation."""
    permutations = sorted({p for by_permutation in curves.values() for p in by_permutation})
    styles = series_styles(permutations)
    with matplotlib.rc_context(STYLE):
        figure, panels = _new_figure(3.3 * len(curves), 3.0, columns=len(curves), share_y=True)
        for axes, (model, by_permutation) in zip(panels, sorted(curves.items())):
            for permutation, points in sorted(by_permutation.items()):
                x, accuracy = zip(*points)
                axes.plot(x, accuracy, color=styles[permutation]["color"], linewidth=1.4, label=permutation)
            axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))
            axes.set(title=model, xlabel=x_label)
        panels[0].set_ylabel(y_label)
        panels[0].legend(title="input permutation", loc="lower right")
    return figure


def _mosaic(tiles: np.ndarray, columns: int, pad: int = 1) -> np.ndarray:
    """Tiles (N, h, w[, 3]) laid out in a grid with `pad` NaN pixels between them (drawn as white)."""
    count, height, width = tiles.shape[:3]
    rows = math.ceil(count / columns)
    canvas = np.full((rows * (height + pad) - pad, columns * (width + pad) - pad, *tiles.shape[3:]), np.nan)
    for i, tile in enumerate(tiles):
        top, left = (i // columns) * (height + pad), (i % columns) * (width + pad)
        canvas[top : top + height, left : left + width] = tile
    return canvas


def _symmetric_unit_scale(weights: np.ndarray) -> np.ndarray:
    """Each unit divided by its largest magnitude, so every tile spans [-1, 1] and its sign stays visible."""
    peak = np.abs(weights).reshape(len(weights), -1).max(axis=1)
    return weights / np.maximum(peak, 1e-12).reshape(-1, *([1] * (weights.ndim - 1)))


def spatial_frequency(tiles: np.ndarray) -> np.ndarray:
    """Per (g, g) tile, the power-weighted mean spatial frequency of its 2-D spectrum (the DC term left out),
    in cycles per grid: 0 for a flat tile, higher for finer patterns."""
    spectrum = np.abs(np.fft.fft2(tiles)) ** 2
    frequencies = np.fft.fftfreq(tiles.shape[-1]) * tiles.shape[-1]
    radius = np.hypot(*np.meshgrid(frequencies, np.fft.fftfreq(tiles.shape[-2]) * tiles.shape[-2]))
    spectrum[:, 0, 0] = 0.0
    return (spectrum * radius).sum(axis=(1, 2)) / np.maximum(spectrum.sum(axis=(1, 2)), 1e-12)


def paired_frequency_order(tiles: np.ndarray) -> np.ndarray:
    """Unit indices ordered as the paper's Figures 5-6: by spatial frequency, low first, each unit followed by
    its inverse-phase partner (the remaining unit whose weights correlate most negatively with it)."""
    flat = tiles.reshape(len(tiles), -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    correlation = unit @ unit.T
    order, left = [], list(np.argsort(spatial_frequency(tiles), kind="stable"))
    while left:
        first = left.pop(0)
        order.append(first)
        if left:
            partner = min(left, key=lambda other: correlation[first, other])
            left.remove(partner)
            order.append(partner)
    return np.array(order, dtype=int)


def stem_filters_figure(model: MlpMixer, max_filters: int = 128) -> Figure:
    """The per-patch linear embedding's filters as P×P tiles (the paper's Figure 7): colour images for RGB
    input (each filter stretched to [0, 1]), a diverging map for single-channel input."""
    weights = model.stem.weight.detach().float()[:max_filters].numpy()  # (N, C, P, P)
    columns = min(16, len(weights))
    with matplotlib.rc_context(STYLE):
        figure, (axes,) = _new_figure(6.4, 6.4 * math.ceil(len(weights) / columns) / columns + 0.5)
        if weights.shape[1] == 3:
            low = weights.min(axis=(1, 2, 3), keepdims=True)
            high = weights.max(axis=(1, 2, 3), keepdims=True)
            tiles = ((weights - low) / np.maximum(high - low, 1e-12)).transpose(0, 2, 3, 1)
            canvas = _mosaic(tiles, columns)
            axes.imshow(np.nan_to_num(canvas, nan=1.0), interpolation="nearest")
        else:
            tiles = _symmetric_unit_scale(weights[:, 0])
            axes.imshow(_mosaic(tiles, columns), cmap=_DIVERGING, vmin=-1, vmax=1, interpolation="nearest")
        axes.set_axis_off()
        patch = model.variant.patch_size
        axes.set_title(f"Stem: first {len(weights)} of {model.variant.hidden_dim} linear patch embeddings "
                       f"({patch}×{patch})")
    return figure


def token_mixing_figure(model: MlpMixer, blocks: int = 3, max_units: int = 64) -> Figure:
    """Hidden units of the first `blocks` token-mixing MLPs, each unit's weights over the tokens drawn on the
    patch grid, sorted by spatial frequency and paired with their inverse-phase partners (the paper's Figures 5
    and 6). Blue and red are negative and positive weights."""
    shown = model.blocks[:blocks]
    grid = model.grid_size
    with matplotlib.rc_context(STYLE):
        figure, panels = _new_figure(3.4 * len(shown), 3.6, columns=len(shown))
        for index, (axes, block) in enumerate(zip(panels, shown)):
            weights = block.mlp_tokens.fc1.weight.detach().float()[:max_units].numpy()  # (units, tokens)
            tiles = _symmetric_unit_scale(weights.reshape(-1, grid, grid))
            tiles = tiles[paired_frequency_order(tiles)]
            columns = math.ceil(math.sqrt(len(tiles)))
            image = axes.imshow(_mosaic(tiles, columns), cmap=_DIVERGING, vmin=-1, vmax=1, interpolation="nearest")
            axes.set_axis_off()
            axes.set_title(f"block {index}: {len(tiles)} of {block.mlp_tokens.fc1.out_features} units")
        figure.colorbar(image, ax=panels, shrink=0.6, label="weight / max |weight| of the unit")
    return figure
