#!/usr/bin/env python
"""Why the real-thigh figures are what they are: evidence beside ``scripts/benchmark_realdata.py``.

Usage (after the benchmark; reads its OUT, writes ``OUT/diagnostics.json`` and ``OUT/tables/diag_*.csv``)::

    nice -n 10 python scripts/realdata_diagnostics.py --out OUT [--data /work/shared/realdata/huashan-thigh]
        [--fit]

Measured, per scored region (compartment of one side of one exam):

* **fatty replacement**: Dice against the fat fraction inside the authors' labels
  (Spearman rho over the regions) and the predicted / labelled volume ratio, for every
  variant the benchmark ran (zero-shot, fine-tuned, from scratch). A network that calls
  fat-replaced muscle "fat" loses exactly the fattiest regions.
* **resolution ceiling**: the authors' labels taken to the Dixon bundle's working grid
  (one-hot, trilinear, as the network's probabilities are) and mapped back the way
  ``predict`` maps its probabilities back (:func:`nxp2seg.inference.geometry.probabilities_to_labels`):
  the Dice a perfect network at that resolution would get, at compartment and at muscle level.
* **pre-training quality**: the Dixon bundle's own phantom test Dice of the thigh compartments.
* **partial variants**: a variant whose folds did not all train (the benchmark scores a
  variant once all three are done) is scored on the folds there are.
* ``--fit``: each leave-one-subject-out fine-tuned bundle on its own two training
  subjects (``predict split=train``): fit (training) against held-out Dice, i.e. whether the
  schedule under-fits or two subjects do not generalise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_realdata import SUBJECTS, _dice, predict, score_case, summarise

VARIANTS = ("zeroshot_dixon_phantom", "zeroshot_t1stir", "finetune_compartment", "finetune_muscle",
            "scratch_compartment")


def _comp():
    from nxp2seg.data.schema import default_compartment_schema

    return default_compartment_schema()


def _truth(cohort: Path, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, object]:
    """Compartment truth, muscle-or-compartment truth, fat, water, affine of one exam."""
    from nxp2seg.data.cohort import Cohort

    c = Cohort.open(cohort)
    img = nib.load(c.label_path(case_id))
    truth = np.asarray(img.dataobj)
    fat = nib.load(c.image_path(case_id, 0)).get_fdata(dtype=np.float32)
    water = nib.load(c.image_path(case_id, 1)).get_fdata(dtype=np.float32)
    return c.dataset.schema.rollup_lut()[truth], truth, fat, water, img.affine


def region_rows(out: Path) -> pd.DataFrame:
    """Dice, truth fat fraction and volume ratio per region of every variant's predictions."""
    from nxp2seg.data.cohort import Cohort
    from nxp2seg.inference.exam_checks import fat_fractions

    comp = _comp()
    regions = {n: comp.regions[n].labels for n in comp.region_names("thigh")}
    cohort = out / "cohorts" / "compartment"
    ff, images = {}, {}
    for s in SUBJECTS:
        t_c, _, fat, water, _ = _truth(cohort, f"H{s}_thigh")
        ff[s] = fat_fractions(fat, water, t_c, regions)
        images[s] = (fat, water)
    rows = []
    for tag in VARIANTS:
        for s in SUBJECTS:
            case = f"H{s}_thigh"
            if tag.startswith("zeroshot"):
                pred_dir, coh = out / tag, cohort
            else:
                level = "muscle" if tag.endswith("muscle") else "compartment"
                pred_dir, coh = out / tag / f"fold_{s}" / "predictions", out / "folds" / f"{level}_minus_{s}"
            seg = pred_dir / case / "seg.nii.gz"
            if not seg.exists():
                continue
            lut = Cohort.open(coh).dataset.schema.rollup_lut()
            pred = lut[np.asarray(nib.load(seg).dataobj)]
            t_c = _truth(cohort, case)[0]
            where = _where_truth_goes(t_c, pred, comp, regions)
            ff_pred = fat_fractions(*images[s], pred, regions)  # predict's estimator, on the rolled-up prediction
            for name, values in regions.items():
                t, p = np.isin(t_c, list(values)), np.isin(pred, list(values))
                rows.append({"variant": tag, "case_id": case, "region": name, "dice": _dice(t, p),
                             "fat_fraction_truth": ff[s][name], "fat_fraction_predicted": ff_pred[name],
                             "volume_ratio": float(p.sum() / t.sum()) if t.sum() else float("nan"),
                             **where[name]})
    return pd.DataFrame(rows)


