"""The descriptive MRI tables of a cohort, as seed paper 000 reports them (pure functions on tidy tables).

Input tables (built by :mod:`nxp2seg.analysis.inputs` from the readers' grades
or predict's tables):

* **regions** -- one row per case and graded region: ``subject_id``,
  ``station``, ``compartment``, ``side``, optionally ``muscle``, the grades
  ``edema_grade`` (continuous, e.g. the readers' mean), ``edema_grade_int``
  (integer) and the 0/1 calls ``edema_present``, ``fat_present``,
  ``fascial_edema``, ``subcutaneous_edema``; NaN = not read.
* **cases** -- one row per case: ``subject_id``, ``station``, ``pattern``,
  ``station_score``.

A finding is **present** in a region when its call is 1 (the caller decides
the rule: ``analyze`` calls the readers' finding present when more than half
of them saw it); in a compartment (or station) of a subject when present in
any of its regions, on either side. Percentages are of the subjects whose
compartment (station) was read for that finding.

Tables: :func:`involvement_table` (the paper's counts of patients with edema,
fat, fascial and subcutaneous edema per compartment and station),
:func:`pattern_counts`, :func:`score_by_pattern` (mean ± SD and median [IQR]
of the station score per pattern), :func:`symmetry_table`,
:func:`site_findings` (per subject and station, for the thigh-vs-calf tests of
:mod:`nxp2seg.stats.paired`), :func:`heatmap_matrix` (the paper's Figure 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from nxp2seg.data.schema import COMPARTMENTS, MUSCLES, PATTERNS, SIDES, STATIONS
from nxp2seg.stats.tables import count_percent, mean_sd, median_iqr, quartiles

__all__ = ["FINDINGS", "heatmap_matrix", "involvement_table", "pattern_counts", "score_by_pattern",
           "site_findings", "symmetry_table"]

#: finding -> the column whose value > 0 marks it present.
FINDINGS: dict[str, str] = {"edema": "edema_present", "fat": "fat_present",
                            "fascial_edema": "fascial_edema",
                            "subcutaneous_edema": "subcutaneous_edema"}
ANY = "any"


def _present(regions: pd.DataFrame, keys: list[str], column: str) -> pd.DataFrame:
    """Per subject and ``keys``: ``read`` (some region read) and ``present`` (some region > 0)."""
    v = pd.to_numeric(regions[column], errors="coerce") if column in regions else \
        pd.Series(np.nan, index=regions.index)
    df = regions[["subject_id", *keys]].assign(_read=v.notna(), _pos=v > 0)
    g = df.groupby(["subject_id", *keys], sort=False, observed=True)
    return pd.DataFrame({"read": g["_read"].any(), "present": g["_pos"].any()}).reset_index()


def _station_order(regions: pd.DataFrame) -> list[str]:
    return [s for s in STATIONS if s in set(regions["station"])]


def involvement_table(regions: pd.DataFrame, findings: Sequence[str] = tuple(FINDINGS),
                      decimals: int = 1, level: str = "compartment") -> pd.DataFrame:
    """Subjects with each finding per compartment (or muscle) and per station.

    Parameters
    ----------
    regions : pandas.DataFrame
        See the module docstring.
    findings : sequence of str
        Keys of :data:`FINDINGS`; missing columns give empty cells.
    decimals : int
        Decimals of the percentages.
    level : {"compartment", "muscle"}
        Rows per compartment, or per muscle (needs a ``muscle`` column).

    Returns
    -------
    pandas.DataFrame
        One row per station and compartment (and muscle), then one
        ``compartment = "any"`` row per station: ``station``,
        ``compartment`` (``muscle``), ``n_subjects`` (with the station read),
        and per finding ``"n (x%)"`` text plus ``{finding}_n`` and
        ``{finding}_read`` counts.
    """
    if level not in ("compartment", "muscle"):
        raise ValueError(f"involvement_table: level={level!r}; use 'compartment' or 'muscle'")
    keys = ["station", "compartment"] + (["muscle"] if level == "muscle" else [])
    rows = []
    for station in _station_order(regions):
        st = regions[regions["station"] == station]
        order = [c for c in COMPARTMENTS[station] if c in set(st["compartment"])]
        units = st[keys].drop_duplicates()
        units = (units.assign(_o=units["compartment"].map({c: i for i, c in enumerate(order)}))
                 .sort_values("_o", kind="stable").drop(columns="_o"))
        per = {f: _present(st, keys, FINDINGS[f]) for f in findings}
        per_station = {f: _present(st, ["station"], FINDINGS[f]) for f in findings}
        n_station = st["subject_id"].nunique()
        for unit in [*units.itertuples(index=False), None]:
            row = {"station": station, "compartment": ANY if unit is None else unit.compartment,
                   "n_subjects": n_station}
            if level == "muscle":
                row["muscle"] = "" if unit is None else unit.muscle
            for f in findings:
                t = per_station[f] if unit is None else per[f]
                if unit is not None:
                    sel = np.ones(len(t), bool)
                    for k in keys:
                        sel &= (t[k] == getattr(unit, k)).to_numpy()
                    t = t[sel]
                read, pos = int(t["read"].sum()), int((t["present"] & t["read"]).sum())
                row[f] = count_percent(pos, read, decimals)
                row[f"{f}_n"], row[f"{f}_read"] = pos, read
            rows.append(row)
    cols = keys + ["n_subjects", *findings, *[f"{f}_{x}" for f in findings for x in ("n", "read")]]
    return pd.DataFrame(rows, columns=cols)


def _ordered_patterns(cases: pd.DataFrame) -> pd.Series:
    p = cases["pattern"].where(cases["pattern"].isin(PATTERNS))
    return pd.Categorical(p, categories=list(PATTERNS), ordered=True)


def pattern_counts(cases: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """Cases per pattern and station (none < patchy < mixed < diffuse), as ``n (x%)``.

    Returns one row per station and pattern: ``station``, ``pattern``
    (ordered categorical), ``n``, ``percent``, ``n_percent`` (text),
    ``n_cases`` (cases of the station with a pattern).
    """
    rows = []
    for station in [s for s in STATIONS if s in set(cases["station"])]:
        st = cases[cases["station"] == station]
        pats = pd.Series(_ordered_patterns(st))
        total = int(pats.notna().sum())
        for p in PATTERNS:
            n = int((pats == p).sum())
            rows.append({"station": station, "pattern": p, "n": n,
                         "percent": 100.0 * n / total if total else math.nan,
                         "n_percent": count_percent(n, total, decimals), "n_cases": total})
    out = pd.DataFrame(rows, columns=["station", "pattern", "n", "percent", "n_percent", "n_cases"])
    out["pattern"] = pd.Categorical(out["pattern"], categories=list(PATTERNS), ordered=True)
    return out


def score_by_pattern(cases: pd.DataFrame, score: str = "station_score", decimals: int = 2,
                     quantile_method: str = "linear") -> pd.DataFrame:
    """The station score per pattern and station: n, mean ± SD and median [IQR].

    The paper's thigh scores: patchy 6.92 ± 4.87, mixed 17.92 ± 4.96,
    diffuse 24.58 ± 2.23 (SD with ddof = 1). Patterns in order none < patchy <
    mixed < diffuse; a pattern nobody had gives n = 0 and empty summaries.
    """
    rows = []
    for station in [s for s in STATIONS if s in set(cases["station"])]:
        st = cases[cases["station"] == station]
        pats = pd.Series(_ordered_patterns(st), index=st.index)
        for p in PATTERNS:
            v = pd.to_numeric(st.loc[pats == p, score], errors="coerce").dropna()
            q1, med, q3 = quartiles(v, quantile_method)
            rows.append({"station": station, "pattern": p, "n": len(v),
                         "mean_sd": mean_sd(v, decimals),
                         "median_iqr": median_iqr(v, decimals, brackets=True, method=quantile_method),
                         "mean": float(v.mean()) if len(v) else math.nan,
                         "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                         "median": med, "q1": q1, "q3": q3})
    out = pd.DataFrame(rows, columns=["station", "pattern", "n", "mean_sd", "median_iqr", "mean",
                                      "sd", "median", "q1", "q3"])
    out["pattern"] = pd.Categorical(out["pattern"], categories=list(PATTERNS), ordered=True)
    return out


def symmetry_table(regions: pd.DataFrame, grade: str = "edema_grade_int",
                   decimals: int = 1) -> pd.DataFrame:
    """How symmetric the edema is, per station, over the subjects with edema there.

    Per subject and station, both sides read: **symmetric in location** when
    every compartment (muscle) with edema on one side has it on the other;
    the side difference of the grades, largest over the compartments
    (muscles): **equal** (0), **one grade**, or **more**. The paper: "over
    one-third of patients had asymmetrical inflammation degrees".

    Returns one row per station: ``n_subjects`` (with edema at the station and
    both sides read), ``symmetric_location``, ``equal_grades``,
    ``one_grade_apart``, ``more_apart`` (``n (x%)`` text) and their counts
    (``*_n``).
    """
    unit = ["compartment"] + (["muscle"] if "muscle" in regions and regions["muscle"].notna().any()
                              else [])
    rows = []
    for station in _station_order(regions):
        st = regions[(regions["station"] == station) & regions["side"].isin(SIDES)]
        wide = st.pivot_table(index=["subject_id", *unit], columns="side", values=grade,
                              aggfunc="max", observed=True).reindex(columns=list(SIDES))
        wide = wide.dropna()
        by = wide.groupby(level="subject_id", sort=False)
        involved = by.apply(lambda w: bool((w > 0).to_numpy().any()))
        location = by.apply(lambda w: bool(((w["right"] > 0) == (w["left"] > 0)).all()))
        diff = by.apply(lambda w: float((w["right"] - w["left"]).abs().max()))
        keep = involved[involved].index
        n = len(keep)
        counts = {"symmetric_location": int(location[keep].sum()),
                  "equal_grades": int((diff[keep] == 0).sum()),
                  "one_grade_apart": int(((diff[keep] > 0) & (diff[keep] <= 1)).sum()),
                  "more_apart": int((diff[keep] > 1).sum())}
        row = {"station": station, "n_subjects": n}
        row.update({k: count_percent(v, n, decimals) for k, v in counts.items()})
        row.update({f"{k}_n": v for k, v in counts.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def site_findings(regions: pd.DataFrame, findings: Sequence[str] = tuple(FINDINGS)) -> pd.DataFrame:
    """One row per subject: 0/1 ``{finding}_{station}`` (NaN where that station was not read)."""
    out = pd.DataFrame({"subject_id": pd.unique(regions["subject_id"])}).set_index("subject_id")
    for f in findings:
        t = _present(regions, ["station"], FINDINGS[f])
        for station in _station_order(regions):
            s = t[t["station"] == station].set_index("subject_id")
            col = s["present"].astype(float).where(s["read"])
            out[f"{f}_{station}"] = col.reindex(out.index)
    return out.reset_index()


def heatmap_matrix(regions: pd.DataFrame, value: str = "edema_grade",
                   order_by: pd.Series | None = None) -> pd.DataFrame:
    """Subjects x regions of ``value`` (the paper's Figure 1): rows ordered by ``order_by``.

    Columns are ``(station, side, compartment[, muscle])`` in anatomical order
    (thigh then calf; right then left), as a MultiIndex; rows the subjects,
    by descending ``order_by`` (e.g. the total score; default: the row sum).
    """
    unit = ["compartment"] + (["muscle"] if "muscle" in regions and regions["muscle"].notna().any()
                              else [])
    keys = ["station", "side", *unit]
    wide = regions.pivot_table(index="subject_id", columns=keys, values=value, aggfunc="mean",
                               observed=True)

    def rank(col: tuple) -> tuple:
        station, side, comp = col[:3]
        muscles = MUSCLES[station].get(comp, ())
        return (STATIONS.index(station), SIDES.index(side) if side in SIDES else 9,
                COMPARTMENTS[station].index(comp) if comp in COMPARTMENTS[station] else 9,
                *(muscles.index(m) if m in muscles else 99 for m in col[3:]))
    wide = wide[sorted(wide.columns, key=rank)]
    key = order_by.reindex(wide.index) if order_by is not None else wide.sum(axis=1)
    return wide.loc[key.sort_values(ascending=False, kind="stable").index]
