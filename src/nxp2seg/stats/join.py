"""Subject tables for the cohort statistics: read, check, join on the subject, make two groups.

``analyze`` joins an MRI score table (predict's ``subjects.csv``, or the scores
it derives from grades) with the clinical table on the subject id; every
problem is an :class:`AnalysisError` naming the file, the column, the rows
(0 = first data row) and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nxp2seg.stats.variables import numeric_values, variable_type

__all__ = ["ROW", "AnalysisError", "check_subject_table", "group_column", "join_tables",
           "read_subject_table"]

ROW = "_row"


class AnalysisError(ValueError):
    """Inputs that cannot be analysed; the message names the file, the column and the fix."""


def check_subject_table(df: pd.DataFrame, id_col: str, what: str) -> pd.DataFrame:
    """Ids as stripped text; refuses a missing id column, blank ids and repeated subjects."""
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    if id_col not in df.columns:
        raise AnalysisError(f"{what}: no {id_col!r} column (it has {list(df.columns)}); "
                            "give id=COLUMN or add the subject ids")
    df[id_col] = df[id_col].astype("string").str.strip().astype(object)
    blank = df[id_col].isna() | (df[id_col] == "")
    if blank.any():
        raise AnalysisError(f"{what}: blank {id_col} in rows {df.index[blank].tolist()[:20]} "
                            "(0 = first data row); fill them in or delete the rows")
    dup = df[id_col].duplicated(keep=False)
    if dup.any():
        raise AnalysisError(f"{what}: subjects listed twice: {sorted(set(df.loc[dup, id_col]))[:10]}; "
                            "keep one row per subject")
    return df


def read_subject_table(path: str | Path | None, id_col: str, what: str) -> pd.DataFrame:
    """A subject table from CSV; ids as text; rows keep their position (0 = first data row)."""
    if not path:
        raise AnalysisError(f"{what}=CSV is required; see --help")
    p = Path(path)
    if not p.is_file():
        raise AnalysisError(f"{what}={p}: no such file")
    try:
        df = pd.read_csv(p, dtype={id_col: str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise AnalysisError(f"{what}={p}: not a readable CSV table ({e})") from None
    return check_subject_table(df, id_col, f"{what}={p}")


def _numeric(df: pd.DataFrame, column: str, path: str) -> pd.Series:
    try:
        return numeric_values(df[column])
    except ValueError as e:
        raise AnalysisError(f"{path}: {e} (rows: 0 = first data row)") from None


def join_tables(scores: pd.DataFrame, clinical: pd.DataFrame, *, score: str, id_col: str,
                columns: list[str] | None, paths: tuple[str, str],
                keep: list[str] | None = None) -> tuple[pd.DataFrame, list[str], dict]:
    """One row per subject in both tables: ``id``, the score, the clinical columns.

    The index is the clinical table's row (0 = its first data row), so that
    errors about a clinical column name the rows of ``clinical.csv``.
    ``keep`` lists further columns of ``scores`` carried into the table (e.g.
    MRI-derived groups) without being analysed as clinical variables.

    Returns:
        ``(table, clinical columns analysed, counts)``.
    """
    if score not in scores.columns:
        raise AnalysisError(f"scores={paths[0]}: no score column {score!r} (it has "
                            f"{list(scores.columns)}); give score=COLUMN")
    s = pd.DataFrame({id_col: scores[id_col], score: _numeric(scores, score, paths[0])})
    for c in keep or []:
        if c in scores.columns and c not in s.columns:
            s[c] = scores[c].to_numpy()
    available = [c for c in clinical.columns if c != id_col]
    if columns is not None:
        missing = [c for c in columns if c not in available]
        if missing:
            raise AnalysisError(f"clinical={paths[1]}: no column(s) {missing}; it has {available}")
        available = list(columns)
    clash = set(s.columns) - {id_col}
    clin = clinical[[id_col, *available]].rename(
        columns={c: f"{c}_clinical" for c in available if c in clash})
    available = [f"{c}_clinical" if c in clash else c for c in available]
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
    """The two-valued column that defines the groups, and how it was made (see configs/analyze.yaml).

    Two values: used as they are. A numeric column with more values: split at
    its median (a new column ``{column}_above_median``). Text with three or
    more levels: refused.
    """
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
