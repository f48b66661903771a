#!/usr/bin/env python
"""Does the grader learn what it needs from the cohort? Retrain on a phantom whose contrast is shifted.

Usage:
    python scripts/benchmark_shifted_contrast.py --out DIR [--shift 0.3] [--seed 1]
        [--subjects 48] [--preset small] [train.KEY=VALUE ...]
    python scripts/benchmark_shifted_contrast.py --evaluation EVAL_DIR     # the targets of an evaluation

The phantom's contrast table is config (``contrast.<tissue>.<channel>=[lo,hi]``,
``nxp2seg.phantom.contrast``). This script draws one factor per tissue and
channel (T1 and STIR of every tissue but normal muscle, the unit) uniformly in
``[1 - shift, 1 + shift]`` (seeded), writes a cohort with every range scaled by
its factor, and runs the product on it exactly as on the default phantom:
``python -m nxp2seg.train`` (segmenter and grader, default config),
``python -m nxp2seg.predict split=test``, ``python -m nxp2seg.evaluate``.
It prints the issue's agreement targets on the held-out test subjects, each
with its 95% subject-bootstrap interval and whether it is met, and writes them
with the factors to ``DIR/benchmark_shifted_contrast.json``. About as long as
the default training (20-25 minutes on 2 CPU cores) plus a few minutes.

``--evaluation`` only reads an existing ``summary.json`` (e.g. the default
demo's) and prints the same targets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: Tissues whose contrast is shifted (normal muscle is the unit: 1 by definition).
TISSUES = ("fat", "marrow", "septa", "muscle_septa", "cortex", "skin", "vessel", "mild_edema",
           "moderate_edema", "subcutaneous_edema", "fascial_edema", "intramuscular_fat")
CHANNELS = ("t1", "stir")


def shifted_contrast(shift: float, seed: int) -> dict[str, list[float]]:
    """``contrast.<tissue>.<channel>`` -> the scaled ``[lo, hi]`` (and the factor), from the defaults."""
    from nxp2seg.phantom.contrast import ContrastConfig

    rng = np.random.default_rng(seed)
    table = ContrastConfig()
    out = {}
    for tissue in TISSUES:
        ranges = getattr(table, tissue)
        for channel in CHANNELS:
            factor = float(rng.uniform(1.0 - shift, 1.0 + shift))
            lo, hi = getattr(ranges, channel)
            out[f"contrast.{tissue}.{channel}"] = [round(lo * factor, 4), round(hi * factor, 4), round(factor, 4)]
    return out


def _get(summary: dict, key: str):
    node = summary
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def targets(summary: dict) -> list[dict]:
    """Issue 18's agreement targets on an evaluation ``summary.json``: value, interval, bound, met."""
    rows = []

    def add(name: str, key: str, bound: float | None, what: str) -> None:
        value = _get(summary, key)
        parent, last = key.rsplit(".", 1)
        ci = _get(summary, f"{parent}.{last}_ci")
        rows.append({"target": name, "key": key, "value": value, "ci": ci, "bound": bound, "rule": what,
                     "met": None if value is None or bound is None else bool(value >= bound - 1e-12)})

    def readers(key: str) -> float | None:
        v = _get(summary, key)
        return None if v is None else float(v)

    kr, fr, pr = (readers("edema.kappa_quadratic.rater_vs_rater"), readers("fat.kappa_quadratic.rater_vs_rater"),
                  readers("pattern.kappa_rater_vs_rater"))
    ir = readers("edema.icc.rater_vs_rater")
    add("edema kappa", "edema.kappa_quadratic.model_vs_mean", None if kr is None else max(0.80, kr - 0.05),
        f">= max(0.80, readers {kr if kr is None else round(kr, 3)} - 0.05)")
    add("edema ICC", "edema.icc.model_vs_mean", None if ir is None else max(0.85, ir - 0.05),
        f">= max(0.85, readers {ir if ir is None else round(ir, 3)} - 0.05)")
    add("station-score ICC", "station_score.icc", 0.90, ">= 0.90")
    add("fat kappa", "fat.kappa_quadratic.model_vs_mean", None if fr is None else fr - 0.05,
        f">= readers {fr if fr is None else round(fr, 3)} - 0.05")
    add("pattern kappa", "pattern.kappa", None if pr is None else pr - 0.10,
        f">= readers {pr if pr is None else round(pr, 3)} - 0.10")
    for flag in ("fascial_edema", "subcutaneous_edema"):
        add(f"{flag} AUC", f"{flag}.auc", 0.90, ">= 0.90")
        add(f"{flag} sensitivity", f"{flag}.sensitivity", 0.60, ">= 0.60 at the reported flag")
        add(f"{flag} specificity", f"{flag}.specificity", 0.90, ">= 0.90 at the reported flag")
    return rows


