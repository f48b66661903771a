"""Assemble ``summary.json`` and its flat twin ``agreement.csv`` from the bootstrapped figures.

Every key of DESIGN.md's evaluation contract is present, always: a figure that
cannot be computed (no grading head, a single reader, no label maps) is
``null`` with ``[null, null]`` as its interval, and ``notes`` says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from nxp2seg.data.schema import PATTERNS
from nxp2seg.evaluation.agreement import (
    Figure,
    Key,
    confusions,
    contract_keys,
    get_path,
    noninferiority_block,
    set_path,
)
from nxp2seg.evaluation.inputs import EvaluationSet
from nxp2seg.evaluation.tables import PairedTables
from nxp2seg.stats import BootstrapResult, confusion

__all__ = ["build_summary", "flat_figures"]

#: Contract keys that are counts or tables, not estimates: no ``_ci`` sibling.
_NO_INTERVAL = ("confusion", "lr_swaps")


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def _place(summary: dict, key: Key, res: BootstrapResult | None) -> None:
    set_path(summary, key, _num(res.estimate) if res is not None else None)
    set_path(summary, (*key[:-1], f"{key[-1]}_ci"),
             [_num(res.low), _num(res.high)] if res is not None else [None, None])


def _segmentation_extras(summary: dict, seg: pd.DataFrame) -> None:
    graded = seg[seg["graded"]] if not seg.empty else seg
    swapped = graded[graded["lr_swap"].astype(bool)] if not graded.empty else graded
    s = summary.setdefault("segmentation", {})
    s["lr_swaps"] = len(swapped)
    s["lr_swap_cases"] = sorted(swapped["case_id"].unique().tolist()) if len(swapped) else []
    s["n_cases"] = int(seg["case_id"].nunique()) if not seg.empty else 0
    s["n_subjects"] = int(seg["subject_id"].nunique()) if not seg.empty else 0


def _counts(summary: dict, t: PairedTables) -> None:
    r, c, s = t.regions, t.cases, t.subjects

    def pairs(df: pd.DataFrame, a: str, b: str) -> int:
        return int((df[a].notna() & df[b].notna()).sum()) if a in df and b in df else 0

    set_path(summary, ("edema", "n_regions"), pairs(r, "edema_grade_model", "edema_grade_mean"))
    set_path(summary, ("fat", "n_regions"), pairs(r, "fat_grade_model", "fat_grade_int_mean"))
    set_path(summary, ("pattern", "n_cases"), pairs(c, "pattern_model", "pattern_mean"))
    set_path(summary, ("station_score", "n_cases"), pairs(c, "station_score_model", "station_score_mean"))
    set_path(summary, ("total_score", "n_subjects"), pairs(s, "total_score_model", "total_score_mean"))
    for flag in ("fascial_edema", "subcutaneous_edema"):
        col = f"{flag}_mean"
        v = r[col].dropna() if col in r else pd.Series(dtype=float)
        set_path(summary, (flag, "prevalence"), _num(v.mean()) if len(v) else None)
        set_path(summary, (flag, "n_regions"), pairs(r, col, f"{flag}_prob_model"))
    if "edema_grade_int_mean" in r:
        v = r["edema_grade_int_mean"].dropna()
        set_path(summary, ("edema", "presence", "prevalence"), _num((v > 0).mean()) if len(v) else None)


def _confusion_dicts(summary: dict, t: PairedTables, es: EvaluationSet, graded: bool) -> dict[str, pd.DataFrame]:
    empty = {str(p): {str(q): 0 for q in PATTERNS} for p in PATTERNS}
    if not graded or "pattern_mean" not in t.cases:
        set_path(summary, ("pattern", "confusion"), None if not graded else empty)
        return {}
    mats = confusions(t, es.scale)
    set_path(summary, ("pattern", "confusion"),
             confusion(t.cases["pattern_mean"], t.cases["pattern_model"], list(PATTERNS), as_dict=True))
    if "pattern_rater_vs_rater" in mats:
        a, b = t.raters[:2]
        set_path(summary, ("pattern", "confusion_rater_vs_rater"),
                 {"rows": a, "columns": b, "counts": _as_dict(mats["pattern_rater_vs_rater"])})
    return mats


def _as_dict(df: pd.DataFrame) -> dict:
    return {str(i): {str(j): int(df.loc[i, j]) for j in df.columns} for i in df.index}


def build_summary(es: EvaluationSet, tables: PairedTables, seg: pd.DataFrame,
                  figures: Sequence[Figure], results: dict[Key, BootstrapResult], *,
                  margin: float, settings: dict[str, Any], notes: Sequence[str]) -> tuple[dict, dict]:
    """``(summary, confusion matrices)``; see ``docs/evaluation.md`` for every key."""
    summary: dict[str, Any] = {"n_cases": len(es.cases), "n_subjects": es.n_subjects,
                               "n_failed": len(es.failed),
                               "failed_cases": es.failed.fillna("").to_dict("records"),
                               "raters": list(tables.raters), "grade_scale": es.scale.name}
    for f in figures:
        _place(summary, f.key, results.get(f.key))
    _segmentation_extras(summary, seg)
    graded = es.has_grading and not tables.regions.get("edema_grade_mean", pd.Series(dtype=float)).isna().all()
    _counts(summary, tables)
    q = ("edema", "kappa_quadratic")
    summary["edema"]["noninferiority"] = noninferiority_block(
        results.get((*q, "model_vs_mean")), results.get((*q, "rater_vs_rater")), margin)
    summary["edema"]["noninferiority_each_rater"] = noninferiority_block(
        results.get((*q, "model_vs_each_rater")), results.get((*q, "rater_vs_rater")), margin)
    mats = _confusion_dicts(summary, tables, es, graded)
    for key in contract_keys(es.schema.region_names(), tables.raters):
        try:
            get_path(summary, key)
        except (KeyError, TypeError):
            set_path(summary, key, None)
            if len(key) > 1 and key[1] != "noninferiority" and key[-1] not in _NO_INTERVAL:
                set_path(summary, (*key[:-1], f"{key[-1]}_ci"), [None, None])
    n_valid = {".".join(k): int(v.n_valid) for k, v in results.items() if v.n_valid < v.n_boot}
    summary["bootstrap"] = {"unit": "subject", "n_boot": settings["bootstrap"], "seed": settings["seed"],
                            "ci_level": settings["ci"], "interval": "percentile",
                            "figures_undefined_on_some_draws": n_valid}
    summary["settings"] = dict(settings)
    summary["model"] = dict(es.predictions.model)
    summary["notes"] = list(notes)
    return summary, mats


def flat_figures(figures: Sequence[Figure], results: dict[Key, BootstrapResult],
                 summary: dict) -> pd.DataFrame:
    """One row per figure: ``key, estimate, ci_low, ci_high, n_valid, n_boot`` (``agreement.csv``)."""
    rows = []
    for f in figures:
        res = results.get(f.key)
        rows.append({"key": ".".join(f.key),
                     "estimate": res.estimate if res is not None else np.nan,
                     "ci_low": res.low if res is not None else np.nan,
                     "ci_high": res.high if res is not None else np.nan,
                     "n_valid": res.n_valid if res is not None else 0,
                     "n_boot": res.n_boot if res is not None else 0})
    for name in ("noninferiority", "noninferiority_each_rater"):
        block = summary.get("edema", {}).get(name, {})
        rows.append({"key": f"edema.{name}.difference", "estimate": block.get("difference"),
                     "ci_low": block.get("ci_low"), "ci_high": block.get("ci_high"),
                     "n_valid": block.get("n_valid", 0), "n_boot": summary["bootstrap"]["n_boot"]})
    return pd.DataFrame(rows, columns=["key", "estimate", "ci_low", "ci_high", "n_valid", "n_boot"])
