#!/usr/bin/env python
"""nxp2seg and nnU-Net v2 (``3d_fullres``) side by side: same exams, same machine, same scoring.

Usage (from the repository root, in nxp2seg's venv; nnU-Net in its own venv, see
docs/benchmarks/nnunet.md):

    python scripts/benchmark_nnunet.py --nnunet-python ~/.venvs/nnunet/bin/python \\
        [--workdir outputs/benchmark/nnunet] [--subjects 48] [--preset small] [--budgets 1 2 4] \\
        [--epochs 48] [--systems nxp2seg nnunet] [--json-dir docs/benchmarks/nnunet] [--device cuda]

Steps, each a result JSON in ``WORKDIR/results/`` that a rerun skips (the run is
resumable: kill it and start it again):

1. **cohort**: the phantom (``preset``, ``subjects``, seed 0: the default training
   cohort) in ``WORKDIR/cohort``; its subjects split as ``nxp2seg.train`` splits them
   (``split_by_subject``: the ``test`` subjects of ``cases.csv`` held out, 20% of the
   rest for validation, seed 0).
2. **export** (``export``): an nnU-Net raw dataset of the training and validation
   cases (``imagesTr``: T1 as it is, STIR resampled onto the T1 grid by
   ``nxp2seg.inference.geometry.resample_to_grid``, trilinear, so the channels share
   geometry; ``labelsTr``: the label maps, same schema and values), the test cases in
   ``imagesTs``, and ``splits_final.json`` whose fold 0 is nxp2seg's own
   train/validation split: both systems learn from the same cases.
3. **nxp2seg at k x budget** (``nxp2seg_xK``): ``python -m nxp2seg.train grading=none``
   (the segmenter alone: the grading head has no nnU-Net counterpart) with
   ``trainer.max_epochs = k * epochs``; then ``python -m nxp2seg.predict split=test``
   with and without its mirror test-time augmentation.
4. **nnU-Net plan** (``nnunet_plan``): ``nnUNetv2_plan_and_preprocess -c 3d_fullres``.
5. **nnU-Net at k x budget** (``nnunet_xK``): the default ``nnUNetTrainer`` recipe
   trained by ``scripts/benchmark_nnunet_runner.py`` for a CPU-time budget of
   ``k * B - P``, ``B`` the CPU seconds of nxp2seg's 1x training process, ``P`` those
   of nnU-Net's planning and preprocessing (so both systems spend the same compute
   from the raw cohort to a model); its poly learning rate runs over the budget, not
   over 1000 epochs. Then the test exams, with and without nnU-Net's mirroring.
6. **scoring**: both prediction folders through the same code,
   ``nxp2seg.evaluation`` (``load_evaluation_set`` + ``evaluate_segmentation``):
   Dice and HD95 per region on the native T1 grid, right/left swaps.

An interrupted training resumes mid-stage: nxp2seg from ``checkpoints/last.ckpt``
(``ckpt_path``), nnU-Net from ``checkpoint_latest.pth``; the CPU and wall seconds
of the interrupted attempts up to their last checkpoint are added (their
start-up is counted again; the part of an epoch cut off is redone).

``--device cuda`` runs both systems on the GPU (nxp2seg ``trainer=gpu``: bf16 mixed
precision; nnU-Net's own CUDA path: fp16 autocast, everything on the device at
inference) and measures the budget in **wall seconds** of the training process
instead of CPU seconds (which count the host's data loading, not the GPU's work):
nnU-Net trains for ``k * W - Q``, ``W`` the wall seconds of nxp2seg's 1x training,
``Q`` those of nnU-Net's planning. nnU-Net's ``torch.compile`` is off there unless
``nnUNet_compile=true`` is in the environment: its compile minutes would count
against a budget of a few minutes.

Every stage records wall seconds, CPU seconds (user + system of the process and its
children, ``os.wait4``) and peak resident memory, and the machine's load average
before and after: the machine may be shared, and CPU seconds are the fairer clock.
Writes ``WORKDIR/results/*.json``, ``summary.json``, a Markdown table, and copies
them to ``--json-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "benchmark_nnunet_runner.py"
DATASET_ID = 521
DATASET_NAME = f"Dataset{DATASET_ID:03d}_nxp2segPhantom"
#: Every stage of both systems runs with OpenMP threads that sleep at barriers instead of
#: spinning (``--omp-wait-policy``): on a shared, oversubscribed machine a spinning thread
#: burns CPU while its partner is descheduled, and a 2-thread conv3d step then costs ~6x the CPU
#: and ~9x the wall time (measured on the project's machine at load 9-10, nice 10).
OMP_WAIT_POLICY = "PASSIVE"


# -- measuring ------------------------------------------------------------------------------

def run_measured(cmd: list[str], log: Path, env: dict[str, str] | None = None,
                 nice: int = 0) -> dict:
    """Run ``cmd`` (output to ``log``); wall, CPU (process + reaped children) and peak RSS.

    Raises ``RuntimeError`` naming the log when the command fails.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    if OMP_WAIT_POLICY:
        env["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen((["nice", "-n", str(nice)] if nice else []) + list(cmd), stdout=fh,
                                stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... failed (exit {proc.returncode}); "
                           f"see {log}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 3),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()]}


class EpochUsage(pl.Callback):
    """Writes the process's CPU and wall seconds at the end of every training epoch (``path``).

    Lightning saves ``last.ckpt`` at the same moment, so an interrupted nxp2seg
    training resumes from there and counts the compute up to it.
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        t = os.times()
        self.path.write_text(json.dumps({
            "epoch": int(trainer.current_epoch) + 1, "cpu_s": t.user + t.system + t.children_user
            + t.children_system, "wall_s": time.perf_counter() - self.t0}) + "\n")


def _previous_attempts(state: Path, attempts: Path) -> list[dict]:
    """Record an interrupted attempt's last checkpointed usage (``state``) in ``attempts``; return all."""
    done = json.loads(attempts.read_text()) if attempts.is_file() else []
    if state.is_file():
        done.append(json.loads(state.read_text()))
        attempts.write_text(json.dumps(done, indent=2) + "\n")
        state.unlink()
    return done


def _add_attempts(usage: dict, previous: list[dict]) -> dict:
    """This attempt's usage plus the checkpointed compute of the interrupted ones."""
    if previous:
        usage = {**usage, "cpu_s": round(usage["cpu_s"] + sum(a["cpu_s"] for a in previous), 2),
                 "wall_s": round(usage["wall_s"] + sum(a["wall_s"] for a in previous), 2),
                 "interrupted_attempts": previous}
    return usage


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "gpu": gpu, "torch_nxp2seg": torch.__version__,
            "python": platform.python_version()}


