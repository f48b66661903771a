"""Grades of single muscles rolled up to their compartments: the roll-up of a muscle-graded schema.

One rule for the readers' grades (``analyze``, ``scores_table``) and the
model's (predict's compartment rows): see :func:`rollup_regions`.
"""

from __future__ import annotations

import pandas as pd

from nxp2seg.data.schema import FAT_SCALE, GradeScale, LabelSchema
from nxp2seg.grading.rules import as_scale, integer_grade

__all__ = ["rollup_regions"]

_MEAN = ("edema_grade", "fat_grade", "fat_grade_continuous")
_MAX = ("fascial_edema", "subcutaneous_edema", "fascial_edema_prob", "subcutaneous_edema_prob",
        "edema_present", "fat_present")
_WEIGHTED = ("edema_fraction", "fat_fraction")


def rollup_regions(regions_df: pd.DataFrame, schema: LabelSchema, scale: GradeScale | str
                   ) -> pd.DataFrame:
    """Grades of single muscles rolled up to their compartments (a muscle-graded schema's roll-up).

    The rule, the same for the readers' and the model's grades: per case and
    compartment region (``thigh_anterior_right``...), over the member muscles
    graded (NaN skipped):

    * ``edema_grade``, ``fat_grade`` (``fat_grade_continuous``): the **mean**
      of the muscles' grades, continuous, on the same scale (a compartment
      with one muscle of five globally involved is graded 0.6 on ``extent4``,
      integer 1: about a fifth involved); ``edema_grade_int`` and
      ``fat_grade_int`` (``fat_grade`` for the model's tables, where it is the
      integer) are the integer grades of those means (half up);
    * ``fascial_edema``, ``subcutaneous_edema`` (calls, readers' shares or
      model probabilities), ``edema_present``, ``fat_present``: the
      **largest** over the muscles (a finding anywhere in the compartment is
      a finding of the compartment);
    * ``volume_ml``: the sum; ``edema_fraction``, ``fat_fraction``: the
      volume-weighted mean (plain mean without ``volume_ml``);
    * ``n_raters``: the smallest; ``subject_id``, ``station``: carried over.

    Other columns are dropped. A compartment-graded schema's table is
    returned unchanged (a copy).

    Args:
        regions_df: long table, one row per case and graded region (``case_id``,
            ``region``, grades...).
        schema: the label schema (its regions' ``compartment`` and ``side``).
        scale: the edema grade scale.

    Returns:
        One row per case and compartment region, cases in order of first
        appearance, compartments in the schema's order; ``region`` holds the
        compartment's name.
    """
    if schema.graded_level == "compartment":
        return regions_df.copy()
    scale = as_scale(scale)
    rollup = schema.rollup()
    unknown = ~regions_df["region"].isin(rollup).to_numpy()
    if unknown.any():
        bad = regions_df.loc[unknown, ["case_id", "region"]].head(5).to_dict("records")
        raise ValueError(f"rollup_regions: regions not in the label schema: {bad} "
                         f"({int(unknown.sum())} rows)")
    df = regions_df.assign(_compartment=regions_df["region"].map(rollup))
    keys = ["case_id", "_compartment"]
    g = df.groupby(keys, sort=False)
    parts = {}
    for col in df.columns:
        if col in _MEAN and not (col == "fat_grade" and "fat_grade_continuous" in df.columns):
            parts[col] = g[col].apply(lambda v: pd.to_numeric(v, errors="coerce").mean())
        elif col in _MAX:
            parts[col] = g[col].apply(lambda v: pd.to_numeric(v, errors="coerce").max())
        elif col == "volume_ml":
            parts[col] = g[col].apply(lambda v: pd.to_numeric(v, errors="coerce").sum(min_count=1))
        elif col == "n_raters":
            parts[col] = g[col].min()
        elif col in ("subject_id", "station"):
            parts[col] = g[col].first()
    for col in _WEIGHTED:
        if col in df.columns:
            v = pd.to_numeric(df[col], errors="coerce")
            w = (pd.to_numeric(df["volume_ml"], errors="coerce") if "volume_ml" in df.columns
                 else pd.Series(1.0, index=df.index)).where(v.notna(), 0.0).fillna(0.0)
            tmp = df[keys].assign(_vw=v.fillna(0.0) * w, _w=w)
            sums = tmp.groupby(keys, sort=False)[["_vw", "_w"]].sum()
            parts[col] = (sums["_vw"] / sums["_w"]).where(sums["_w"] > 0)
    out = pd.DataFrame(parts).reset_index().rename(columns={"_compartment": "region"})
    if "edema_grade" in out.columns:
        out["edema_grade_int"] = integer_grade(out["edema_grade"], scale)
    if "fat_grade_continuous" in out.columns:
        out["fat_grade"] = integer_grade(out["fat_grade_continuous"], FAT_SCALE)
    elif "fat_grade" in out.columns:
        out["fat_grade_int"] = integer_grade(out["fat_grade"], FAT_SCALE)
    order = {n: i for i, n in enumerate(schema.compartment_schema().region_names())}
    case_order = {c: i for i, c in enumerate(pd.unique(regions_df["case_id"]))}
    out = out.assign(_c=out["case_id"].map(case_order), _r=out["region"].map(order))
    out = out.sort_values(["_c", "_r"], kind="stable").drop(columns=["_c", "_r"])
    first = [c for c in ("case_id", "subject_id", "station", "region") if c in out.columns]
    return out[first + [c for c in out.columns if c not in first]].reset_index(drop=True)
