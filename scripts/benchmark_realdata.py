#!/usr/bin/env python
"""nxp2seg on the real thighs of ../shared/realdata/huashan-thigh (docs/realdata.md).

Usage (long, 1-3 hours on 2 shared cores: run it niced, outside the locks)::

    nice -n 10 python scripts/benchmark_realdata.py \\
        --data /work/shared/realdata/huashan-thigh --out OUT \\
        --dixon-bundle DIXON_BUNDLE [--t1stir-bundle T1STIR_BUNDLE] [--steps N]

Stages (each skipped when its results are already in OUT, so a stopped run resumes):

1. **convert** the three exams with ``python -m nxp2seg.data.convert`` (IDEAL fat
   as channel FAT, water as WATER; the ITK-SNAP table; ``AM`` is the authors'
   adductor group; ``side: auto``) at compartment and at muscle level.
2. **zero-shot**: ``predict`` with the Dixon-phantom bundle and, given, the
   default T1/STIR bundle (fat given as T1, water as STIR), all three exams.
3. **leave one subject out**, per held-out subject: fine-tune the Dixon-phantom
   bundle on the other two (compartment level; muscle level), and train the
   same network from scratch (compartment level, the bundle's resolution and
   schedule, a from-scratch learning rate), then predict the held-out exam.
4. **scores** against the authors' labels (rolled up to compartments, sides
   split at the gap): Dice per region over the whole stack and over the slices
   the authors labelled (their labels stop short in the proximal slices), L/R
   swaps, muscle-level Dice, and ``fat_fraction`` from the fine-tuned
   predictions against the same estimator inside the authors' labels; the OOD
   guard's ``ood_score`` and warnings; minutes per stage.
5. **guard on the phantom** (with ``--t1stir-bundle``): unseen phantom exams (seed
   777) of the bundle's preset, T1/STIR and Dixon given as T1/STIR: how many
   get ``input_unlike_training``.

Writes ``OUT/summary.json`` and ``OUT/tables/*.csv``; QC pictures of every
fold in ``OUT/qc/`` (real images: they stay out of the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SUBJECTS = ("001", "002", "003")
LABEL_TABLE = "label_descriptions_ITK-SNAP.label"
ALIASES = {"AM": "adductors"}  # ABOUT.md: label 6 "AM" is the adductor group, not adductor magnus


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], logfile: Path) -> float:
    """Run a command (its output to ``logfile``); raise with the log's tail when it fails."""
    t0 = time.perf_counter()
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        tail = logfile.read_text()[-3000:]
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}\n{tail}")
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------
# cohorts
# ---------------------------------------------------------------------------


def convert(data: Path, out: Path, level: str, as_t1stir: bool = False) -> Path:
    """The three exams as a cohort at ``level``: channels FAT, WATER, or with ``as_t1stir`` the fat
    image declared as T1 and the water image as STIR (to fine-tune a T1/STIR bundle; the images are
    the same files)."""
    name = f"{level}_as_t1stir" if as_t1stir else level
    cohort = out / "cohorts" / name
    if (cohort / "dataset.json").exists():
        return cohort
    spec = out / "work" / f"spec_{name}.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    first, second = ("t1", "stir") if as_t1stir else ("fat", "water")
    exams = [
        {"subject_id": f"H{s}", "station": "thigh",
         first: str(data / "Input_data" / f"Thigh_{s}_0000.nii.gz"),
         second: str(data / "Input_data" / f"Thigh_{s}_0001.nii.gz"),
         "label": str(data / "Output_segmentation" / f"Thigh_{s}.nii.gz")}
        for s in SUBJECTS
    ]
    import yaml

    spec.write_text(yaml.safe_dump({"label_table": str(data / LABEL_TABLE), "aliases": ALIASES,
                                    "side": "auto", "name": "huashan-thigh", "exams": exams}))
    run([sys.executable, "-m", "nxp2seg.data.convert", f"spec={spec}", f"out={cohort}", f"level={level}"],
        out / "logs" / f"convert_{name}.txt")
    return cohort