def _where_truth_goes(t_c: np.ndarray, pred: np.ndarray, comp, regions: dict) -> dict[str, dict[str, float]]:
    """Per labelled region: the share of its voxels predicted as itself, as another compartment of
    the same side, as the other side, as subcutaneous fat or bone, as background."""
    side_of = {n: comp.regions[n].side for n in regions}
    out = {}
    for name, values in regions.items():
        t = np.isin(t_c, list(values))
        n = max(int(t.sum()), 1)
        p = pred[t]
        same_side = [v for m, vs in regions.items() if m != name and side_of[m] == side_of[name] for v in vs]
        other_side = [v for m, vs in regions.items() if side_of[m] != side_of[name] for v in vs]
        structures = [comp.labels[k] for k in ("subcutaneous_right", "subcutaneous_left", "bone") if k in comp.labels]
        out[name] = {"to_itself": float(np.isin(p, list(values)).sum() / n),
                     "to_other_compartment": float(np.isin(p, same_side).sum() / n),
                     "to_other_side": float(np.isin(p, other_side).sum() / n),
                     "to_subcutaneous_or_bone": float(np.isin(p, structures).sum() / n),
                     "to_background": float((p == 0).sum() / n)}
    return out


def fatty_summary(df: pd.DataFrame) -> dict:
    res = {}
    for tag, g in df.groupby("variant", sort=False):
        rho, p = spearmanr(g["fat_fraction_truth"], g["dice"])
        fatty = g["fat_fraction_truth"] >= 0.4
        err = (g["fat_fraction_predicted"] - g["fat_fraction_truth"]).abs()
        res[tag] = {"n_regions": len(g), "spearman_dice_vs_fat_fraction": round(float(rho), 3),
                    "p_value": round(float(p), 4),
                    "dice_mean_fat_fraction_ge_0.4": round(float(g.loc[fatty, "dice"].mean()), 4),
                    "n_fat_fraction_ge_0.4": int(fatty.sum()),
                    "dice_mean_fat_fraction_lt_0.4": round(float(g.loc[~fatty, "dice"].mean()), 4),
                    "volume_ratio_median": round(float(g["volume_ratio"].median()), 3),
                    "fat_fraction_share_within_0.05": round(float((err <= 0.05).mean()), 4),
                    "fat_fraction_mean_abs_error": round(float(err.mean()), 4),
                    "where_labelled_voxels_go": {
                        comp: {k: round(float(g.loc[g.region.str.contains(comp), k].mean()), 3)
                               for k in ("to_itself", "to_other_compartment", "to_other_side",
                                         "to_subcutaneous_or_bone", "to_background")}
                        for comp in ("anterior", "medial", "posterior")}}
    return res


def resolution_ceiling(out: Path, bundle: Path) -> dict:
    """Dice of the authors' labels sent to the bundle's working grid and back (a perfect network's)."""
    from nxp2seg.inference.geometry import probabilities_to_labels, resample_to_grid
    from nxp2seg.models.bundle import load_bundle

    spacing = np.asarray(load_bundle(bundle).preprocessing.target_spacing, float)
    res: dict[str, dict] = {}
    for level in ("compartment", "muscle"):
        cohort = out / "cohorts" / level
        if not (cohort / "dataset.json").exists():
            continue
        dices: dict[str, list[float]] = {}
        for s in SUBJECTS:
            _, truth, _, _, affine = _truth(cohort, f"H{s}_thigh")
            native = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
            shape = np.ceil(np.asarray(truth.shape) * native / spacing).astype(int)
            model_affine = np.asarray(affine) @ np.diag([*(spacing / native), 1.0])
            values = [int(v) for v in np.unique(truth)]
            probs = np.stack([resample_to_grid((truth == v).astype(np.float32), affine, shape, model_affine)
                              for v in values])
            back = probabilities_to_labels(probs, values, model_affine, truth.shape, affine)
            for v in values:
                if v:
                    dices.setdefault(str(v), []).append(_dice(truth == v, back == v))
        from nxp2seg.data.cohort import Cohort

        names = {str(v): n for n, v in Cohort.open(cohort).dataset.schema.labels.items()}
        per = {names[v]: round(float(np.mean(d)), 4) for v, d in dices.items()}
        res[level] = {"spacing_mm": spacing.round(3).tolist(), "dice": per,
                      "dice_mean": round(float(np.mean(list(per.values()))), 4),
                      "dice_min": round(float(min(per.values())), 4)}
    return res


