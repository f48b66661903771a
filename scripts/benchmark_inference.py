#!/usr/bin/env python
"""Seconds per two-station exam, end to end, against the hardware's limit and a hand-written baseline.

Usage: python scripts/benchmark_inference.py BUNDLE [--cohort DIR] [--subjects 2] [--device cpu]
                                             [--threads N] [--json OUT] [--no-baseline] [--no-tta]

* **Exams**: ``full``-preset phantom subjects (T1 + STIR of both thighs and both
  calves, ~384x288x24 at ~1.0-1.3 mm), generated into ``--cohort`` when it has
  none (seed 777: subjects no bundle trained on).
* **nxp2seg**: the product's own path per exam (``Predictor.predict_case`` and
  the writers of ``nxp2seg.predict``), timed per stage: load, preprocess,
  network (sliding window with the bundle's settings), grading head,
  post-process (probabilities back onto the native grid, volumes, edema
  measurement, scores) and write (seg.nii.gz, qc.png, report.json); peak
  resident memory (and peak CUDA memory). Run twice per exam; the second
  (warm) run is reported.
* **Hardware limit**: float32 matmul GFLOP/s measured in the same run
  (``torch.mm`` 2048x2048, best of 5) and the network's achieved GFLOP/s on
  its sliding-window batches (FLOPs counted by ``torch.utils.flop_counter``).
* **Baseline**: what a user writes by hand with MONAI: load, STIR resampled
  onto T1, z-score, the laterality channel, then ``sliding_window_inference``
  at the **native** resolution with the same network in float32, overlap
  0.5, argmax; no test-time augmentation.
* **Dice** of both on the native grid against the phantom's labels.

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of an ``n x n`` matmul on ``device``."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        (a @ b).sum().item()
        _sync(device)
        dt = time.perf_counter() - t0
        best = max(best, 2 * n**3 / dt / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_throughput(net: torch.nn.Module, shape: tuple[int, ...], device: torch.device,
                       repeats: int = 5) -> dict:
    """FLOPs of one forward on a batch of windows, and the best achieved GFLOP/s."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(*shape, device=device)
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            net(x)
        flops = counter.get_total_flops()
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            net(x)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    return {"batch_shape": list(shape), "gflop_per_batch": flops / 1e9, "seconds": best,
            "gflops": flops / best / 1e9}


def dice_native(pred: np.ndarray, truth: np.ndarray, schema, station: str) -> float:
    vals = []
    for region in schema.region_names(station):
        v = schema.labels[region]
        a, b = pred == v, truth == v
        vals.append(2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0))
    return float(np.mean(vals))


def baseline_case(net: torch.nn.Module, t1_path: Path, stir_path: Path, label_path: Path, patch,
                  station: str, schema, device: torch.device) -> tuple[float, float]:
    """Hand-written MONAI inference at native resolution (see the module docstring): ``(dice, seconds)``.

    Arrays are turned to RAS as the network expects (a careful user would);
    Dice is taken on that native-resolution grid against the labels turned alike.
    """
    import monai.transforms as mt
    from monai.inferers import sliding_window_inference

    from nxp2seg.data.transforms import laterality_map
    from nxp2seg.models.segmenter import mask_logits

    t0 = time.perf_counter()
    load = mt.Compose([mt.LoadImage(image_only=True, ensure_channel_first=True),
                       mt.Orientation(axcodes="RAS")])
    t1, stir = load(str(t1_path)), load(str(stir_path))
    stir = mt.ResampleToMatch(mode="bilinear")(stir, t1)
    img = torch.cat([t1, stir], 0).float()
    fg = img[0] > 0.1 * torch.quantile(img[0].flatten()[::7], 0.99)
    for c in range(2):
        v = img[c][fg]
        img[c] = (img[c] - v.mean()) / v.std()
    lat = laterality_map(img, t1.affine)
    x = torch.cat([img, lat[None] if lat.ndim == 3 else lat], 0)[None].to(device)
    allowed = torch.zeros(1, schema.max_label + 1, dtype=torch.bool, device=device)
    allowed[0, sorted(schema.station_labels(station))] = True
    with torch.inference_mode():
        logits = sliding_window_inference(x.as_tensor() if hasattr(x, "as_tensor") else x,
                                          roi_size=list(patch), sw_batch_size=1, predictor=net,
                                          overlap=0.5)
        pred = mask_logits(logits, allowed).argmax(1)[0].cpu().numpy().astype(np.uint8)
    seconds = time.perf_counter() - t0
    truth = np.asarray(load(str(label_path))[0]).round().astype(int)
    return dice_native(pred, truth, schema, station), seconds


