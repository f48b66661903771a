"""Figures a paper can use: vector (SVG, PDF) and 300 dpi PNG, labelled from a label table.

Each function draws on a bare :class:`matplotlib.figure.Figure` (no pyplot, no
global state) and returns it; :func:`save_figure` writes it in every format
asked for and returns the SVG text that ``analysis.html`` embeds. Colours are
the Okabe-Ito palette (readable with colour-vision deficiency); two groups
are vermilion and teal, as in seed paper 004's Figure 1.

* :func:`heatmap_figure` -- subjects x regions of the edema grade (seed paper
  000's Figure 1);
* :func:`group_boxplots` -- grades per muscle (region) by group with the
  mixed model's significance marks (paper 004's Figure 1);
* :func:`scatter_figure`, :func:`levels_figure` -- the score against a
  clinical variable (Table 1), or per level of a categorical one;
* :func:`diagnostics_figure` -- residuals against fitted values, normal Q-Q of
  the residuals and of the subjects' intercepts (the mixed model's checks).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats as sps

from nxp2seg.io import atomic_write_bytes, atomic_write_text

__all__ = ["FORMATS", "GROUP_COLORS", "diagnostics_figure", "group_boxplots", "heatmap_figure",
           "levels_figure", "p_stars", "save_figure", "scatter_figure"]

FORMATS = ("svg", "pdf", "png")
GROUP_COLORS = ("#D55E00", "#009E73", "#0072B2", "#E69F00", "#CC79A7", "#56B4E9")  # Okabe-Ito
_POINT = "#0072B2"
_LINE = "#D55E00"


def _new(width: float, height: float, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False).ravel()
    return fig, axes


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = FORMATS, dpi: int = 300
                ) -> tuple[list[Path], str]:
    """Write ``stem.{svg,pdf,png}`` (PNG at ``dpi``) atomically; returns the paths and the SVG text."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"figure formats {bad}: use any of {FORMATS}")
    paths = []
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})  # no date: same figure, same bytes
    svg = buf.getvalue()
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if fmt == "svg":
            atomic_write_text(path, svg)
        else:
            out = io.BytesIO()
            meta = {"CreationDate": None} if fmt == "pdf" else {}
            fig.savefig(out, format=fmt, dpi=dpi, metadata=meta)
            atomic_write_bytes(path, out.getvalue())
        paths.append(path)
    return paths, svg


def p_stars(p: float) -> str:
    """``***`` p < 0.001, ``**`` < 0.01, ``*`` < 0.05, ``NS`` otherwise (``""`` for NaN)."""
    if p is None or not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "NS"


def heatmap_figure(matrix: pd.DataFrame, *, max_grade: int, label: Callable[[str], str],
                   title: str, colorbar: str) -> Figure:
    """Subjects (rows) x regions (columns ``(station, side, compartment[, muscle])``)."""
    n_rows, n_cols = matrix.shape
    fig, (ax,) = _new(max(6.0, 0.32 * n_cols + 2.5), min(2.2 + 0.17 * max(n_rows, 1), 28.0))
    data = matrix.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(data), cmap="Reds", vmin=0, vmax=max_grade,
                   aspect="auto", interpolation="nearest")
    names = []
    for col in matrix.columns:
        station, side, part = col[0], col[1], col[-1]
        names.append(f"{label(part)} {'R' if side == 'right' else 'L'}")
    ax.set_xticks(range(n_cols), names, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(n_rows), [str(i) for i in matrix.index], fontsize=6 if n_rows > 30 else 7)
    blocks = [(c[0], c[1]) for c in matrix.columns]
    for j in range(1, n_cols):
        if blocks[j] != blocks[j - 1]:
            ax.axvline(j - 0.5, color="black", lw=1.2 if blocks[j][0] != blocks[j - 1][0] else 0.6)
    starts = {}
    for j, b in enumerate(blocks):
        starts.setdefault(b[0], []).append(j)
    for station, cols in starts.items():
        ax.text((cols[0] + cols[-1]) / 2, -0.9, label(station), ha="center", va="bottom",
                fontsize=9, fontweight="bold")
    ax.set_ylabel("subject (highest total score first)")
    ax.set_title(title, fontsize=10, pad=22)
    fig.colorbar(im, ax=ax, shrink=0.5, label=colorbar, ticks=range(max_grade + 1))
    return fig