def fold_cohort(src: Path, dst: Path, held_out: str) -> Path:
    """``src`` with the held-out subject as ``test`` and the others as ``train`` (files linked)."""
    if (dst / "dataset.json").exists():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr"):
        (tmp / sub).mkdir(parents=True)
        for f in (src / sub).iterdir():
            os.symlink(f.resolve(), tmp / sub / f.name)
    cases = pd.read_csv(src / "cases.csv", dtype=str, keep_default_na=False)
    cases["split"] = np.where(cases["subject_id"] == f"H{held_out}", "test", "train")
    cases.to_csv(tmp / "cases.csv", index=False)
    for f in ("grades.csv", "patterns.csv"):
        if (src / f).exists():
            shutil.copy(src / f, tmp / f)
    shutil.copy(src / "dataset.json", tmp / "dataset.json")
    tmp.rename(dst)
    return dst


# ---------------------------------------------------------------------------
# training and prediction
# ---------------------------------------------------------------------------


def train(out_dir: Path, cohort: Path, overrides: list[str], logfile: Path) -> tuple[Path, dict]:
    """Train (skipped when ``out_dir`` holds a bundle) and return the bundle and its schedule: optimizer
    steps, patches per volume, learning rate (read from the bundle's config, so a resumed benchmark
    reports what each cached fold was trained with) and wall / CPU minutes (``timing.json``; NaN for a
    fold trained before timings were written)."""
    bundle = out_dir / "bundle"
    timing = out_dir / "timing.json"
    if not (bundle / "bundle.json").exists():
        cpu0 = _children_cpu()
        seconds = run([sys.executable, "-m", "nxp2seg.train", f"data.cohort={cohort}", f"output_dir={out_dir}",
                       "data.loader.verify_images=false", "callbacks.progress_bar.refresh_rate=0", *overrides],
                      logfile)
        timing.write_text(json.dumps({"wall_s": round(seconds, 1), "cpu_s": round(_children_cpu() - cpu0, 1)}))
    from nxp2seg.models.bundle import load_bundle

    cfg = load_bundle(bundle).config
    t = json.loads(timing.read_text()) if timing.exists() else {}
    return bundle, {"steps": int(cfg.trainer.max_steps), "patches": int(cfg.data.sampling.num_samples),
                    "lr": float(cfg.model.optimizer.lr), "train_minutes": t.get("wall_s", float("nan")) / 60,
                    "train_cpu_minutes": t.get("cpu_s", float("nan")) / 60}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def predict(bundle: Path, cohort: Path, out_dir: Path, logfile: Path, split: str | None = None) -> float:
    if (out_dir / "cases.csv").exists():
        return float("nan")
    cmd = [sys.executable, "-m", "nxp2seg.predict", f"model={bundle}", f"input={cohort}", f"output={out_dir}",
           "progress=false"]
    if split:
        cmd.append(f"split={split}")
    return run(cmd, logfile)


# ---------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = float(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / s if s else float("nan")


def score_case(pred_dir: Path, cohort: Path, case_id: str) -> dict:
    """Compartment Dice (and muscle-level Dice when the cohort is at muscle level) of one exam."""
    from nxp2seg.data.cohort import Cohort
    from nxp2seg.data.schema import default_compartment_schema

    c = Cohort.open(cohort)
    schema = c.dataset.schema
    truth = np.asarray(nib.load(c.label_path(case_id)).dataobj)
    pred_img = nib.load(pred_dir / case_id / "seg.nii.gz")
    pred = np.asarray(pred_img.dataobj)
    comp = default_compartment_schema()
    lut = schema.rollup_lut()
    t_c, p_c = lut[truth], lut[pred]
    labelled = (truth > 0).any(axis=(0, 1))  # slices the authors labelled
    row = {"case_id": case_id}
    for name in comp.region_names("thigh"):
        v = comp.labels[name]
        row[f"dice/{name}"] = _dice(t_c == v, p_c == v)
        row[f"dice_labelled_slices/{name}"] = _dice((t_c == v)[..., labelled], (p_c == v)[..., labelled])
    swaps = 0
    for name in comp.region_names("thigh"):
        other = name.replace("_right", "_LEFT").replace("_left", "_right").replace("_LEFT", "_left")
        true = t_c == comp.labels[name]
        if true.sum() and (p_c[true] == comp.labels[other]).mean() > 0.5:
            swaps += 1
    row["lr_swaps"] = swaps
    if schema.level == "muscle":
        for name, v in schema.labels.items():
            if name.endswith(("_right", "_left")) and not name.startswith(("subcutaneous", "calf")) and (truth == v).any():
                row[f"muscle_dice/{name}"] = _dice(truth == v, pred == v)
    report_path = pred_dir / case_id / "report.json"  # absent for another tool's segmentation (nnU-Net)
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    row["ood_score"] = report.get("ood_score")
    row["warnings"] = ";".join(report.get("warnings") or [])
    return row