def budget_clock(device: str) -> str:
    """The clock a budget is counted on: CPU seconds on CPU, wall seconds on a GPU."""
    return "wall" if device == "cuda" else "cpu"


# -- export to nnU-Net's raw format -------------------------------------------------------

def export_nnunet_raw(cohort_dir: Path, raw_root: Path, splits: dict[str, list[str]],
                      dataset_name: str = DATASET_NAME) -> dict:
    """Write the cohort as an nnU-Net v2 raw dataset; return what was written and its timings.

    ``splits`` is ``{"train": [...], "val": [...], "test": [...]}`` (case ids, as
    ``nxp2seg.data.datamodule.split_by_subject`` returns): train and val cases go
    to ``imagesTr``/``labelsTr``, test cases to ``imagesTs``. Channel 0 is the T1
    (or Dixon fat image) copied as it is; channel 1 the STIR (water) resampled onto
    channel 0's grid (trilinear; outside its field of view 0). Labels keep the cohort's schema and values
    (nnU-Net's ``labels``: name -> value, ``background`` 0). Returns
    ``{"dataset": path, "train": n, "test": n, "seconds": {case_id: s}, "splits_final": [...]}``;
    ``seconds`` is the STIR resampling and writing of each test case (part of what
    nnU-Net needs per exam that nxp2seg does inside its prediction).
    """
    import nibabel as nib

    from nxp2seg.data.cohort import Cohort
    from nxp2seg.inference.geometry import resample_to_grid

    cohort = Cohort.open(cohort_dir)
    out = raw_root / dataset_name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    labels = dict(cohort.dataset.schema.labels)
    values = sorted(labels.values())
    if values != list(range(len(values))):
        raise ValueError(f"{cohort.root / 'dataset.json'}: nnU-Net needs consecutive label values "
                         f"0..N; this schema has {values}")
    training = [c for c in splits["train"] + splits["val"] if cohort.has_label(c)]
    unlabelled = sorted(set(splits["train"] + splits["val"]) - set(training))
    if unlabelled:
        raise ValueError(f"{len(unlabelled)} training case(s) have no label map ({unlabelled[:5]}); "
                         "nnU-Net trains on labelled cases only: give a fully labelled cohort")
    seconds: dict[str, float] = {}
    for case_id in training + list(splits["test"]):
        t0 = time.perf_counter()
        test = case_id in splits["test"]
        folder = out / ("imagesTs" if test else "imagesTr")
        t1 = nib.load(cohort.t1_path(case_id))
        stir = nib.load(cohort.stir_path(case_id))
        stir_on_t1 = resample_to_grid(np.asarray(stir.dataobj, dtype=np.float32).reshape(stir.shape[:3]),
                                      stir.affine, t1.shape[:3], t1.affine)
        shutil.copyfile(cohort.t1_path(case_id), folder / f"{case_id}_0000.nii.gz")
        img = nib.Nifti1Image(stir_on_t1, t1.affine, t1.header)
        img.set_data_dtype(np.float32)
        nib.save(img, folder / f"{case_id}_0001.nii.gz")
        if test:
            seconds[case_id] = round(time.perf_counter() - t0, 3)
            continue
        lab = nib.load(cohort.label_path(case_id))
        data = np.asarray(lab.dataobj).reshape(lab.shape[:3])
        rounded = np.rint(data)
        if not np.array_equal(rounded, data) or rounded.min() < 0 or rounded.max() > values[-1]:
            raise ValueError(f"{cohort.label_path(case_id)}: label values outside the schema's "
                             f"0..{values[-1]} or not integers")
        seg = nib.Nifti1Image(rounded.astype(np.uint8), t1.affine)
        seg.set_data_dtype(np.uint8)
        nib.save(seg, out / "labelsTr" / f"{case_id}.nii.gz")
    dataset = {
        # the cohort's own names (T1, STIR or FAT, WATER), never "CT": nnU-Net z-scores each channel
        "channel_names": {str(k): str(v) for k, v in sorted(cohort.dataset.channel_names.items(),
                                                            key=lambda kv: int(kv[0]))},
        "labels": {name: int(v) for name, v in sorted(labels.items(), key=lambda kv: kv[1])},
        "numTraining": len(training),
        "file_ending": ".nii.gz",
        "name": dataset_name,
        "description": f"exported by scripts/benchmark_nnunet.py from {cohort.root.name}",
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    labelled = set(training)
    folds = [{"train": [c for c in splits["train"] if c in labelled],
              "val": [c for c in splits["val"] if c in labelled]}]
    return {"dataset": str(out), "train": len(training), "test": len(splits["test"]),
            "seconds": seconds, "splits_final": folds}


def lr_axis(image_path: Path) -> int:
    """The array axis of nnU-Net's reader (SimpleITK order: z, y, x) that runs right-left."""
    import nibabel as nib

    img = nib.load(image_path)
    xyz = int(np.argmax(np.abs(img.affine[:3, :3])[0]))  # voxel axis along world x (R-L)
    return 2 - xyz


# -- scoring (the same code for both systems) ---------------------------------------------

def score(pred_dir: Path, cohort_dir: Path) -> dict:
    """Dice, HD95 and right/left swaps of a prediction folder on the cohort's test cases.

    ``nxp2seg.evaluation``'s own reading and segmentation table (``nxp2seg.evaluate``
    computes its summary from the same table): mean over cases per region, the
    mean of all graded regions, and the swapped regions.
    """
    from nxp2seg.evaluation.inputs import load_evaluation_set
    from nxp2seg.evaluation.segmentation import evaluate_segmentation

    es = load_evaluation_set(pred_dir, cohort_dir, split="test")
    seg, notes = evaluate_segmentation(es)
    if notes:
        raise RuntimeError(f"{pred_dir}: " + "; ".join(notes))
    graded = seg[seg["graded"]]
    per_region = graded.groupby("region")[["dice", "hd95_mm"]].mean()
    structures = seg[~seg["graded"]].groupby("region")[["dice", "hd95_mm"]].mean()
    return {
        "n_cases": int(seg["case_id"].nunique()), "n_subjects": int(seg["subject_id"].nunique()),
        "dice_mean": float(graded["dice"].mean()),
        "hd95_mm_mean": float(graded["hd95_mm"].mean()),
        "dice_min_region": float(per_region["dice"].min()),
        "dice": {r: round(float(v), 4) for r, v in per_region["dice"].items()},
        "hd95_mm": {r: round(float(v), 2) for r, v in per_region["hd95_mm"].items()},
        "dice_structures": {r: round(float(v), 4) for r, v in structures["dice"].items()},
        "lr_swaps": int(graded["lr_swap"].astype(bool).sum()),
        "lr_swap_cases": sorted(graded.loc[graded["lr_swap"].astype(bool), "case_id"].unique().tolist()),
        "notes": list(es.notes),
    }


def seconds_per_exam(case_seconds: dict[str, float], cohort_dir: Path) -> dict:
    """Sum the cases' seconds per subject (an exam = the subject's stations); mean, min, max."""
    from nxp2seg.data.cohort import Cohort

    cohort = Cohort.open(cohort_dir)
    exams: dict[str, float] = {}
    for case_id, s in case_seconds.items():
        sid = cohort.subject_of(case_id)
        exams[sid] = exams.get(sid, 0.0) + float(s)
    v = np.array(list(exams.values()))
    return {"mean": round(float(v.mean()), 2), "min": round(float(v.min()), 2),
            "max": round(float(v.max()), 2), "n_exams": len(v)}


# -- nxp2seg ----------------------------------------------------------------------------------

def run_nxp2seg(k: int, args, work: Path, cohort_dir: Path) -> dict:
    """Train, predict with and without TTA, score; resumes an interrupted training from its last epoch."""
    py = sys.executable
    run_dir = work / f"nxp2seg_x{k}"
    last = run_dir / "checkpoints" / "last.ckpt"
    state = run_dir / "usage.json"
    if run_dir.exists() and not (last.is_file() and state.is_file()):
        shutil.rmtree(run_dir)  # an unfinished try with nothing to resume: start again
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = _previous_attempts(state, run_dir / "attempts.json")
    epochs = args.epochs * k
    cmd = [py, "-m", "nxp2seg.train", f"data.cohort={cohort_dir}", f"output_dir={run_dir}",
           "grading=none", f"trainer.max_epochs={epochs}",
           f"trainer.check_val_every_n_epoch={max(1, epochs // 2)}", "test=false",
           "+callbacks.benchmark_usage._target_=benchmark_nnunet.EpochUsage",
           f"+callbacks.benchmark_usage.path={state}",
           *(["trainer=gpu"] if args.device == "cuda" else []), *args.nxp2seg_overrides]
    if previous:
        cmd.append(f"ckpt_path={last}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])}
    train = _add_attempts(run_measured(cmd, run_dir / f"train{len(previous) or ''}.log", env=env,
                                       nice=args.nice), previous)
    validation = json.loads((run_dir / "bundle" / "validation.json").read_text())
    result: dict = {"system": "nxp2seg", "budget": k, "train": {
        **train, "command": " ".join(cmd[1:]), "max_epochs": epochs,
        "epochs_run": validation.get("epoch"), "steps": validation.get("global_step"),
        "val_dice_mean": validation.get("val", {}).get("dice_mean")}}
    for tta in (True, False):
        name = "tta" if tta else "no_tta"
        out = run_dir / f"pred_{name}"
        pcmd = [py, "-m", "nxp2seg.predict", f"model={run_dir / 'bundle'}", f"input={cohort_dir}",
                "split=test", f"output={out}", f"device={args.device}", "qc=false", f"flip_tta={str(tta).lower()}",
                "progress=false"]
        pred = run_measured(pcmd, run_dir / f"predict_{name}.log", nice=args.nice)
        cases = {p.parent.name: json.loads(p.read_text())["seconds"] for p in out.glob("*/report.json")}
        result[f"predict_{name}"] = {**pred, "seconds_per_exam": seconds_per_exam(cases, cohort_dir),
                                     "score": score(out, cohort_dir)}
    return result


# -- nnU-Net ----------------------------------------------------------------------------------

TRAINER = "nnUNetTrainerCPUBudget"


def nnunet_env(work: Path, results: Path | None = None) -> dict[str, str]:
    """nnU-Net's folders under ``work`` (``results``: the trained models' folder)."""
    env = dict(os.environ)
    for key, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"),
                     ("nnUNet_results", "results_nnunet")):
        env[key] = str(work / "nnunet" / sub)
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    if results is not None:
        env["nnUNet_results"] = str(results)
    return env


def plan_command(nnunet_python: str) -> list[str]:
    """``nnUNetv2_plan_and_preprocess`` beside ``nnunet_python``, or its entry point through that python.

    The entry point serves where nnU-Net was installed without its console scripts
    (``pip install --target``, as on a lent GPU machine).
    """
    tool = Path(nnunet_python).parent / "nnUNetv2_plan_and_preprocess"
    if tool.is_file():
        return [str(tool)]
    entry = ("import sys; sys.argv[0] = 'nnUNetv2_plan_and_preprocess'; "
             "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
             "plan_and_preprocess_entry; plan_and_preprocess_entry()")
    return [nnunet_python, "-c", entry]


def run_nnunet_plan(args, work: Path) -> dict:
    env = nnunet_env(work)
    cmd = [*plan_command(args.nnunet_python), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np",
           str(args.processes), "--verify_dataset_integrity"]
    res = run_measured(cmd, work / "logs" / "nnunet_plan.log", env=env, nice=args.nice)
    pre = Path(env["nnUNet_preprocessed"]) / DATASET_NAME
    export = json.loads((work / "results" / "export.json").read_text())
    (pre / "splits_final.json").write_text(json.dumps(export["splits_final"], indent=2) + "\n")
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    return {"system": "nnunet", "stage": "plan_and_preprocess", **res, "command": " ".join(cmd),
            "patch_size": conf["patch_size"], "batch_size": conf["batch_size"],
            "spacing": conf["spacing"], "transpose_forward": plans["transpose_forward"],
            "features_per_stage": conf.get("architecture", {}).get("arch_kwargs", {}).get(
                "features_per_stage")}


def run_nnunet(k: int, args, work: Path, cohort_dir: Path, budget_s: float) -> dict:
    run_dir = work / f"nnunet_x{k}"
    model = run_dir / "model" / DATASET_NAME / f"{TRAINER}__nnUNetPlans__3d_fullres"
    state = model / "fold_0" / "budget_state.json"
    if run_dir.exists() and not ((model / "fold_0" / "checkpoint_latest.pth").is_file() and state.is_file()):
        shutil.rmtree(run_dir)  # an unfinished try with nothing to resume: start again
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = json.loads((run_dir / "attempts.json").read_text()) if (run_dir / "attempts.json").is_file() else []
    if state.is_file():  # the runner resumes from checkpoint_latest.pth and this state itself
        previous.append(json.loads(state.read_text()))
        (run_dir / "attempts.json").write_text(json.dumps(previous, indent=2) + "\n")
    env = nnunet_env(work, results=run_dir / "model")
    if args.device == "cuda":
        env.setdefault("nnUNet_compile", "false")  # see the module docstring
    export = json.loads((work / "results" / "export.json").read_text())
    cmd = [args.nnunet_python, str(RUNNER), "train", "--dataset", str(DATASET_ID),
           f"--budget-{budget_clock(args.device)}-s", f"{budget_s:.1f}", "--lr-axis", str(export["lr_axis"]),
           "--threads", str(args.processes), "--device", args.device]
    cmd += ["--mirror-lr"] if args.nnunet_mirror_lr else []
    train = run_measured(cmd, run_dir / f"train{len(previous) or ''}.log", env=env, nice=args.nice)
    if previous:  # the runner counted the checkpointed compute of the interrupted attempts in its budget
        last = previous[-1]
        train = {**train, "cpu_s": round(train["cpu_s"] + last["cpu_s"], 2),
                 "wall_s": round(train["wall_s"] + last["wall_s"], 2), "interrupted_attempts": previous}
    info = json.loads((model / "fold_0" / "train_info.json").read_text())
    result: dict = {"system": "nnunet", "budget": k, "train": {
        **train, "command": " ".join(cmd[1:]), **info}}
    images = Path(export["dataset"]) / "imagesTs"
    for mirror in (True, False):
        name = "tta" if mirror else "no_tta"
        out = run_dir / f"pred_{name}"
        pcmd = [args.nnunet_python, str(RUNNER), "predict", "--model", str(model), "--images", str(images),
                "--out", str(out), "--threads", str(args.processes), "--device", args.device]
        pcmd += [] if mirror else ["--no-mirroring"]
        pred = run_measured(pcmd, run_dir / f"predict_{name}.log", env=env, nice=args.nice)
        seconds = json.loads((out / "seconds.json").read_text())
        # what nnU-Net needs per case beyond its own prediction: the STIR resampled onto the T1
        total = {c: s + export["seconds"][c] for c, s in seconds.items()}
        result[f"predict_{name}"] = {**pred, "seconds_per_exam": seconds_per_exam(total, cohort_dir),
                                     "seconds_per_exam_nnunet_only": seconds_per_exam(seconds, cohort_dir),
                                     "score": score(out, cohort_dir)}
    return result


# -- orchestration ----------------------------------------------------------------------------

def _stage(results: Path, name: str, fn, *a) -> dict:
    """Run a stage unless its result JSON exists (resumable); write it when done."""
    path = results / f"{name}.json"
    if path.is_file():
        print(f"[{name}] done before: {path}")
        return json.loads(path.read_text())
    print(f"[{name}] running ...", flush=True)
    t0 = time.perf_counter()
    res = fn(*a)
    res.setdefault("finished", time.strftime("%Y-%m-%d %H:%M:%S"))
    results.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(path)
    print(f"[{name}] done in {time.perf_counter() - t0:.0f} s: {path}", flush=True)
    return res


def prepare(args, work: Path) -> tuple[Path, dict]:
    from nxp2seg.data.cohort import Cohort
    from nxp2seg.data.datamodule import split_by_subject
    from nxp2seg.phantom import generate_cohort

    cohort_dir = work / "cohort"
    if not (cohort_dir / "dataset.json").is_file():
        if cohort_dir.exists():
            shutil.rmtree(cohort_dir)
        generate_cohort(cohort_dir, subjects=args.subjects, preset=args.preset, seed=args.seed)
    splits = split_by_subject(Cohort.open(cohort_dir).cases)  # nxp2seg.train's defaults

    def export() -> dict:
        raw = Path(nnunet_env(work)["nnUNet_raw"])
        res = export_nnunet_raw(cohort_dir, raw, splits)
        res["lr_axis"] = lr_axis(Path(res["dataset"]) / "imagesTr" / f"{splits['train'][0]}_0000.nii.gz")
        return res

    return cohort_dir, _stage(work / "results", "export", export)


def table(results: dict[str, dict]) -> str:
    """The side-by-side Markdown table of the finished runs."""
    head = ("| system | budget | train wall | train CPU | epochs / iterations | test Dice "
            "(mirror TTA) | Dice (no TTA) | HD95 mm | weakest region Dice | R/L swaps | "
            "s / exam TTA | s / exam no TTA | peak RSS train / predict |")
    rows = [head, "|" + "---|" * 13]
    for name in sorted(results, key=lambda n: (results[n]["budget"], results[n]["system"])):
        r = results[name]
        t, a, b = r["train"], r["predict_tta"], r["predict_no_tta"]
        progress = (f"{t['epochs_run']} ep, {t['steps']} steps" if r["system"] == "nxp2seg"
                    else f"{t['epochs']} ep, {t['iterations']} it")
        rows.append(
            f"| {r['system']} | {r['budget']}x | {t['wall_s'] / 60:.1f} min | {t['cpu_s'] / 60:.1f} min "
            f"| {progress} | {a['score']['dice_mean']:.3f} | {b['score']['dice_mean']:.3f} "
            f"| {a['score']['hd95_mm_mean']:.1f} | {a['score']['dice_min_region']:.3f} "
            f"| {a['score']['lr_swaps']} / {b['score']['lr_swaps']} "
            f"| {a['seconds_per_exam']['mean']:.1f} | {b['seconds_per_exam']['mean']:.1f} "
            f"| {t['peak_rss_gb']:.2f} / {max(a['peak_rss_gb'], b['peak_rss_gb']):.2f} GB |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nnunet-python", default=os.environ.get("NXP2SEG_NNUNET_PYTHON"),
                    help="the python of the venv with nnunetv2 (or $NXP2SEG_NNUNET_PYTHON)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "benchmark" / "nnunet")
    ap.add_argument("--subjects", type=int, default=48)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--epochs", type=int, default=48, help="nxp2seg's default trainer.max_epochs (1x)")
    ap.add_argument("--systems", nargs="+", default=["nxp2seg", "nnunet"], choices=["nxp2seg", "nnunet"])
    ap.add_argument("--processes", type=int, default=2, help="threads / worker processes per system")
    ap.add_argument("--nice", type=int, default=0, help="run every stage at this niceness")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="train and predict both systems here; on cuda the budget is wall seconds")
    ap.add_argument("--nnunet-mirror-lr", action="store_true",
                    help="let nnU-Net mirror right-left too (its default; it cannot keep the sides apart)")
    ap.add_argument("--nxp2seg-overrides", nargs="*", default=[],
                    help="extra Hydra overrides of every nxp2seg training (e.g. experiment=smoke)")
    ap.add_argument("--json-dir", type=Path, help="copy the result JSONs and the table here")
    ap.add_argument("--report", action="store_true",
                    help="run nothing: the table and summary of the stages finished so far")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY of every stage ('' leaves the environment's)")
    args = ap.parse_args()
    global OMP_WAIT_POLICY
    OMP_WAIT_POLICY = args.omp_wait_policy
    if args.report:
        return report(args)
    if "nnunet" in args.systems and not (args.nnunet_python and Path(args.nnunet_python).is_file()):
        sys.exit("--nnunet-python: give the python of a venv with nnunetv2 installed "
                 "(see docs/benchmarks/nnunet.md)")
    work = args.workdir.resolve()
    results_dir = work / "results"
    cohort_dir, export = prepare(args, work)
    done: dict[str, dict] = {}
    base = _stage(results_dir, "nxp2seg_x1", run_nxp2seg, 1, args, work, cohort_dir)  # defines the budget
    for k in sorted(args.budgets):
        if "nxp2seg" in args.systems:
            done[f"nxp2seg_x{k}"] = _stage(results_dir, f"nxp2seg_x{k}", run_nxp2seg, k, args, work,
                                           cohort_dir)
        if "nnunet" in args.systems:
            plan = _stage(results_dir, "nnunet_plan", run_nnunet_plan, args, work)
            # at least one iteration even when planning alone used up the budget (tiny test runs)
            clock = f"{budget_clock(args.device)}_s"
            budget = max(k * base["train"][clock] - plan[clock], 1.0)
            done[f"nnunet_x{k}"] = _stage(results_dir, f"nnunet_x{k}", run_nnunet, k, args, work,
                                          cohort_dir, budget)
    write_summary(args, work, export, base, done)


def write_summary(args, work: Path, export: dict, base: dict | None, done: dict[str, dict]) -> None:
    results_dir = work / "results"
    summary = {"machine": machine(), "cohort": {"preset": args.preset, "subjects": args.subjects,
                                                "seed": args.seed, "train_cases": export["train"],
                                                "test_cases": export["test"]},
               "device": args.device, "budget_clock": budget_clock(args.device),
               "nxp2seg_budget_cpu_s": base["train"]["cpu_s"] if base else None,
               "nxp2seg_budget_wall_s": base["train"]["wall_s"] if base else None,
               "runs": done, "table": table(done)}
    for extra in ("export", "nnunet_plan"):
        if (results_dir / f"{extra}.json").is_file():
            summary[extra] = json.loads((results_dir / f"{extra}.json").read_text())
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(summary["table"])
    if args.json_dir:
        args.json_dir.mkdir(parents=True, exist_ok=True)
        for p in sorted(results_dir.glob("*.json")):
            shutil.copyfile(p, args.json_dir / p.name)
        shutil.copyfile(work / "summary.json", args.json_dir / "summary.json")


def report(args) -> None:
    """The table of the stages finished so far (``--report``): nothing is run."""
    work = args.workdir.resolve()
    results = work / "results"
    if not (results / "export.json").is_file():
        sys.exit(f"{results}: no finished stage yet")
    done = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*_x*.json"))}
    base = done.get("nxp2seg_x1")
    write_summary(args, work, json.loads((results / "export.json").read_text()), base, done)


if __name__ == "__main__":
    main()
