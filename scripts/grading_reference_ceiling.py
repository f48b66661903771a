#!/usr/bin/env python
"""How much of the grading error is the normal-muscle STIR reference? (phantom cohorts only)

Usage: python scripts/grading_reference_ceiling.py BUNDLE [--cohort DIR] [--no-baseline]
           [--json OUT] [key=value ...]

Edema is read as STIR over the case's normal muscle, from the configured reference
estimator (:mod:`nxp2seg.models.tissue`; the default, the lowest strong histogram
peak of each leg's clean muscle). On stations where
almost no muscle is normal that peak can be an edema population, or a
partial-volume one. This script measures, on a phantom cohort (it needs the
phantom's ``truth/edema`` and ``truth/fat_percent`` maps):

1. **The reference's accuracy**: per leg, the STIR of *truly* normal muscle
   (muscle voxels without edema or fat whose 3x3 in-plane window is all such
   voxels; at the bundle's preprocessing) against the lowest-peak reference of
   the true masks: the share of legs more than 10% off.
2. **The grading ceiling of a perfect reference**: the grading stage of
   ``scripts/grading_stage_on_bundle.py`` on the bundle's frozen network, once
   as shipped and once with every case's reference replaced by its true
   per-leg normal-muscle STIR (everything else unchanged: predicted regions,
   features, head, schedule). The difference is what a better reference could
   still gain; what is left is the head, the regions and the readers' noise.

The true reference enters through the estimator seam of the grader
(:class:`TruthReference`, given to ``stage_on_bundle(reference=...)``): the
cohort statistics and every feature pass read it. Cases are matched to their
true references by the STIR air level of the whole preprocessed volume
(:func:`nxp2seg.models.tissue.stir_zero`), which every path computes
identically; a case that does not match keeps the estimated reference and is
counted. Overrides as for ``grading_stage_on_bundle.py``. About 8 minutes on
2 CPU cores for the default phantom (4 without the baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grading_stage_on_bundle import stage_on_bundle

#: Reported agreement (keys of nxp2seg.models.metrics.grading_metrics).
METRICS = (
    "edema_kappa_quadratic",
    "edema_icc",
    "station_score_icc",
    "fat_kappa_quadratic",
    "pattern_kappa",
    "fascial_auc",
    "subcut_auc",
)


def true_references(bundle, cohort: Path, clean: tuple[float, float]) -> list[dict]:
    """Per case: split, STIR air level, true normal-muscle STIR and lowest peak of each leg."""
    import pandas as pd
    import torch
    import torch.nn.functional as F
    from monai import transforms as mt

    from nxp2seg.data.pipelines import preprocess_transforms
    from nxp2seg.models.tissue import LowestPeakReference

    if not (cohort / "truth" / "edema").is_dir():
        raise SystemExit(f"{cohort}: no truth/edema folder; this diagnostic needs a phantom cohort")
    load = mt.Compose(preprocess_transforms(bundle.preprocessing, with_label=True))
    schema = bundle.dataset.schema
    muscle_values = sorted({v for region in schema.regions.values() for v in region.labels})
    fat_values = [v for k, v in schema.labels.items() if k.startswith("subcutaneous")]
    cases = pd.read_csv(cohort / "cases.csv")
    out = []
    for case_id, split in zip(cases.case_id, cases.split):
        files = {c: str(cohort / "imagesTr" / f"{case_id}_000{i}.nii.gz") for i, c in enumerate(("t1", "stir"))}
        d = load({**files, "label": str(cohort / "labelsTr" / f"{case_id}.nii.gz")})
        edema = load({**files, "label": str(cohort / "truth" / "edema" / f"{case_id}.nii.gz")})["label"][0]
        fat_pc = load({**files, "label": str(cohort / "truth" / "fat_percent" / f"{case_id}.nii.gz")})["label"][0]
        image = torch.as_tensor(d["image"])[None].float()
        lab = torch.as_tensor(d["label"])[0]
        lateral = image[0, 2]
        muscle = torch.isin(lab, torch.tensor(muscle_values, dtype=lab.dtype))
        fat = torch.isin(lab, torch.tensor(fat_values, dtype=lab.dtype))
        ref = LowestPeakReference()(image, muscle.float()[None], fat.float()[None], clean, lateral=lateral[None])
        normal = muscle & (torch.as_tensor(edema) == 0) & (torch.as_tensor(fat_pc) == 0)
        window = F.avg_pool3d(normal.float()[None, None], (3, 3, 1), 1, (1, 1, 0))[0, 0]
        normal = normal & (window > 1.0 - 1e-4)
        zero = float(ref.stir_zero[0])
        row = {"case_id": case_id, "split": split, "zero": zero}
        for k, (side, sign) in enumerate((("right", 1.0), ("left", -1.0))):
            leg = lateral * sign > 0
            sel = normal & leg
            row[f"true_{side}"] = float(image[0, 1][sel].median()) if int(sel.sum()) >= 30 else None
            row[f"peak_{side}"] = float(ref.stir_muscle_side[0, k])
            row[f"normal_share_{side}"] = float(sel.sum() / (muscle & leg).sum().clamp_min(1))
        out.append(row)
        print(f"  {case_id}: reference measured", flush=True)
    return out


def reference_errors(rows: list[dict]) -> dict:
    """Legs whose lowest-peak reference is more than 10% off the true normal muscle."""
    err, low = [], []
    for r in rows:
        for side in ("right", "left"):
            if r[f"true_{side}"] is None:
                continue
            true, peak = r[f"true_{side}"] - r["zero"], r[f"peak_{side}"] - r["zero"]
            err.append(abs(float(np.log(peak / true))))
            low.append(r[f"normal_share_{side}"] < 0.05)
    e, low = np.asarray(err), np.asarray(low)
    return {
        "legs": int(e.size),
        "median_abs_log_error": float(np.median(e)),
        "legs_off_10pct": int((e > np.log(1.1)).sum()),
        "legs_under_5pct_normal": int(low.sum()),
        "legs_off_10pct_under_5pct_normal": int(((e > np.log(1.1)) & low).sum()),
    }


class TruthReference:
    """A reference estimator that knows the phantom's truth: each case's true per-leg normal-muscle
    STIR in place of the estimate (matched by the air level; unmatched cases keep the estimate)."""

    def __init__(self, rows: list[dict], estimator):
        self.table = {round(r["zero"], 4): r for r in rows}
        self.estimator = estimator
        self.zero_percentile = estimator.zero_percentile
        self.stats = {"replaced": 0, "kept": 0}

    def __call__(self, image, muscle, fat, clean, lateral=None, zero=None):
        ref = self.estimator(image, muscle, fat, clean, lateral=lateral, zero=zero)
        for b in range(image.shape[0]):
            row = self.table.get(round(float(ref.stir_zero[b]), 4))
            legs = [row[f"true_{s}"] for s in ("right", "left")] if row else [None, None]
            if row is None or all(v is None for v in legs):
                self.stats["kept"] += 1
                continue
            right = legs[0] if legs[0] is not None else legs[1]
            left = legs[1] if legs[1] is not None else legs[0]
            self.stats["replaced"] += 1
            if ref.stir_muscle_side is not None:
                ref.stir_muscle_side[b, 0], ref.stir_muscle_side[b, 1] = right, left
            ref.stir_muscle[b] = 0.5 * (right + left)
        return ref


def main() -> None:
    from nxp2seg.models.bundle import load_bundle

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("overrides", nargs="*", help="grading.key=value, as grading_stage_on_bundle.py")
    ap.add_argument("--cohort", type=Path, help="the phantom cohort (default: the bundle's)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run with the shipped reference")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    from grading_stage_on_bundle import grading_config
    from omegaconf import OmegaConf

    from nxp2seg.models.grading_spec import instantiate_spec
    from nxp2seg.models.tissue import make_reference

    bundle = load_bundle(args.bundle)
    cohort = args.cohort or Path(bundle.validation.get("data", {}).get("cohort", ""))
    runs, clean = {}, None
    if not args.no_baseline:
        shipped = stage_on_bundle(args.bundle, args.overrides, args.cohort)[0]
        runs["shipped reference"] = shipped.metrics
        clean = tuple(shipped.summary["thresholds"]["clean"])
    spec = instantiate_spec(grading_config(args.overrides).grading)
    if clean is None:  # the clean-muscle window of the cohort (the estimator's own statistics)
        from nxp2seg.data.datamodule import CohortDataModule
        from nxp2seg.models.grading_features import cohort_scale
        from nxp2seg.models.grading_scale import thresholds

        dm = CohortDataModule(cohort=cohort, split=OmegaConf.to_container(bundle.config.data.split, resolve=True),
                              preprocessing=bundle.preprocessing, loader={"verify": False})
        dm.setup("fit")
        scale = cohort_scale(dm, make_reference(spec.reference), spec.reference.clean_sd,
                             spec.features.stir_high_quantile)
        clean = tuple(thresholds(scale, spec.features, spec.reference)["clean"])
    print("true normal-muscle STIR of every case ...")
    rows = true_references(bundle, cohort, clean)
    report: dict = {"reference": reference_errors(rows)}
    print(json.dumps(report["reference"], indent=1))
    truth = TruthReference(rows, make_reference(spec.reference))
    runs["true reference"] = stage_on_bundle(args.bundle, args.overrides, args.cohort, reference=truth)[0].metrics
    stats = truth.stats
    report["truth_lookups"] = stats
    report["runs"] = runs
    print(f"\ntrue references used in {stats['replaced']} feature passes, own reference kept in {stats['kept']}")
    print(f"{'':20s} {'split':5s} " + " ".join(f"{m:>22s}" for m in METRICS))
    for name, metrics in runs.items():
        for split in ("val", "test"):
            if split in metrics:
                print(f"{name:20s} {split:5s} " + " ".join(f"{metrics[split].get(m, float('nan')):22.3f}" for m in METRICS))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
