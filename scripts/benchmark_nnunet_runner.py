#!/usr/bin/env python
"""nnU-Net v2's side of ``scripts/benchmark_nnunet.py``; runs in the nnU-Net venv, never imports nxp2seg.

Two commands:

* ``train --dataset ID --budget-cpu-s S [--lr-axis A] [--mirror-lr] [--device cuda]`` trains
  :class:`nnUNetTrainerCPUBudget` on fold 0 of the preprocessed dataset (the
  ``nnUNet_*`` environment variables name the folders). It is nnU-Net's default
  ``nnUNetTrainer`` (network, loss, augmentation, SGD with Nesterov momentum,
  initial learning rate 0.01, batch and patch from the plans) with two changes
  for a fixed compute budget: training stops once the CPU seconds of the
  training process and its data-augmentation workers reach ``S`` (with
  ``--budget-wall-s S`` instead: once its wall seconds do, the clock of a GPU
  run), and the poly
  learning-rate schedule ``lr = 0.01 (1 - used / S)^0.9`` runs over that budget
  (set before every iteration) instead of over 1000 epochs of 250 iterations,
  so a short run still anneals. Epochs are 10 training + 2 validation
  iterations (nnU-Net's 250 + 50 in the same ratio) so that the pseudo-Dice
  is logged, and a checkpoint written, more than once within a budget. Mirroring: nnU-Net mirrors every axis in training and
  at inference; the labels are sided (right and left compartments), so the
  right-left axis ``A`` (nnU-Net's array order before ``transpose_forward``) is
  taken out of both unless ``--mirror-lr``. The final validation of the
  validation fold that ``nnUNetv2_train`` runs after training is not run (the
  benchmark scores the held-out test subjects instead). Writes
  ``train_info.json`` (epochs, iterations, CPU and wall seconds) beside the
  checkpoint. ``checkpoint_latest.pth`` and ``budget_state.json`` (the CPU and
  wall seconds and iterations up to it) are written after every epoch; a run
  started again on the same folder resumes there, its budget counting the
  compute checkpointed before (the part of an epoch cut off is redone, not
  counted).

  The trainer is instantiated here rather than through ``nnUNetv2_train -tr``:
  nnU-Net 2.8's trainer lookup imports every trainer module, the Primus ones
  import ``timm`` and ``timm`` imports ``torchvision``, which fails against a
  CPU build of torch (the PyPI torchvision is built for the CUDA one).

* ``predict --model DIR --images imagesTs --out OUT [--no-mirroring] [--device cuda]`` reads
  each case with the plans' reader, predicts with ``nnUNetPredictor``
  (``checkpoint_final.pth``, tile step 0.5, Gaussian weighting; mirroring on
  the allowed axes unless ``--no-mirroring``), writes ``OUT/{case}/seg.nii.gz``
  and a ``cases.csv``/``regions.csv`` pair in nxp2seg's prediction-folder
  layout (segmentation only), so ``nxp2seg.evaluate`` reads it like its own,
  and ``seconds.json`` (read + predict + write per case).
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # the wall clock of a budget starts with the process, before its imports

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

_CLK = os.sysconf("SC_CLK_TCK")


def process_tree_cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds of a process and all its live descendants (Linux ``/proc``)."""
    pid = os.getpid() if pid is None else pid
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        # after the command: state ppid ... utime(14th field) stime(15th) cutime cstime
        stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / _CLK)
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo.extend(children.get(p, []))
    return total


