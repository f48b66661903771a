#!/usr/bin/env python
"""Dice of a trained model on the native T1 grid of held-out cases.

Usage: python scripts/segmentation_dice_native.py BUNDLE COHORT [--split test] [--json OUT]

Training logs Dice at the model's target spacing, against label maps resampled
there with nearest neighbour. The product's segmentation lives on each input
T1's own grid (DESIGN.md), so this script measures what a user gets: the
bundle's preprocessing, sliding-window inference (with the bundle's flip
test-time augmentation), class probabilities resampled back onto the native T1
grid through the affines (trilinear), argmax, and Dice per region against
``labelsTr`` as written, plus the right/left swap count.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy.ndimage import map_coordinates


def main() -> None:
    import monai.transforms as mt

    from nxp2seg.data.cohort import Cohort
    from nxp2seg.data.pipelines import preprocess_transforms
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.models.segmenter import Segmenter
    from nxp2seg.data.sides import label_sides, lr_swap_lut, orientation_lr_axis, side_lut
    from nxp2seg.stats.segmentation import lr_swaps

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("cohort", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    bundle = load_bundle(args.bundle)
    prep = bundle.preprocessing
    schema = bundle.dataset.schema
    net = bundle.build_network("cpu")
    model_cfg = bundle.config.get("model", {})
    seg = Segmenter(
        net=net,
        loss=torch.nn.Identity(),
        optimizer=torch.optim.SGD,
        patch_size=prep.patch_size,
        inference=dict(model_cfg.get("inference", {})),
        lr_permutation=[int(v) for v in lr_swap_lut(schema)],
        laterality_channel=len(prep.channels) if prep.laterality else None,
        lr_axis=orientation_lr_axis(prep.orientation),
    ).eval()
    tf = mt.Compose(preprocess_transforms(prep, with_label=False))
    cohort = Cohort.open(args.cohort)
    cases = cohort.cases[cohort.cases["split"] == args.split]
    n_classes = schema.max_label + 1
    rows = []
    for cid, station in zip(cases["case_id"], cases["station"]):
        d = tf({"t1": str(cohort.t1_path(cid)), "stir": str(cohort.stir_path(cid))})
        image = d["image"]
        allowed = torch.zeros(1, n_classes, dtype=torch.bool)
        allowed[0, sorted(schema.station_labels(station))] = True
        with torch.no_grad():
            probs = torch.softmax(seg.infer(image[None].float(), allowed), dim=1)[0].numpy()
        native = nib.load(cohort.t1_path(cid))
        truth = np.asarray(nib.load(cohort.label_path(cid)).dataobj)
        ijk = np.indices(native.shape[:3]).reshape(3, -1)
        world = native.affine[:3, :3] @ ijk + native.affine[:3, 3:4]
        to_model = np.linalg.inv(np.asarray(image.affine, dtype=float))
        idx = to_model[:3, :3] @ world + to_model[:3, 3:4]
        values = sorted(schema.station_labels(station))
        stack = np.stack([map_coordinates(probs[v], idx, order=1, mode="nearest") for v in values])
        pred = np.asarray(values)[stack.argmax(0)].reshape(native.shape[:3])
        row = {"case_id": cid, "station": station}
        for name in schema.region_names(station):
            v = schema.labels[name]
            a, b = pred == v, truth == v
            row[name] = float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
        sided = {schema.name_of(v): [v] for v in label_sides(schema)}
        row["lr_swaps"] = int(sum(lr_swaps(pred, truth, side_lut(schema), sided).values()))
        rows.append(row)
        print(cid, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)})
    regions = list(schema.regions)
    per_region = {r: float(np.mean([row[r] for row in rows if r in row])) for r in regions}
    result = {
        "split": args.split,
        "n_cases": len(rows),
        "dice_mean": float(np.mean(list(per_region.values()))),
        "dice": per_region,
        "lr_swaps": int(sum(r["lr_swaps"] for r in rows)),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
