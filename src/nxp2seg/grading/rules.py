"""Domain rules on regional grades: integer grade, station pattern, scores, asymmetry.

Pure, vectorised functions (DESIGN.md, "What the model reads and says"). Grades
are arrays whose **last axis is the regions of one station** (``(R,)`` for one
station, ``(..., R)`` for many; ``R`` = 6 in the default schema); any leading
shape is kept. Every function also takes pandas: a ``DataFrame`` (rows =
stations, columns = regions) gives a ``Series`` on the same index, a
``Series`` (one station, index = regions) gives a scalar.

Grades may be integer or continuous (a model's output, a mean of raters). NaN
means *not graded*. Ranges follow from the :class:`~nxp2seg.data.schema.GradeScale`
(``beltrame6`` 0..5, ``extent4`` 0..3); nothing here re-types a scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from nxp2seg.data.schema import (
    COMPARTMENTS,
    PATTERNS,
    GradeScale,
    LabelSchema,
    Region,
    get_grade_scale,
)

__all__ = [
    "as_scale",
    "integer_grade",
    "pattern_rule",
    "station_score",
    "total_score",
    "asymmetry",
    "max_station_score",
    "max_total_score",
    "readers_flag",
]

_PATTERN_ARRAY = np.asarray(PATTERNS, dtype=object)
_CODE = {p: i for i, p in enumerate(PATTERNS)}  # none 0, patchy 1, mixed 2, diffuse 3


def as_scale(scale: GradeScale | str) -> GradeScale:
    """A :class:`GradeScale` from itself or its name (``"beltrame6"``, ``"extent4"``)."""
    return get_grade_scale(scale) if isinstance(scale, str) else scale


@cache
def _global_lut(scale: GradeScale) -> np.ndarray:
    """``lut[grade]``: is the grade's extent class global (read from ``scale.extent``)."""
    return np.array([e == "global" for e in scale.extent])


def _values(x: Any) -> np.ndarray:
    return np.asarray(x.to_numpy(dtype=float) if isinstance(x, (pd.Series, pd.DataFrame)) else x,
                      dtype=float)


def _is_integer(x: Any) -> bool:
    """Whether the input holds integer (or boolean) grades, so that sums stay integer."""
    if isinstance(x, pd.DataFrame):
        return all(pd.api.types.is_integer_dtype(t) or pd.api.types.is_bool_dtype(t)
                   for t in x.dtypes)
    if isinstance(x, pd.Series):
        return pd.api.types.is_integer_dtype(x.dtype) or pd.api.types.is_bool_dtype(x.dtype)
    dt = np.asarray(x).dtype
    return np.issubdtype(dt, np.integer) or dt == bool


def integer_grade(grade: Any, scale: GradeScale | str) -> Any:
    """Integer grade on the scale from a continuous one (e.g. a rater mean, a model's output).

    Rounds half up (2.5 -> 3, the usual reading of a mean of two raters) and
    clips to ``0..scale.max_grade``; NaN (not graded) stays NaN.
    Uses :meth:`GradeScale.to_int`.

    Args:
        grade: grades of any shape (scalar, array, ``Series`` or ``DataFrame``).
        scale: the edema grade scale, or its name.

    Returns:
        Same shape (pandas in, pandas out, same index); ``int`` dtype when no
        value is NaN, else ``float`` with NaN kept.
    """
    scale = as_scale(scale)
    if isinstance(grade, pd.Series):
        return pd.Series(scale.to_int(grade.to_numpy(dtype=float)), index=grade.index,
                         name=grade.name)
    if isinstance(grade, pd.DataFrame):
        return pd.DataFrame(scale.to_int(grade.to_numpy(dtype=float)), index=grade.index,
                            columns=grade.columns)
    out = scale.to_int(grade)
    return out[()] if out.ndim == 0 else out


