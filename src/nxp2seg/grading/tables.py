"""The domain rules on long tables: readers' truth, and scores for cases and subjects.

The same functions serve the model's grades (``predict``) and the readers'
(``evaluate``, training targets), so both are scored by one rule:

* :func:`rater_mean_targets`: ``grades.csv`` -> the readers' truth per
  ``(case_id, region)``: rater means and their integer grades;
* :func:`pattern_targets`: ``patterns.csv`` -> per case the soft pattern
  label (fraction of raters per pattern) and the majority;
* :func:`case_targets`: the readers' truth of each case as per-region slot
  vectors (the training targets of the grading head);
* :func:`scores_table`: regional edema grades (long) -> per case the station
  score, asymmetry and rule pattern, and per subject the thigh, calf and total
  scores (DESIGN.md's ``subjects.csv``);
* muscle-graded schemas are scored on their compartments, rolled up by
  :func:`nxp2seg.grading.rollup.rollup_regions`.

Tables are long, one row per case and region, as in DESIGN.md's dataset
contract; blank cells (NaN) mean *not graded*.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from nxp2seg.data.schema import COMPARTMENTS, FAT_SCALE, PATTERNS, STATIONS, GradeScale, LabelSchema
from nxp2seg.grading.rollup import rollup_regions
from nxp2seg.grading.rules import (
    as_scale,
    asymmetry,
    integer_grade,
    pattern_rule,
    station_score,
    total_score,
)

__all__ = [
    "case_targets",
    "scores_table",
    "subject_scores",
    "rater_mean_targets",
    "pattern_targets",
    "CASE_SCORE_COLUMNS",
    "SUBJECT_SCORE_COLUMNS",
    "TARGET_COLUMNS",
    "PATTERN_TARGET_COLUMNS",
]

# anterior, medial, lateral, posterior: each compartment at its place in its station
_ALL_COMPARTMENTS = sorted(dict.fromkeys(c for st in STATIONS for c in COMPARTMENTS[st]),
                           key=lambda c: min(COMPARTMENTS[st].index(c) for st in STATIONS
                                             if c in COMPARTMENTS[st]))
#: Columns of :func:`scores_table`'s case table (``subject_id`` only when known).
CASE_SCORE_COLUMNS = ["case_id", "subject_id", "station", "pattern_rule", "station_score",
                      "asymmetry"] + [f"asymmetry_{c}" for c in _ALL_COMPARTMENTS]
#: Columns of :func:`scores_table`'s subject table (DESIGN.md, ``subjects.csv``).
SUBJECT_SCORE_COLUMNS = ["subject_id", "thigh_score", "calf_score", "total_score"]
#: Columns of :func:`rater_mean_targets`.
TARGET_COLUMNS = ["case_id", "region", "edema_grade", "edema_grade_int", "fat_grade",
                  "fat_grade_int", "fascial_edema", "subcutaneous_edema", "n_raters"]
#: Columns of :func:`pattern_targets` (``pattern_rule`` only with ``mean_grades``).
PATTERN_TARGET_COLUMNS = ["case_id", "p_none", "p_patchy", "p_mixed", "p_diffuse", "pattern",
                          "n_raters", "tied", "pattern_rule"]
_FLAGS = ("fascial_edema", "subcutaneous_edema")


def _require(df: pd.DataFrame, columns: Sequence[str], who: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{who}: the table has no column(s) {missing}; it has {list(df.columns)}")


def _examples(df: pd.DataFrame, bad: np.ndarray, columns: Sequence[str], n: int = 5) -> str:
    rows = df.loc[bad, [c for c in columns if c in df.columns]].head(n)
    more = int(bad.sum()) - len(rows)
    text = "; ".join(", ".join(f"{k}={v}" for k, v in r.items()) for r in rows.to_dict("records"))
    return text + (f" (and {more} more)" if more > 0 else "")


def _numeric(df: pd.DataFrame, column: str, who: str) -> pd.Series:
    try:
        return pd.to_numeric(df[column], errors="raise").astype(float)
    except (ValueError, TypeError):
        bad = pd.to_numeric(df[column], errors="coerce").isna() & df[column].notna()
        raise ValueError(f"{who}: {column} must be numeric (blank = not graded); not numeric: "
                         f"{_examples(df, bad.to_numpy(), ['case_id', 'rater', 'region', column])}"
                         ) from None


def _unique(df: pd.DataFrame, keys: list[str], who: str, hint: str) -> None:
    dup = df.duplicated(keys, keep=False).to_numpy()
    if dup.any():
        raise ValueError(f"{who}: ({', '.join(keys)}) must be unique; repeated: "
                         f"{_examples(df, dup, keys)}. {hint}")


# ---------------------------------------------------------------------------
# readers' truth
# ---------------------------------------------------------------------------


def rater_mean_targets(grades_df: pd.DataFrame, scale: GradeScale | str) -> pd.DataFrame:
    """The readers' truth per region: the mean of the raters (``grades.csv`` -> targets).

    For each ``(case_id, region)``: the mean over raters of ``edema_grade``,
    ``fat_grade``, ``fascial_edema`` and ``subcutaneous_edema`` (a flag's mean
    is the fraction of raters who saw it), each over the raters who graded
    that item; NaN where no rater did. ``edema_grade_int`` and
    ``fat_grade_int`` are the integer grades of the means (:func:`integer_grade`,
    half up: a 2/3 split between two raters is 3), used for kappa.
    ``n_raters`` counts the raters who gave an edema grade.

    Args:
        grades_df: long table, one row per case, rater and region: ``case_id``,
            ``region``, ``edema_grade`` (integers on ``scale``), optionally
            ``rater``, ``fat_grade`` (0..4), ``fascial_edema`` and
            ``subcutaneous_edema`` (0/1); missing optional columns = not graded.
            ``subject_id`` and ``station``, when present, are carried over.
        scale: the cohort's edema grade scale (or its name).

    Returns:
        One row per ``(case_id, region)`` in order of first appearance, columns
        :data:`TARGET_COLUMNS` (plus ``subject_id``/``station`` when given).

    Raises:
        ValueError: a missing column, a repeated ``(case_id, rater, region)``, a
            grade that is not an integer of its scale, or a flag not 0/1; the
            message names the rows.
    """
    scale = as_scale(scale)
    who = "rater_mean_targets"
    _require(grades_df, ["case_id", "region", "edema_grade"], who)
    if "rater" in grades_df.columns:
        _unique(grades_df, ["case_id", "rater", "region"], who, "Each rater grades a region once.")
    df = grades_df.copy()
    ctx = ["case_id", "rater", "region"]
    checks = [("edema_grade", scale), ("fat_grade", FAT_SCALE)]
    for col, sc in checks:
        df[col] = _numeric(df, col, who) if col in df.columns else np.nan
        bad = ~sc.contains(df[col].to_numpy())
        if bad.any():
            raise ValueError(f"{who}: {col} must be an integer 0..{sc.max_grade} ({sc.name}) or "
                             f"blank; got {_examples(df, bad, ctx + [col])}. Is the grade scale "
                             "right (dataset.json 'grade_scale')?")
    for col in _FLAGS:
        df[col] = _numeric(df, col, who) if col in df.columns else np.nan
        v = df[col].to_numpy()
        bad = ~(np.isnan(v) | (v == 0) | (v == 1))
        if bad.any():
            raise ValueError(f"{who}: {col} must be 0, 1 or blank; got {_examples(df, bad, ctx + [col])}")
    keys = ["case_id", "region"]
    grouped = df.groupby(keys, sort=False)
    out = grouped[["edema_grade", "fat_grade", *_FLAGS]].mean()
    out["n_raters"] = grouped["edema_grade"].count()
    extra = [c for c in ("subject_id", "station") if c in df.columns]
    for c in extra:
        out[c] = grouped[c].first()
    out = out.reset_index()
    out["edema_grade_int"] = integer_grade(out["edema_grade"], scale)
    out["fat_grade_int"] = integer_grade(out["fat_grade"], FAT_SCALE)
    return out[keys + extra + TARGET_COLUMNS[2:]]


def pattern_targets(patterns_df: pd.DataFrame, mean_grades: pd.DataFrame | None = None, *,
                    scale: GradeScale | str | None = None) -> pd.DataFrame:
    """Per case, the readers' pattern as a soft label and as a majority (``patterns.csv``).

    ``p_{pattern}`` is the fraction of the raters who rated the case that
    called that pattern (it sums to 1). ``pattern`` is the majority; on a tie
    (``tied``), the tied pattern equal to ``pattern_rule`` wins, the pattern
    of the rater-mean grades by :func:`pattern_rule` (when ``mean_grades`` is
    given); otherwise the tied pattern nearest to it on the order
    none < patchy < mixed < diffuse, and between two equally near (or with no
    rule pattern) the lower one.

    Args:
        patterns_df: ``case_id``, ``pattern`` (``none``/``patchy``/``mixed``/
            ``diffuse``; blank = not rated), optionally ``rater``.
        mean_grades: the rater means per region, e.g. :func:`rater_mean_targets`
            (``case_id``, ``region``, ``edema_grade``); used to break ties.
        scale: the edema grade scale; required with ``mean_grades``.

    Returns:
        One row per case in order of first appearance, columns
        :data:`PATTERN_TARGET_COLUMNS` (``pattern_rule`` only with
        ``mean_grades``). A case no rater rated has ``n_raters`` 0, NaN
        fractions and ``pattern`` None.

    Raises:
        ValueError: a missing column, a repeated ``(case_id, rater)`` or an
            unknown pattern (named with its rows).
    """
    who = "pattern_targets"
    _require(patterns_df, ["case_id", "pattern"], who)
    if "rater" in patterns_df.columns:
        _unique(patterns_df, ["case_id", "rater"], who, "Each rater rates a case's pattern once.")
    df = patterns_df[["case_id", "pattern"] + (["rater"] if "rater" in patterns_df else [])].copy()
    blank = df["pattern"].isna() | (df["pattern"].astype(str).str.strip() == "")
    df["pattern"] = df["pattern"].where(blank, df["pattern"].astype(str).str.strip().str.lower())
    bad = (~blank & ~df["pattern"].isin(PATTERNS)).to_numpy()
    if bad.any():
        raise ValueError(f"{who}: pattern must be one of {list(PATTERNS)} or blank; got "
                         f"{_examples(df, bad, ['case_id', 'rater', 'pattern'])}")
    cases = pd.Index(pd.unique(df["case_id"]), name="case_id")
    rated = df[~blank.to_numpy()]
    counts = (pd.crosstab(rated["case_id"], rated["pattern"])
              .reindex(index=cases, columns=list(PATTERNS), fill_value=0).to_numpy())
    n = counts.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n[:, None] > 0, counts / np.maximum(n, 1)[:, None], np.nan)
    codes = np.arange(len(PATTERNS))
    tied_mask = (counts == counts.max(1, keepdims=True)) & (n[:, None] > 0)
    rule = None
    if mean_grades is not None:
        if scale is None:
            raise ValueError(f"{who}: pass scale= (the edema grade scale) with mean_grades")
        _require(mean_grades, ["case_id", "region", "edema_grade"], who)
        wide = (mean_grades.pivot_table(index="case_id", columns="region", values="edema_grade",
                                        aggfunc="mean", dropna=False).reindex(cases))
        rule = pattern_rule(wide, scale)  # other stations' regions are NaN: ignored
        rule_code = rule.map({q: i for i, q in enumerate(PATTERNS)}).to_numpy(dtype=float)
    else:
        rule_code = np.full(len(cases), np.nan)
    dist = np.where(np.isnan(rule_code)[:, None], codes[None, :],
                    np.abs(codes[None, :] - np.nan_to_num(rule_code)[:, None]))
    key = np.where(tied_mask, dist * len(PATTERNS) + codes, np.inf)
    winner = np.asarray(PATTERNS, dtype=object)[key.argmin(1)]
    out = pd.DataFrame({"case_id": cases})
    for j, q in enumerate(PATTERNS):
        out[f"p_{q}"] = p[:, j]
    out["pattern"] = np.where(n > 0, winner, None)
    out["n_raters"] = n
    out["tied"] = tied_mask.sum(1) > 1
    if rule is not None:
        out["pattern_rule"] = rule.to_numpy()
    return out


# ---------------------------------------------------------------------------
# scores per case and subject
# ---------------------------------------------------------------------------


def _with_case_info(df: pd.DataFrame, cases: pd.DataFrame | None, schema: LabelSchema,
                    who: str) -> pd.DataFrame:
    """``df`` with ``station`` (checked against the schema) and, when known, ``subject_id``."""
    if cases is not None:
        _require(cases, ["case_id"], f"{who} (cases)")
        info = [c for c in ("subject_id", "station") if c in cases.columns]
        df = df.drop(columns=[c for c in info if c in df.columns]).merge(
            cases[["case_id"] + info].drop_duplicates("case_id"), on="case_id", how="left")
    region_station = {n: r.station for n, r in schema.regions.items()}
    unknown = ~df["region"].isin(region_station).to_numpy()
    if unknown.any():
        raise ValueError(f"{who}: regions not in the label schema "
                         f"({schema.region_names()}): {_examples(df, unknown, ['case_id', 'region'])}")
    of_region = df["region"].map(region_station)
    if "station" in df.columns:
        wrong = (df["station"].notna() & (df["station"] != of_region)).to_numpy()
        if wrong.any():
            raise ValueError(f"{who}: regions of another station than their case's: "
                             f"{_examples(df, wrong, ['case_id', 'station', 'region'])}")
    df = df.assign(station=of_region)
    mixed = df.groupby("case_id", sort=False)["station"].nunique()
    if (mixed > 1).any():
        raise ValueError(f"{who}: cases with regions of both stations (a case is one station): "
                         f"{list(mixed.index[mixed > 1][:5])}")
    return df


def scores_table(regions_df: pd.DataFrame, schema: LabelSchema, scale: GradeScale | str, *,
                 cases: pd.DataFrame | None = None, allow_missing: bool = False,
                 integer: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Station scores, asymmetry and rule pattern per case; thigh, calf and total per subject.

    Reused for the model's grades (``predict``'s ``regions.csv``) and the
    readers' (a rater's rows of ``grades.csv``, or :func:`rater_mean_targets`),
    so both are scored alike. Per case: :func:`station_score`,
    :func:`asymmetry` (right minus left, paired through the schema's
    regions) and :func:`pattern_rule` (``pattern_rule``: the rule's pattern,
    not a model's or readers' pattern). Per subject: ``thigh_score``,
    ``calf_score`` and :func:`total_score` (NaN without both stations).

    Args:
        regions_df: long table, one row per case and region: ``case_id``,
            ``region``, ``edema_grade`` (continuous or integer, 0..max grade),
            optionally ``subject_id`` and ``station`` (else from the schema).
            A region with no row is missing.
        schema: the label schema; its regions give each region's station,
            compartment and side.
        scale: the edema grade scale (or its name).
        cases: optional ``cases.csv`` (``case_id``, ``subject_id``, ``station``)
            that supplies (and overrides) ``subject_id`` and ``station``.
        allow_missing: prorate scores over graded regions (see :func:`station_score`)
            instead of NaN when a region is missing.
        integer: score the integer grades (each region rounded first) instead
            of the continuous ones.

    A muscle-graded schema (:attr:`LabelSchema.graded_level` ``"muscle"``) is
    scored on its compartments: the station score and asymmetry sum the
    compartment grades of :func:`rollup_regions` (so they keep the 0-30 /
    0-18 range of six regions), while ``pattern_rule`` reads the muscles'
    own grades (the finest level graded).

    Returns:
        ``(case_table, subject_table)``. ``case_table``: one row per case in
        order of first appearance, :data:`CASE_SCORE_COLUMNS` (``subject_id``
        only when known; a compartment the station lacks is NaN).
        ``subject_table``: :data:`SUBJECT_SCORE_COLUMNS`, one row per subject
        (no rows when ``subject_id`` is unknown).

    Raises:
        ValueError: a missing column, an unknown region, a region of the
            other station, a repeated ``(case_id, region)``, a grade outside
            ``0..scale.max_grade``, or a subject with two cases of one station.
    """
    scale = as_scale(scale)
    who = "scores_table"
    _require(regions_df, ["case_id", "region", "edema_grade"], who)
    _unique(regions_df, ["case_id", "region"], who,
            "Score one set of grades at a time (one rater, or the rater means).")
    df = _with_case_info(regions_df, cases, schema, who)
    df["edema_grade"] = _numeric(df, "edema_grade", who)
    g = df["edema_grade"].to_numpy()
    bad = (g < 0) | (g > scale.max_grade)
    if bad.any():
        raise ValueError(f"{who}: edema_grade outside 0..{scale.max_grade} ({scale.name}): "
                         f"{_examples(df, bad, ['case_id', 'region', 'edema_grade'])}. Is the "
                         "grade scale right?")
    order = pd.Index(pd.unique(df["case_id"]), name="case_id")
    comp_schema = schema.compartment_schema()
    if comp_schema is not schema:
        comp = rollup_regions(df[["case_id", "region", "edema_grade"]], schema, scale)
        comp = comp.assign(station=comp["region"].map({n: r.station for n, r in
                                                       comp_schema.regions.items()}))
    else:
        comp = df
    parts = []
    for st in STATIONS:
        sub = df[df["station"] == st]
        if sub.empty:
            continue
        cases_st = order.intersection(sub["case_id"].unique(), sort=False)
        wide = (sub.pivot(index="case_id", columns="region", values="edema_grade")
                .reindex(index=cases_st, columns=schema.region_names(st)))
        wide_c = (comp[comp["station"] == st].pivot(index="case_id", columns="region",
                                                    values="edema_grade")
                  .reindex(index=cases_st, columns=comp_schema.region_names(st)))
        if integer:
            wide = integer_grade(wide, scale).astype(float)
            wide_c = integer_grade(wide_c, scale).astype(float)
        part = pd.DataFrame({"station": st, "pattern_rule": pattern_rule(wide, scale),
                             "station_score": station_score(wide_c, allow_missing=allow_missing)})
        part = part.join(pd.DataFrame(asymmetry(wide_c, comp_schema, allow_missing=allow_missing)))
        parts.append(part)
    table = pd.concat(parts).reindex(order).reset_index()
    if "subject_id" in df.columns:
        subject_of = df.groupby("case_id", sort=False)["subject_id"].first()
        table.insert(1, "subject_id", table["case_id"].map(subject_of).to_numpy())
    cols = [c for c in CASE_SCORE_COLUMNS if c in table.columns or c.startswith("asymmetry_")]
    table = table.reindex(columns=cols)
    return table, subject_scores(table)


