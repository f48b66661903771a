#!/usr/bin/env python
"""A 20-exam batch with 3 deliberately broken exams: the 17 others finish, inputs stay byte-identical.

Usage: python scripts/predict_broken_batch.py BUNDLE COHORT WORKDIR [--json OUT]

Copies 17 exams of ``COHORT`` (its test split first) into ``WORKDIR/input`` as
``{case}_T1.nii.gz`` / ``{case}_STIR.nii.gz`` pairs and adds three broken ones:
a truncated T1 (half of the gzip stream), a STIR 500 mm away from its T1 (no
overlap), and a 4D T1. Hashes every input file, runs ``nxp2seg.predict``,
hashes again, and prints each case's status and error, the exit code and
whether the inputs are unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("cohort", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from nxp2seg.data.cohort import Cohort
    from nxp2seg.io import make_nifti, save_nifti
    from nxp2seg.predict import main as predict

    cohort = Cohort.open(args.cohort)
    cases = cohort.cases.sort_values("split", key=lambda s: s != "test")["case_id"].astype(str).tolist()
    src = args.work / "input"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    good, spare = cases[:17], cases[17:20]
    for cid in good:
        shutil.copy(cohort.t1_path(cid), src / f"{cid}_T1.nii.gz")
        shutil.copy(cohort.stir_path(cid), src / f"{cid}_STIR.nii.gz")
    # broken 1: truncated gzip
    t1 = cohort.t1_path(spare[0]).read_bytes()
    (src / f"broken_truncated_{spare[0]}_T1.nii.gz").write_bytes(t1[: len(t1) // 2])
    shutil.copy(cohort.stir_path(spare[0]), src / f"broken_truncated_{spare[0]}_STIR.nii.gz")
    # broken 2: STIR far away from T1
    shutil.copy(cohort.t1_path(spare[1]), src / f"broken_apart_{spare[1]}_T1.nii.gz")
    stir = nib.load(cohort.stir_path(spare[1]))
    far = stir.affine.copy()
    far[:3, 3] += [0.0, 0.0, 500.0]
    save_nifti(make_nifti(np.asarray(stir.dataobj), far), src / f"broken_apart_{spare[1]}_STIR.nii.gz")
    # broken 3: a 4D T1
    t1img = nib.load(cohort.t1_path(spare[2]))
    data = np.asarray(t1img.dataobj)
    save_nifti(make_nifti(np.stack([data, data], -1), t1img.affine), src / f"broken_4d_{spare[2]}_T1.nii.gz")
    shutil.copy(cohort.stir_path(spare[2]), src / f"broken_4d_{spare[2]}_STIR.nii.gz")

    before = _digest(src)
    out = args.work / "output"
    if out.exists():
        shutil.rmtree(out)
    code = predict([f"model={args.bundle}", f"input={src}", f"output={out}", "progress=false"])
    after = _digest(src)
    table = pd.read_csv(out / "cases.csv")
    counts = table["status"].value_counts().to_dict()
    for row in table.itertuples(index=False):
        if row.status != "ok":
            print(f"{row.case_id}: {row.status}: {row.error}")
    result = {"exit_code": code, "status_counts": counts, "inputs_unchanged": before == after,
              "n_input_files": len(before),
              "failed": {r.case_id: r.error for r in table.itertuples(index=False) if r.status != "ok"}}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
