"""Per-muscle grading end to end, against the compartment-level run of the same cohort (issue 19).

Usage::

    python scripts/benchmark_muscle_level.py --workdir W [--json docs/benchmarks/muscle_level_p25.json]
        [--train-overrides trainer.max_epochs=16 ...] [--report]

What it runs, each stage as a separate process measured for wall time, CPU
seconds (the process and its reaped children) and peak resident memory
(``run_measured`` of ``benchmark_nnunet.py``), every command the one a user
types:

1. two phantom cohorts of the same draw: 25 subjects, ``preset=small``,
   ``grade_scale=extent4``, ``disease.groups={DM: 11, IMNM: 14}``, seed 0, one at
   ``label_level=muscle`` (``W/p25``: readers grade every muscle), one at
   ``label_level=compartment`` (``W/p25c``);
2. ``python -m nxp2seg.train data.cohort=... output_dir=...`` on each (the
   default command; ``--train-overrides`` only to shorten it), then
   ``python -m nxp2seg.predict`` on all 25 subjects;
3. ``python -m nxp2seg.evaluate ... split=test`` on the 5 held-out subjects:
   the muscle model against the muscle readers and, rolled up, against the
   compartment readers; the compartment model against the compartment readers;
4. ``python -m nxp2seg.analyze`` (mixed-effects comparison of the diagnoses,
   description, Table 1) of the readers and of each model's grades, on all
   subjects and on the test subjects alone, and ``scripts/compare_analyses.py``
   lining up each model's analysis with the readers'.

Every stage writes ``W/results/NAME.json`` and is skipped when that file exists,
so a killed run continues with the same command. ``--json`` gathers the figures
quoted in docs/evaluation.md and docs/analysis.md, each with the file it comes
from. ``--report`` only gathers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_nnunet import _stage, machine, run_measured

COMPARE = Path(__file__).resolve().parent / "compare_analyses.py"
COHORT_ARGS = ["subjects=25", "preset=small", "seed=0", "grade_scale=extent4",
               "disease.groups={DM: 11, IMNM: 14}"]
GROUPS = ["compare.by=diagnosis", "compare.groups=[DM,IMNM]"]
EXCLUDE = ["compare.exclude=[P001,P002,P003]"]   # the secondary analysis (seed 004's design)
EVAL_ARGS = ["split=test", "bootstrap=500", "hd95=false"]
LEVELS = {"m": "muscle", "c": "compartment"}


def _cn(t: str) -> str:
    """The cohort folder of a level (``m``: muscle, ``c``: compartment); models and predictions
    are ``{cohort}_model`` and ``{cohort}_pred``."""
    return "p25" if t == "m" else "p25c"


def stages(py: str, w: Path, train_overrides: list[str]) -> list[tuple[str, list[str]]]:
    """(name, command) of every stage, in order: both cohorts, then the muscle level, then the
    compartment level (train, predict, evaluate, analyze, compare)."""
    nx = [py, "-m"]
    out: list[tuple[str, list[str]]] = [
        (f"phantom_{t}", nx + ["nxp2seg.phantom", f"out={w / _cn(t)}", f"label_level={level}"] + COHORT_ARGS)
        for t, level in LEVELS.items()]
    evals = {"m": [("eval_m_test", "p25"), ("eval_m_test_vs_c", "p25c")], "c": [("eval_c_test", "p25c")]}
    for t in LEVELS:
        cohort, model, pred = w / _cn(t), w / f"{_cn(t)}_model", w / f"{_cn(t)}_pred"
        out.append((f"train_{t}", nx + ["nxp2seg.train", f"data.cohort={cohort}", f"output_dir={model}"]
                    + train_overrides))
        out.append((f"predict_{t}", nx + ["nxp2seg.predict", f"model={model / 'bundle'}", f"input={cohort}",
                                          f"output={pred}"]))
        for name, truth in evals[t]:
            out.append((name, nx + ["nxp2seg.evaluate", f"predictions={pred}", f"cohort={w / truth}",
                                    f"output={w / name}"] + EVAL_ARGS))
        for who, src in (("readers", []), ("model", [f"predictions={pred}"])):
            out.append((f"an_{t}_{who}", nx + ["nxp2seg.analyze", f"cohort={cohort}",
                                               f"output={w / f'an_{t}_{who}'}"] + src + GROUPS + EXCLUDE))
            out.append((f"an_{t}_{who}_test", nx + ["nxp2seg.analyze", f"cohort={cohort}",
                                                    f"output={w / f'an_{t}_{who}_test'}", "split=test",
                                                    "describe=false"] + src + GROUPS))
        for suffix in ("", "_test"):
            phantom = ["--phantom", str(cohort)] if t == "m" else []
            out.append((f"cmp_{t}{suffix}", [py, str(COMPARE), str(w / f"an_{t}_readers{suffix}"),
                                             str(w / f"an_{t}_model{suffix}"),
                                             "--out", str(w / f"cmp_{t}{suffix}.md"),
                                             "--json", str(w / f"cmp_{t}{suffix}.json")] + phantom))
    return out


# -- gathering ------------------------------------------------------------------------------

def _num(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def eval_figures(w: Path, name: str) -> dict:
    """The headline agreement figures of one ``evaluate`` output (``summary.json`` keys).

    ``compartment_dice_mean`` is the mean Dice of the 12 compartments (a muscle-level model's
    rolled up, ``segmentation.dice.{compartment region}``).
    """
    from nxp2seg.data.schema import COMPARTMENTS, SIDES, region_name
    from nxp2seg.report.html import _get  # summary.json's figure a.b.c, as the report reads it

    s = json.loads((w / name / "summary.json").read_text())
    keys = ["n_cases", "n_subjects", "segmentation.dice_mean", "segmentation.dice_mean_ci",
            "edema.kappa_quadratic.model_vs_mean", "edema.kappa_quadratic.model_vs_mean_ci",
            "edema.kappa_quadratic.rater_vs_rater", "edema.kappa_quadratic.rater_vs_rater_ci",
            "edema.kappa_unweighted.model_vs_mean", "station_score.icc", "station_score.icc_ci",
            "pattern.kappa"]
    fig = {"source": f"{name}/summary.json"}
    fig.update({k: _num(_get(s, k)) for k in keys})
    comp = [_get(s, f"segmentation.dice.{region_name(st, c, side)}")
            for st, cs in COMPARTMENTS.items() for c in cs for side in SIDES]
    comp = [d for d in comp if _num(d) is not None]
    if comp:
        fig["compartment_dice_mean"] = sum(comp) / len(comp)
        fig["compartment_dice_n"] = len(comp)
    return fig


def per_muscle(w: Path, name: str) -> list[dict]:
    """Per muscle, both sides pooled: the ``agreement_by_region.csv`` rows without a side."""
    from nxp2seg.data.schema import SIDES

    by = pd.read_csv(w / name / "agreement_by_region.csv")
    pooled = by[~by["region"].str.endswith(tuple(f"_{side}" for side in SIDES))]
    cols = ["region", "n", "dice_mean", "kappa_quadratic_model_vs_mean",
            "kappa_quadratic_rater_vs_rater", "mean_grade_model", "mean_grade_readers"]
    return [{c: _num(r.get(c)) for c in cols} for r in pooled.to_dict("records")]


def gather(w: Path, train_overrides: list[str]) -> dict:
    res = w / "results"
    timing = {t: {k: json.loads((res / f"train_{t}.json").read_text()).get(k)
                  for k in ("wall_s", "cpu_s", "peak_rss_gb", "load_before", "load_after", "measured_by")}
              for t in LEVELS if (res / f"train_{t}.json").is_file()}
    out = {"cohort": " ".join(COHORT_ARGS) + "; label_level=muscle (W/p25) or compartment (W/p25c); "
                     "test split 5 subjects (3 DM, 2 IMNM)",
           "training": "python -m nxp2seg.train data.cohort=COHORT output_dir=OUT "
                       + " ".join(train_overrides),
           "training_time": timing,
           "evaluate": "python -m nxp2seg.evaluate predictions=PRED cohort=COHORT output=OUT "
                       + " ".join(EVAL_ARGS),
           "machine": machine()}
    if (w / "eval_m_test" / "summary.json").is_file():
        out["muscle_model"] = {"test_vs_muscle_readers": {**eval_figures(w, "eval_m_test"),
                                                          "per_muscle": per_muscle(w, "eval_m_test")}}
    if (w / "eval_m_test_vs_c" / "summary.json").is_file():
        out.setdefault("muscle_model", {})["test_vs_compartment_readers"] = eval_figures(w, "eval_m_test_vs_c")
    if (w / "eval_c_test" / "summary.json").is_file():
        out["compartment_model"] = {"test": eval_figures(w, "eval_c_test")}
    for name in ("cmp_m", "cmp_m_test", "cmp_c", "cmp_c_test"):
        if (w / f"{name}.json").is_file():
            out[name] = json.loads((w / f"{name}.json").read_text())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--json", type=Path, help="write the gathered figures here")
    ap.add_argument("--train-overrides", nargs="*", default=[],
                    help="extra overrides of python -m nxp2seg.train (none: the default command)")
    ap.add_argument("--report", action="store_true", help="only gather what has finished")
    ap.add_argument("--list", action="store_true", help="print the commands and exit")
    args = ap.parse_args(argv)
    w = args.workdir.resolve()
    if args.list:
        for name, cmd in stages(sys.executable, w, args.train_overrides):
            print(f"{name}: {' '.join(cmd)}")
        return 0
    if not args.report:
        for name, cmd in stages(sys.executable, w, args.train_overrides):
            _stage(w / "results", name, lambda cmd=cmd, name=name: run_measured(cmd, w / "logs" / f"{name}.log"))
    out = gather(w, args.train_overrides)
    text = json.dumps(out, indent=1) + "\n"
    if args.json:
        args.json.write_text(text)
    print(text if not args.json else f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
