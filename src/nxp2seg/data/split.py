"""Which case is in which split: train, validation and test, always by subject.

* :func:`split_by_subject`: ``test`` rows (their subjects entirely) are held
  out; the rest is split into train and validation **by subject**, never by
  case, with a seed (or by ``split=val`` rows where ``cases.csv`` has them);
* :func:`hidden_masks`: the training cases whose label maps ``mask_fraction``
  hides (to study training with few masks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["HOLDOUT_SPLITS", "VAL_SPLITS", "hidden_masks", "split_by_subject"]

HOLDOUT_SPLITS: tuple[str, ...] = ("test",)
VAL_SPLITS: tuple[str, ...] = ("val", "validation")


def split_by_subject(
    cases: pd.DataFrame,
    val_fraction: float = 0.2,
    seed: int = 0,
    holdout: Sequence[str] = HOLDOUT_SPLITS,
) -> dict[str, list[str]]:
    """Assign every case to ``train``, ``val`` or ``test``, keeping each subject in one split.

    Args:
        cases: the ``cases.csv`` table (``case_id``, ``subject_id``, ``split`` optional).
        val_fraction: share of the non-test subjects drawn for validation (at
            least one subject when there are two or more).
        seed: seed of the draw.
        holdout: ``split`` values that mark test cases; a subject with any such
            case is a test subject, all its cases held out.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` case ids in table order.
        When ``split`` names validation cases (``val``), their subjects form the
        validation set and nothing is drawn.
    """
    split = (
        cases["split"] if "split" in cases else pd.Series([None] * len(cases), index=cases.index)
    )
    split = (
        split.astype(object)
        .where(split.notna(), None)
        .map(lambda s: None if s is None else str(s).strip().lower())
    )
    subjects = cases["subject_id"].astype(str)
    test_subjects = set(subjects[split.isin([h.lower() for h in holdout])])
    marked_val = set(subjects[split.isin(VAL_SPLITS)]) - test_subjects
    rest = sorted(set(subjects) - test_subjects)
    if marked_val:
        val_subjects = marked_val
    else:
        n_val = 0
        if len(rest) >= 2 and val_fraction > 0:
            n_val = min(len(rest) - 1, max(1, int(round(val_fraction * len(rest)))))
        order = np.random.default_rng(seed).permutation(len(rest))
        val_subjects = {rest[i] for i in order[:n_val]}
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for cid, sid in zip(cases["case_id"].astype(str), subjects):
        key = "test" if sid in test_subjects else "val" if sid in val_subjects else "train"
        out[key].append(cid)
    return out


def hidden_masks(
    cases: pd.DataFrame, labelled_train: Sequence[str], fraction: float, seed: int
) -> set[str]:
    """Training cases whose masks ``mask_fraction`` hides: all cases of the subjects not drawn.

    Draws ``ceil(fraction * n)`` (at least one) of the ``n`` subjects with a labelled
    training case; the other subjects' cases are treated as unlabelled.
    """
    if fraction >= 1.0 or not labelled_train:
        return set()
    subject = dict(zip(cases["case_id"].astype(str), cases["subject_id"].astype(str)))
    subjects = sorted({subject[c] for c in labelled_train})
    n_keep = max(1, int(np.ceil(fraction * len(subjects) - 1e-9)))
    order = np.random.default_rng(seed + 1).permutation(len(subjects))
    keep = {subjects[i] for i in order[:n_keep]}
    return {c for c in labelled_train if subject[c] not in keep}