def fat_fraction_rows(pred_dir: Path, cohort: Path, case_id: str, from_seg: bool = False) -> list[dict]:
    """``fat_fraction`` of the predicted regions vs the same estimator inside the authors' labels.

    The prediction's own ``regions.csv`` (what ``predict`` reports on a Dixon cohort), or with
    ``from_seg`` the estimator applied to the predicted ``seg.nii.gz`` (a T1/STIR-declared cohort,
    where ``predict`` computes none, and another tool's segmentation). Channel 0 is the fat image,
    channel 1 the water image in both cohorts.
    """
    from nxp2seg.data.cohort import Cohort
    from nxp2seg.data.schema import default_compartment_schema
    from nxp2seg.inference.exam_checks import fat_fractions

    c = Cohort.open(cohort)
    lut = c.dataset.schema.rollup_lut()
    truth = lut[np.asarray(nib.load(c.label_path(case_id)).dataobj)]
    fat = nib.load(c.image_path(case_id, 0)).get_fdata(dtype=np.float32)
    water = nib.load(c.image_path(case_id, 1)).get_fdata(dtype=np.float32)
    comp = default_compartment_schema()
    regions = {n: comp.regions[n].labels for n in comp.region_names("thigh")}
    ref = fat_fractions(fat, water, truth, regions)
    if from_seg:
        seg = lut[np.asarray(nib.load(pred_dir / case_id / "seg.nii.gz").dataobj)]
        got = fat_fractions(fat, water, seg, regions)
    else:
        table = pd.read_csv(pred_dir / "regions.csv").set_index(["case_id", "region"])
        got = {n: float(table.loc[(case_id, n), "fat_fraction"]) for n in regions}
    return [{"case_id": case_id, "region": n, "fat_fraction_truth": ref[n],
             "fat_fraction_predicted": float(got[n])} for n in regions]


def summarise(rows: list[dict]) -> dict:
    df = pd.DataFrame(rows)
    out = {"n_cases": len(df), "lr_swaps": int(df["lr_swaps"].sum())}
    for prefix in ("dice", "dice_labelled_slices", "muscle_dice"):
        cols = [c for c in df.columns if c.startswith(prefix + "/")]
        if not cols:
            continue
        per = df[cols].mean(axis=0)
        out[prefix] = {c.split("/", 1)[1]: round(float(v), 4) for c, v in per.items()}
        out[f"{prefix}_mean"] = round(float(np.nanmean(df[cols].to_numpy())), 4)
        out[f"{prefix}_min_region"] = round(float(per.min()), 4)
    if "ood_score" in df:
        out["ood_score"] = [None if pd.isna(v) else round(float(v), 2) for v in df["ood_score"]]
        out["flagged_input_unlike_training"] = int(df["warnings"].str.contains("input_unlike_training").sum())
    dice_cols = [c for c in df.columns if c.startswith("dice/")]
    out["dice_mean_per_case"] = {r["case_id"]: round(float(np.nanmean([r[c] for c in dice_cols])), 4)
                                 for _, r in df.iterrows()}
    if "steps" in df:  # trained variants: the schedule each fold had, and its time
        out["schedule"] = {k: sorted({float(v) if k == "lr" else int(v) for v in df[k]}) for k in ("steps", "patches", "lr")}
        for k in ("train_minutes", "train_cpu_minutes"):
            out[k] = round(float(df[k].sum()), 2) if df[k].notna().all() else None
    return out


def guard_on_phantom(bundle: Path, out: Path, subjects: int) -> dict:
    """The OOD guard of a T1/STIR phantom bundle on unseen phantom exams (seed 777, the bundle's
    preset), T1/STIR and Dixon (the same anatomy given as T1/STIR): how many are flagged."""
    from nxp2seg.models.bundle import load_bundle

    phantom = load_bundle(bundle).config.data.get("phantom") or {}
    preset = str(phantom.get("preset", "small"))
    res = {}
    for sequence in ("t1_stir", "dixon"):
        cohort = out / "work" / f"phantom_{preset}_seed777_{sequence}"
        if not (cohort / "dataset.json").exists():
            run([sys.executable, "-m", "nxp2seg.phantom", f"out={cohort}", f"subjects={subjects}",
                 f"preset={preset}", "seed=777", f"sequence={sequence}"], out / "logs" / f"phantom_{sequence}.txt")
        pred = out / f"guard_{sequence}"
        predict(bundle, cohort, pred, out / "logs" / f"guard_{sequence}.txt")
        cases = pd.read_csv(pred / "cases.csv", keep_default_na=False)
        flagged = cases["warnings"].str.contains("input_unlike_training")
        res[sequence] = {"n_exams": len(cases), "flagged": int(flagged.sum()),
                         "share_flagged": round(float(flagged.mean()), 4),
                         "ood_score_median": round(float(pd.to_numeric(cases["ood_score"]).median()), 3),
                         "ood_score_max": round(float(pd.to_numeric(cases["ood_score"]).max()), 3)}
    return res