def pattern_rule(grades: Any, scale: GradeScale | str) -> Any:
    """Edema pattern of a station from its regional grades (DESIGN.md, "Pattern per station").

    Grades are made integer first (:func:`integer_grade`); each involved
    region (grade > 0) has the extent class ``scale.extent[grade]``:

    * ``none``: no region graded above 0;
    * ``patchy``: every involved region focal or segmented;
    * ``diffuse``: every involved region global;
    * ``mixed``: both focal/segmented and global regions.

    NaN regions are ignored; a station with every region NaN has no pattern
    (``None``). The rule is the phantom's truth and a baseline: readers'
    patterns are labels in their own right and need not follow it.

    Args:
        grades: edema grades of one station's regions, shape ``(R,)``, or
            ``(..., R)`` for many stations; integer or continuous; a
            ``Series`` (one station) or ``DataFrame`` (rows = stations).
        scale: the edema grade scale (or its name) the grades are on.

    Returns:
        One pattern (``str``, or ``None``) for ``(R,)`` input or a ``Series``;
        an object array of shape ``(...)`` for ``(..., R)`` input; a ``Series``
        on the rows' index for a ``DataFrame``.
    """
    scale = as_scale(scale)
    if isinstance(grades, np.ndarray) and np.issubdtype(grades.dtype, np.integer):
        gi = np.minimum(np.maximum(grades, 0), scale.max_grade)  # fast path: integers, none NaN
        any_graded: Any = True
    else:
        g = _values(grades)
        graded = ~np.isnan(g)
        gi = np.where(graded, scale.to_int(np.where(graded, g, 0)), 0).astype(int)
        any_graded = graded.any(-1)
    if gi.ndim == 0:
        raise ValueError("pattern_rule: grades need a last axis of regions, shape (R,) or (..., R)")
    involved = gi > 0
    n_inv = involved.sum(-1)
    n_glob = (_global_lut(scale)[gi] & involved).sum(-1)
    # none 0 (no region involved), patchy 1 (no global), mixed 2, diffuse 3 (all global)
    code = (n_inv > 0) * (1 + (n_glob > 0) + (n_glob == n_inv))
    out = np.where(any_graded, _PATTERN_ARRAY[code], None)
    if isinstance(grades, pd.DataFrame):
        return pd.Series(out, index=grades.index, name="pattern", dtype=object)
    return out[()] if out.ndim == 0 else out


def _sum_regions(g: np.ndarray, allow_missing: bool) -> np.ndarray:
    """Sum over the last axis; NaN if any NaN, or prorated when ``allow_missing``."""
    if not allow_missing:
        return g.sum(-1)
    n = (~np.isnan(g)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(g, -1) * g.shape[-1] / np.maximum(n, 1), np.nan)


def readers_flag(share: Any) -> Any:
    """The readers' call on a finding (fascial or subcutaneous edema) from the share who saw it.

    Present when **more than half** of the readers flagged it (a strict
    majority: with two readers both, with three two of them); a split vote is
    not a finding. NaN (nobody read the region) stays NaN. Why not "at least
    half": each reader misreads a flag now and then, and with two readers
    counting a 1-1 split as present makes every single reader's slip a
    finding; where the finding is rare (about one region in ten) that labels
    more false findings than true ones. The readers' *share* stays the
    training target (``fascial_target``, ``subcut_target``); this is the
    reference for flag AUC, sensitivity and specificity.

    Args:
        share: fraction of the readers who flagged it, ``0..1`` (array-like).

    Returns:
        Float ``1.0`` / ``0.0`` / NaN of the same shape (a float for a scalar).
    """
    s = np.asarray(share, dtype=float)
    out = np.where(np.isnan(s), np.nan, (s > 0.5).astype(float))
    return float(out) if out.ndim == 0 else out


def station_score(grades: Any, *, allow_missing: bool = False) -> Any:
    """Station score: the sum of a station's regional edema grades.

    Range ``0..R * max_grade``: 0–30 on ``beltrame6`` and 0–18 on ``extent4``
    for the default 6 regions (see :func:`max_station_score`). Continuous
    grades give a continuous score.

    Missing grades (NaN): the score is NaN if any region is missing, unless
    ``allow_missing=True``; then it is prorated, the mean of the graded
    regions times ``R`` (so it stays on the same range), and NaN only when no
    region is graded.

    Args:
        grades: edema grades, shape ``(R,)`` or ``(..., R)`` (last axis = the
            station's regions), a ``Series`` (one station) or a ``DataFrame``
            (rows = stations, columns = regions).
        allow_missing: prorate over the graded regions instead of giving NaN.

    Returns:
        Scores, shape ``(...)`` (a scalar for one station, a ``Series`` on the
        rows' index for a ``DataFrame``); ``int`` for integer input without
        missing values, else ``float``.
    """
    g = _values(grades)
    if g.ndim == 0:
        raise ValueError("station_score: grades need a last axis of regions, shape (R,) or (..., R)")
    out = _sum_regions(g, allow_missing)
    if _is_integer(grades):  # no NaN possible: the prorated sum is the sum
        out = out.astype(int)
    if isinstance(grades, pd.DataFrame):
        return pd.Series(out, index=grades.index, name="station_score")
    return out[()] if out.ndim == 0 else out


def total_score(thigh: Any, calf: Any) -> Any:
    """Subject total score: thigh station score + calf station score.

    Range ``0..2 * R * max_grade`` (0–60 on ``beltrame6``, 0–36 on
    ``extent4``). NaN when either station's score is NaN (a subject imaged at
    one station only has no total).

    Args:
        thigh: thigh station scores, any shape (or a ``Series``).
        calf: calf station scores, the same shape (or a ``Series`` on the same index).

    Returns:
        ``thigh + calf``, with the inputs' shape (and index).
    """
    if isinstance(thigh, pd.Series) or isinstance(calf, pd.Series):
        return (thigh + calf).rename("total_score")
    out = np.asarray(thigh) + np.asarray(calf)
    return out[()] if out.ndim == 0 else out


