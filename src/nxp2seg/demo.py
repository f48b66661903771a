"""The main job on the built-in phantom cohort, end to end.

``python -m nxp2seg.demo [out=DIR] [subjects=N] [preset=small] [seed=0]``

1. generate the phantom cohort (skipped when ``DIR/cohort`` already holds one),
2. verify it against the dataset contract,
3. summarise it (cases, subjects, reader agreement, pattern counts) and draw
   the phantom figure,
4. train the model on its training subjects (``python -m nxp2seg.train``,
   about 15 minutes on 2 CPU cores) and score the held-out test subjects,
5. predict the held-out test exams with the trained bundle
   (``python -m nxp2seg.predict input=COHORT split=test``): segmentations,
   grades, scores, QC pictures and tables,
6. evaluate the predictions against the readers and the label maps
   (``python -m nxp2seg.evaluate``): ``summary.json`` and ``report.html``,

and print where everything is. ``train=false`` stops after step 3; any
``train.KEY=VALUE`` is passed to the trainer as ``KEY=VALUE`` (e.g.
``train.experiment=smoke``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

__all__ = ["main", "run_demo"]

# Package imports are inside the functions that use them: import nxp2seg.demo takes 0.13 s,
# 5.9 s with the phantom generator, its figure and the verifier at module top (wall time on this
# 2-core machine, shared), paid by every `--help` and refused argument. The training it runs
# starts in a subprocess of its own.


def run_demo(
    out: str | Path = "outputs/demo",
    subjects: int = 48,
    preset: str = "small",
    seed: int = 0,
    train: bool | dict = True,
) -> dict:
    """Run the demo steps; returns paths and headline numbers."""
    from rich.console import Console

    from nxp2seg.data.cohort import Cohort
    from nxp2seg.data.verify import verify_cohort
    from nxp2seg.phantom import generate_cohort

    console = Console()
    out = Path(out)
    cohort_dir = out / "cohort"
    t0 = time.perf_counter()
    if (cohort_dir / "dataset.json").exists():
        console.print(f"[bold]1/6[/bold] phantom cohort already at {cohort_dir} (delete it to regenerate)")
    else:
        console.print(f"[bold]1/6[/bold] generating the phantom cohort: {subjects} subjects, preset {preset}, seed {seed}")
        generate_cohort(cohort_dir, subjects=subjects, preset=preset, seed=seed, progress=True)
    console.print("[bold]2/6[/bold] verifying the cohort against the dataset contract")
    report = verify_cohort(cohort_dir)
    if not report.ok:
        console.print(report.to_dataframe().to_string())
        raise SystemExit(f"verify found {len(report.errors)} errors in {cohort_dir}")
    console.print(f"    cohort OK ({len(report.warnings)} warnings)")
    console.print("[bold]3/6[/bold] summarising the cohort")
    cohort = Cohort.open(cohort_dir)
    summary = _summarise(cohort)
    figure = out / "phantom_figure.png"
    from nxp2seg.phantom.figure import phantom_figure

    phantom_figure(cohort_dir, figure)
    console.print(f"    cases {summary['n_cases']}, subjects {summary['n_subjects']}, "
                  f"inter-reader quadratic kappa (edema) {summary['kappa_rater_vs_rater']:.3f}")
    console.print(f"    thigh patterns (reader A): {summary['thigh_patterns']}")
    result = {"cohort": cohort_dir, "figure": figure, **summary}
    if train is not False:
        extra = train if isinstance(train, dict) else {}
        console.print("[bold]4/6[/bold] training on the training subjects (python -m nxp2seg.train)")
        result.update(_train(cohort_dir, out / "train", extra))
        console.print("[bold]5/6[/bold] predicting the held-out test exams (python -m nxp2seg.predict)")
        result.update(_predict(result["bundle"], cohort_dir, out / "predictions"))
        console.print("[bold]6/6[/bold] evaluating against the readers (python -m nxp2seg.evaluate)")
        result.update(_evaluate(result["predictions"], cohort_dir, out / "evaluation"))
    console.print(f"[green]done in {time.perf_counter() - t0:.0f} s[/green]")
    console.print(f"cohort:  {cohort_dir.resolve()}")
    console.print(f"figure:  {figure.resolve()}")
    if "bundle" in result:
        console.print(f"model:   {result['bundle']}")
        console.print(f"test:    {result['test_summary']}")
    if "predictions" in result:
        console.print(f"predictions: {result['predictions']}  ({result['predict_summary']})")
    if "report" in result:
        console.print(f"evaluation: {result['evaluation_headline']}")
        console.print(f"report:  {result['report']}")
    return result


def _train(cohort_dir: Path, out: Path, extra: dict) -> dict:
    """Run ``python -m nxp2seg.train`` on the cohort; returns the bundle path and its test summary."""
    import json
    import subprocess

    if (out / "bundle" / "bundle.json").exists():
        print(f"    model bundle already at {out / 'bundle'} (delete {out} to retrain)")
    else:
        args = [f"data.cohort={cohort_dir.resolve()}", f"output_dir={out.resolve()}"]
        args += [f"{k}={v}" for k, v in _flatten(extra).items()]
        proc = subprocess.run([sys.executable, "-m", "nxp2seg.train", *args])
        if proc.returncode != 0:
            raise SystemExit(f"training failed (exit {proc.returncode}); see {out}")
    validation = json.loads((out / "bundle" / "validation.json").read_text())
    test = validation.get("test") or {}
    summary = {k: round(v, 4) for k, v in test.items() if isinstance(v, (int, float)) and "mean" in k}
    return {"bundle": (out / "bundle").resolve(), "test_summary": summary}


def _predict(bundle: Path, cohort_dir: Path, out: Path) -> dict:
    """``python -m nxp2seg.predict`` on the cohort's test split; returns where and how it went."""
    import subprocess

    args = [f"model={bundle}", f"input={cohort_dir.resolve()}", "split=test", f"output={out.resolve()}"]
    proc = subprocess.run([sys.executable, "-m", "nxp2seg.predict", *args], capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-2000:] if proc.returncode else "")
    line = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode == 2:
        raise SystemExit(f"prediction could not run: {proc.stderr.strip()[-500:]}")
    return {"predictions": out.resolve(), "predict_summary": line}


