"""Training: configs instantiate, fast_dev_run, the loss falls, resume, determinism, subject splits."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_train
from hydra.utils import instantiate


def _metrics_csv(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "csv" / "metrics.csv")


# -- configs ------------------------------------------------------------------


def test_composed_config_writes_only_under_tmp(cfg_train, tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(cfg_train, resolve=True)
    assert cfg["output_dir"] == str(tmp_path / "run") and cfg["bundle_dir"] == str(
        tmp_path / "run" / "bundle"
    )
    assert cfg["callbacks"]["model_checkpoint"]["dirpath"].startswith(str(tmp_path))
    assert cfg["logger"]["csv"]["save_dir"].startswith(str(tmp_path))
    assert cfg["paths"]["cache_dir"].startswith(str(tmp_path)) and cfg["trainer"][
        "default_root_dir"
    ].startswith(str(tmp_path))
    assert cfg["model"]["scheduler"]["total_iters"] == cfg["trainer"]["max_epochs"]


@pytest.mark.parametrize("model", ["dynunet", "unet"])
@pytest.mark.parametrize("smoke", [False, True])
def test_model_options_instantiate(train_overrides, model, smoke):
    from nxp2seg.models.finetune import pop_init_from
    from nxp2seg.models.segmenter import Segmenter

    keep = [o for o in train_overrides if smoke or not o.startswith("experiment=")]
    cfg = compose_train([*keep, f"model={model}"])
    assert pop_init_from(cfg) is None  # model.init_from is train()'s, not the module's
    net = instantiate(cfg.model.net)(
        in_channels=2, out_channels=16, spacing=[2.5, 2.5, 6.0], patch_size=[32, 32, 8]
    )
    module = instantiate(
        cfg.model,
        net=net,
        region_labels={"bone": [15]},
        patch_size=[32, 32, 8],
        spacing=[2.5, 2.5, 6.0],
    )
    assert isinstance(module, Segmenter)
    out = module(torch.zeros(1, 2, 32, 32, 8))
    assert out["logits"].shape == (1, 16, 32, 32, 8)
    opt = module.configure_optimizers()
    assert isinstance(opt["optimizer"], torch.optim.AdamW)


def test_data_options_instantiate(train_overrides, synthetic_cohort, tmp_path):
    from nxp2seg.data.datamodule import CohortDataModule

    phantom = compose_train(
        [o for o in train_overrides if not o.startswith("data.cohort")] + ["data=phantom"]
    )
    dm = instantiate(phantom.data)  # no generation before prepare_data()
    assert isinstance(dm, CohortDataModule)
    assert (
        dm.cohort_dir.name == "phantom-tiny-n4-seed0" and dm.cohort_dir.parent == tmp_path / "cache"
    )
    default = compose_train([f"paths.cache_dir={tmp_path}"])
    assert instantiate(default.data).cohort_dir.name == "phantom-small-n48-seed0"
    cohort = compose_train([*train_overrides, "data=cohort"])
    dm = instantiate(cohort.data)
    assert dm.cohort_dir == synthetic_cohort and dm.phantom is None
    dm.setup("fit")
    assert dm.num_classes == 16 and dm.preprocessing.patch_size == (40, 32, 8)


@pytest.mark.parametrize(
    "option, extra",
    [
        ("cpu", []),
        ("ddp", ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32"]),
    ],
)
def test_trainer_options_instantiate(train_overrides, option, extra):
    cfg = compose_train([*train_overrides, f"trainer={option}", *extra])
    trainer = instantiate(cfg.trainer)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    if option == "ddp":
        assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.num_devices == 2


@pytest.mark.parametrize("option", ["default", "rich", "none"])
def test_callback_options_instantiate(train_overrides, option):
    from nxp2seg.train import _instantiate_dict

    cfg = compose_train([*train_overrides, f"callbacks={option}"])
    callbacks = _instantiate_dict(cfg.callbacks)
    assert len(callbacks) == {"default": 5, "rich": 5, "none": 0}[option]  # best + last checkpoints, lr, bar, summary


def test_model_net_is_a_subgroup(train_overrides):
    """model=unet|dynunet differ only by their network (model/net) and its learning rate."""
    from omegaconf import OmegaConf

    unet = OmegaConf.to_container(compose_train([*train_overrides, "model=unet"]).model)
    dyn = OmegaConf.to_container(compose_train([*train_overrides, "model=dynunet"]).model)
    net_only = compose_train([*train_overrides, "model=unet", "model/net=dynunet"]).model
    assert OmegaConf.to_container(net_only.net) == dyn["net"] != unet["net"]
    assert dyn["optimizer"].pop("lr") == 0.003 and unet["optimizer"].pop("lr") == 0.01
    assert {k: v for k, v in unet.items() if k != "net"} == {k: v for k, v in dyn.items() if k != "net"}


@pytest.mark.parametrize(
    "option, module",
    [("csv", None), ("none", None), ("tensorboard", "tensorboard"), ("mlflow", "mlflow")],
)
def test_logger_options_instantiate(train_overrides, option, module):
    from nxp2seg.train import _instantiate_dict

    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (optional extra)")
    cfg = compose_train([*train_overrides, f"logger={option}"])
    assert len(_instantiate_dict(cfg.logger)) == (0 if option == "none" else 1)


@pytest.mark.parametrize(
    "extra", [["experiment=fast"], ["debug=fdr"], ["debug=overfit"], ["trainer=gpu"]]
)
def test_other_options_compose(train_overrides, extra):
    cfg = compose_train([*train_overrides, *extra])
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


# -- training -------------------------------------------------------------------


def test_fast_dev_run_writes_bundle(train_overrides):
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.train import train

    cfg = compose_train([*train_overrides, "debug=fdr"])
    assert cfg.trainer.fast_dev_run is True
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and 0.0 <= metrics["val/dice_mean"] <= 1.0
    bundle = load_bundle(objects["bundle_dir"])
    assert bundle.preprocessing == objects["datamodule"].preprocessing
    assert bundle.manifest["network"]["kwargs"]["out_channels"] == 16


def test_train_is_three_plain_steps(train_overrides, tmp_path):
    """fit_segmenter -> fit_grading_head -> export_bundle, each callable on its own."""
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.train import export_bundle, fit_grading_head, fit_segmenter, setup_data, setup_run

    cfg = compose_train([*train_overrides, "debug=fdr", "grading=none"])
    setup_run(cfg)
    dm = setup_data(cfg)
    fit = fit_segmenter(cfg, dm)
    assert fit.trainer.global_step == 1 and "val" in fit.validation
    assert not any(k.startswith("grader.") for k in fit.model.state_dict())  # the segmenter alone
    assert fit_grading_head(cfg, dm, fit) is None  # grading=none: segmentation only
    out = export_bundle(cfg, dm, fit, None, tmp_path / "bundle")
    bundle = load_bundle(out)
    assert not bundle.has_grading and bundle.preprocessing == dm.preprocessing


def _quiet(overrides: list[str]) -> list[str]:
    return [*overrides, "callbacks=none", "validate_best=false", "test=false"]


def test_short_run_lowers_loss(train_overrides, tmp_path):
    from nxp2seg.train import train

    no_aug = [
        f"data.augmentation.{k}=0.0"
        for k in (
            "flip_lr_prob",
            "affine_prob",
            "bias_field_prob",
            "scale_intensity_prob",
            "shift_intensity_prob",
            "noise_prob",
        )
    ]
    cfg = compose_train(
        _quiet(
            [
                *train_overrides,
                *no_aug,
                "trainer.max_epochs=8",
                "trainer.check_val_every_n_epoch=100",
                "model.optimizer.lr=0.01",
                "model.scheduler=null",
            ]
        )
    )
    train(cfg)
    loss = _metrics_csv(tmp_path / "run")["train/loss_step"].dropna().to_numpy()
    assert len(loss) == 16
    assert loss[-4:].mean() < 0.8 * loss[:4].mean(), loss


def test_resume_restores_loop_and_optimizer(train_overrides, tmp_path):
    from nxp2seg.train import train

    base = [
        *train_overrides,
        "trainer.check_val_every_n_epoch=1",
        "validate_best=false",
        "test=false",
        "logger=csv",
    ]
    first = compose_train([*base, "trainer.max_epochs=1"])
    _, obj1 = train(first)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and obj1["trainer"].global_step == 2
    second = compose_train(
        [*base, "trainer.max_epochs=2", f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'resumed'}"]
    )
    _, obj2 = train(second)
    trainer = obj2["trainer"]
    assert trainer.current_epoch == 2 and trainer.global_step == 4
    steps = _metrics_csv(tmp_path / "resumed").dropna(subset=["train/loss_step"])["step"].tolist()
    assert steps == [2, 3]  # continued where it stopped, not from scratch
    adam_steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert adam_steps == {4}
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2


def test_seeded_runs_are_identical(train_overrides, tmp_path):
    from safetensors.torch import load_file

    from nxp2seg.train import train

    weights = []
    for name in ("a", "b"):
        cfg = compose_train(
            _quiet(
                [
                    *train_overrides,
                    "trainer.max_epochs=1",
                    "logger=none",
                    f"output_dir={tmp_path / name}",
                ]
            )
        )
        _, obj = train(cfg)
        weights.append(load_file(str(obj["bundle_dir"] / "weights.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.gpu
def test_gpu_trainer_one_step(train_overrides):
    from nxp2seg.train import train

    cfg = compose_train(
        _quiet([*train_overrides, "trainer=gpu", "trainer.max_steps=1", "trainer.max_epochs=1"])
    )
    metrics, objects = train(cfg)
    assert objects["trainer"].precision in ("bf16-mixed", "16-mixed")
    assert np.isfinite(metrics["train/loss"])


# -- splits -----------------------------------------------------------------------


def test_split_by_subject_never_shares_a_subject():
    from nxp2seg.data.split import split_by_subject

    rows = []
    for s in range(20):
        for station in ("thigh", "calf"):
            split = (
                "test" if s < 4 else ("train" if s != 7 or station == "calf" else "test")
            )  # S07: mixed -> held out
            rows.append(
                {
                    "case_id": f"S{s:02d}_{station}",
                    "subject_id": f"S{s:02d}",
                    "station": station,
                    "split": split,
                }
            )
    cases = pd.DataFrame(rows)
    out = split_by_subject(cases, val_fraction=0.25, seed=3)
    subj = dict(zip(cases.case_id, cases.subject_id))
    sets = {k: {subj[c] for c in v} for k, v in out.items()}
    assert (
        not (sets["train"] & sets["val"])
        and not (sets["train"] & sets["test"])
        and not (sets["val"] & sets["test"])
    )
    assert sets["test"] == {"S00", "S01", "S02", "S03", "S07"}
    assert len(sets["val"]) == 4 and sum(map(len, out.values())) == len(cases)
    assert out == split_by_subject(cases, val_fraction=0.25, seed=3)  # seeded
    cases.loc[cases.subject_id == "S10", "split"] = "val"  # explicit validation rows win
    assert {subj[c] for c in split_by_subject(cases)["val"]} == {"S10"}


def test_datamodule_splits_by_subject_and_skips_unlabelled(tmp_path):
    from helpers_synthetic import make_synthetic_cohort

    from nxp2seg.data.datamodule import CohortDataModule

    root = make_synthetic_cohort(
        tmp_path / "c", subjects=6, test_subjects=2, unlabeled=("S001_calf",)
    )
    dm = CohortDataModule(cohort=root, split={"val_fraction": 0.25, "seed": 1})
    dm.setup("fit")
    subj = lambda ids: {c.split("_")[0] for c in ids}  # noqa: E731
    tr, va, te = (subj(dm.splits[k]) for k in ("train", "val", "test"))
    assert tr and va and not (tr & va) and not (tr | va) & te
    assert te == {"S004", "S005"}
    assert "S001_calf" in dm.excluded["no_label"] and all(
        "S001_calf" not in v for v in dm.splits.values()
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1] == 3 and batch["label"].shape[1] == 1  # T1, STIR, laterality
    allowed = batch["allowed_labels"]
    for station, row in zip(batch["station"], allowed):
        assert (
            bool(row[1]) == (station == "thigh")
            and bool(row[7]) == (station == "calf")
            and bool(row[15])
        )


def test_lr_swap_count_by_hand():
    """A right region predicted as its left twin counts once; a correct one not at all."""
    from torch import nn

    from nxp2seg.models.segmenter import Segmenter

    seg = Segmenter(
        net=nn.Identity(), loss=nn.Identity(), optimizer=torch.optim.SGD,
        region_labels={"a_right": [1], "a_left": [2], "bone": [3]},
        side_lut=[0, 1, 2, 0],  # sides come from the schema (data.sides.side_lut), not from names
    )
    truth = torch.tensor([1, 1, 1, 2, 2, 3]).reshape(1, 1, 6, 1, 1)
    pred = torch.tensor([2, 2, 1, 2, 2, 3]).reshape(1, 1, 6, 1, 1)  # 2 of 3 right voxels called left
    assert seg._count_lr_swaps(pred, truth).tolist() == [[1.0]]
    assert seg._count_lr_swaps(truth, truth).tolist() == [[0.0]]