def subject_scores(case_table: pd.DataFrame, *, keep: str = "unique") -> pd.DataFrame:
    """Thigh, calf and total score per subject from a case table (:data:`SUBJECT_SCORE_COLUMNS`).

    Args:
        case_table: ``subject_id``, ``station``, ``station_score`` per case
            (:func:`scores_table`'s case table, or ``predict``'s ``cases.csv``).
        keep: ``unique`` (a subject with two cases of one station is an error)
            or ``first`` (the first such case counts: a batch table never fails).

    Returns:
        One row per subject in order of first appearance; :func:`total_score`
        is NaN without both stations.
    """
    if "subject_id" not in case_table.columns:
        return pd.DataFrame(columns=SUBJECT_SCORE_COLUMNS)
    known = case_table[case_table["subject_id"].notna()]
    if keep == "unique":
        _unique(known, ["subject_id", "station"], "scores_table",
                "A subject has at most one thigh and one calf case.")
    else:
        known = known.drop_duplicates(["subject_id", "station"], keep="first")
    wide = (known.pivot(index="subject_id", columns="station", values="station_score")
            .reindex(index=pd.unique(known["subject_id"]), columns=list(STATIONS)))
    out = pd.DataFrame({"subject_id": wide.index,
                        "thigh_score": wide["thigh"].to_numpy(),
                        "calf_score": wide["calf"].to_numpy()})
    out["total_score"] = total_score(out["thigh_score"], out["calf_score"]).to_numpy()
    return out[SUBJECT_SCORE_COLUMNS]


