"""``analyze``'s work: the two motivating papers' analyses from a cohort's (or a model's) grades.

* :mod:`~nxp2seg.analysis.inputs` -- the readers' or the model's grades as tidy tables;
* :mod:`~nxp2seg.analysis.describe` -- seed paper 000's MRI description;
* :mod:`~nxp2seg.analysis.clinical` -- the score against clinical variables (Tables 1, 2);
* :mod:`~nxp2seg.analysis.compare` -- seed paper 004's per-muscle group comparison;
* :mod:`~nxp2seg.analysis.outputs`, :mod:`~nxp2seg.analysis.labels` -- files, page and labels.

:func:`run_analysis` runs what the config asks for; the statistics themselves
live in :mod:`nxp2seg.stats`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from nxp2seg.analysis.clinical import clinical_section
from nxp2seg.analysis.compare import SIDES_RULES, VALUES, compare_section
from nxp2seg.analysis.describe import describe_section
from nxp2seg.analysis.inputs import load_grades, subject_mri_table
from nxp2seg.analysis.labels import Labels
from nxp2seg.analysis.outputs import Writer, csv_bytes
from nxp2seg.io import atomic_write_bytes, atomic_write_text
from nxp2seg.stats.cohort import CATEGORICAL_TESTS, CONTINUOUS_TESTS, CORRELATIONS
from nxp2seg.stats.join import AnalysisError, check_subject_table, read_subject_table
from nxp2seg.stats.mixed import CORRECTIONS
from nxp2seg.stats.tables import QUANTILE_METHODS
from nxp2seg.stats.variables import NORMALITY_TESTS

__all__ = ["MRI_COLUMNS", "run_analysis"]

#: MRI-derived subject columns carried into the clinical table (usable as group_by / compare.by).
MRI_COLUMNS = ["thigh_score", "calf_score", "total_score", "thigh_pattern", "calf_pattern",
               "diffuse_lesion", "thigh_edema", "calf_edema"]


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


def _opts(cfg: DictConfig) -> dict[str, Any]:
    keys = ("id", "score", "columns", "types", "alpha", "normality", "tests", "group_by",
            "significant_only", "decimals", "percent_decimals", "p_decimals", "quantiles",
            "bootstrap", "seed", "variable_figures")
    return {k: _plain(cfg.get(k)) for k in keys}


def _stage(out: Path) -> Path:
    """A fresh folder beside ``out``: the results appear in ``out`` only once all are written."""
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def _publish(stage: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(stage.rglob("*")):
        if path.is_file():
            target = out / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    shutil.rmtree(stage, ignore_errors=True)


def run_analysis(cfg: DictConfig) -> dict[str, Any]:
    """Run the analysis from a config (``configs/analyze.yaml``); writes ``cfg.output``, returns the summary."""
    if not cfg.output:
        raise AnalysisError("output=DIR is required; see --help")
    _check_options(cfg)
    out = Path(cfg.output)
    opts = _opts(cfg)
    lab = Labels(_plain(cfg.labels), cfg.label_table)
    stage = _stage(out)
    try:
        summary = _run(cfg, opts, lab, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _publish(stage, out)
    return summary


def _run(cfg: DictConfig, opts: dict[str, Any], lab: Labels, stage: Path) -> dict[str, Any]:
    w = Writer(stage, decimals=int(cfg.decimals), p_decimals=int(cfg.p_decimals),
               formats=tuple(_plain(cfg.figure_formats)), dpi=int(cfg.dpi), figures=bool(cfg.figures))
    id_col = str(cfg.id)
    summary: dict[str, Any] = {"settings": {k: _plain(v) for k, v in cfg.items()}}
    if cfg.scores:  # a ready score table: the clinical tables only
        scores = read_subject_table(cfg.scores, id_col, "scores")
        clinical = read_subject_table(cfg.clinical, id_col, "clinical")
        summary["clinical"] = clinical_section(scores, clinical, w, lab, opts,
                                               paths=(str(cfg.scores), str(cfg.clinical)))
        title, intro = f"{lab(cfg.score)} against clinical variables", f"Scores: {cfg.scores}."
    else:
        gs = load_grades(cohort=cfg.cohort, predictions=cfg.predictions, source=str(cfg.source),
                         split=cfg.split)
        summary.update(source=gs.source, grade_scale=gs.scale.name, graded_level=gs.graded_level,
                       inputs=gs.inputs, notes=gs.notes, n_subjects=int(gs.subjects.shape[0]),
                       n_cases=int(gs.cases.shape[0]))
        subjects = subject_mri_table(gs)
        if cfg.clinical:
            clinical = read_subject_table(cfg.clinical, id_col, "clinical")
            clin_path = str(cfg.clinical)
        elif gs.clinical is not None:
            clinical = check_subject_table(gs.clinical, id_col, f"{cfg.cohort}/clinical.csv")
            clin_path = f"{cfg.cohort}/clinical.csv"
        else:
            clinical, clin_path = None, ""
        _check_requests(cfg, gs, subjects, clinical)  # before any long computation
        atomic_write_bytes(stage / "data_regions.csv", csv_bytes(gs.regions))
        atomic_write_bytes(stage / "data_subjects.csv", csv_bytes(subjects))
        if cfg.describe:
            summary["describe"] = describe_section(gs, w, lab, {**opts, "decimals": int(cfg.decimals)})
        if clinical is not None:
            keep = [c for c in MRI_COLUMNS if c != str(cfg.score)]
            summary["clinical"] = clinical_section(subjects.rename(columns={"subject_id": id_col}),
                                                   clinical, w, lab, opts,
                                                   paths=(f"{gs.source} grades", clin_path), keep=keep)
        elif cfg.group_by:
            raise AnalysisError("group_by needs a clinical table: give clinical=CSV or a cohort with "
                                "clinical.csv")
        if cfg.compare.by:
            both = subjects.rename(columns={"subject_id": id_col})
            if clinical is not None:
                extra = [c for c in clinical.columns if c not in both.columns]
                both = both.merge(clinical[[id_col, *extra]], on=id_col, how="left")
            copts = {**_plain(cfg.compare), "decimals": int(cfg.decimals),
                     "quantiles": str(cfg.quantiles), "alpha": float(cfg.alpha)}
            summary["compare"] = compare_section(gs, both.rename(columns={id_col: "subject_id"}),
                                                 w, lab, copts)
        who = {"readers": "the readers' grades", "model": "the model's predicted grades",
               "truth": "the phantom's true grades"}[gs.source]
        title = "nxp2seg analysis"
        intro = (f"From {who}: {summary['n_subjects']} subjects, {summary['n_cases']} cases, grade "
                 f"scale {gs.scale.name}, graded per {gs.graded_level}. Inputs: "
                 + ", ".join(f"{k}={v}" for k, v in gs.inputs.items() if v) + ".")
    summary["files"] = sorted(set(w.files))
    summary["figures"] = [f for f in summary["files"] if f.startswith("figures/")]
    atomic_write_text(stage / "analysis.md", w.markdown(title, intro))
    atomic_write_text(stage / "analysis.html", w.html(title, intro))
    atomic_write_text(stage / "summary.json",
                      json.dumps(_clean(summary), indent=2, allow_nan=False) + "\n")
    return summary


def _check_options(cfg: DictConfig) -> None:
    """Refuse an unknown choice before anything is read."""
    choices = [("normality", cfg.normality, NORMALITY_TESTS),
               ("tests.continuous", cfg.tests.continuous, CONTINUOUS_TESTS),
               ("tests.categorical", cfg.tests.categorical, CATEGORICAL_TESTS),
               ("tests.correlation", cfg.tests.correlation, CORRELATIONS),
               ("quantiles", cfg.quantiles, QUANTILE_METHODS),
               ("compare.correction", cfg.compare.correction, CORRECTIONS),
               ("compare.value", cfg.compare.value, VALUES),
               ("compare.sides", cfg.compare.sides, SIDES_RULES),
               ("compare.level", cfg.compare.level, ("auto", "muscle", "compartment")),
               ("compare.station", cfg.compare.station, ("thigh", "calf", "all")),
               ("source", cfg.source, ("auto", "readers", "model", "truth"))]
    for key, value, allowed in choices:
        if str(value) not in allowed:
            raise AnalysisError(f"{key}={value}: use one of {list(allowed)}")


def _check_requests(cfg: DictConfig, gs: Any, subjects: Any, clinical: Any) -> None:
    """Refuse a group_by / compare.by that cannot be honoured, naming what is available."""
    columns = set(subjects.columns) | (set(clinical.columns) if clinical is not None else set())
    if cfg.group_by and clinical is not None and str(cfg.group_by) not in columns:
        raise AnalysisError(f"group_by={cfg.group_by}: no such clinical or MRI column "
                            f"(columns: {sorted(columns - {str(cfg.id)})})")
    if cfg.compare.by:
        if str(cfg.compare.by) not in columns:
            raise AnalysisError(f"compare.by={cfg.compare.by}: no such column among the clinical and "
                                f"MRI columns ({sorted(columns - {'subject_id', str(cfg.id)})})")
        if str(cfg.compare.level) == "muscle" and gs.graded_level != "muscle":
            raise AnalysisError("compare.level=muscle: these grades are per compartment; the cohort "
                                "(or model) must grade muscles (dataset.json regions per muscle)")


def _clean(o: Any) -> Any:
    """JSON-ready: NaN/inf -> None, numpy scalars -> Python, tuples -> lists, the rest as text."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, (int, float, str, bool)) or o is None:
        return o
    return str(o)
