"""Formatting of result tables: numbers, p-values, summaries, Markdown."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["QUANTILE_METHODS", "count_percent", "format_number", "format_p", "mean_sd", "median_iqr",
           "quartiles", "to_markdown"]

MISSING = "–"


def _isnan(x) -> bool:
    try:
        return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)) or x is pd.NA
    except TypeError:
        return False


def format_number(x, decimals: int = 2) -> str:
    """Fixed decimals; integers as integers; NaN/None as an en dash."""
    if _isnan(x):
        return MISSING
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{decimals}f}"
    return str(x)


def format_p(p, decimals: int = 3) -> str:
    """p-value as in clinical tables: ``<0.001`` below 10^-3, else fixed decimals."""
    if _isnan(p):
        return MISSING
    threshold = 10.0**-decimals
    return f"<{threshold:.{decimals}f}" if p < threshold else f"{float(p):.{decimals}f}"


def mean_sd(values, decimals: int = 1) -> str:
    """``"mean ± SD"`` (SD with ddof=1) of the non-missing values."""
    v = pd.Series(values, dtype=float).dropna()
    if v.empty:
        return MISSING
    sd = v.std(ddof=1) if len(v) > 1 else math.nan
    return f"{format_number(v.mean(), decimals)} ± {format_number(sd, decimals)}"


#: Quantile definitions :func:`median_iqr` offers: ``linear`` (R type 7, pandas and NumPy's
#: default) and ``weibull`` (``(n + 1) p``, SPSS's default "weighted average" definition).
QUANTILE_METHODS = ("linear", "weibull")


def quartiles(values, method: str = "linear") -> tuple[float, float, float]:
    """``(Q1, median, Q3)`` of the non-missing values (NaN when there are none)."""
    if method not in QUANTILE_METHODS:
        raise ValueError(f"quantile method {method!r}: use one of {QUANTILE_METHODS}")
    v = pd.Series(values, dtype=float).dropna().to_numpy()
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75], method=method)
    return float(q1), float(med), float(q3)


def median_iqr(values, decimals: int = 1, *, brackets: bool = False, method: str = "linear") -> str:
    """``"median (Q1–Q3)"`` of the non-missing values, or ``"median [Q1–Q3]"`` with ``brackets``.

    ``method`` picks the quantile definition (:data:`QUANTILE_METHODS`); the
    median is the same under both.
    """
    q1, med, q3 = quartiles(values, method)
    if math.isnan(med):
        return MISSING
    lo, hi = ("[", "]") if brackets else ("(", ")")
    return (f"{format_number(med, decimals)} {lo}{format_number(q1, decimals)}–"
            f"{format_number(q3, decimals)}{hi}")


def count_percent(count: int, total: int, decimals: int = 1) -> str:
    """``"n (x.x%)"``; en dash when ``total`` is 0."""
    if total == 0:
        return MISSING
    return f"{int(count)} ({100.0 * count / total:.{decimals}f}%)"


def _cell(value, column: str, decimals: int, p_columns: Sequence[str], p_decimals: int = 3) -> str:
    if column in p_columns and not isinstance(value, str):
        text = format_p(value, p_decimals)
    else:
        text = format_number(value, decimals)
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(
    df: pd.DataFrame,
    decimals: int = 3,
    p_columns: Sequence[str] = ("p",),
    index: bool = False,
    p_decimals: int = 3,
) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (no third-party formatter).

    Parameters
    ----------
    df : pandas.DataFrame
        The table; text cells are written as they are.
    decimals : int
        Decimals of float cells.
    p_columns : sequence of str
        Columns formatted as p-values (``<0.001``).
    index : bool
        Also write the index as the first column.
    p_decimals : int
        Decimals of the p-values (``<0.001`` below ``10**-p_decimals``).

    Returns
    -------
    str
        Header, alignment row (numbers right-aligned) and one line per row,
        ending with a newline. NaN shows as an en dash.
    """
    table = df.reset_index() if index else df
    columns = [str(c) for c in table.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
        for c in table.columns
    ]
    lines = [
        "| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |",
        "| " + " | ".join("---:" if num else "---" for num in numeric) + " |",
    ]
    for row in table.itertuples(index=False, name=None):
        cells = [_cell(v, c, decimals, p_columns, p_decimals) for v, c in zip(row, columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