def _evaluate(predictions: Path, cohort_dir: Path, out: Path) -> dict:
    """``python -m nxp2seg.evaluate`` on the predictions; returns the report path and headline figures."""
    import json
    import subprocess

    args = [f"predictions={predictions}", f"cohort={cohort_dir.resolve()}", f"output={out.resolve()}"]
    proc = subprocess.run([sys.executable, "-m", "nxp2seg.evaluate", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"evaluation failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    summary = json.loads((out / "summary.json").read_text())

    def fig(*path: str) -> str:
        node: object = summary
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        return "n/a" if node is None else f"{node:.3f}"

    headline = (f"Dice {fig('segmentation', 'dice_mean')}, edema kappa model vs readers' mean "
                f"{fig('edema', 'kappa_quadratic', 'model_vs_mean')} (readers vs each other "
                f"{fig('edema', 'kappa_quadratic', 'rater_vs_rater')}), station-score ICC "
                f"{fig('station_score', 'icc')}")
    return {"report": (out / "report.html").resolve(), "summary": (out / "summary.json").resolve(),
            "evaluation_headline": headline}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _summarise(cohort) -> dict:
    from sklearn.metrics import cohen_kappa_score

    g = cohort.grades
    raters = sorted(g["rater"].unique())
    wide = g.pivot_table(index=["case_id", "region"], columns="rater", values="edema_grade")
    kappa = float("nan")
    if len(raters) >= 2:
        pair = wide[[raters[0], raters[1]]].dropna()
        kappa = float(cohen_kappa_score(pair[raters[0]].astype(int), pair[raters[1]].astype(int), weights="quadratic"))
    p = cohort.patterns.merge(cohort.cases[["case_id", "station"]], on="case_id")
    thigh = p[(p["station"] == "thigh") & (p["rater"] == raters[0])]["pattern"].value_counts().to_dict()
    return {
        "n_cases": len(cohort.cases),
        "n_subjects": int(cohort.cases["subject_id"].nunique()),
        "kappa_rater_vs_rater": kappa,
        "thigh_patterns": thigh,
    }


def main(argv: list[str] | None = None) -> int:
    from nxp2seg.phantom.__main__ import parse_overrides

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        opts = parse_overrides(argv)
        unknown = set(opts) - {"out", "subjects", "preset", "seed", "train"}
        if unknown:
            raise ValueError(f"unknown demo options {sorted(unknown)}; use out=, subjects=, preset=, seed=, train=")
    except ValueError as e:
        print(f"nxp2seg.demo: {e}", file=sys.stderr)
        return 2
    run_demo(**opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
