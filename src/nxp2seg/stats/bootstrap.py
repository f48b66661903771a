"""Bootstrap confidence intervals resampled by subject.

Agreement figures in this project come from several rows per subject (regions,
stations, cases). Those rows are not independent: a subject whose scans are
hard to read pulls all of its regions the same way. The honest unit of
resampling is therefore the *subject*: each bootstrap draw picks subjects with
replacement, and every row of a drawn subject comes along. A subject drawn
twice appears as two separate copies, told apart by the :data:`COPY_COL`
column that each resample carries.

Several statistics can be computed on the *same* draws
(:func:`subject_bootstrap_many`), which makes differences between them paired
(:func:`paired_difference`, used by :func:`nxp2seg.stats.agreement.noninferiority`).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "COPY_COL",
    "BootstrapResult",
    "paired_difference",
    "percentile_interval",
    "resample_subjects",
    "subject_bootstrap",
    "subject_bootstrap_many",
]

#: Column added to every resample: the position (0 .. n_subjects-1) of the drawn
#: subject copy in the draw. Unique per copy, so statistics that pivot or group
#: by subject (e.g. a long-format ICC) should key on it, not on ``subject_id``.
COPY_COL = "subject_copy"

Statistic = Callable[[pd.DataFrame], float]


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """A point estimate with its percentile bootstrap interval.

    Unpacks like the tuple ``(estimate, low, high)``::

        est, low, high = subject_bootstrap(df, statistic)

    Attributes
    ----------
    estimate : float
        The statistic on the original data (not the mean of the draws).
    low, high : float
        Percentile interval of the finite draws (NaN when there are none).
    ci : float
        Confidence level of the interval, e.g. 0.95.
    n_boot : int
        Number of bootstrap draws.
    n_valid : int
        Draws where the statistic was finite; the others (undefined on that
        resample, e.g. a kappa where both raters gave one grade) are skipped.
    replicates : numpy.ndarray
        The ``n_boot`` draws, NaN where undefined.
    resampling : str
        Fingerprint of the draws (seed, ``n_boot``, subjects). Two results with
        the same fingerprint were computed on the same resamples: they are paired.
    """

    estimate: float
    low: float
    high: float
    ci: float
    n_boot: int
    n_valid: int
    replicates: np.ndarray = field(repr=False)
    resampling: str = field(repr=False)

    @property
    def n_skipped(self) -> int:
        """Draws where the statistic was undefined (NaN or infinite)."""
        return self.n_boot - self.n_valid

    def __iter__(self) -> Iterator[float]:
        return iter((self.estimate, self.low, self.high))

    def as_items(self, key: str) -> dict:
        """``{key: estimate, key + "_ci": [low, high]}``, the evaluation summary's layout."""
        return {
            key: _py_float(self.estimate),
            f"{key}_ci": [_py_float(self.low), _py_float(self.high)],
        }

    def as_dict(self) -> dict:
        """JSON-ready ``{"estimate", "ci": [low, high], "ci_level", "n_boot", "n_valid"}``."""
        return {
            "estimate": _py_float(self.estimate),
            "ci": [_py_float(self.low), _py_float(self.high)],
            "ci_level": self.ci,
            "n_boot": self.n_boot,
            "n_valid": self.n_valid,
        }