class nnUNetTrainerCPUBudget(nnUNetTrainer):
    """``nnUNetTrainer`` stopped by a compute budget, its poly schedule stretched over it.

    The budget is CPU seconds of the process tree (``clock = "cpu"``, the default) or
    wall seconds of the trainer (``clock = "wall"``, for GPU runs).
    """

    budget_s: float = 0.0
    clock: str = "cpu"
    lr_axis: int | None = None  # right-left axis in the reader's array order; None: mirror all axes

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device | None = None):
        # nnU-Net records its init arguments by these names (inspect.signature)
        super().__init__(plans, configuration, fold, dataset_json, device or torch.device("cpu"))
        # short epochs: one nnU-Net iteration costs ~45 CPU s here, and the checkpoint an interrupted
        # run resumes from is written at the end of an epoch
        self.num_iterations_per_epoch = 10
        self.num_val_iterations_per_epoch = 2
        self.num_epochs = 1_000_000  # the budget ends training, not the epoch count
        self.save_every = 1  # checkpoint_latest.pth after every epoch: an interrupted run resumes there
        self.iterations = 0
        self.prior_cpu_s = self.prior_wall_s = 0.0  # checkpointed compute of interrupted attempts
        self._t0 = _T0

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rot, dummy_2d, initial_patch, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.lr_axis is not None:
            axis = list(self.plans_manager.transpose_forward).index(int(self.lr_axis))
            mirror_axes = tuple(a for a in mirror_axes if a != axis)
            self.print_to_log_file(f"right-left axis {axis} (after transpose) not mirrored; mirror axes {mirror_axes}")
        self.inference_allowed_mirroring_axes = mirror_axes
        return rot, dummy_2d, initial_patch, mirror_axes

    def cpu(self) -> float:
        return self.prior_cpu_s + process_tree_cpu_s()

    def used(self) -> float:
        """The budget spent so far, on the budget's clock."""
        return self.wall() if self.clock == "wall" else self.cpu()

    def wall(self) -> float:
        return self.prior_wall_s + time.perf_counter() - self._t0

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        state = {"cpu_s": round(self.cpu(), 2), "wall_s": round(self.wall(), 2),
                 "iterations": self.iterations, "epoch": self.current_epoch + 1}
        Path(self.output_folder, "budget_state.json").write_text(json.dumps(state) + "\n")

    def resume(self) -> bool:
        """Continue an interrupted run from ``checkpoint_latest.pth`` and its budget state."""
        ckpt, state = Path(self.output_folder, "checkpoint_latest.pth"), Path(self.output_folder, "budget_state.json")
        if not (ckpt.is_file() and state.is_file()):
            return False
        prior = json.loads(state.read_text())
        self.load_checkpoint(str(ckpt))
        self.prior_cpu_s, self.prior_wall_s, self.iterations = prior["cpu_s"], prior["wall_s"], prior["iterations"]
        self.print_to_log_file(f"resumed at epoch {self.current_epoch}: {prior}")
        return True

    def on_train_epoch_start(self):  # the base class would step its epoch-wise poly schedule
        self.network.train()
        self.print_to_log_file(f"\nEpoch {self.current_epoch}")

    def _set_lr(self, first: bool) -> None:
        frac = min(self.used() / self.budget_s, 1.0)
        lr = self.initial_lr * (1.0 - frac) ** 0.9
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if first:  # nnU-Net's logger keeps one value per epoch
            self.logger.log("lrs", lr, self.current_epoch)

    def run_training(self):
        self.on_train_start()
        done = False
        while not done:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for i in range(self.num_iterations_per_epoch):
                self._set_lr(first=i == 0)
                outputs.append(self.train_step(next(self.dataloader_train)))
                self.iterations += 1
                if self.used() >= self.budget_s:
                    done = True
                    break
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = [self.validation_step(next(self.dataloader_val))
                       for _ in range(self.num_val_iterations_per_epoch if not done else 0)]
                if val:
                    self.on_validation_epoch_end(val)
            if val:
                self.on_epoch_end()
            else:  # the last, partial epoch: no validation, nothing to log for it
                self.current_epoch += 1
        self.on_train_end()
        emas = self.logger.get_value("ema_fg_dice", step=None)
        ema = emas[-1] if emas else None
        info = {"iterations": self.iterations, "epochs": self.current_epoch,
                "iterations_per_epoch": self.num_iterations_per_epoch,
                "cpu_s_at_stop": round(self.cpu(), 1), "wall_s_in_trainer": round(self.wall(), 1),  # since the process started
                f"budget_{self.clock}_s": self.budget_s, "budget_clock": self.clock,
                "device": str(self.device), "ema_pseudo_dice": None if ema is None else float(ema),
                "batch_size": self.batch_size, "patch_size": list(self.configuration_manager.patch_size),
                "mirror_axes": list(self.inference_allowed_mirroring_axes or ()),
                "parameters": int(sum(p.numel() for p in self.network.parameters())),
                "threads": torch.get_num_threads()}
        Path(self.output_folder, "train_info.json").write_text(json.dumps(info, indent=2) + "\n")

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation of the validation fold skipped (scripts/benchmark_nnunet.py "
                               "scores the held-out test subjects)")


def train(args) -> None:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    torch.set_num_threads(args.threads)
    pre = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(args.dataset)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # as nnunetv2.run.run_training.get_trainer_from_args sets it
    dataset_json = json.loads((pre / "dataset.json").read_text())
    wall = args.budget_wall_s is not None
    nnUNetTrainerCPUBudget.budget_s = args.budget_wall_s if wall else args.budget_cpu_s
    nnUNetTrainerCPUBudget.clock = "wall" if wall else "cpu"
    nnUNetTrainerCPUBudget.lr_axis = None if args.mirror_lr else args.lr_axis
    trainer = nnUNetTrainerCPUBudget(plans, "3d_fullres", 0, dataset_json, device=torch.device(args.device))
    trainer.resume()
    trainer.run_training()
    print(f"model: {trainer.output_folder_base}")


def predict(args) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=not args.no_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    # nnUNetPredictor.initialize_from_trained_model_folder, without its trainer lookup (see above)
    model = Path(args.model)
    plans = PlansManager(json.loads((model / "plans.json").read_text()))
    dataset_json = json.loads((model / "dataset.json").read_text())
    ckpt = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    conf = plans.get_configuration(ckpt["init_args"]["configuration"])
    network = nnUNetTrainer.build_network_architecture(
        plans, conf, determine_num_input_channels(plans, conf, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    predictor.manual_initialization(network, plans, conf, [ckpt["network_weights"]], dataset_json,
                                    ckpt["trainer_name"], ckpt["inference_allowed_mirroring_axes"])
    reader = plans.image_reader_writer_class()
    cases = sorted({p.name[: -len("_0000.nii.gz")] for p in Path(args.images).glob("*_0000.nii.gz")})
    args.out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    for case in cases:
        t0 = time.perf_counter()
        img, props = reader.read_images([str(Path(args.images) / f"{case}_{c:04d}.nii.gz") for c in (0, 1)])
        seg = predictor.predict_single_npy_array(img, props, None, None, False)
        (args.out / case).mkdir(exist_ok=True)
        reader.write_seg(np.asarray(seg, dtype=np.uint8), str(args.out / case / "seg.nii.gz"), props)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds[case] = round(time.perf_counter() - t0, 3)
        print(f"{case}: {seconds[case]:.1f} s", flush=True)
    (args.out / "cases.csv").write_text("case_id,status\n" + "".join(f"{c},ok\n" for c in cases))
    (args.out / "regions.csv").write_text("case_id,region,edema_grade\n")
    (args.out / "seconds.json").write_text(json.dumps(seconds, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--dataset", required=True, help="dataset id or name")
    budget = t.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-cpu-s", type=float, help="stop at this many CPU seconds (process tree)")
    budget.add_argument("--budget-wall-s", type=float, help="stop at this many wall seconds (GPU runs)")
    t.add_argument("--lr-axis", type=int, help="the right-left axis (reader's array order): not mirrored")
    t.add_argument("--mirror-lr", action="store_true", help="mirror right-left too (nnU-Net's default)")
    t.add_argument("--threads", type=int, default=os.cpu_count())
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p = sub.add_parser("predict")
    p.add_argument("--model", type=Path, required=True,
                   help="the trainer's output folder (TRAINER__nnUNetPlans__3d_fullres, holding fold_0)")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-mirroring", action="store_true")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    {"train": train, "predict": predict}[args.command](args)


if __name__ == "__main__":
    main()
