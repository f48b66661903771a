"""The MRI score against clinical variables: seed paper 000's Table 1 and Table 2.

Writes ``normality`` (Shapiro-Wilk beside Kolmogorov-Smirnov with the
Lilliefors correction, as SPSS reports it), ``correlations`` and its paper
layout ``table1``, with ``group_by`` the group comparison ``groups`` and its
paper layout ``table2`` (group sizes in the headers), one figure per variable,
and ``data.csv`` (the joined rows).
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from nxp2seg.analysis.labels import Labels
from nxp2seg.analysis.outputs import Writer, csv_bytes
from nxp2seg.io import atomic_write_bytes
from nxp2seg.report.paper_figures import levels_figure, scatter_figure
from nxp2seg.stats.cohort import correlation_table, group_comparison, normality_table
from nxp2seg.stats.join import AnalysisError, group_column, join_tables
from nxp2seg.stats.tables import format_p

__all__ = ["clinical_section"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "column"


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df.astype(object).to_dict("records")]


def _feature(lab: Labels, row) -> str:
    name = lab(row.variable)
    if row.type == "binary" and getattr(row, "level", ""):
        if str(row.level) in ("1", "1.0", "True", "true", "yes"):  # a 0/1 finding: its name says it
            return f"{name} (n, %)"
        return f"{name} ({lab.level(row.variable, row.level)}) (n, %)"
    if row.type == "binary" and getattr(row, "coding", "") and row.coding != "1 vs 0":
        return f"{name} ({row.coding})"
    return name


def clinical_section(scores: pd.DataFrame, clinical: pd.DataFrame, w: Writer, lab: Labels,
                     opts: dict[str, Any], *, paths: tuple[str, str],
                     keep: list[str] | None = None) -> dict[str, Any]:
    """Join, test and write; returns the summary (counts, normality, correlations, comparison)."""
    id_col, score = str(opts["id"]), str(opts["score"])
    columns = opts.get("columns")
    table, variables, counts = join_tables(scores, clinical, score=score, id_col=id_col,
                                           columns=columns, paths=paths, keep=keep)
    types = dict(opts.get("types") or {})
    alpha, ntest = float(opts["alpha"]), str(opts["normality"])
    tests = dict(opts.get("tests") or {})
    group_by = opts.get("group_by")
    group, how = group_column(table, str(group_by), paths[1]) if group_by else (None, None)
    w.section(f"{lab(score)} against clinical variables (seed paper 000, Tables 1 and 2)",
              f"{counts['n_subjects']} subjects in both tables ({counts['n_scores_only']} only in the "
              f"scores, {counts['n_clinical_only']} only in the clinical table). Normality decides "
              f"parametric or rank-based tests ({ntest}, alpha {alpha}); p-values are two-sided and "
              "not corrected for the number of variables.")
    analysed = [c for c in variables if c not in (keep or [])]
    try:
        norm = normality_table(table, [score, *analysed], types=types, alpha=alpha, test=ntest)
        corr = correlation_table(table, score, analysed, types=types, alpha=alpha,
                                 normality_test=ntest, method=str(tests.get("correlation", "auto")))
    except ValueError as e:
        raise AnalysisError(f"clinical={paths[1]}: {e} (rows: 0 = first data row)") from None
    shown = pd.DataFrame({"Variable": norm["variable"].map(lab), "Type": norm["type"], "n": norm["n"],
                          "Shapiro-Wilk W": norm["shapiro_W"], "Shapiro-Wilk p": norm["shapiro_p"],
                          "K-S (Lilliefors) D": norm["ks_D"], "K-S p (SPSS)": norm["ks_p_spss"],
                          "Normal": norm["normal"]})
    w.table("normality", norm, "Normality of each continuous variable", display=shown,
            note="K-S: Kolmogorov-Smirnov with the Lilliefors correction, as SPSS prints it "
            "(0.200* is SPSS's lower bound of the true significance). "
            f"The test that decides is {ntest}.")
    t1 = corr[corr["type"].isin(["continuous", "binary", "categorical"])]
    if opts.get("significant_only"):
        t1 = t1[t1["p"] < alpha]
    table1 = pd.DataFrame({"Clinical feature": [_feature(lab, r) for r in t1.itertuples()],
                           "r": t1["r"].to_numpy(), "p": t1["p"].to_numpy(),
                           "Test": t1["test"].to_numpy(), "n": t1["n"].to_numpy()})
    w.table("correlations", corr, f"Correlation of {lab(score)} with each variable (all columns)")
    w.table("table1", table1, f"Table 1: correlation between {lab(score)} and the clinical features",
            note="Pearson when the score and the variable are both normal, else Spearman; binary "
            "variables: point-biserial or Spearman on the 0/1 code (r > 0: higher scores with the "
            "level named); categories: Kruskal-Wallis (p only).")
    summary: dict[str, Any] = {**counts, "score": score, "score_normality": corr.attrs["score_normality"],
                               "correlations": _records(corr), "normality": _records(norm)}
    if group is not None:
        others = [c for c in [score, *analysed] if c not in (group, str(group_by))]
        try:
            groups = group_comparison(table, group, others, types=types, alpha=alpha,
                                      decimals=int(opts["decimals"]), normality_test=ntest,
                                      percent_decimals=int(opts.get("percent_decimals", 1)),
                                      continuous_test=str(tests.get("continuous", "auto")),
                                      categorical_test=str(tests.get("categorical", "auto")))
        except ValueError as e:
            raise AnalysisError(f"group_by={group_by}: {e}") from None
        sizes = groups.attrs["groups"]
        labels = list(sizes)
        levels = [lab_.split("=", 1)[1] for lab_ in labels]
        if set(levels) == {"0", "1"}:  # "with" before "without", as papers print them
            labels = labels[::-1]
        table2 = pd.DataFrame({"Clinical feature": [_feature(lab, r) for r in groups.itertuples()]})
        for key in labels:
            col, level = key.split("=", 1)
            table2[f"{lab.level(col, level)} (n = {sizes[key]})"] = groups[key].to_numpy()
        table2["p"] = groups["p"].to_numpy()
        table2["Test"] = groups["test"].to_numpy()
        w.table("groups", groups, f"Comparison between the groups of {lab(group_by)} ({how}), all columns")
        w.table("table2", table2, f"Table 2: clinical data by {lab(group_by)}",
                note="Continuous: mean ± SD and Welch's t-test (Student's with tests.continuous="
                "student) when both groups are normal, else median (Q1–Q3) and Mann-Whitney U; "
                "binary: n (%) of the level named and chi-square, or Fisher's exact test for a 2x2 "
                "table with an expected count < 5.")
        summary["group_by"] = {"column": str(group_by), "groups_column": group, "rule": how,
                               "sizes": sizes, "comparison": _records(groups)}
    atomic_write_bytes(w.out / "data.csv", csv_bytes(table.reset_index(drop=True)))
    if w.figures_on and opts.get("variable_figures", True):
        _variable_figures(table, score, corr, w, lab)
    return summary


def _variable_figures(table: pd.DataFrame, score: str, corr: pd.DataFrame, w: Writer,
                      lab: Labels) -> None:
    w.section(f"Figures: {lab(score)} against each clinical variable")
    for row in corr.itertuples(index=False):
        if row.type not in ("continuous", "binary", "categorical"):
            continue
        r = "" if math.isnan(row.r) else f"r = {row.r:.2f}, "
        title = f"{lab(row.variable)}: {r}p {'= ' if row.p >= 0.001 else ''}{format_p(row.p)} " \
                f"({row.test}, n = {row.n})"
        if row.type == "continuous":
            fig = scatter_figure(table[row.variable].astype(float), table[score], xlabel=lab(row.variable),
                                 ylabel=lab(score), title=title)
        else:
            keys = table[row.variable].astype(str).str.strip().where(table[row.variable].notna())
            keys = keys.str.replace(r"\.0$", "", regex=True)
            fig = levels_figure({lab.level(row.variable, lv): table.loc[keys == lv, score].to_numpy(float)
                                 for lv in sorted(keys.dropna().unique())},
                                ylabel=lab(score), title=title)
        w.figure(f"{_safe(score)}_vs_{_safe(row.variable)}", fig, title)
