"""``python -m nxp2seg.analyze scores=CSV clinical=CSV output=DIR [group_by=COLUMN] [key=value ...]``.

The cohort statistics of the clinical papers: the MRI score (predicted, or the
readers') against every clinical variable. Joins the scores table (predict's
``subjects.csv``, or any table with ``subject_id`` and the score) with
``clinical.csv`` on the subject, and writes to ``output``:

* ``normality.{csv,md}`` -- kind of each variable and its Shapiro-Wilk test;
* ``correlations.{csv,md}`` -- the score against each column: r, p, n and the
  test chosen by the variable's kind and normality (``stats.correlation_table``);
* ``groups.{csv,md}`` -- with ``group_by``: every variable compared between the
  two groups (``stats.group_comparison``);
* ``figures/{score}_vs_{column}.png`` -- scatter with least-squares line
  (continuous), box plot per level (binary, categorical);
* ``analysis.md`` (every table), ``data.csv`` (the joined rows), ``summary.json``.

The methods and how to read them: ``docs/statistics.md``; the command:
``docs/evaluation.md``. Options and defaults: ``configs/analyze.yaml``
(``--help`` prints them).

Exit codes: 0 written; 2 unusable input (a missing file or column, no subject
in both tables, a repeated subject, non-numeric values where numbers are
needed -- the message names the file, the column and the rows).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from nxp2seg.config_utils import load_cli_config

__all__ = ["AnalysisError", "analyze", "join_tables", "load_config", "main"]

log = logging.getLogger("nxp2seg.analyze")
CONFIG = Path(__file__).parent / "configs" / "analyze.yaml"
ROW = "_row"


class AnalysisError(ValueError):
    """Inputs that cannot be analysed; the message names the file, the column and the fix."""


def load_config(overrides: list[str]) -> DictConfig:
    """``configs/analyze.yaml`` with ``key=value`` overrides (unknown keys are refused)."""
    return load_cli_config(CONFIG, overrides, open_keys=("types",))


# -- reading and joining ----------------------------------------------------------------------

def _read(path: str | None, id_col: str, what: str) -> pd.DataFrame:
    """A subject table; ids as text; rows keep their position (0 = first data row)."""
    if not path:
        raise AnalysisError(f"{what}=CSV is required; see --help")
    p = Path(path)
    if not p.is_file():
        raise AnalysisError(f"{what}={p}: no such file")
    try:
        df = pd.read_csv(p, dtype={id_col: str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise AnalysisError(f"{what}={p}: not a readable CSV table ({e})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if id_col not in df.columns:
        raise AnalysisError(f"{what}={p}: no {id_col!r} column (it has {list(df.columns)}); "
                            "give id=COLUMN or add the subject ids")
    df[id_col] = df[id_col].astype("string").str.strip().astype(object)
    blank = df[id_col].isna() | (df[id_col] == "")
    if blank.any():
        raise AnalysisError(f"{what}={p}: blank {id_col} in rows {df.index[blank].tolist()[:20]} "
                            "(0 = first data row); fill them in or delete the rows")
    dup = df[id_col].duplicated(keep=False)
    if dup.any():
        raise AnalysisError(f"{what}={p}: subjects listed twice: {sorted(set(df.loc[dup, id_col]))[:10]}; "
                            "keep one row per subject")
    return df


def _numeric(df: pd.DataFrame, column: str, path: str) -> pd.Series:
    from nxp2seg.stats.variables import numeric_values

    try:
        return numeric_values(df[column])
    except ValueError as e:
        raise AnalysisError(f"{path}: {e} (rows: 0 = first data row)") from None


def join_tables(scores: pd.DataFrame, clinical: pd.DataFrame, *, score: str, id_col: str,
                columns: list[str] | None, paths: tuple[str, str]) -> tuple[pd.DataFrame, list[str], dict]:
    """One row per subject in both tables: ``id``, the score, the clinical columns.

    The index is the clinical table's row (0 = its first data row), so that
    errors about a clinical column name the rows of ``clinical.csv``.

    Returns:
        ``(table, clinical columns analysed, counts)``.
    """
    if score not in scores.columns:
        raise AnalysisError(f"scores={paths[0]}: no score column {score!r} (it has "
                            f"{list(scores.columns)}); give score=COLUMN")
    s = pd.DataFrame({id_col: scores[id_col], score: _numeric(scores, score, paths[0])})
    available = [c for c in clinical.columns if c != id_col]
    if columns is not None:
        missing = [c for c in columns if c not in available]
        if missing:
            raise AnalysisError(f"clinical={paths[1]}: no column(s) {missing}; it has {available}")
        available = list(columns)
    clin = clinical[[id_col, *available]].rename(columns={score: f"{score}_clinical"} if score in available else {})
    available = [f"{score}_clinical" if c == score else c for c in available]
    clin[ROW] = clinical.index
    table = s.merge(clin, on=id_col, how="inner").set_index(ROW)
    table.index.name = None
    if table.empty:
        raise AnalysisError(
            f"no subject is in both scores={paths[0]} ({len(s)} subjects, e.g. {s[id_col].head(3).tolist()}) "
            f"and clinical={paths[1]} ({len(clinical)} subjects, e.g. {clinical[id_col].head(3).tolist()}); "
            f"do they use the same {id_col}?")
    counts = {"n_subjects": len(table),
              "n_scores_only": int((~s[id_col].isin(clinical[id_col])).sum()),
              "n_clinical_only": int((~clinical[id_col].isin(s[id_col])).sum()),
              "n_score_missing": int(table[score].isna().sum())}
    return table, available, counts


def group_column(table: pd.DataFrame, column: str, path: str) -> tuple[str, str]:
    """The two-valued column that defines the groups, and how it was made (see configs/analyze.yaml)."""
    from nxp2seg.stats import variable_type

    if column not in table.columns:
        raise AnalysisError(f"group_by={column}: no such column in the joined table "
                            f"(columns: {[c for c in table.columns]})")
    try:
        kind = variable_type(table[column])
    except ValueError as e:
        raise AnalysisError(f"{path}: {e} (rows: 0 = first data row)") from None
    if kind == "binary":
        return column, "two values, used as they are"
    if kind == "continuous":
        x = table[column].astype(float)
        med = float(x.median())
        name = f"{column}_above_median"
        table[name] = np.where(x.isna(), None, np.where(x > med, f">{med:g}", f"<={med:g}"))
        return name, f"numeric: split at its median {med:g} (<= median vs > median)"
    levels = sorted(map(str, table[column].dropna().unique()))
    raise AnalysisError(f"group_by={column}: {kind} column with levels {levels[:10]}; a group comparison "
                        "needs two groups: give a two-valued column (e.g. add one to the clinical table)")


# -- outputs ------------------------------------------------------------------------------------

def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "column"


def _figures(table: pd.DataFrame, score: str, corr: pd.DataFrame, out: Path) -> list[str]:
    from nxp2seg.io import atomic_write_bytes
    from nxp2seg.report.figures import group_plot, score_scatter

    written = []
    for row in corr.itertuples(index=False):
        if row.type not in ("continuous", "binary", "categorical"):
            continue
        r = "" if math.isnan(row.r) else f"r = {row.r:.2f}, "
        p = "p = –" if math.isnan(row.p) else ("p < 0.001" if row.p < 0.001 else f"p = {row.p:.3f}")
        title = f"{row.variable}: {r}{p} ({row.test}, n = {row.n})"
        if row.type == "continuous":
            png = score_scatter(table[row.variable].astype(float), table[score], xlabel=row.variable,
                                ylabel=score, title=title)
        else:
            keys = table[row.variable].astype(str).str.strip().where(table[row.variable].notna())
            groups = {lv: table.loc[keys == lv, score].to_numpy(dtype=float)
                      for lv in sorted(keys.dropna().unique())}
            png = group_plot(groups, ylabel=score, title=title)
        name = f"figures/{_safe_name(score)}_vs_{_safe_name(row.variable)}.png"
        atomic_write_bytes(out / name, png)
        written.append(name)
    return written


def _records(df: pd.DataFrame) -> list[dict]:
    def clean(v: Any) -> Any:
        if isinstance(v, (np.generic,)):
            v = v.item()
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return None
        return v
    return [{k: clean(v) for k, v in r.items()} for r in df.to_dict("records")]


def _write(out: Path, name: str, df: pd.DataFrame, title: str, md: list[str]) -> None:
    from nxp2seg.io import atomic_write_text, write_csv
    from nxp2seg.stats import to_markdown

    write_csv(df, out / f"{name}.csv", float_format="%.10g")
    text = to_markdown(df)
    atomic_write_text(out / f"{name}.md", text)
    md += [f"## {title}", "", text]


def analyze(cfg: DictConfig) -> dict[str, Any]:
    """Run the analysis from a config; writes the outputs and returns the summary."""
    from nxp2seg.io import atomic_write_text, write_csv
    from nxp2seg.stats import correlation_table, group_comparison, normality_table

    if not cfg.output:
        raise AnalysisError("output=DIR is required; see --help")
    id_col, score = str(cfg.id), str(cfg.score)
    paths = (str(cfg.scores), str(cfg.clinical))
    scores = _read(cfg.scores, id_col, "scores")
    clinical = _read(cfg.clinical, id_col, "clinical")
    columns = None if cfg.columns is None else [str(c) for c in OmegaConf.to_container(cfg.columns)]
    table, variables, counts = join_tables(scores, clinical, score=score, id_col=id_col,
                                           columns=columns, paths=paths)
    types = {str(k): str(v) for k, v in (OmegaConf.to_container(cfg.types) or {}).items()}
    # the groups are checked before anything is written: a refused group_by leaves no partial output
    group, how = group_column(table, str(cfg.group_by), paths[1]) if cfg.group_by else (None, None)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    intro = (f"{counts['n_subjects']} subjects in both tables ({counts['n_scores_only']} only in the "
             f"scores, {counts['n_clinical_only']} only in the clinical table). Tests: docs/statistics.md.")
    md = [f"# {score} against clinical variables", "", intro, ""]
    try:
        norm = normality_table(table, [score, *variables], types=types, alpha=float(cfg.alpha))
        corr = correlation_table(table, score, variables, types=types, alpha=float(cfg.alpha))
    except ValueError as e:
        raise AnalysisError(f"clinical={paths[1]}: {e} (rows: 0 = first data row)") from None
    _write(out, "normality", norm, "Normality (Shapiro-Wilk)", md)
    _write(out, "correlations", corr, f"Correlation of {score} with each variable", md)
    summary: dict[str, Any] = {"score": score, "id": id_col, "inputs": {"scores": paths[0], "clinical": paths[1]},
                               **counts, "score_normality": corr.attrs["score_normality"],
                               "correlations": _records(corr), "normality": _records(norm)}
    if group is not None:
        others = [c for c in [score, *variables] if c not in (group, str(cfg.group_by))]
        groups = group_comparison(table, group, others, types=types, alpha=float(cfg.alpha))
        _write(out, "groups", groups, f"Comparison between the groups of {group} ({how})", md)
        summary["group_by"] = {"column": str(cfg.group_by), "groups_column": group, "rule": how,
                               "sizes": groups.attrs["groups"], "comparison": _records(groups)}
    write_csv(table.reset_index(drop=True), out / "data.csv")
    summary["figures"] = _figures(table, score, corr, out) if cfg.figures else []
    atomic_write_text(out / "analysis.md", "\n".join(md))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(CONFIG.read_text())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(argv)
        summary = analyze(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"nxp2seg.analyze: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.output).resolve()
    print((out / "correlations.md").read_text())
    print(f"{summary['n_subjects']} subjects analysed; tables, figures and summary.json written to "
          f"{out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