def _peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024**2 if sys.platform != "darwin" else kb / 1024**3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--cohort", type=Path, default=Path("outputs/benchmark/full"))
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-crop", action="store_true", help="slide over the whole volume, not the body's box")
    ap.add_argument("--no-tta", action="store_true", help="predict without the mirror test-time augmentation")
    args = ap.parse_args()
    from nxp2seg.runtime import keep_freed_memory

    keep_freed_memory()  # as nxp2seg.predict does (baseline and nxp2seg alike)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    import nibabel as nib

    from nxp2seg.data.cohort import Cohort
    from nxp2seg.inference.batch import predict_one
    from nxp2seg.inference.inputs import discover_cases
    from nxp2seg.inference.predictor import Predictor
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.phantom import generate_cohort

    if not (args.cohort / "dataset.json").exists():
        print(f"generating {args.subjects} full-preset phantom subjects into {args.cohort} ...")
        generate_cohort(args.cohort, subjects=args.subjects, preset="full", seed=777)
    cohort = Cohort.open(args.cohort)
    bundle = load_bundle(args.bundle)
    t0 = time.perf_counter()
    predictor = Predictor(bundle, device=device, flip_tta=False if args.no_tta else None,
                          crop_to_body=False if args.no_crop else None)
    setup_s = time.perf_counter() - t0
    cases = discover_cases(args.cohort)
    out = Path(args.cohort).parent / "benchmark_predictions"
    peak = matmul_peak(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    stages = ("load", "preprocess", "network", "grading", "postprocess", "write")
    per_exam: dict[str, dict[str, float]] = {}
    dices = {"nxp2seg": [], "baseline": []}
    baseline_s: dict[str, float] = {}
    subjects = sorted({c.subject_id for c in cases})
    for run in range(2):  # the first run warms up allocators and caches; the second is reported
        for sid in subjects:
            tot = dict.fromkeys(stages, 0.0)
            for case in [c for c in cases if c.subject_id == sid]:
                t_case = time.perf_counter()
                rep = predict_one(predictor, case, out, model_info={})
                wall = time.perf_counter() - t_case
                if rep["status"] != "ok":
                    sys.exit(f"{case.case_id} failed: {rep['error']}")
                for k, v in rep["timings_s"].items():
                    tot[k] += v
                tot["write"] += wall - sum(rep["timings_s"].values())
                if run == 1:
                    seg = np.asarray(nib.load(out / case.case_id / "seg.nii.gz").dataobj)
                    truth = np.asarray(nib.load(cohort.label_path(case.case_id)).dataobj)
                    dices["nxp2seg"].append(dice_native(seg, truth, bundle.schema, case.station))
            if run == 1:
                per_exam[sid] = tot
    net = predictor.model.net
    sw = int(predictor.segmenter.inference_cfg["sw_batch_size"])
    chans = len(bundle.preprocessing.channels) + int(bundle.preprocessing.laterality)
    thr = network_throughput(net, (sw, chans, *bundle.preprocessing.patch_size), device)
    if not args.no_baseline:
        for sid in subjects:
            baseline_s[sid] = 0.0
            for case in [c for c in cases if c.subject_id == sid]:
                dice, sec = baseline_case(net, case.t1, case.stir, cohort.label_path(case.case_id),
                                          bundle.preprocessing.patch_size, case.station,
                                          bundle.schema, device)
                dices["baseline"].append(dice)
                baseline_s[sid] += sec
    exam_s = [sum(t.values()) for t in per_exam.values()]
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": str(device),
                    "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "bundle": str(args.bundle), "n_exams": len(per_exam), "setup_s": setup_s,
        "flip_tta": bool(predictor.segmenter.inference_cfg.get("flip_tta")),
        "seconds_per_exam": float(np.mean(exam_s)),
        "stages_s": {k: float(np.mean([t[k] for t in per_exam.values()])) for k in stages},
        "peak_rss_gb": _peak_rss_gb(),
        "peak_cuda_gb": (torch.cuda.max_memory_allocated(device) / 1024**3
                         if device.type == "cuda" else None),
        "matmul_peak_gflops": peak,
        "network": {**thr, "fraction_of_peak": thr["gflops"] / peak},
        "dice_nxp2seg": float(np.mean(dices["nxp2seg"])),
    }
    if baseline_s:
        result["baseline"] = {"seconds_per_exam": float(np.mean(list(baseline_s.values()))),
                              "dice": float(np.mean(dices["baseline"]))}
        result["speedup_vs_baseline"] = result["baseline"]["seconds_per_exam"] / result["seconds_per_exam"]
    print(f"{'stage':<14}{'s / exam':>10}")
    for k, v in result["stages_s"].items():
        print(f"{k:<14}{v:>10.2f}")
    print(f"{'total':<14}{result['seconds_per_exam']:>10.2f}   (two stations; Dice {result['dice_nxp2seg']:.4f})")
    if baseline_s:
        b = result["baseline"]
        print(f"{'baseline':<14}{b['seconds_per_exam']:>10.2f}   (Dice {b['dice']:.4f}); "
              f"nxp2seg is {result['speedup_vs_baseline']:.1f}x faster")
    print(f"peak memory {result['peak_rss_gb']:.2f} GB"
          + (f", CUDA {result['peak_cuda_gb']:.2f} GB" if result["peak_cuda_gb"] is not None else ""))
    n = result["network"]
    print(f"matmul peak {peak:.1f} GFLOP/s; network forward {n['gflops']:.1f} GFLOP/s "
          f"({100 * n['fraction_of_peak']:.0f}% of peak) on batches {n['batch_shape']}")
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
