"""``python -m nxp2seg.evaluate predictions=DIR cohort=DIR output=DIR [key=value ...]``: agreement with readers.

Compares a prediction folder (``python -m nxp2seg.predict``) with the cohort's
readers and label maps: is the model as consistent with the readers as the
readers are with each other? Writes, in ``output``:

* ``summary.json`` -- every key of DESIGN.md's evaluation contract, each
  agreement figure with ``{key}_ci`` (95% bootstrap interval resampled by
  subject, seeded), failed cases, notes and settings;
* ``report.html`` -- one self-contained page: headline table, Bland-Altman,
  scatter plots, confusion matrices, Dice per region, subject x region heatmap;
* CSV tables: ``agreement.csv`` (every figure, flat), ``agreement_by_region.csv``,
  ``region_grades.csv``, ``case_scores.csv``, ``subject_scores.csv``,
  ``segmentation.csv``, ``confusion_*.csv``.

Options and defaults: ``configs/evaluate.yaml`` (``--help`` prints them). What
every key means: ``docs/evaluation.md``.

Exit codes: 0 the evaluation was written (predicted cases that failed are
listed and excluded); 2 nothing could be evaluated (a bad option, a missing or
unusable prediction folder, cohort or table, no predicted case in the cohort;
the message names the file and the fix).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from nxp2seg.config_utils import load_cli_config

if TYPE_CHECKING:
    from nxp2seg.evaluation.inputs import EvaluationSet
    from nxp2seg.evaluation.tables import PairedTables

__all__ = ["evaluate", "load_config", "main"]

# Package imports of the heavy layers (scikit-learn, SciPy, matplotlib) are inside the functions that use
# them: `python -X importtime` / wall time on this 2-core machine (shared, load ~12):
# import nxp2seg.evaluate 0.4 s; with evaluation and report (scikit-learn, SciPy, matplotlib) at module top 5 s, paid by every `--help` and
# every refused argument.
log = logging.getLogger("nxp2seg.evaluate")
CONFIG = Path(__file__).parent / "configs" / "evaluate.yaml"


def load_config(overrides: list[str]) -> DictConfig:
    """``configs/evaluate.yaml`` with ``key=value`` overrides (unknown keys are refused)."""
    return load_cli_config(CONFIG, overrides)


def _settings(cfg: DictConfig) -> dict[str, Any]:
    for key in ("predictions", "cohort", "output"):
        if not cfg.get(key):
            raise ValueError(f"{key}=DIR is required; see --help")
    n_boot, ci, margin = int(cfg.bootstrap), float(cfg.ci), float(cfg.margin)
    if n_boot < 1:
        raise ValueError(f"bootstrap={n_boot}: give a number of resamples >= 1 (2000 is usual)")
    if not 0 < ci < 1:
        raise ValueError(f"ci={ci}: give a confidence level between 0 and 1, e.g. 0.95")
    if margin < 0:
        raise ValueError(f"margin={margin}: give a non-negative margin in kappa units, e.g. 0.10")
    return {"predictions": str(Path(cfg.predictions).resolve()), "cohort": str(Path(cfg.cohort).resolve()),
            "output": str(Path(cfg.output).resolve()),
            "split": None if cfg.split is None else str(cfg.split), "bootstrap": n_boot,
            "seed": int(cfg.seed), "ci": ci, "margin": margin, "hd95": bool(cfg.hd95)}


def _check_output(out: Path, cohort: Path) -> Path:
    if out == cohort or cohort in out.parents:
        raise ValueError(f"output={out} is inside the cohort {cohort}; inputs are never written to, "
                         "choose another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output={out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_tables(out: Path, tables, seg, by_region, flat, mats, overview) -> None:
    from nxp2seg.io import write_csv

    write_csv(flat, out / "agreement.csv", float_format="%.10g")
    write_csv(by_region, out / "agreement_by_region.csv")
    write_csv(tables.regions, out / "region_grades.csv")
    write_csv(overview, out / "case_scores.csv")
    write_csv(tables.subjects, out / "subject_scores.csv")
    write_csv(seg, out / "segmentation.csv")
    for name, m in mats.items():
        write_csv(m.rename_axis(index="readers \\ model").reset_index(), out / f"confusion_{name}.csv")


def _grading_possible(es: EvaluationSet, tables: PairedTables) -> tuple[bool, list[str]]:
    """Whether grading figures can be computed, and the notes that say what is missing."""
    notes = list(es.notes)
    graded = es.has_grading and "edema_grade_mean" in tables.regions and \
        bool(tables.regions["edema_grade_mean"].notna().any())
    if es.has_grading and not graded:
        notes.append("the cohort has no readers' grades for the evaluated cases: grading figures are null")
    if len(tables.raters) < 2:
        notes.append(f"{len(tables.raters)} reader(s) in grades.csv: reader-vs-reader figures and "
                     "non-inferiority need two")
    return graded, notes


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation from a config; writes the outputs and returns the summary."""
    from nxp2seg.evaluation.agreement import (
        grading_figures,
        per_region_table,
        run_figures,
        segmentation_figures,
    )
    from nxp2seg.evaluation.inputs import load_evaluation_set
    from nxp2seg.evaluation.report import case_overview, report_figures
    from nxp2seg.data.schema import STRUCTURES
    from nxp2seg.evaluation.segmentation import evaluate_segmentation
    from nxp2seg.evaluation.summary import build_summary, flat_figures
    from nxp2seg.evaluation.tables import build_tables
    from nxp2seg.io import atomic_write_text
    from nxp2seg.report.html import render_evaluation_report

    settings = _settings(cfg)
    es = load_evaluation_set(settings["predictions"], settings["cohort"], settings["split"])
    out = _check_output(Path(settings["output"]), Path(settings["cohort"]))
    log.info("evaluating %d cases of %d subjects (%d failed in prediction, excluded)",
             len(es.cases), es.n_subjects, len(es.failed))
    tables = build_tables(es)
    log.info("segmentation: comparing seg.nii.gz with labelsTr for the cases that have label maps")
    seg, seg_notes = evaluate_segmentation(es, with_hd95=settings["hd95"], progress=log.debug)
    graded, notes = _grading_possible(es, tables)
    notes += seg_notes
    regions = es.schema.region_names()
    pooled: dict[str, list[str]] = {}
    if es.schema.graded_level == "muscle":  # the compartments' Dice beside the muscles'
        regions += es.schema.compartment_schema().region_names()
        for name in es.schema.region_names():  # and each muscle, both sides together
            muscle = es.schema.muscle_of(name)
            if muscle is not None:
                pooled.setdefault(f"{es.schema.regions[name].station}_{muscle}", []).append(name)
    g_figs = grading_figures(tables.raters, es.scale)
    s_figs = segmentation_figures(regions, STRUCTURES)
    run = (g_figs if graded else []) + s_figs
    results = run_figures(run, {"regions": tables.regions, "cases": tables.cases,
                                "subjects": tables.subjects, "segmentation": seg},
                          n_boot=settings["bootstrap"], seed=settings["seed"], ci=settings["ci"])
    summary, mats = build_summary(es, tables, seg, s_figs + g_figs, results,
                                  margin=settings["margin"], settings=settings, notes=notes)
    overview = case_overview(tables, seg)
    _write_tables(out, tables, seg, per_region_table(tables, seg, es.scale, regions, pooled),
                  flat_figures(s_figs + g_figs, results, summary), mats, overview)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    if cfg.report:
        figs = report_figures(tables, seg, summary, mats, es.scale, es.schema, graded)
        page = render_evaluation_report(summary, figs, overview, es.failed)
        atomic_write_text(out / "report.html", page)
    return summary


def _headline(summary: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "–" if x is None else f"{x:.3f}"

    e, s = summary.get("edema", {}), summary.get("segmentation", {})
    ni = e.get("noninferiority", {})
    verdict = {True: "passed", False: "not passed", None: "not computed"}[ni.get("passed")]
    return (f"{summary['n_cases']} cases, {summary['n_subjects']} subjects ({summary['n_failed']} failed, "
            f"excluded); edema quadratic kappa model vs readers' mean "
            f"{f(e.get('kappa_quadratic', {}).get('model_vs_mean'))}, reader vs reader "
            f"{f(e.get('kappa_quadratic', {}).get('rater_vs_rater'))}; non-inferiority {verdict}; "
            f"mean Dice {f(s.get('dice_mean'))}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(CONFIG.read_text())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(argv)
        summary = evaluate(cfg)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"nxp2seg.evaluate: {e}", file=sys.stderr)
        return 2
    for case in summary["failed_cases"]:
        print(f"FAILED (excluded) {case['case_id']}: {case.get('error', '')}", file=sys.stderr)
    print(_headline(summary))
    print(f"evaluation written to {Path(cfg.output).resolve()} (summary.json, report.html, CSV tables)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