def fit_on_training_subjects(out: Path, tag: str = "finetune_compartment") -> dict:
    """Each fold's bundle on its own training subjects, against its held-out subject."""
    rows = []
    for s in SUBJECTS:
        run_dir = out / tag / f"fold_{s}"
        fold = out / "folds" / f"compartment_minus_{s}"
        if not (run_dir / "bundle" / "bundle.json").exists():
            continue
        pred = run_dir / "predictions_train"
        predict(run_dir / "bundle", fold, pred, out / "logs" / f"{tag}_{s}_predict_train.txt", split="train")
        for other in SUBJECTS:
            if other != s:
                r = score_case(pred, fold, f"H{other}_thigh")
                rows.append({"fold": s, "case_id": r["case_id"], "set": "train",
                             "dice_mean": float(np.nanmean([v for k, v in r.items() if k.startswith("dice/")]))})
        held = score_case(run_dir / "predictions", fold, f"H{s}_thigh")
        rows.append({"fold": s, "case_id": held["case_id"], "set": "held_out",
                     "dice_mean": float(np.nanmean([v for k, v in held.items() if k.startswith("dice/")]))})
    df = pd.DataFrame(rows)
    if df.empty:
        return {}
    df.to_csv(out / "tables" / f"diag_fit_{tag}.csv", index=False)
    return {k: round(float(v), 4) for k, v in df.groupby("set")["dice_mean"].mean().items()}


def partial_variants(out: Path, done: dict) -> dict:
    """Trained variants the benchmark could not score (not every fold trained): the folds there are."""
    res = {}
    for tag in VARIANTS:
        if tag.startswith("zeroshot") or tag in done:
            continue
        level = "muscle" if tag.endswith("muscle") else "compartment"
        rows = [score_case(out / tag / f"fold_{s}" / "predictions", out / "folds" / f"{level}_minus_{s}", f"H{s}_thigh")
                for s in SUBJECTS if (out / tag / f"fold_{s}" / "predictions" / "cases.csv").exists()]
        if rows:
            res[tag] = {"held_out": [r["case_id"] for r in rows], **summarise(rows)}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the benchmark's OUT")
    ap.add_argument("--fit", action="store_true", help="also predict the fine-tuned folds' training subjects")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    summary = json.loads((out / "summary.json").read_text())
    bundle = Path(summary["dixon_bundle"])
    diag: dict = {}
    df = region_rows(out)
    df.to_csv(out / "tables" / "diag_regions.csv", index=False)
    diag["fatty_replacement"] = fatty_summary(df)
    from nxp2seg.models.bundle import load_bundle

    test = load_bundle(bundle).validation.get("test", {}).get("dice", {})
    thigh = {k: round(float(v), 4) for k, v in test.items() if k.startswith("thigh_")}
    diag["pretraining_phantom_test_dice_thigh"] = {**thigh, "mean": round(float(np.mean(list(thigh.values()))), 4)}
    before = json.loads((out / "diagnostics.json").read_text()) if (out / "diagnostics.json").exists() else {}
    ceiling = before.get("resolution_ceiling") or {}
    if set(ceiling) != {p.name for p in (out / "cohorts").iterdir() if (p / "dataset.json").exists()}:
        ceiling = resolution_ceiling(out, bundle)  # the labels and the bundle's grid only: kept once computed
    diag["resolution_ceiling"] = ceiling
    diag["partial_variants"] = partial_variants(out, summary["results"])
    if args.fit:
        diag["fit_finetune_compartment"] = fit_on_training_subjects(out)
    (out / "diagnostics.json").write_text(json.dumps(diag, indent=2) + "\n")
    print(json.dumps(diag, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