def case_targets(
    grades: pd.DataFrame,
    patterns: pd.DataFrame,
    schema: LabelSchema,
    scale: GradeScale,
    stations: Mapping[str, str],
    case_ids: Iterable[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The readers' truth of each case as slot vectors (NaN = not graded: masked out of the loss).

    Slots are the station's graded regions in schema order
    (:meth:`~nxp2seg.data.schema.LabelSchema.region_names`, as :mod:`nxp2seg.data.regions`),
    padded with NaN to the largest station's number of regions.

    Per case: ``edema_target``, ``fat_target``, ``fascial_target``,
    ``subcut_target`` ``(R,)`` float32 rater means
    (:func:`rater_mean_targets`; a flag's mean is the share of
    raters who saw it); ``pattern_target`` ``(4,)`` float32, the share of raters
    per pattern (:data:`~nxp2seg.data.schema.PATTERNS` order; NaN without a
    rater) and ``pattern_index`` (the readers' majority pattern, ties broken by
    :func:`pattern_targets`; ``-1`` without a rater).

    Args:
        grades, patterns: the cohort's ``grades.csv`` and ``patterns.csv``.
        schema: the label schema (region slots per station).
        scale: the cohort's edema grade scale.
        stations: ``{case_id: station}``.
        case_ids: cases to return (default: every case of ``stations``).
    """
    ids = list(case_ids) if case_ids is not None else list(stations)
    # every case has the largest station's number of slots; a station with fewer regions
    # (a muscle-level schema: 26 thigh, 22 calf muscles) keeps NaN in its last slots
    r = max(len(schema.region_names(st)) for st in STATIONS)
    out: dict[str, dict[str, Any]] = {}
    for cid in ids:
        out[cid] = {
            "edema_target": np.full(r, np.nan, np.float32),
            "fat_target": np.full(r, np.nan, np.float32),
            "fascial_target": np.full(r, np.nan, np.float32),
            "subcut_target": np.full(r, np.nan, np.float32),
            "pattern_target": np.full(len(PATTERNS), np.nan, np.float32),
            "pattern_index": -1,
        }
    wanted = set(ids)
    means = None
    if grades is not None and len(grades):
        g = grades[grades["case_id"].astype(str).isin(wanted)]
        if len(g):
            means = rater_mean_targets(g, scale)
            slot_of = {
                (st, name): i for st in STATIONS for i, name in enumerate(schema.region_names(st))
            }
            columns = {
                "edema_target": "edema_grade",
                "fat_target": "fat_grade",
                "fascial_target": "fascial_edema",
                "subcut_target": "subcutaneous_edema",
            }
            for row in means.itertuples(index=False):
                cid = str(row.case_id)
                slot = slot_of.get((stations[cid], str(row.region)))
                if slot is None:  # the verifier reports regions of the other station
                    continue
                for key, col in columns.items():
                    out[cid][key][slot] = getattr(row, col)
    if patterns is not None and len(patterns):
        p = patterns[patterns["case_id"].astype(str).isin(wanted)]
        if len(p) and p["pattern"].notna().any():
            pt = pattern_targets(p, means, scale=scale if means is not None else None)
            for row in pt.itertuples(index=False):
                cid = str(row.case_id)
                if row.n_raters > 0:
                    out[cid]["pattern_target"] = np.asarray(
                        [getattr(row, f"p_{q}") for q in PATTERNS], dtype=np.float32
                    )
                    out[cid]["pattern_index"] = PATTERNS.index(row.pattern)
    return out