def print_targets(rows: list[dict]) -> None:
    for r in rows:
        v = "n/a" if r["value"] is None else f"{r['value']:.3f}"
        ci = "" if not r["ci"] or None in r["ci"] else f" [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        met = {True: "met", False: "NOT met", None: "?"}[r["met"]]
        print(f"  {r['target']:32s} {v}{ci:18s} {r['rule']:42s} {met}")


def _run(args: list[str], what: str) -> None:
    print(f"$ {' '.join(args)}", flush=True)
    proc = subprocess.run(args)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="working folder (cohort, train, predictions, evaluation)")
    ap.add_argument("--shift", type=float, default=0.3, help="factors drawn in [1 - shift, 1 + shift]")
    ap.add_argument("--seed", type=int, default=1, help="seed of the factors and of the phantom")
    ap.add_argument("--subjects", type=int, default=48)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--evaluation", type=Path, help="only print the targets of this evaluation folder")
    ap.add_argument("train", nargs="*", help="train.KEY=VALUE passed to nxp2seg.train as KEY=VALUE")
    args = ap.parse_args()
    if args.evaluation:
        print_targets(targets(json.loads((args.evaluation / "summary.json").read_text())))
        return
    if args.out is None:
        ap.error("--out is required (or --evaluation)")
    out, py = args.out, sys.executable
    out.mkdir(parents=True, exist_ok=True)
    factors = shifted_contrast(args.shift, args.seed)
    cohort = out / "cohort"
    t0 = time.perf_counter()
    if not (cohort / "dataset.json").exists():
        overrides = [f"{k}=[{lo},{hi}]" for k, (lo, hi, _) in factors.items()]
        _run([py, "-m", "nxp2seg.phantom", f"out={cohort}", f"subjects={args.subjects}", f"preset={args.preset}",
              f"seed={args.seed}", *overrides], "phantom")
    t_phantom = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not (out / "train" / "bundle" / "bundle.json").exists():
        extra = [a.removeprefix("train.") for a in args.train]
        _run([py, "-m", "nxp2seg.train", f"data.cohort={cohort.resolve()}", f"output_dir={(out / 'train').resolve()}",
              *extra], "training")
    t_train = time.perf_counter() - t0
    _run([py, "-m", "nxp2seg.predict", f"model={out / 'train' / 'bundle'}", f"input={cohort}", "split=test",
          f"output={out / 'predictions'}"], "prediction")
    _run([py, "-m", "nxp2seg.evaluate", f"predictions={out / 'predictions'}", f"cohort={cohort}",
          f"output={out / 'evaluation'}"], "evaluation")
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    rows = targets(summary)
    print(f"\ncontrast shifted by up to +-{args.shift:.0%} (seed {args.seed}); held-out test subjects:")
    print_targets(rows)
    report = {"shift": args.shift, "seed": args.seed, "factors": {k: v[2] for k, v in factors.items()},
              "ranges": {k: v[:2] for k, v in factors.items()}, "targets": rows,
              "dice_mean": _get(summary, "segmentation.dice_mean"),
              "seconds": {"phantom": round(t_phantom, 1), "train": round(t_train, 1)}}
    (out / "benchmark_shifted_contrast.json").write_text(json.dumps(report, indent=1))
    print(f"written to {out / 'benchmark_shifted_contrast.json'}")


if __name__ == "__main__":
    main()