def group_boxplots(data: pd.DataFrame, *, items: Sequence[str], groups: Sequence[str],
                   value: str, item: str, group: str, label: Callable[[str], str],
                   ylabel: str, stars: Mapping[str, str] | None = None,
                   sizes: Mapping[str, int] | None = None, ymax: float | None = None,
                   title: str = "") -> Figure:
    """Box plots of ``value`` per ``item`` (x) by ``group`` (side by side), points and stars on top."""
    fig, (ax,) = _new(max(6.5, 0.75 * len(items) + 2), 4.4)
    width = 0.8 / max(len(groups), 1)
    rng = np.random.default_rng(0)
    handles = []
    for gi, g in enumerate(groups):
        color = GROUP_COLORS[gi % len(GROUP_COLORS)]
        pos = np.arange(len(items)) + (gi - (len(groups) - 1) / 2) * width
        vals = [data.loc[(data[item] == it) & (data[group] == g), value].dropna().to_numpy(float)
                for it in items]
        bp = ax.boxplot([v if len(v) else [np.nan] for v in vals], positions=pos,
                        widths=width * 0.8, patch_artist=True, showfliers=False,
                        medianprops={"color": "black", "lw": 1.2})
        for patch in bp["boxes"]:
            patch.set(facecolor=color, alpha=0.55, edgecolor=color)
        for p, v in zip(pos, vals):
            ax.scatter(p + rng.uniform(-width * 0.25, width * 0.25, len(v)), v, s=9, color=color,
                       alpha=0.8, edgecolor="none", zorder=3)
        n = (sizes or {}).get(g)
        handles.append((bp["boxes"][0], f"{label(g)} (n = {n})" if n is not None else label(g)))
    top = ymax if ymax is not None else float(np.nanmax(data[value].to_numpy(float), initial=1.0))
    for j, it in enumerate(items):
        mark = (stars or {}).get(it, "")
        if mark:
            ax.text(j, top * 1.06 + 0.05, mark, ha="center", va="bottom", fontsize=9)
    ax.set_ylim(-0.15 * max(top, 1) / 3, top * 1.2 + 0.2)
    if float(top).is_integer() and top <= 10:  # grades: integer ticks only
        ax.set_yticks(range(int(top) + 1))
    ax.set_xticks(range(len(items)), [label(i) for i in items], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend([h for h, _ in handles], [t for _, t in handles], loc="upper right", fontsize=8,
              frameon=False, ncol=len(groups))
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def scatter_figure(x, y, *, xlabel: str, ylabel: str, title: str) -> Figure:
    """A clinical variable (x) against the MRI score (y) with the least-squares line."""
    fig, (ax,) = _new(4.6, 3.8)
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    ax.scatter(x, y, s=18, alpha=0.75, color=_POINT, edgecolor="none")
    if len(x) > 1 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 50)
        ax.plot(grid, intercept + slope * grid, color=_LINE, lw=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return fig


def levels_figure(groups: Mapping[str, np.ndarray], *, ylabel: str, title: str) -> Figure:
    """The MRI score per level of a variable: box plot with the points, n under each level."""
    fig, (ax,) = _new(4.6, 3.8)
    data = [np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for v in groups.values()]
    ax.boxplot([d if len(d) else [np.nan] for d in data], widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=14, alpha=0.75, color=_POINT,
                   edgecolor="none")
    ax.set_xticks(range(1, len(data) + 1), [f"{k}\n(n = {len(d)})" for k, d in zip(groups, data)],
                  fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return fig


def diagnostics_figure(fitted, residuals, intercepts, *, title: str) -> Figure:
    """Residuals vs fitted, and normal Q-Q plots of the residuals and of the subject intercepts."""
    fig, axes = _new(12.0, 3.8, ncols=3)
    fitted, residuals = np.asarray(fitted, float), np.asarray(residuals, float)
    axes[0].scatter(fitted, residuals, s=10, alpha=0.6, color=_POINT, edgecolor="none")
    axes[0].axhline(0, color="0.5", lw=1)
    axes[0].set_xlabel("fitted value")
    axes[0].set_ylabel("residual")
    axes[0].set_title("residuals against fitted values", fontsize=9)
    for ax, values, what in ((axes[1], residuals, "residuals"),
                             (axes[2], np.asarray(intercepts, float), "subject intercepts")):
        (osm, osr), (slope, intercept, _) = sps.probplot(values[np.isfinite(values)], dist="norm")
        ax.scatter(osm, osr, s=10, alpha=0.7, color=_POINT, edgecolor="none")
        ax.plot(osm, intercept + slope * np.asarray(osm), color=_LINE, lw=1.2)
        ax.set_xlabel("normal quantile")
        ax.set_ylabel(what)
        ax.set_title(f"normal Q-Q: {what}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig
