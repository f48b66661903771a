#!/usr/bin/env python
"""Training speed: patches per second, and seconds until the segmenter reaches the default Dice.

Usage: python scripts/benchmark_training.py [--target 0.88] [--every 4] [--cohort DIR]
                                            [--threads N] [--json OUT] [key=value ...]

Runs the default ``python -m nxp2seg.train`` configuration (the built-in phantom
unless ``--cohort``; segmentation only: the grading stage is timed by the
default run itself) with two changes: validation every ``--every`` epochs, and
Lightning's ``EarlyStopping`` ending the fit at the first validation whose
``val/dice_mean`` reaches ``--target`` (the learning-rate schedule is the
default's, over ``trainer.max_epochs``). A callback times every training
step and every validation. Reports:

* **throughput**: training patches per second (patch size and patches per
  step from the plan), seconds per step, over all steps after the first 5;
* **time to Dice**: wall seconds from the first training step to the end of
  the validation that reached the target, and the same without the time
  spent validating (the default run validates 2 times, not every few epochs);
  the epochs and steps it took; the Dice after every validation.

Extra ``key=value`` arguments are Hydra overrides of the training config
(e.g. ``trainer=gpu``, ``model=dynunet``). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

WARMUP_STEPS = 5


class BenchTimer(pl.Callback):
    """Times training steps and validations; records ``val/dice_mean`` after each validation."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.validations: list[dict[str, float]] = []
        self.start: float | None = None
        self._t = 0.0
        self._v = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(time.perf_counter() - self._t)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._v = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        now = time.perf_counter()
        dice = trainer.callback_metrics.get("val/dice_mean")
        self.validations.append({
            "epoch": int(trainer.current_epoch) + 1,
            "step": int(trainer.global_step),
            "dice": float(dice) if dice is not None else float("nan"),
            "seconds": now - self._v,
            "elapsed": now - (self.start or now),
        })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    ap.add_argument("--target", type=float, default=0.88, help="val/dice_mean to reach")
    ap.add_argument("--every", type=int, default=4, help="validate every this many epochs")
    ap.add_argument("--cohort", type=Path, help="a cohort (default: the built-in phantom)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from hydra import compose, initialize_config_dir

    import nxp2seg
    from nxp2seg.train import train

    configs = Path(nxp2seg.__file__).resolve().parent / "configs"
    with tempfile.TemporaryDirectory(prefix="nxp2seg-bench-") as tmp:
        overrides = [
            f"output_dir={tmp}/run",
            "grading=none",
            "test=false",
            "validate_best=false",
            f"trainer.check_val_every_n_epoch={args.every}",
            "+callbacks.early_stop._target_=pytorch_lightning.callbacks.EarlyStopping",
            "+callbacks.early_stop.monitor=val/dice_mean",
            "+callbacks.early_stop.mode=max",
            f"+callbacks.early_stop.stopping_threshold={args.target}",
            "+callbacks.early_stop.patience=100000",
            "+callbacks.bench_timer._target_=__main__.BenchTimer",
            *([f"data.cohort={args.cohort}"] if args.cohort else []),
            *args.overrides,
        ]
        with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        t0 = time.perf_counter()
        _, objects = train(cfg)
        total = time.perf_counter() - t0
    timer = next(c for c in objects["callbacks"] if isinstance(c, BenchTimer))
    dm = objects["datamodule"]
    patch = [int(p) for p in dm.preprocessing.patch_size]
    per_step = int(dm.loader["batch_size"]) * int(dm.sampling.num_samples)
    steps = timer.steps[WARMUP_STEPS:] or timer.steps
    s_per_step = sum(steps) / max(len(steps), 1)
    reached = next((v for v in timer.validations if v["dice"] >= args.target), None)
    result = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(cfg.trainer.get("accelerator", "cpu"))},
        "patch_size": patch,
        "patches_per_step": per_step,
        "seconds_per_step": s_per_step,
        "patches_per_second": per_step / s_per_step if s_per_step else float("nan"),
        "steps_timed": len(steps),
        "target_dice": args.target,
        "validate_every_epochs": args.every,
        "validations": timer.validations,
        "reached": reached is not None,
        "wall_seconds_total": total,
    }
    if reached is not None:
        spent = sum(v["seconds"] for v in timer.validations if v["step"] <= reached["step"])
        result.update({
            "seconds_to_target": reached["elapsed"],
            "seconds_to_target_without_validation": reached["elapsed"] - spent,
            "epochs_to_target": reached["epoch"],
            "steps_to_target": reached["step"],
        })
    print(f"patch {patch}, {per_step} patches per step: {s_per_step:.3f} s per step, "
          f"{result['patches_per_second']:.2f} patches/s ({len(steps)} steps)")
    for v in timer.validations:
        print(f"  epoch {v['epoch']:>3}  step {v['step']:>5}  val/dice_mean {v['dice']:.4f}  at {v['elapsed']:7.1f} s")
    if reached is not None:
        print(f"reached Dice {args.target} after {result['seconds_to_target']:.0f} s "
              f"({result['seconds_to_target_without_validation']:.0f} s without validation; "
              f"epoch {reached['epoch']}, step {reached['step']})")
    else:
        print(f"did not reach Dice {args.target} within trainer.max_epochs")
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    sys.exit(0 if reached is not None else 1)


if __name__ == "__main__":
    main()
