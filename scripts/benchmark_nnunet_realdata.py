#!/usr/bin/env python
"""nnU-Net v2 beside nxp2seg on the real thighs, leave one subject out (issue 21, item 2).

Usage (after ``scripts/benchmark_realdata.py`` has trained and scored nxp2seg's folds in
``REALDATA_OUT``; nnU-Net in its own venv, see docs/benchmarks/nnunet.md)::

    python scripts/benchmark_nnunet_realdata.py --nnunet-python ~/.venvs/nnunet/bin/python \\
        --realdata-out REALDATA_OUT [--variant finetune_t1stir_compartment] [--budgets 1] \\
        [--workdir REALDATA_OUT/nnunet] [--json-dir docs/benchmarks/realdata]

Per held-out subject ``S`` of the three (each step's result a JSON in ``WORKDIR/results/``
that a rerun skips):

1. **export**: the fold's compartment cohort (``REALDATA_OUT/cohorts/compartment``, channels
   FAT and WATER, the authors' labels rolled up and split into sides by ``convert``) as its
   own nnU-Net raw dataset (``Dataset54S``): the two other subjects in ``imagesTr``, the
   held-out one in ``imagesTs`` (``benchmark_nnunet.export_nnunet_raw``). Its fold 0 trains
   and validates on the same two subjects, as nnU-Net's own ``all`` fold does: two subjects
   leave none to hold out, and the validation only feeds nnU-Net's log (the final weights
   are used, never the best-by-validation ones).
2. **plan**: ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` on that dataset alone (the held-out
   subject's image is never seen by the planner).
3. **train** ``3d_fullres`` from scratch with ``scripts/benchmark_nnunet_runner.py`` for a CPU
   budget of ``k * F_S - P_S``: ``F_S`` the CPU seconds of nxp2seg's training process for the
   same fold (``REALDATA_OUT/VARIANT/fold_S/timing.json``: the fine-tuning of a phantom-trained
   bundle), ``P_S`` nnU-Net's planning for the fold. nxp2seg's phantom pre-training is a
   one-off cost shared by every fold and every cohort and is **not** in ``F_S``: the
   comparison is per fold, what each system spends on the real cohort.
4. **predict** the held-out exam (nnU-Net's mirroring, right-left excluded as in the phantom
   benchmark), and **score** it with the code that scores nxp2seg's folds
   (``benchmark_realdata.score_case``: compartment Dice over the stack and the labelled
   slices, right/left swaps; ``fat_fraction_rows``: the fat fraction of the predicted
   regions by the same estimator as inside the authors' labels).

Writes ``WORKDIR/summary.json`` (nnU-Net's folds summarised as ``benchmark_realdata``
summarises nxp2seg's, nxp2seg's summary of the same variant beside it) and copies it to
``--json-dir`` as ``nnunet_loso.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchmark_nnunet as bn  # the scripts folder is not a package: imported by path
import benchmark_realdata as br

DATASET_BASE = 540  # fold S -> Dataset54S_HuashanLOSO{S}


def dataset_of(held_out: str) -> tuple[int, str]:
    """nnU-Net's dataset id and name of the fold that holds ``held_out`` (``"001"``) out."""
    did = DATASET_BASE + int(held_out)
    return did, f"Dataset{did:03d}_HuashanLOSO{held_out}"


def fold_splits(cases: list[str], held_out_case: str) -> dict[str, list[str]]:
    """The export's splits: every case but ``held_out_case`` trains, that one is the test."""
    if held_out_case not in cases:
        raise ValueError(f"held-out case {held_out_case!r} is not among the cohort's cases {cases}")
    return {"train": [c for c in cases if c != held_out_case], "val": [], "test": [held_out_case]}


def all_fold(train: list[str]) -> list[dict[str, list[str]]]:
    """``splits_final.json`` whose fold 0 trains and validates on the same cases (nnU-Net's ``all``)."""
    return [{"train": list(train), "val": list(train)}]


def fold_budget(k: float, finetune_cpu_s: float, plan_cpu_s: float) -> float:
    """nnU-Net's training budget for a fold: ``k`` times nxp2seg's fold training less nnU-Net's planning
    (at least one second, so that one iteration runs even when planning used the budget up)."""
    return max(k * finetune_cpu_s - plan_cpu_s, 1.0)


def export_fold(args, work: Path, held_out: str) -> dict:
    from nxp2seg.data.cohort import Cohort

    cohort_dir = args.realdata_out / "cohorts" / "compartment"
    fold = br.fold_cohort(cohort_dir, work / "folds" / f"compartment_minus_{held_out}", held_out)
    did, name = dataset_of(held_out)
    raw = Path(bn.nnunet_env(work)["nnUNet_raw"])
    shutil.rmtree(raw / name, ignore_errors=True)
    splits = fold_splits(sorted(Cohort.open(fold).cases["case_id"]), f"H{held_out}_thigh")
    res = bn.export_nnunet_raw(fold, raw, splits, dataset_name=name)
    res.update(dataset_id=did, fold_cohort=str(fold), splits_final=all_fold(splits["train"]),
               lr_axis=bn.lr_axis(Path(res["dataset"]) / "imagesTr" / f"{splits['train'][0]}_0000.nii.gz"))
    return res


def plan_fold(args, work: Path, export: dict) -> dict:
    env = bn.nnunet_env(work)
    cmd = [*bn.plan_command(args.nnunet_python), "-d", str(export["dataset_id"]), "-c", "3d_fullres",
           "-np", str(args.processes), "--verify_dataset_integrity"]
    res = bn.run_measured(cmd, work / "logs" / f"plan_{export['dataset_id']}.log", env=env)
    pre = Path(env["nnUNet_preprocessed"]) / Path(export["dataset"]).name
    (pre / "splits_final.json").write_text(json.dumps(export["splits_final"], indent=2) + "\n")
    conf = json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    return {**res, "patch_size": conf["patch_size"], "batch_size": conf["batch_size"],
            "spacing": conf["spacing"]}


