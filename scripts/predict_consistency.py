#!/usr/bin/env python
"""Same exams, three encodings: original NIfTI, LPS-reoriented NIfTI, DICOM series.

Usage: python scripts/predict_consistency.py BUNDLE COHORT WORKDIR [--json OUT]

For every case of ``COHORT`` (e.g. ``python -m nxp2seg.phantom out=COHORT
subjects=10 preset=full seed=101``: subjects the bundle never saw), writes
``WORKDIR/lps`` (T1, STIR and labels reoriented to LPS axis order, same world
geometry) and ``WORKDIR/dicom`` (T1 and STIR as DICOM series, body part set from
the station), runs ``nxp2seg.predict`` on the cohort, the LPS folder and the
DICOM folder, and scores each ``seg.nii.gz`` against the true labels on the
prediction's own grid (labels carried there through world coordinates,
nearest neighbour): compartment Dice and right/left swaps per encoding, and
the largest difference of mean Dice between encodings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd


def _reorient(img: nib.Nifti1Image, codes: str = "LPS") -> nib.Nifti1Image:
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    out = img.as_reoriented(ornt)
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    return out


def _encode(cohort: Path, work: Path) -> None:
    from nxp2seg.data.cohort import Cohort
    from nxp2seg.io import save_nifti
    from nxp2seg.phantom.dicom_export import write_series

    c = Cohort.open(cohort)
    for i, row in enumerate(c.cases.itertuples(index=False)):
        cid, station = str(row.case_id), str(row.station)
        t1, stir, lab = (nib.load(p) for p in (c.t1_path(cid), c.stir_path(cid), c.label_path(cid)))
        for img, name in ((t1, "T1"), (stir, "STIR"), (lab, "label")):
            save_nifti(_reorient(img), work / "lps" / f"{cid}_{name}.nii.gz" if name != "label"
                       else work / "lps_labels" / f"{cid}.nii.gz")
        study = f"1.2.826.0.1.3680043.8.498.77{i:04d}"
        for k, (img, desc, seq, ti, tr) in enumerate(((t1, "T1 TSE AX", "SE", None, 600.0),
                                                      (stir, "STIR AX", "IR", 160.0, 4000.0))):
            write_series(img, work / "dicom" / cid / desc.split()[0].lower(), series_description=desc,
                         series_number=k + 1, study_uid=study, frame_of_reference_uid=study + ".1",
                         body_part="THIGH" if station == "thigh" else "LOWER LEG", scanning_sequence=seq,
                         inversion_time=ti, repetition_time=tr, uid_seed=f"{cid}-{desc}")


def _dicom_case_ids(cohort: Path) -> dict[str, str]:
    """Cohort case id -> the case id predict gives its DICOM study (S + digest of the study UID + station)."""
    from nxp2seg.data.cohort import Cohort
    from nxp2seg.inference.dicom_select import study_key

    c = Cohort.open(cohort)
    return {str(row.case_id): f"S{study_key(f'1.2.826.0.1.3680043.8.498.77{i:04d}')}_{row.station}"
            for i, row in enumerate(c.cases.itertuples(index=False))}


def _score(pred_dir: Path, truth_of: dict[str, Path], schema, station_of: dict[str, str],
           out_id: dict[str, str]) -> pd.DataFrame:
    from nxp2seg.inference.geometry import resample_to_grid
    from nxp2seg.data.sides import label_sides, side_lut
    from nxp2seg.stats.segmentation import lr_swaps

    rows = []
    for cid, truth_path in truth_of.items():
        seg_img = nib.load(pred_dir / out_id[cid] / "seg.nii.gz")
        truth_img = nib.load(truth_path)
        pred = np.asarray(seg_img.dataobj)
        truth = resample_to_grid(np.asarray(truth_img.dataobj), truth_img.affine, pred.shape,
                                 seg_img.affine, order=0).round().astype(int)
        row = {"case_id": cid}
        for region in schema.region_names(station_of[cid]):
            v = schema.labels[region]
            a, b = pred == v, truth == v
            row[region] = 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)
        sided = {schema.name_of(v): [v] for v in label_sides(schema)}
        row["lr_swaps"] = int(sum(lr_swaps(pred, truth, side_lut(schema), sided).values()))
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("cohort", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from nxp2seg.data.cohort import Cohort
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.predict import main as predict

    cohort = Cohort.open(args.cohort)
    schema = load_bundle(args.bundle).schema
    station_of = dict(zip(cohort.cases["case_id"].astype(str), cohort.cases["station"].astype(str)))
    if not (args.work / "dicom").exists():
        _encode(args.cohort, args.work)
    encodings = {
        "nifti": (args.cohort, {c: cohort.label_path(c) for c in station_of}, {c: c for c in station_of}),
        "nifti_lps": (args.work / "lps", {c: args.work / "lps_labels" / f"{c}.nii.gz" for c in station_of},
                      {c: c for c in station_of}),
        "dicom": (args.work / "dicom", {c: cohort.label_path(c) for c in station_of}, _dicom_case_ids(args.cohort)),
    }
    result = {"cohort": str(args.cohort), "bundle": str(args.bundle), "n_cases": len(station_of)}
    means = {}
    for name, (src, truth, out_id) in encodings.items():
        out = args.work / f"pred_{name}"
        t0 = time.perf_counter()
        code = predict([f"model={args.bundle}", f"input={src}", f"output={out}", "progress=false"])
        seconds = time.perf_counter() - t0
        if code != 0:
            sys.exit(f"predict on {name} exited {code}")
        table = _score(out, truth, schema, station_of, out_id)
        regions = [c for c in table.columns if c not in ("case_id", "lr_swaps")]
        per_region = {r: float(table[r].mean()) for r in regions}
        means[name] = float(np.mean(list(per_region.values())))
        result[name] = {"dice_mean": means[name], "dice": per_region,
                        "lr_swaps": int(table["lr_swaps"].sum()), "seconds": round(seconds, 1),
                        "stations": pd.read_csv(out / "cases.csv")["station_source"].value_counts().to_dict()}
        print(f"{name:10s} dice_mean {means[name]:.4f}  swaps {result[name]['lr_swaps']}  {seconds:.0f} s")
    vals = list(means.values())
    result["max_dice_difference"] = float(max(vals) - min(vals))
    print(f"largest difference of mean Dice between encodings: {result['max_dice_difference']:.4f}")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