def _py_float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def percentile_interval(replicates: np.ndarray, ci: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite ``replicates`` (linear interpolation).

    Returns ``(nan, nan)`` when no replicate is finite.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    alpha = 1.0 - ci
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


class _SubjectIndex:
    """Rows grouped by subject, for vectorised construction of resamples."""

    def __init__(self, df: pd.DataFrame, subject_col: str):
        if subject_col not in df.columns:
            raise KeyError(
                f"subject column {subject_col!r} not in the table; columns: {list(df.columns)}"
            )
        if COPY_COL in df.columns:
            raise ValueError(
                f"the table already has a {COPY_COL!r} column; rename it before bootstrapping"
            )
        codes, uniques = pd.factorize(df[subject_col], sort=True)
        if (codes < 0).any():
            rows = np.flatnonzero(codes < 0)[:10].tolist()
            raise ValueError(
                f"{subject_col}: missing subject ids in rows {rows}; every row needs a subject"
            )
        self.subjects = uniques
        self.n_subjects = len(uniques)
        self.order = np.argsort(codes, kind="stable")
        self.counts = np.bincount(codes, minlength=self.n_subjects)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

    def rows(self, draw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row positions of the drawn subjects (whole subjects) and their copy ids."""
        lengths = self.counts[draw]
        block_start = np.cumsum(lengths) - lengths
        offsets = np.repeat(self.starts[draw] - block_start, lengths) + np.arange(lengths.sum())
        copies = np.repeat(np.arange(len(draw)), lengths)
        return self.order[offsets], copies

    def fingerprint(self, seed: int | None, n_boot: int) -> str:
        if seed is None:
            return f"unseeded-{uuid.uuid4().hex}"
        h = hashlib.sha1(f"{seed}|{n_boot}|{self.n_subjects}|".encode())
        h.update("\x1f".join(map(str, self.subjects)).encode())
        return h.hexdigest()


def resample_subjects(
    df: pd.DataFrame,
    subject_col: str = "subject_id",
    n_boot: int = 2000,
    seed: int | None = 0,
) -> Iterator[pd.DataFrame]:
    """Yield ``n_boot`` resamples of ``df`` drawn by subject with replacement.

    Each resample holds as many subjects as the original (drawn uniformly with
    replacement from the sorted distinct subject ids), with all rows of each
    drawn subject, a fresh ``RangeIndex``, and a :data:`COPY_COL` column that
    tells duplicated subjects apart. The draws depend only on ``seed``,
    ``n_boot`` and the set of subject ids (not on row order).
    """
    return _resamples(df, _SubjectIndex(df, subject_col), n_boot, seed)


def _resamples(
    df: pd.DataFrame, index: _SubjectIndex, n_boot: int, seed: int | None
) -> Iterator[pd.DataFrame]:
    draws = np.random.default_rng(seed).integers(
        0, index.n_subjects, size=(n_boot, index.n_subjects)
    )
    for draw in draws:
        rows, copies = index.rows(draw)
        sample = df.iloc[rows].reset_index(drop=True)
        sample[COPY_COL] = copies
        yield sample


def _as_float(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"statistic {name!r} must return one number, got {type(value).__name__}"
        ) from err


def subject_bootstrap_many(
    df: pd.DataFrame,
    statistics: Mapping[str, Statistic],
    subject_col: str = "subject_id",
    n_boot: int = 2000,
    seed: int | None = 0,
    ci: float = 0.95,
) -> dict[str, BootstrapResult]:
    """Bootstrap several statistics on the same subject resamples.

    Parameters
    ----------
    df : pandas.DataFrame
        Tidy table, one or more rows per subject.
    statistics : mapping of str to callable
        Each maps a DataFrame (the original, or a resample with the extra
        :data:`COPY_COL` column) to one number; NaN where undefined.
    subject_col : str
        Column holding the subject id (the resampling unit).
    n_boot : int
        Number of draws (2000 is plenty for a 95% percentile interval).
    seed : int or None
        Seed of the ``numpy.random.Generator``; ``None`` draws fresh entropy.
    ci : float
        Confidence level.

    Returns
    -------
    dict of str to BootstrapResult
        Same keys as ``statistics``; all results share one ``resampling``
        fingerprint, so their replicates are paired draw by draw.

    Notes
    -----
    Use this (not repeated :func:`subject_bootstrap` calls) when two figures
    will be compared: the difference of paired replicates has a far narrower,
    and correct, interval than a comparison of two independent intervals.
    Draws where a statistic is NaN or infinite are skipped for that statistic
    only; check ``n_valid`` (a figure undefined on many draws is fragile).
    Exceptions raised by a statistic propagate, with the draw number noted.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    index = _SubjectIndex(df, subject_col)
    names = list(statistics)
    estimates = {name: _as_float(statistics[name](df), name) for name in names}
    replicates = {name: np.full(n_boot, np.nan) for name in names}
    for i, sample in enumerate(_resamples(df, index, n_boot, seed)):
        for name in names:
            try:
                replicates[name][i] = _as_float(statistics[name](sample), name)
            except Exception as err:
                err.add_note(
                    f"while computing statistic {name!r} on bootstrap draw {i} (seed {seed})"
                )
                raise
    fingerprint = index.fingerprint(seed, n_boot)
    return {name: _result(estimates[name], replicates[name], ci, fingerprint) for name in names}


def _result(
    estimate: float, replicates: np.ndarray, ci: float, fingerprint: str
) -> BootstrapResult:
    replicates = np.where(np.isfinite(replicates), replicates, np.nan)
    low, high = percentile_interval(replicates, ci)
    return BootstrapResult(
        estimate=float(estimate),
        low=low,
        high=high,
        ci=ci,
        n_boot=len(replicates),
        n_valid=int(np.isfinite(replicates).sum()),
        replicates=replicates,
        resampling=fingerprint,
    )


def subject_bootstrap(
    df: pd.DataFrame,
    statistic: Statistic,
    subject_col: str = "subject_id",
    n_boot: int = 2000,
    seed: int | None = 0,
    ci: float = 0.95,
) -> BootstrapResult:
    """Percentile bootstrap interval of ``statistic``, resampling subjects.

    Parameters
    ----------
    df : pandas.DataFrame
        Tidy table, one or more rows per subject.
    statistic : callable
        DataFrame -> float; return NaN where the statistic is undefined.
    subject_col, n_boot, seed, ci
        As in :func:`subject_bootstrap_many`.

    Returns
    -------
    BootstrapResult
        Unpacks as ``(estimate, low, high)``; also carries ``n_valid``,
        ``n_skipped`` and the replicates.

    Notes
    -----
    Subjects, not rows, are drawn with replacement: all rows of a drawn subject
    come along, and a subject drawn twice counts twice (two copies, told apart
    by :data:`COPY_COL`). The interval is the percentile interval of the
    finite draws; the estimate is the statistic on the original table. Read
    it as: over cohorts like this one, the figure plausibly lies in
    ``[low, high]``. With fewer than ~20 subjects intervals are too narrow
    (the bootstrap cannot see what the cohort lacks); report the number of
    subjects next to them.

    Examples
    --------
    >>> df = pd.DataFrame({"subject_id": [1, 1, 2, 3], "x": [1.0, 2.0, 3.0, 4.0]})
    >>> est, low, high = subject_bootstrap(df, lambda d: d["x"].mean(), n_boot=200)
    >>> est
    2.5
    """
    return subject_bootstrap_many(df, {"statistic": statistic}, subject_col, n_boot, seed, ci)[
        "statistic"
    ]


def paired_difference(x: BootstrapResult, y: BootstrapResult) -> BootstrapResult:
    """``x - y`` with the interval of the paired differences of replicates.

    Raises ``ValueError`` unless both results come from the same resamples
    (equal ``resampling`` fingerprints, e.g. one :func:`subject_bootstrap_many`
    call, or two calls with the same table, seed and ``n_boot``).
    """
    if x.resampling != y.resampling or x.n_boot != y.n_boot or x.ci != y.ci:
        raise ValueError(
            "paired_difference needs results computed on the same resamples (same table, "
            "seed, n_boot and ci); use subject_bootstrap_many for both statistics"
        )
    return _result(x.estimate - y.estimate, x.replicates - y.replicates, x.ci, x.resampling)
