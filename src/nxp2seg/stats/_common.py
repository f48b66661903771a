"""Input cleaning shared by the statistics: paired arrays, label sets."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["label_codes", "paired_labels", "paired_numeric", "py_scalar", "resolve_labels"]


def _flat(x) -> np.ndarray:
    if isinstance(x, (pd.Series, pd.Index)):
        return x.to_numpy()
    arr = np.asarray(x)
    if arr.dtype.kind in "US":  # keep None / NaN among strings as missing, not as 'nan'
        arr = np.asarray(x, dtype=object)
    return arr.ravel() if arr.ndim != 1 else arr


def _check_lengths(a: np.ndarray, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise ValueError(f"the two inputs must be paired (same length), got {len(a)} and {len(b)}")


def paired_numeric(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Two float arrays, keeping the pairs where both values are finite."""
    a = np.asarray(_flat(a), dtype=float)
    b = np.asarray(_flat(b), dtype=float)
    _check_lengths(a, b)
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def paired_labels(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Two label arrays (any hashable values), keeping pairs where neither is missing."""
    a, b = _flat(a), _flat(b)
    _check_lengths(a, b)
    keep = ~(pd.isna(a) | pd.isna(b))
    return a[keep], b[keep]


def resolve_labels(labels, *observed: np.ndarray, integer_range: bool = False) -> np.ndarray:
    """The ordered category set: ``labels`` if given, else the observed values.

    With ``integer_range`` and integral numeric observations, the default is
    every integer from the smallest to the largest observed value (so an
    ordinal grade nobody used still sits between its neighbours).
    """
    if labels is not None:
        out = np.asarray(list(labels))
        if len(pd.unique(out)) != len(out):
            raise ValueError(f"labels must be distinct, got {out.tolist()}")
        return out
    values = (
        pd.unique(np.concatenate([np.asarray(o, dtype=object) for o in observed]))
        if observed
        else []
    )
    values = [v for v in values if not pd.isna(v)]
    if not values:
        return np.asarray([])
    try:
        numeric = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return np.asarray(sorted(values, key=str))
    if integer_range and np.all(numeric == np.round(numeric)):
        return np.arange(int(numeric.min()), int(numeric.max()) + 1)
    return np.unique(numeric)


def label_codes(values: np.ndarray, labels: np.ndarray, what: str = "values") -> np.ndarray:
    """Index of each value in ``labels``; ``ValueError`` naming values outside the set."""
    values, labels = np.asarray(values), np.asarray(labels)
    if values.dtype.kind in "biuf" and labels.dtype.kind in "biuf" and len(labels):
        sorter = np.argsort(labels, kind="stable")
        pos = np.clip(np.searchsorted(labels, values, sorter=sorter), 0, len(labels) - 1)
        codes = np.where(labels[sorter][pos] == values, sorter[pos], -1)
    else:
        lookup = {py_scalar(v): i for i, v in enumerate(labels)}
        codes = np.fromiter(
            (lookup.get(py_scalar(v), -1) for v in values), dtype=np.int64, count=len(values)
        )
    if (codes < 0).any():
        bad = sorted({py_scalar(v) for v in np.asarray(values, dtype=object)[codes < 0]}, key=str)
        raise ValueError(
            f"{what}: {bad} are not in the label set {[py_scalar(x) for x in labels]}; "
            "pass labels= with the full category set of the scale"
        )
    return codes


def py_scalar(v):
    """numpy scalar -> Python scalar (hashable, JSON-friendly); integral floats -> int."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v