def train_and_score(args, work: Path, held_out: str, k: float, export: dict, budget: float) -> dict:
    run_dir = work / f"fold_{held_out}_x{k:g}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # short trainings: an interrupted one starts again
    name = Path(export["dataset"]).name
    model = run_dir / "model" / name / f"{bn.TRAINER}__nnUNetPlans__3d_fullres"
    env = bn.nnunet_env(work, results=run_dir / "model")
    cmd = [args.nnunet_python, str(bn.RUNNER), "train", "--dataset", str(export["dataset_id"]),
           "--budget-cpu-s", f"{budget:.1f}", "--lr-axis", str(export["lr_axis"]),
           "--threads", str(args.processes)]
    train = bn.run_measured(cmd, run_dir / "train.log", env=env)
    info = json.loads((model / "fold_0" / "train_info.json").read_text())
    pred = run_dir / "predictions"
    pcmd = [args.nnunet_python, str(bn.RUNNER), "predict", "--model", str(model),
            "--images", str(Path(export["dataset"]) / "imagesTs"), "--out", str(pred),
            "--threads", str(args.processes)]
    predicted = bn.run_measured(pcmd, run_dir / "predict.log", env=env)
    case = f"H{held_out}_thigh"
    fold = Path(export["fold_cohort"])
    return {"held_out": case, "budget_factor": k, "budget_cpu_s": round(budget, 1),
            "train": {**train, **info}, "predict": {**predicted, **json.loads((pred / "seconds.json").read_text())},
            "score": br.score_case(pred, fold, case),
            "fat_fraction": br.fat_fraction_rows(pred, fold, case, from_seg=True)}


def summarise(folds: list[dict], tables: Path, k: float) -> dict:
    rows = [{**f["score"], "train_cpu_minutes": f["train"]["cpu_s"] / 60,
             "train_minutes": f["train"]["wall_s"] / 60} for f in folds]
    out = br.summarise(rows)
    out.pop("ood_score", None), out.pop("flagged_input_unlike_training", None)  # nnU-Net has no guard
    out["iterations"] = {f["held_out"]: f["train"]["iterations"] for f in folds}
    out["train_cpu_minutes"] = round(sum(r["train_cpu_minutes"] for r in rows), 2)
    out["train_minutes"] = round(sum(r["train_minutes"] for r in rows), 2)
    out["fat_fraction"] = br.fat_fraction_summary([r for f in folds for r in f["fat_fraction"]], tables,
                                                  f"fat_fraction_nnunet_x{k:g}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nnunet-python", default=os.environ.get("NXP2SEG_NNUNET_PYTHON"))
    ap.add_argument("--realdata-out", type=Path, required=True, help="benchmark_realdata.py's --out")
    ap.add_argument("--variant", default="finetune_t1stir_compartment",
                    help="nxp2seg's fold trainings whose CPU seconds are the budget (a folder of --realdata-out)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0], help="multiples of nxp2seg's fold CPU")
    ap.add_argument("--folds", nargs="*", default=list(br.SUBJECTS), choices=list(br.SUBJECTS))
    ap.add_argument("--workdir", type=Path, default=None, help="default: REALDATA_OUT/nnunet")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--json-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (args.nnunet_python and Path(args.nnunet_python).is_file()):
        sys.exit("--nnunet-python: give the python of a venv with nnunetv2 (see docs/benchmarks/nnunet.md)")
    args.realdata_out = args.realdata_out.resolve()
    work = (args.workdir or args.realdata_out / "nnunet").resolve()
    results, tables = work / "results", work / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    summary: dict = {"variant": args.variant, "runs": {}}
    for k in args.budgets:
        folds = []
        for s in args.folds:
            timing = args.realdata_out / args.variant / f"fold_{s}" / "timing.json"
            if not timing.is_file():
                sys.exit(f"{timing}: nxp2seg's fold {s} has no timing; run scripts/benchmark_realdata.py first")
            finetune_cpu_s = float(json.loads(timing.read_text())["cpu_s"])
            export = bn._stage(results, f"export_{s}", export_fold, args, work, s)
            plan = bn._stage(results, f"plan_{s}", plan_fold, args, work, export)
            budget = fold_budget(k, finetune_cpu_s, plan["cpu_s"])
            res = bn._stage(results, f"fold_{s}_x{k:g}", train_and_score, args, work, s, k, export, budget)
            folds.append({**res, "nxp2seg_fold_cpu_s": finetune_cpu_s, "plan_cpu_s": plan["cpu_s"]})
            print(f"[{time.strftime('%H:%M:%S')}] fold {s} x{k:g}: nnU-Net {res['train']['iterations']} it, "
                  f"dice {br.summarise([res['score']])['dice_mean']:.3f}", flush=True)
        if tuple(args.folds) == br.SUBJECTS:
            summary["runs"][f"nnunet_x{k:g}"] = {**summarise(folds, tables, k), "folds": [
                {key: f[key] for key in ("held_out", "budget_cpu_s", "nxp2seg_fold_cpu_s", "plan_cpu_s")}
                for f in folds]}
    nx = args.realdata_out / "summary.json"
    if nx.is_file():
        summary["nxp2seg"] = json.loads(nx.read_text())["results"].get(args.variant)
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if args.json_dir:
        args.json_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "summary.json", args.json_dir / "nnunet_loso.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
