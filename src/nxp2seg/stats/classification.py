"""Agreement on categories and flags: confusion, macro-F1, sensitivity/specificity, AUC."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nxp2seg.stats._common import (
    label_codes,
    paired_labels,
    paired_numeric,
    py_scalar,
    resolve_labels,
)

__all__ = ["confusion", "macro_f1", "roc_auc", "sensitivity_specificity"]


def _confusion_array(a, b, labels) -> tuple[np.ndarray, np.ndarray]:
    a, b = paired_labels(a, b)
    labels = resolve_labels(labels, a, b)
    k = len(labels)
    ca = label_codes(a, labels, "first input")
    cb = label_codes(b, labels, "second input")
    table = np.bincount(ca * k + cb, minlength=k * k).reshape(k, k) if k else np.zeros((0, 0), int)
    return table, labels


def confusion(a, b, labels=None, *, as_dict: bool = False) -> pd.DataFrame | dict:
    """Confusion matrix: rows are the values of ``a``, columns those of ``b``.

    Parameters
    ----------
    a, b : array_like
        Paired labels (e.g. a reader's pattern and the model's). Pairs with a
        missing value are dropped.
    labels : sequence, optional
        Category set and order (default: the observed values, sorted).
    as_dict : bool
        Return ``{a_label: {b_label: count}}`` (Python scalars, JSON-ready)
        instead of a DataFrame.

    Returns
    -------
    pandas.DataFrame or dict
        Integer counts; index named ``"a"``, columns named ``"b"``.

    Notes
    -----
    Put the reference (reader, rater mean) in ``a`` and the model in ``b``:
    a row then shows how the model called the cases of one true category.
    """
    table, labels = _confusion_array(a, b, labels)
    names = [py_scalar(x) for x in labels]
    if as_dict:
        return {r: {c: int(table[i, j]) for j, c in enumerate(names)} for i, r in enumerate(names)}
    return pd.DataFrame(table, index=pd.Index(names, name="a"), columns=pd.Index(names, name="b"))


def macro_f1(a, b, labels=None) -> float:
    """Macro-averaged F1 over the categories present in ``a`` or ``b``.

    Parameters
    ----------
    a, b : array_like
        Reference and predicted labels (missing pairs dropped).
    labels : sequence, optional
        Category set; values outside it raise ``ValueError``.

    Returns
    -------
    float
        Mean of the per-category F1 = 2 TP / (2 TP + FP + FN); NaN for empty input.

    Notes
    -----
    Use for the edema pattern (none / patchy / mixed / diffuse) next to its
    kappa: kappa corrects for chance, macro-F1 weighs every category equally
    however rare, so a model that never says "diffuse" is penalised. A
    category absent from both inputs has no defined F1 and is left out of the
    average (scikit-learn's ``zero_division=np.nan``), rather than counted as
    0 as a small cohort without diffuse cases would otherwise force. F1 is
    symmetric in ``a`` and ``b``. Read it as the typical per-category
    overlap of the two labelings, 0 to 1.
    """
    table, _ = _confusion_array(a, b, labels)
    if table.sum() == 0:
        return math.nan
    tp = np.diag(table).astype(float)
    denom = table.sum(axis=0) + table.sum(axis=1)  # = 2 TP + FP + FN
    present = denom > 0
    return float(np.mean(2 * tp[present] / denom[present]))


def _binary(x, what: str) -> np.ndarray:
    values = np.asarray(x, dtype=float)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise ValueError(
            f"{what} must be 0/1 or boolean, got {sorted(set(values[bad].tolist()))[:10]}"
        )
    return values.astype(bool)


def sensitivity_specificity(truth_binary, pred_binary) -> dict:
    """Sensitivity and specificity of a binary call against a binary reference.

    Parameters
    ----------
    truth_binary, pred_binary : array_like of bool or 0/1
        Reference (e.g. readers' mean grade > 0: edema present) and the
        model's call. Pairs with a missing value are dropped.

    Returns
    -------
    dict
        ``sensitivity`` = TP / (TP + FN), ``specificity`` = TN / (TN + FP)
        (NaN when the reference has no positive, resp. negative, case), and
        ``tp``, ``fn``, ``tn``, ``fp``, ``n``.

    Notes
    -----
    Sensitivity: the share of regions with edema that the model calls
    edematous; specificity: the share of edema-free regions it calls free.
    Report both with the prevalence (``(tp + fn) / n``); for a threshold-free
    summary of a probability use :func:`roc_auc`.
    """
    t, p = paired_numeric(truth_binary, pred_binary)
    t, p = _binary(t, "truth_binary"), _binary(p, "pred_binary")
    tp, fn = int(np.sum(t & p)), int(np.sum(t & ~p))
    tn, fp = int(np.sum(~t & ~p)), int(np.sum(~t & p))
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
        "n": tp + fn + tn + fp,
    }


def roc_auc(truth_binary, score) -> float:
    """Area under the ROC curve of a score against a binary reference.

    Parameters
    ----------
    truth_binary : array_like of bool or 0/1
        Reference flag (e.g. readers' fascial edema).
    score : array_like of float
        Model probability or any score where higher means "positive".

    Returns
    -------
    float
        AUC (``sklearn.metrics.roc_auc_score``); NaN, without a warning, when
        the reference holds only one class (the AUC is undefined).

    Notes
    -----
    The probability that a random positive case scores higher than a random
    negative one (ties count half): 0.5 is chance, 1 perfect ranking. It
    ignores calibration and the decision threshold. Use it for the fascial and
    subcutaneous edema flags; with few positives, its bootstrap interval is
    wide and many resamples may be undefined (check ``n_valid``).
    """
    from sklearn.metrics import roc_auc_score

    t, s = paired_numeric(truth_binary, score)
    t = _binary(t, "truth_binary")
    if t.all() or not t.any():
        return math.nan
    return float(roc_auc_score(t, s))