def max_station_score(scale: GradeScale | str, n_regions: int = 6) -> int:
    """Highest station score on the scale: ``n_regions * max_grade`` (30 on ``beltrame6``)."""
    return n_regions * as_scale(scale).max_grade


def max_total_score(scale: GradeScale | str, n_regions: int = 6) -> int:
    """Highest subject total (thigh + calf): ``2 * n_regions * max_grade`` (60 on ``beltrame6``)."""
    return 2 * max_station_score(scale, n_regions)


def _regions_of(grades: Any, regions: Sequence[Region] | Mapping[str, Region] | LabelSchema,
                n: int) -> list[Region]:
    """The :class:`Region` of each entry of the last axis of ``grades``."""
    if isinstance(regions, LabelSchema):
        regions = regions.regions
    if isinstance(grades, (pd.Series, pd.DataFrame)) and isinstance(regions, Mapping):
        names = grades.index if isinstance(grades, pd.Series) else grades.columns
        unknown = [str(c) for c in names if c not in regions]
        if unknown:
            raise ValueError(f"asymmetry: regions {unknown} are not in the label schema")
        return [regions[str(c)] for c in names]
    if isinstance(regions, Mapping):
        raise TypeError("asymmetry: pass the regions of the grades' last axis, in that order "
                        "(a list of Region), or grades as pandas with region names")
    out = list(regions)
    if len(out) != n:
        raise ValueError(f"asymmetry: {len(out)} regions given for a last axis of {n} grades")
    return out


def asymmetry(region_grades: Any, regions: Sequence[Region] | Mapping[str, Region] | LabelSchema,
              *, allow_missing: bool = False) -> dict[str, Any]:
    """Right-minus-left edema of a station: per compartment and in total.

    Sides are the patient's and are paired by each region's ``compartment``
    and ``side`` (from the label schema), never by position in the array.
    Positive values: the right leg has more edema.

    * ``asymmetry_{compartment}``: right grade minus left grade; NaN where
      either side is missing.
    * ``asymmetry``: right station half-score minus left, i.e. the sum of the
      compartment differences; NaN if any is NaN, unless ``allow_missing``,
      then prorated (mean of the available differences times the number of
      compartments), NaN only when none is available.

    Args:
        region_grades: edema grades, shape ``(R,)`` or ``(..., R)``, last axis
            = the regions of **one** station; or a ``Series``/``DataFrame``
            whose index/columns are region names.
        regions: the :class:`Region` of each entry of the last axis, in that
            order; or (for pandas input) a :class:`LabelSchema` or its
            ``regions`` mapping, looked up by name.
        allow_missing: prorate the total over the compartments with both sides graded.

    Returns:
        ``{"asymmetry": ..., "asymmetry_{compartment}": ...}`` (compartments
        in the station's anatomical order), each of shape ``(...)`` (scalars
        for one station, ``Series`` on the rows' index for a ``DataFrame``);
        ``pd.DataFrame(result)`` makes a table.

    Raises:
        ValueError: regions from two stations, or a compartment without
            exactly one right and one left region.
        TypeError: a schema or mapping of regions with a plain array (no names).
    """
    g = _values(region_grades)
    if g.ndim == 0:
        raise ValueError("asymmetry: grades need a last axis of regions, shape (R,) or (..., R)")
    regs = _regions_of(region_grades, regions, g.shape[-1])
    stations = {r.station for r in regs}
    if len(stations) != 1:
        raise ValueError(f"asymmetry: grades must be of one station, got regions of {sorted(stations)}")
    station = stations.pop()
    present = [c for c in COMPARTMENTS[station] if any(r.compartment == c for r in regs)]
    diffs = {}
    for comp in present:
        idx = {s: [i for i, r in enumerate(regs) if r.compartment == comp and r.side == s]
               for s in ("right", "left")}
        if len(idx["right"]) != 1 or len(idx["left"]) != 1:
            raise ValueError(f"asymmetry: {station} {comp} needs one right and one left region, "
                             f"got {len(idx['right'])} right and {len(idx['left'])} left")
        diffs[f"asymmetry_{comp}"] = g[..., idx["right"][0]] - g[..., idx["left"][0]]
    total = _sum_regions(np.stack(list(diffs.values()), -1), allow_missing)
    out = {"asymmetry": total, **diffs}
    if _is_integer(region_grades):
        out = {k: v.astype(int) for k, v in out.items()}
    if isinstance(region_grades, pd.DataFrame):
        return {k: pd.Series(v, index=region_grades.index, name=k) for k, v in out.items()}
    return {k: (v[()] if np.ndim(v) == 0 else v) for k, v in out.items()}