def fat_fraction_summary(rows: list[dict], tables: Path, name: str = "fat_fraction") -> dict:
    ff = pd.DataFrame(rows)
    ff["abs_error"] = (ff["fat_fraction_predicted"] - ff["fat_fraction_truth"]).abs()
    ff.to_csv(tables / f"{name}.csv", index=False)
    return {
        "n_regions": len(ff), "within_0.05": int((ff["abs_error"] <= 0.05).sum()),
        "share_within_0.05": round(float((ff["abs_error"] <= 0.05).mean()), 4),
        "mean_abs_error": round(float(ff["abs_error"].mean()), 4),
        "max_abs_error": round(float(ff["abs_error"].max()), 4),
    }


def copy_qc(pred_dir: Path, dst: Path, tag: str) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for png in pred_dir.glob("*/qc.png"):
        shutil.copy(png, dst / f"{tag}_{png.parent.name}.png")


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/realdata/huashan-thigh"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dixon-bundle", type=Path, default=None,
                    help="bundle pre-trained on the Dixon phantom (zero-shot, fine-tune, scratch variants)")
    ap.add_argument("--t1stir-bundle", type=Path, default=None,
                    help="a T1/STIR phantom bundle: zero-shot, the guard, and the fine-tune of the exams "
                         "declared T1/STIR (fat as T1, water as STIR)")
    ap.add_argument("--steps", type=int, default=None,
                    help="optimizer steps of each training (default: experiment=finetune's, 300)")
    ap.add_argument("--patches", type=int, default=None,
                    help="patches per volume per step (default: experiment=finetune's, 2)")
    ap.add_argument("--scratch-lr", type=float, default=0.01)
    ap.add_argument("--guard-subjects", type=int, default=10, help="unseen phantom subjects for the guard")
    ap.add_argument("--folds", nargs="*", default=list(SUBJECTS), choices=list(SUBJECTS),
                    help="held-out subjects to train (default all; a subset trains only, e.g. in a second "
                         "process, and a later run with all folds scores them)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["compartment", "muscle", "scratch", "zeroshot", "guard", "t1stir"],
                    help="stages to leave out (e.g. run the variants in two processes: --skip compartment in one)")
    args = ap.parse_args(argv)
    if args.dixon_bundle is None:  # the Dixon-phantom variants need their bundle
        args.skip = sorted({*args.skip, "compartment", "muscle", "scratch"})
    if args.t1stir_bundle is None:
        args.skip = sorted({*args.skip, "t1stir", "guard"})
    out = args.out.resolve()
    minutes: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    comp = convert(args.data, out, "compartment")
    muscle = convert(args.data, out, "muscle") if "muscle" not in args.skip else None
    minutes["convert"] = (time.perf_counter() - t0) / 60
    results: dict[str, dict] = {}
    tables = out / "tables"
    tables.mkdir(parents=True, exist_ok=True)

    if "zeroshot" not in args.skip:
        for tag, bundle in (("zeroshot_dixon_phantom", args.dixon_bundle), ("zeroshot_t1stir", args.t1stir_bundle)):
            if bundle is None:
                continue
            log(f"{tag}: predicting the three exams")
            t0 = time.perf_counter()
            pred = out / tag
            predict(bundle, comp, pred, out / "logs" / f"{tag}.txt")
            minutes[tag] = (time.perf_counter() - t0) / 60
            rows = [score_case(pred, comp, f"H{s}_thigh") for s in SUBJECTS]
            pd.DataFrame(rows).to_csv(tables / f"{tag}.csv", index=False)
            results[tag] = summarise(rows)
            copy_qc(pred, out / "qc", tag)
            log(f"{tag}: {json.dumps({k: results[tag][k] for k in ('dice_mean', 'lr_swaps')})}")
            write_summary(out, results, minutes, args)

    variants = []
    if "t1stir" not in args.skip:  # the T1/STIR phantom bundle, fine-tuned on the exams declared T1/STIR
        variants.append(("finetune_t1stir_compartment", convert(args.data, out, "compartment", as_t1stir=True),
                         [f"model.init_from={args.t1stir_bundle}", "experiment=finetune"]))
    if "compartment" not in args.skip:
        variants.append(("finetune_compartment", comp, [f"model.init_from={args.dixon_bundle}", "experiment=finetune"]))
    if muscle is not None:
        variants.append(("finetune_muscle", muscle, [f"model.init_from={args.dixon_bundle}", "experiment=finetune"]))
    if "scratch" not in args.skip:
        from nxp2seg.models.bundle import load_bundle

        prep = load_bundle(args.dixon_bundle).preprocessing
        spacing = "[" + ",".join(f"{s:g}" for s in prep.target_spacing) + "]"
        patch = "[" + ",".join(str(p) for p in prep.patch_size) + "]"
        variants.append(("scratch_compartment", comp, [
            "experiment=finetune", f"model.optimizer.lr={args.scratch_lr}",
            f"data.preprocessing.target_spacing={spacing}", f"data.preprocessing.patch_size={patch}"]))
    for tag, cohort, overrides in variants:
        rows, ff_rows = [], []
        t0 = time.perf_counter()
        for s in args.folds:
            fold = fold_cohort(cohort, out / "folds" / f"{cohort.name}_minus_{s}", s)
            run_dir = out / tag / f"fold_{s}"
            log(f"{tag}: fold {s}: training on the other two subjects")
            steps = [f"trainer.max_steps={args.steps}"] if args.steps else []
            steps += [f"data.sampling.num_samples={args.patches}"] if args.patches else []
            bundle, schedule = train(run_dir, fold, [*overrides, *steps], out / "logs" / f"{tag}_{s}_train.txt")
            pred = run_dir / "predictions"
            predict(bundle, fold, pred, out / "logs" / f"{tag}_{s}_predict.txt", split="test")
            rows.append({**score_case(pred, fold, f"H{s}_thigh"), **schedule})
            if tag in ("finetune_compartment", "finetune_t1stir_compartment"):
                ff_rows += fat_fraction_rows(pred, fold, f"H{s}_thigh", from_seg=tag != "finetune_compartment")
            copy_qc(pred, out / "qc", f"{tag}_fold{s}")
            log(f"{tag}: fold {s}: dice {np.nanmean([v for k, v in rows[-1].items() if k.startswith('dice/')]):.3f}")
        if tuple(args.folds) != SUBJECTS:  # some folds only (another process runs the others)
            continue
        minutes[tag] = (time.perf_counter() - t0) / 60
        pd.DataFrame(rows).to_csv(tables / f"{tag}.csv", index=False)
        results[tag] = summarise(rows)
        if ff_rows:
            name = "fat_fraction" if tag == "finetune_compartment" else f"fat_fraction_{tag}"
            results[name] = fat_fraction_summary(ff_rows, tables, name)
        write_summary(out, results, minutes, args)
    if args.t1stir_bundle is not None and "guard" not in args.skip:
        t0 = time.perf_counter()
        results["guard_phantom"] = guard_on_phantom(args.t1stir_bundle, out, args.guard_subjects)
        minutes["guard_phantom"] = (time.perf_counter() - t0) / 60
        log(f"guard on unseen phantom exams: {json.dumps(results['guard_phantom'])}")
    minutes["total"] = (time.perf_counter() - t_all) / 60
    print(json.dumps(write_summary(out, results, minutes, args), indent=2))
    return 0


def write_summary(out: Path, results: dict, minutes: dict, args: argparse.Namespace) -> dict:
    """``OUT/summary.json`` as it stands (written after every stage: a stopped run keeps its figures)."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = {"results": results, "minutes": {k: round(v, 2) for k, v in minutes.items()},
               "cpu_minutes_children": round((cpu.ru_utime + cpu.ru_stime) / 60, 2),
               "steps": args.steps, "patches": args.patches, "dixon_bundle": str(args.dixon_bundle) if args.dixon_bundle else None,
               "t1stir_bundle": str(args.t1stir_bundle) if args.t1stir_bundle else None,
               "cpu_count": os.cpu_count()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    sys.exit(main())
