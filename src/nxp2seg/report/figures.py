"""Figures of the evaluation and analysis reports, as PNG bytes.

Drawn on bare :class:`matplotlib.figure.Figure` objects (the Agg canvas, no
``pyplot``): no global backend switch, no window, no figure left open, safe in
a batch job. Each function takes plain arrays or tables and returns the PNG's
bytes, which the HTML report embeds as base64 and ``analyze`` writes to disk.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "bland_altman_plot",
    "confusion_plot",
    "dice_plot",
    "grade_heatmap",
    "group_plot",
    "png_bytes",
    "scatter_panels",
    "score_scatter",
]

DPI = 110
_MODEL = "#1f6fb2"
_READER = "#c0504d"


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (the figure is then discarded)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def _empty(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def bland_altman_plot(model, reference, *, title: str, unit: str = "points",
                      reference_name: str = "readers' mean") -> bytes:
    """Difference (model − reference) against the mean of the two, with bias and 95% limits."""
    fig, (ax,) = _figure(6.4, 4.2)
    m, r = _paired(model, reference)
    if len(m) < 2:
        _empty(ax)
    else:
        diff, avg = m - r, (m + r) / 2
        bias, sd = diff.mean(), diff.std(ddof=1)
        ax.scatter(avg, diff, s=22, alpha=0.7, color=_MODEL, edgecolor="none")
        for y, style, label in ((bias, "-", f"bias {bias:+.2f}"),
                                (bias - 1.96 * sd, "--", f"−1.96 SD {bias - 1.96 * sd:+.2f}"),
                                (bias + 1.96 * sd, "--", f"+1.96 SD {bias + 1.96 * sd:+.2f}")):
            ax.axhline(y, ls=style, color=_READER, lw=1.2)
            ax.annotate(label, (1.0, y), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                        textcoords="offset points", ha="right", fontsize=8, color=_READER)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel(f"mean of model and {reference_name} ({unit})")
        ax.set_ylabel(f"model − {reference_name} ({unit})")
    ax.set_title(title, fontsize=10)
    return png_bytes(fig)


def scatter_panels(panels: Sequence[Mapping]) -> bytes:
    """Model against the readers' mean, one panel per ``{"x", "y", "title", "max", "jitter"}``.

    ``x`` is the readers' mean, ``y`` the model; the identity line is drawn.
    """
    fig, axes = _figure(4.6 * len(panels), 4.3, ncols=len(panels))
    rng = np.random.default_rng(0)
    for ax, p in zip(axes, panels):
        x, y = _paired(p["x"], p["y"])
        top = float(p.get("max") or max(x.max(initial=1), y.max(initial=1)))
        if len(x) == 0:
            _empty(ax)
        else:
            j = float(p.get("jitter", 0.0))
            ax.scatter(x + rng.uniform(-j, j, len(x)), y, s=16, alpha=0.55, color=_MODEL,
                       edgecolor="none")
            ax.plot([0, top], [0, top], color="0.5", lw=1, ls="--", label="identity")
            ax.set_xlim(-0.05 * top - j, 1.05 * top + j)
            ax.set_ylim(-0.05 * top, 1.05 * top)
            ax.legend(loc="upper left", fontsize=8, frameon=False)
        ax.set_xlabel(p.get("xlabel", "readers' mean"))
        ax.set_ylabel(p.get("ylabel", "model"))
        ax.set_title(p["title"], fontsize=10)
        ax.set_aspect("equal", adjustable="box")
    return png_bytes(fig)


def confusion_plot(matrices: Mapping[str, pd.DataFrame], *, row_label: str = "readers",
                   col_label: str = "model") -> bytes:
    """Count heatmaps, one per ``{title: matrix}`` (reference in rows, model in columns)."""
    fig, axes = _figure(4.2 * len(matrices), 4.0, ncols=max(len(matrices), 1))
    for ax, (title, m) in zip(axes, matrices.items()):
        counts = m.to_numpy(dtype=float)
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(counts.max(initial=0), 1))
        for (i, j), v in np.ndenumerate(counts):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=8,
                    color="white" if v > 0.6 * counts.max(initial=1) else "black")
        ax.set_xticks(range(counts.shape[1]), [str(c) for c in m.columns], fontsize=8)
        ax.set_yticks(range(counts.shape[0]), [str(i) for i in m.index], fontsize=8)
        ax.set_xlabel(col_label)
        ax.set_ylabel(row_label)
        ax.set_title(title, fontsize=10)
    return png_bytes(fig)


def dice_plot(regions: Sequence[str], mean, low, high) -> bytes:
    """Mean Dice per region with its bootstrap interval."""
    fig, (ax,) = _figure(max(6.0, 0.55 * len(regions) + 2), 4.0)
    mean = np.asarray(mean, dtype=float)
    low = np.where(np.isfinite(np.asarray(low, dtype=float)), low, mean)
    high = np.where(np.isfinite(np.asarray(high, dtype=float)), high, mean)
    x = np.arange(len(regions))
    ax.bar(x, np.nan_to_num(mean), color=_MODEL, alpha=0.85)
    ax.errorbar(x, np.nan_to_num(mean), yerr=[np.nan_to_num(mean - low), np.nan_to_num(high - mean)],
                fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(x, [r.replace("_", " ") for r in regions], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Dice (mean over cases, 95% CI)")
    ax.set_title("Segmentation: Dice per region", fontsize=10)
    return png_bytes(fig)


def grade_heatmap(model: pd.DataFrame, readers: pd.DataFrame, max_grade: int) -> bytes:
    """Subjects × regions: the model's grades next to the readers' mean (same colour scale)."""
    n = max(len(model.index), 1)
    fig, axes = _figure(11.0, min(2.0 + 0.22 * n, 30.0), ncols=2)
    for ax, (title, m) in zip(axes, (("model", model), ("readers' mean", readers))):
        im = ax.imshow(m.to_numpy(dtype=float), cmap="magma_r", vmin=0, vmax=max_grade,
                       aspect="auto", interpolation="nearest")
        ax.set_xticks(range(m.shape[1]), [c.replace("_", " ") for c in m.columns], rotation=70,
                      ha="right", fontsize=7)
        ax.set_yticks(range(m.shape[0]), [str(i) for i in m.index], fontsize=7)
        ax.set_title(f"edema grade: {title}", fontsize=10)
    fig.colorbar(im, ax=list(axes), shrink=0.6, label="edema grade")
    return png_bytes(fig)


def score_scatter(x, y, *, xlabel: str, ylabel: str, title: str) -> bytes:
    """A clinical variable (x) against the MRI score (y) with the least-squares line."""
    fig, (ax,) = _figure(4.6, 3.8)
    xs, ys = _paired(x, y)
    if len(xs) < 2:
        _empty(ax)
    else:
        ax.scatter(xs, ys, s=20, alpha=0.7, color=_MODEL, edgecolor="none")
        if np.ptp(xs) > 0:
            slope, intercept = np.polyfit(xs, ys, 1)
            grid = np.linspace(xs.min(), xs.max(), 50)
            ax.plot(grid, intercept + slope * grid, color=_READER, lw=1.5, label="least-squares fit")
            ax.legend(loc="best", fontsize=8, frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return png_bytes(fig)


def group_plot(groups: Mapping[str, np.ndarray], *, ylabel: str, title: str) -> bytes:
    """The MRI score per level of a binary or categorical variable: box plot with the points."""
    fig, (ax,) = _figure(4.6, 3.8)
    data = [np.asarray(v, dtype=float)[np.isfinite(np.asarray(v, dtype=float))] for v in groups.values()]
    if not any(len(d) for d in data):
        _empty(ax)
    else:
        ax.boxplot([d if len(d) else [np.nan] for d in data], widths=0.5, showfliers=False)
        rng = np.random.default_rng(0)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=16, alpha=0.7, color=_MODEL,
                       edgecolor="none")
        ax.set_xticks(range(1, len(data) + 1), [f"{k}\n(n={len(d)})" for k, d in zip(groups, data)],
                      fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return png_bytes(fig)
