"""The evaluation summary: every agreement figure with its subject-bootstrap interval.

A *figure* is one number computed from one paired table
(:mod:`nxp2seg.evaluation.tables`, or the segmentation table): a function
``DataFrame -> float`` with its place in ``summary.json``. All figures of one
table are bootstrapped together by :func:`nxp2seg.stats.subject_bootstrap_many`
(the same subject resamples, seeded), so that model-vs-reader and
reader-vs-reader figures are paired draw by draw; the non-inferiority interval
is the interval of their paired difference. Each figure lands in the summary
as ``key`` and ``key_ci = [low, high]`` (95% percentile interval by subject).

The statistics are those of :mod:`nxp2seg.stats` (see ``docs/statistics.md``);
this module only says which columns each one compares:

* model vs mean: the model against the readers' mean (kappa: the model's
  integer grade against the integer grade of the readers' mean; ICC,
  correlation, Bland-Altman, MAE: the continuous grades);
* model vs rater ``r``: the model against one reader;
* rater vs rater: the readers against each other (with more than two, the
  mean over every pair).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sklearn

from nxp2seg.data.schema import FAT_SCALE, PATTERNS, GradeScale
from nxp2seg.evaluation.tables import FLAGS, PairedTables, rater_col
from nxp2seg.stats import (
    BootstrapResult,
    bland_altman,
    cohen_kappa,
    confusion,
    icc,
    macro_f1,
    mae,
    noninferiority,
    pearson,
    roc_auc,
    sensitivity_specificity,
    spearman,
    subject_bootstrap_many,
)

__all__ = [
    "CONTRACT_KEYS",
    "Figure",
    "confusions",
    "contract_keys",
    "get_path",
    "grading_figures",
    "noninferiority_block",
    "per_region_table",
    "run_figures",
    "segmentation_figures",
    "set_path",
]

log = logging.getLogger("nxp2seg.evaluate")

Key = tuple[str, ...]
Stat = Callable[[pd.DataFrame], float]

#: DESIGN.md's "Evaluation output (contract)"; ``{region}`` and ``{rater}`` expand.
CONTRACT_KEYS = (
    "segmentation.dice_mean", "segmentation.dice.{region}", "segmentation.hd95_mm.{region}",
    "segmentation.lr_swaps",
    "edema.kappa_quadratic.model_vs_mean", "edema.kappa_quadratic.rater_vs_rater",
    "edema.kappa_quadratic.model_vs_rater.{rater}",
    "edema.kappa_linear.model_vs_mean", "edema.kappa_linear.rater_vs_rater",
    "edema.kappa_linear.model_vs_rater.{rater}",
    "edema.icc.model_vs_mean", "edema.spearman.model_vs_mean", "edema.pearson.model_vs_mean",
    "edema.bland_altman.bias", "edema.bland_altman.loa_low", "edema.bland_altman.loa_high",
    "edema.noninferiority.difference", "edema.noninferiority.ci_low",
    "edema.noninferiority.ci_high", "edema.noninferiority.margin", "edema.noninferiority.passed",
    "station_score.icc", "total_score.icc", "fat.kappa_quadratic.model_vs_mean",
    "pattern.kappa", "pattern.macro_f1", "pattern.confusion",
    "fascial_edema.auc", "subcutaneous_edema.auc", "n_cases", "n_subjects",
)


def contract_keys(regions: Iterable[str], raters: Iterable[str]) -> list[Key]:
    """The contract's keys, expanded for the cohort's regions and raters."""
    out: list[Key] = []
    for key in CONTRACT_KEYS:
        if "{region}" in key:
            out += [tuple(key.replace("{region}", r).split(".")) for r in regions]
        elif "{rater}" in key:
            base = tuple(key.split("."))[:-1]
            out += [(*base, r) for r in raters]
        else:
            out.append(tuple(key.split(".")))
    return out


@dataclass(frozen=True)
class Figure:
    """One bootstrapped number: where it goes, which table it reads, how it is computed."""

    key: Key
    table: str
    fn: Stat


# -- nested dicts ---------------------------------------------------------------------------

def set_path(d: dict, key: Sequence[str], value) -> None:
    for part in key[:-1]:
        d = d.setdefault(part, {})
    d[key[-1]] = value


def get_path(d: dict, key: Sequence[str]):
    for part in key:
        d = d[part]
    return d


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


# -- statistics on columns ------------------------------------------------------------------

def _finite_mean(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _kappa(a: str, b: str, weights: str | None, labels) -> Stat:
    return lambda d: cohen_kappa(d[a], d[b], weights, labels=labels)


def _icc(a: str, b: str) -> Stat:
    return lambda d: icc(np.column_stack([d[a].to_numpy(dtype=float), d[b].to_numpy(dtype=float)]),
                         ci=None)["icc"]


def _corr(fn, a: str, b: str) -> Stat:
    return lambda d: fn(d[a], d[b])["r"]


def _ba(a: str, b: str, part: str) -> Stat:
    return lambda d: bland_altman(d[a], d[b])[part]


def _mae(a: str, b: str) -> Stat:
    return lambda d: mae(d[a], d[b])


def _binary(x: pd.Series, threshold: float, strict: bool) -> np.ndarray:
    v = x.to_numpy(dtype=float)
    hit = v > threshold if strict else v >= threshold
    return np.where(np.isnan(v), np.nan, hit.astype(float))


def _sens_spec(truth: str, pred: str, part: str, threshold: float, strict: bool) -> Stat:
    return lambda d: sensitivity_specificity(_binary(d[truth], 0.0, True),
                                             _binary(d[pred], threshold, strict))[part]


def _auc(truth: str, score: str) -> Stat:
    return lambda d: roc_auc(d[truth], d[score])


def _accuracy(a: str, b: str) -> Stat:
    def fn(d: pd.DataFrame) -> float:
        keep = d[a].notna() & d[b].notna()
        return float((d.loc[keep, a] == d.loc[keep, b]).mean()) if keep.any() else math.nan
    return fn


def _pairs(make: Callable[[str, str], Stat], raters: Sequence[str], measure: str) -> Stat:
    fns = [make(rater_col(measure, a), rater_col(measure, b)) for a, b in itertools.combinations(raters, 2)]
    return lambda d: _finite_mean(f(d) for f in fns)


# -- which figures ---------------------------------------------------------------------------

class _Figures(list):
    def add(self, key: str | Key, table: str, fn: Stat) -> None:
        self.append(Figure(tuple(key.split(".")) if isinstance(key, str) else key, table, fn))


def _three_way(figs: _Figures, base: str, table: str, make: Callable[[str, str], Stat],
               model: str, mean: str, measure: str, raters: Sequence[str]) -> None:
    """``base.model_vs_mean``, ``base.rater_vs_rater`` and ``base.model_vs_rater.{r}``."""
    figs.add(f"{base}.model_vs_mean", table, make(model, mean))
    if len(raters) > 1:
        figs.add(f"{base}.rater_vs_rater", table, _pairs(make, raters, measure))
    for r in raters:
        figs.add((*base.split("."), "model_vs_rater", r), table, make(model, rater_col(measure, r)))
    if raters:
        each = [make(model, rater_col(measure, r)) for r in raters]
        figs.add(f"{base}.model_vs_each_rater", table, lambda d: _finite_mean(f(d) for f in each))


def _edema(figs: _Figures, raters: Sequence[str], scale: GradeScale) -> None:
    labels = scale.grades()
    m_int, mean_int, m, mean = ("edema_grade_int_model", "edema_grade_int_mean",
                                "edema_grade_model", "edema_grade_mean")
    for name, w in (("kappa_quadratic", "quadratic"), ("kappa_linear", "linear"), ("kappa_unweighted", None)):
        _three_way(figs, f"edema.{name}", "regions",
                   lambda a, b, w=w: _kappa(a, b, w, labels), m_int, mean_int, "edema_grade", raters)
    _three_way(figs, "edema.icc", "regions", _icc, m, mean, "edema_grade", raters)
    _three_way(figs, "edema.mae", "regions", _mae, m, mean, "edema_grade", raters)
    for name, fn in (("spearman", spearman), ("pearson", pearson)):
        figs.add(f"edema.{name}.model_vs_mean", "regions", _corr(fn, m, mean))
        if len(raters) > 1:
            figs.add(f"edema.{name}.rater_vs_rater", "regions",
                     _pairs(lambda a, b, fn=fn: _corr(fn, a, b), raters, "edema_grade"))
    for part in ("bias", "loa_low", "loa_high"):
        figs.add(f"edema.bland_altman.{part}", "regions", _ba(m, mean, part))
        if len(raters) == 2:
            a, b = (rater_col("edema_grade", r) for r in raters)
            figs.add(f"edema.bland_altman_rater_vs_rater.{part}", "regions", _ba(a, b, part))
    for part in ("sensitivity", "specificity"):
        figs.add(f"edema.presence.{part}", "regions", _sens_spec(mean_int, m_int, part, 0.0, True))


def _fat(figs: _Figures, raters: Sequence[str]) -> None:
    labels = FAT_SCALE.grades()
    for name, w in (("kappa_quadratic", "quadratic"), ("kappa_linear", "linear")):
        _three_way(figs, f"fat.{name}", "regions", lambda a, b, w=w: _kappa(a, b, w, labels),
                   "fat_grade_model", "fat_grade_int_mean", "fat_grade", raters)
    figs.add("fat.icc.model_vs_mean", "regions", _icc("fat_grade_continuous_model", "fat_grade_mean"))
    if len(raters) > 1:
        figs.add("fat.icc.rater_vs_rater", "regions", _pairs(_icc, raters, "fat_grade"))


def _flags(figs: _Figures, raters: Sequence[str]) -> None:
    for flag in FLAGS:
        truth, prob = f"{flag}_mean", f"{flag}_prob_model"
        figs.add(f"{flag}.auc", "regions", _auc(truth, prob))
        for part in ("sensitivity", "specificity"):  # of the flag predict reported
            figs.add(f"{flag}.{part}", "regions", _sens_spec(truth, f"{flag}_model", part, 0.5, False))
        if len(raters) > 1:
            figs.add(f"{flag}.kappa_rater_vs_rater", "regions",
                     _pairs(lambda a, b: _kappa(a, b, None, [0.0, 1.0]), raters, flag))


def _pattern(figs: _Figures, raters: Sequence[str]) -> None:
    labels = list(PATTERNS)
    figs.add("pattern.kappa", "cases", _kappa("pattern_mean", "pattern_model", None, labels))
    figs.add("pattern.macro_f1", "cases", lambda d: macro_f1(d["pattern_mean"], d["pattern_model"], labels))
    figs.add("pattern.accuracy", "cases", _accuracy("pattern_mean", "pattern_model"))
    for r in raters:
        figs.add(("pattern", "kappa_model_vs_rater", r), "cases",
                 _kappa(rater_col("pattern", r), "pattern_model", None, labels))
    if len(raters) > 1:
        figs.add("pattern.kappa_rater_vs_rater", "cases",
                 _pairs(lambda a, b: _kappa(a, b, None, labels), raters, "pattern"))
        figs.add("pattern.macro_f1_rater_vs_rater", "cases",
                 _pairs(lambda a, b: lambda d: macro_f1(d[a], d[b], labels), raters, "pattern"))


def _scores(figs: _Figures, raters: Sequence[str]) -> None:
    for score, table in (("station_score", "cases"), ("total_score", "subjects")):
        m, mean = f"{score}_model", f"{score}_mean"
        figs.add(f"{score}.icc", table, _icc(m, mean))
        figs.add(f"{score}.mae", table, _mae(m, mean))
        for part in ("bias", "loa_low", "loa_high"):
            figs.add(f"{score}.bland_altman.{part}", table, _ba(m, mean, part))
        for r in raters:
            figs.add((score, "icc_model_vs_rater", r), table, _icc(m, f"{score}_rater_{r}"))
        if len(raters) > 1:
            pair = [_icc(f"{score}_rater_{a}", f"{score}_rater_{b}") for a, b in itertools.combinations(raters, 2)]
            figs.add(f"{score}.icc_rater_vs_rater", table, lambda d, p=pair: _finite_mean(f(d) for f in p))


def grading_figures(raters: Sequence[str], scale: GradeScale) -> list[Figure]:
    """Every grading figure (edema, fat, flags, pattern, scores) for these raters."""
    figs = _Figures()
    _edema(figs, raters, scale)
    _fat(figs, raters)
    _flags(figs, raters)
    _pattern(figs, raters)
    _scores(figs, raters)
    return list(figs)


class _LastDraw:
    """Memo of ``fn`` on the last table seen: many figures read one summary of each resample.

    Holds a reference to that table, so its identity cannot be reused while cached.
    """

    def __init__(self, fn: Callable[[pd.DataFrame], dict]):
        self.fn, self.table, self.value = fn, None, None

    def __call__(self, d: pd.DataFrame) -> dict:
        if d is not self.table:
            self.table, self.value = d, self.fn(d)
        return self.value


def _region_means(d: pd.DataFrame) -> dict:
    """``{(column, region): mean}`` and ``{(column, None): mean over graded regions}``, finite values only."""
    out = {}
    for column in ("dice", "hd95_mm"):
        v = d[column].astype(float).where(np.isfinite(d[column].astype(float)))
        out.update({(column, r): float(m) for r, m in v.groupby(d["region"]).mean().items()})
        out[(column, None)] = float(v[d["graded"].astype(bool)].mean())
    return out


def segmentation_figures(regions: Sequence[str], structures: Sequence[str] = ()) -> list[Figure]:
    """Mean Dice overall and per region, mean HD95 per region, on the segmentation table."""
    figs = _Figures()
    means = _LastDraw(_region_means)

    def mean_of(column: str, region: str | None = None) -> Stat:
        return lambda d: means(d).get((column, region), math.nan)

    figs.add("segmentation.dice_mean", "segmentation", mean_of("dice"))
    figs.add("segmentation.hd95_mm_mean", "segmentation", mean_of("hd95_mm"))
    for r in regions:
        figs.add(("segmentation", "dice", r), "segmentation", mean_of("dice", r))
        figs.add(("segmentation", "hd95_mm", r), "segmentation", mean_of("hd95_mm", r))
    for s in structures:
        figs.add(("segmentation", "dice_structures", s), "segmentation", mean_of("dice", s))
    return list(figs)


def run_figures(figures: Sequence[Figure], tables: dict[str, pd.DataFrame], *, n_boot: int,
                seed: int, ci: float = 0.95) -> dict[Key, BootstrapResult]:
    """Bootstrap every figure by subject; one :func:`subject_bootstrap_many` call per table.

    Tables that are missing or empty give no results (their figures stay null).
    """
    out: dict[Key, BootstrapResult] = {}
    for name in dict.fromkeys(f.table for f in figures):
        df = tables.get(name)
        if df is None or df.empty:
            continue
        stats = {".".join(f.key): f.fn for f in figures if f.table == name}
        log.info("bootstrap: %d figures on the %s table (%d rows, %d subjects), %d draws by subject",
                 len(stats), name, len(df), df["subject_id"].nunique(), n_boot)
        with sklearn.config_context(skip_parameter_validation=True):  # AUC: checked inputs, many calls
            res = subject_bootstrap_many(df, stats, "subject_id", n_boot=n_boot, seed=seed, ci=ci)
        by_name = {".".join(f.key): f.key for f in figures if f.table == name}
        out.update({by_name[k]: v for k, v in res.items()})
    return out


def noninferiority_block(model: BootstrapResult | None, readers: BootstrapResult | None,
                         margin: float) -> dict:
    """``difference, ci_low, ci_high, margin, passed`` (null without two raters or grades)."""
    empty = {"difference": None, "ci_low": None, "ci_high": None, "margin": float(margin),
             "passed": None}
    if model is None or readers is None or math.isnan(model.estimate) or math.isnan(readers.estimate):
        return empty
    res = noninferiority(model, readers, margin)
    if res["n_valid"] == 0:
        return empty
    return {"difference": _num(res["difference"]), "ci_low": _num(res["ci_low"]),
            "ci_high": _num(res["ci_high"]), "margin": float(margin), "passed": bool(res["passed"]),
            "model_vs_reader": _num(res["model_vs_reader"]),
            "reader_vs_reader": _num(res["reader_vs_reader"]), "n_valid": int(res["n_valid"])}


def confusions(t: PairedTables, scale: GradeScale) -> dict[str, pd.DataFrame]:
    """Confusion matrices (readers' mean in rows, model in columns) of edema, fat and pattern."""
    r, c = t.regions, t.cases
    out = {"edema": confusion(r["edema_grade_int_mean"], r["edema_grade_int_model"], scale.grades()),
           "fat": confusion(r["fat_grade_int_mean"], r["fat_grade_model"], FAT_SCALE.grades()),
           "pattern": confusion(c["pattern_mean"], c["pattern_model"], list(PATTERNS))}
    if len(t.raters) > 1:
        a, b = t.raters[:2]
        out["edema_rater_vs_rater"] = confusion(r[rater_col("edema_grade", a)],
                                                r[rater_col("edema_grade", b)], scale.grades())
        out["pattern_rater_vs_rater"] = confusion(c[rater_col("pattern", a)],
                                                  c[rater_col("pattern", b)], list(PATTERNS))
    return out


def per_region_table(t: PairedTables, seg: pd.DataFrame, scale: GradeScale,
                     regions: Sequence[str], pooled: Mapping[str, Sequence[str]] | None = None,
                     ) -> pd.DataFrame:
    """Point estimates per region (no interval): grades' agreement and segmentation quality.

    ``pooled`` adds a row per entry, over the rows of all its regions together (e.g. a muscle's
    right and left regions: ``{"thigh_semimembranosus": [..._right, ..._left]}``).
    """
    labels = scale.grades()
    rows = []
    groups = [(n, [n]) for n in regions] + [(n, list(m)) for n, m in (pooled or {}).items()]
    for name, members in groups:
        d = t.regions[t.regions["region"].isin(members)]
        row: dict = {"region": name, "n": int((d["edema_grade_model"].notna()
                                              & d.get("edema_grade_mean", pd.Series(dtype=float)).notna()).sum())
                     if "edema_grade_mean" in d else 0}
        if "edema_grade_mean" in d:
            row["kappa_quadratic_model_vs_mean"] = cohen_kappa(
                d["edema_grade_int_model"], d["edema_grade_int_mean"], "quadratic", labels)
            if len(t.raters) > 1:
                row["kappa_quadratic_rater_vs_rater"] = _pairs(
                    lambda a, b: _kappa(a, b, "quadratic", labels), t.raters, "edema_grade")(d)
            row["icc_model_vs_mean"] = _icc("edema_grade_model", "edema_grade_mean")(d)
            row["mae_model_vs_mean"] = mae(d["edema_grade_model"], d["edema_grade_mean"])
            row["bias_model_vs_mean"] = bland_altman(d["edema_grade_model"], d["edema_grade_mean"])["bias"]
            row["mean_grade_model"] = d["edema_grade_model"].mean()
            row["mean_grade_readers"] = d["edema_grade_mean"].mean()
        if not seg.empty:
            s = seg[seg["region"].isin(members)]
            row["dice_mean"] = _finite_mean(s["dice"])
            row["hd95_mm_mean"] = _finite_mean(s["hd95_mm"])
            row["lr_swaps"] = int(s["lr_swap"].astype(bool).sum())
            row["n_segmented"] = int(s["dice"].notna().sum())
        rows.append(row)
    return pd.DataFrame(rows)
