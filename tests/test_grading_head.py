"""Grading head: region pooling, masked losses, flip of grade targets, cases without masks,
the grade scale flowing through, and a whole-volume training run that logs agreement."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_train

from nxp2seg.data.regions import lr_permutation, region_membership, subcut_membership
from nxp2seg.data.schema import default_compartment_schema, default_muscle_schema
from nxp2seg.models.grading import build_grader, masked_mean, pool_regions, region_masks
from nxp2seg.models.losses import masked_bce, masked_regression, soft_cross_entropy

GRADING_KEYS = (
    "edema_kappa_quadratic",
    "edema_icc",
    "edema_spearman",
    "fat_kappa_quadratic",
    "pattern_kappa",
    "pattern_accuracy",
    "fascial_auc",
    "subcut_auc",
    "station_score_icc",
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- pooling ----------------------------------------------------------------------


def test_pool_regions_on_a_hand_made_volume():
    # 4 x 2 x 1 voxels; label 1 in x < 2 (region A), label 2 in x >= 2 (region B)
    probs = torch.zeros(1, 3, 4, 2, 1)
    probs[0, 1, :2] = 1.0
    probs[0, 2, 2:] = 1.0
    feat = torch.zeros(1, 2, 4, 2, 1)
    feat[0, 0] = torch.arange(4.0).view(4, 1, 1)  # channel 0: x index
    feat[0, 1] = 7.0  # channel 1: constant
    membership = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # (1, R=2, C=3)
    pooled = pool_regions(probs, membership, feat, eps=0.0)
    assert pooled.shape == (1, 2, 2)
    assert torch.allclose(pooled[0], torch.tensor([[0.5, 7.0], [2.5, 7.0]]))
    # soft masks weight the mean: the two voxels at x = 3 are half A, half B now
    probs[0, 1, 3], probs[0, 2, 3] = 0.5, 0.5
    pooled = pool_regions(probs, membership, feat, eps=0.0)
    a = (2 * 0 + 2 * 1 + 2 * 0.5 * 3) / (2 + 2 + 2 * 0.5)  # = 1.0
    b = (2 * 2 + 2 * 0.5 * 3) / (2 + 2 * 0.5)  # = 7 / 3
    assert torch.allclose(pooled[0, :, 0], torch.tensor([a, b]))
    assert torch.allclose(pooled[0, :, 1], torch.tensor([7.0, 7.0]))
    # an empty region pools to 0, not NaN
    empty = pool_regions(probs, torch.tensor([[[1.0, 0.0, 0.0]]]), feat)
    assert torch.equal(empty, torch.zeros(1, 1, 2))


def _reference_pool(probs, membership, feat):
    b, r = membership.shape[:2]
    out = torch.zeros(b, r, feat.shape[1], dtype=torch.float64)
    for i in range(b):
        for j in range(r):
            w = (membership[i, j].view(-1, 1, 1, 1) * probs[i]).sum(0)
            out[i, j] = (w * feat[i]).sum((1, 2, 3)) / w.sum()
    return out


@pytest.mark.parametrize("schema_fn", [default_compartment_schema, default_muscle_schema])
def test_pooling_batches_cases_and_regions(schema_fn, monkeypatch):
    schema = schema_fn()
    c = schema.max_label + 1
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, c, 6, 5, 3, generator=g, dtype=torch.float64), 1)
    feat = torch.randn(2, 4, 6, 5, 3, generator=g, dtype=torch.float64)
    membership = torch.as_tensor(
        np.stack([region_membership(schema, st, c) for st in ("thigh", "calf")])
    ).double()
    assert membership.shape == (2, 6, c)
    if schema.level == "muscle":  # several member labels per region
        assert (membership.sum(-1) > 1).all()
    calls = []
    real = torch.einsum
    monkeypatch.setattr(torch, "einsum", lambda *a: calls.append(a[0]) or real(*a))
    pooled = pool_regions(probs, membership, feat, eps=0.0)
    assert pooled.shape == (2, 6, 4)
    assert len(calls) == 2  # one einsum for the masks, one for the means: no loop over regions
    assert torch.allclose(pooled, _reference_pool(probs, membership, feat))
    # a muscle-level region is the sum of its muscles: the same as pooling the rolled-up map
    w = region_masks(probs, membership)
    assert torch.allclose(w.sum(1), (probs * (membership.sum(1) > 0)[..., None, None, None]).sum(1))
    assert torch.allclose(masked_mean(w, feat, 0.0), pooled)


def test_region_slots_follow_the_schema():
    schema = default_compartment_schema()
    assert schema.region_names("thigh")[:3] == [
        "thigh_anterior_right",
        "thigh_medial_right",
        "thigh_posterior_right",
    ]
    assert lr_permutation(schema, "calf").tolist() == [3, 4, 5, 0, 1, 2]
    sub = subcut_membership(schema, "thigh", 16)
    assert sub[:3, 13].all() and sub[3:, 14].all() and sub.sum() == 6
    m = region_membership(schema, "calf", 16)
    assert m.argmax(1).tolist() == [7, 8, 9, 10, 11, 12]


def test_grader_shapes_ranges_and_gradients():
    torch.manual_seed(0)
    schema = default_compartment_schema()
    grader = build_grader(feature_channels=8, spacing=[4.0, 4.0, 6.0], max_grade=3)
    probs = torch.softmax(torch.randn(2, 16, 12, 10, 4), 1).requires_grad_(True)
    image = torch.randn(2, 2, 12, 10, 4)
    decoder = torch.randn(2, 8, 12, 10, 4, requires_grad=True)
    rm = torch.as_tensor(np.stack([region_membership(schema, s, 16) for s in ("thigh", "calf")]))
    sm = torch.as_tensor(np.stack([subcut_membership(schema, s, 16) for s in ("thigh", "calf")]))
    out = grader(probs, image, decoder, rm, sm, torch.tensor([0, 1]))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "edema": (2, 6),
        "fat": (2, 6),
        "fascial_logit": (2, 6),
        "subcut_logit": (2, 6),
        "pattern_logits": (2, 4),
    }
    assert ((out["edema"] >= 0) & (out["edema"] <= 3)).all()
    assert ((out["fat"] >= 0) & (out["fat"] <= 4)).all()
    sum(v.sum() for v in out.values()).backward()
    assert probs.grad is None  # region masks are detached: no gradient into segmentation
    assert decoder.grad is not None and decoder.grad.abs().sum() > 0
    assert grader.features.stir_tau.grad is not None  # learnable thresholds


# -- losses -----------------------------------------------------------------------


def test_masked_losses_ignore_missing_grades():
    pred = torch.tensor([[1.0, 2.0, 2.5], [0.5, 4.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.5, float("nan"), 3.0], [float("nan"), float("nan"), 0.0]])
    valid = torch.isfinite(target)
    for loss_fn in (
        lambda p, t: masked_regression(p, t, "smooth_l1", 0.5),
        lambda p, t: masked_regression(p, t, "mse"),
        lambda p, t: masked_bce(p, t.clamp(0, 1)),
    ):
        pred.grad = None
        loss = loss_fn(pred, target)
        assert torch.isfinite(loss)
        loss.backward()
        assert torch.all(pred.grad[~valid] == 0) and torch.all(pred.grad[valid] != 0)
        # the same as the loss over the graded entries only
        ref = loss_fn(pred[valid].view(1, -1), target[valid].view(1, -1))
        assert torch.allclose(loss, ref)
    # nothing graded: an exact zero that keeps the graph
    pred.grad = None
    none = masked_regression(pred, torch.full_like(target, float("nan")))
    none.backward()
    assert none.item() == 0.0 and torch.all(pred.grad == 0)
    # pattern: a case no reader rated is skipped; soft labels count fractionally
    logits = torch.zeros(2, 4, requires_grad=True)
    soft = torch.tensor([[0.0, 0.5, 0.5, 0.0], [float("nan")] * 4])
    ce = soft_cross_entropy(logits, soft)
    ce.backward()
    assert torch.allclose(ce, torch.tensor(np.log(4.0), dtype=torch.float32))
    assert torch.all(logits.grad[1] == 0) and torch.any(logits.grad[0] != 0)


def test_segmentation_loss_counts_labelled_samples_only():
    from monai.losses import DiceCELoss

    from nxp2seg.models.segmenter import Segmenter

    module = Segmenter(
        net=torch.nn.Conv3d(2, 4, 1),
        loss=DiceCELoss(to_onehot_y=True, softmax=True, batch=True),
        optimizer=torch.optim.SGD,
    )
    logits = torch.randn(2, 4, 6, 5, 3, requires_grad=True)
    label = torch.randint(0, 4, (2, 1, 6, 5, 3)).float()
    label[1] = 0  # the stand-in label of a case without a mask
    out = {"logits": logits}
    loss = module.segmentation_loss(out, {"label": label, "has_label": torch.tensor([1.0, 0.0])})
    ref = module.compute_loss({"logits": logits[:1]}, label[:1])
    assert torch.allclose(loss, ref)
    loss.backward()
    assert torch.all(logits.grad[1] == 0) and logits.grad[0].abs().sum() > 0
    zero = module.segmentation_loss(out, {"label": label, "has_label": torch.zeros(2)})
    assert zero.item() == 0.0 and zero.requires_grad


# -- data -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom4(tmp_path_factory):
    """A tiny phantom cohort: 4 subjects (one held out), readers A and B."""
    from nxp2seg.phantom import generate_cohort

    return generate_cohort(
        tmp_path_factory.mktemp("phantom") / "c4", subjects=4, preset="tiny", seed=0, workers=1
    )


def test_flip_swaps_right_and_left_grade_targets():
    from monai.data import MetaTensor

    from nxp2seg.data.transforms import REGION_TARGET_KEYS, RandFlipSwapLRd

    schema = default_compartment_schema()
    affine = np.diag([-2.0, -2.0, 5.0, 1.0])  # LPS: the flip axis comes from the affine
    label = torch.zeros(1, 6, 4, 2)
    label[0, :3], label[0, 3:] = 4, 1  # array axis 0 runs right -> left here
    d = {
        "image": MetaTensor(torch.randn(2, 6, 4, 2), affine=affine),
        "label": MetaTensor(label, affine=affine),
        "lr_perm": lr_permutation(schema, "thigh"),
        "pattern_target": np.array([0.0, 0.5, 0.5, 0.0], np.float32),
    }
    for i, key in enumerate(REGION_TARGET_KEYS):
        d[key] = np.arange(6, dtype=np.float32) + 10 * i
    out = RandFlipSwapLRd(
        ["image", "label"], "label", schema, prob=1.0, region_keys=REGION_TARGET_KEYS
    )(d)
    for i, key in enumerate(REGION_TARGET_KEYS):
        assert out[key].tolist() == (np.array([3, 4, 5, 0, 1, 2]) + 10 * i).tolist()
    assert out["pattern_target"].tolist() == d["pattern_target"].tolist()
    # each leg moved to the other side with its labels swapped: the layout of values stays
    assert (out["label"][0, :3] == 4).all() and (out["label"][0, 3:] == 1).all()
    assert torch.equal(out["image"], torch.flip(d["image"], dims=(1,)))


def test_whole_case_samples_carry_targets_and_flip_them(phantom4):
    from nxp2seg.data.datamodule import CohortDataModule
    from nxp2seg.data.transforms import Augmentation, train_transforms

    dm = CohortDataModule(cohort=phantom4, grading=True, loader={"verify_images": False})
    dm.setup("fit")
    prep = dm.preprocessing
    assert dm.mode == "whole" and prep.canvas_size == prep.patch_size
    assert all(c % d == 0 for c, d in zip(prep.canvas_size, (8, 8, 4)))
    item = dm._items([dm.splits["train"][0]])[0]
    no_aug = {
        k: 0.0
        for k in (
            "affine_prob",
            "bias_field_prob",
            "scale_intensity_prob",
            "shift_intensity_prob",
            "noise_prob",
        )
    }
    for flip, perm in ((0.0, [0, 1, 2, 3, 4, 5]), (1.0, [3, 4, 5, 0, 1, 2])):
        tf = train_transforms(
            prep, dm.schema, Augmentation(flip_lr_prob=flip, **no_aug), dm.sampling, mode="whole"
        )
        out = tf(dict(item))
        assert tuple(out["image"].shape[1:]) == prep.canvas_size and out["has_label"] == 1
        np.testing.assert_array_equal(out["edema_target"], item["edema_target"][perm])
        np.testing.assert_array_equal(out["fat_target"], item["fat_target"][perm])
    # the targets are the readers' means
    grades = pd.read_csv(phantom4 / "grades.csv")
    cid = item["case_id"]
    first = dm.schema.region_names(item["station"])[0]
    mean = grades[(grades.case_id == cid) & (grades.region == first)].edema_grade.mean()
    assert item["edema_target"][0] == pytest.approx(mean)


def test_mask_fraction_hides_masks_of_training_subjects(phantom4):
    from nxp2seg.data.datamodule import CohortDataModule

    dm = CohortDataModule(
        cohort=phantom4,
        grading=True,
        split={"mask_fraction": 0.5},
        loader={"verify_images": False},
    )
    dm.setup("fit")
    subject = {c: c.split("_")[0] for c in dm.splits["train"]}
    hidden = {subject[c] for c in dm.hidden_masks}
    kept = {subject[c] for c in dm.splits["train"] if dm.has_mask(c)}
    assert len(hidden) == len(kept) == 1 and not hidden & kept  # by subject
    assert all(dm.has_mask(c) for c in dm.splits["val"])  # validation keeps its masks
    items = dm._items(dm.splits["train"])
    assert {i["case_id"] for i in items if "label" not in i} == dm.hidden_masks
    assert dm.describe()["n_labelled"]["train"] == len(dm.splits["train"]) - len(dm.hidden_masks)


# -- training ---------------------------------------------------------------------


def _overrides(cohort, tmp_path, *extra):
    return [
        "experiment=smoke",
        "grading=head",
        f"data.cohort={cohort}",
        f"output_dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.root_dir={tmp_path}",
        "data.loader.verify_images=false",
        *extra,
    ]


def test_training_with_masks_on_half_the_cases(phantom4, tmp_path):
    from nxp2seg.train import train

    cohort = tmp_path / "half"
    shutil.copytree(phantom4, cohort)
    cases = pd.read_csv(cohort / "cases.csv")
    train_cases = cases[cases.split != "test"].case_id.tolist()
    for cid in train_cases[::2]:  # half the non-test cases lose their masks
        (cohort / "labelsTr" / f"{cid}.nii.gz").unlink()
    cfg = compose_train(_overrides(cohort, tmp_path, "debug=fdr", "data.loader.batch_size=4"))
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    n_lab = dm.describe()["n_labelled"]
    assert len(dm.splits["train"]) > n_lab["train"] > 0  # unlabelled graded cases train too
    batch = next(iter(dm.train_dataloader()))
    assert 0 < batch["has_label"].sum() < len(batch["has_label"])
    for key in ("train/loss", "train/loss_segmentation", "train/loss_edema", "train/loss_pattern"):
        assert np.isfinite(metrics[key]), key
    # the segmentation term equals the loss over the labelled samples alone
    model = objects["model"].train()
    out = model._batch_forward(batch, batch["image"])
    keep = batch["has_label"] > 0.5
    ref = model.compute_loss({"logits": out["logits"][keep]}, batch["label"][keep])
    assert torch.allclose(model.segmentation_loss(out, batch), ref)


@pytest.fixture(scope="module")
def phantom_extent4(tmp_path_factory):
    from nxp2seg.phantom import generate_cohort

    return generate_cohort(
        tmp_path_factory.mktemp("phantom") / "e4",
        subjects=4,
        preset="tiny",
        seed=1,
        workers=1,
        grade_scale="extent4",
    )


def test_extent4_flows_through_ranges_losses_and_kappa(phantom_extent4, tmp_path):
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.models.metrics import grading_metrics
    from nxp2seg.train import train

    cfg = compose_train(_overrides(phantom_extent4, tmp_path, "debug=fdr"))
    metrics, objects = train(cfg)
    model, dm = objects["model"], objects["datamodule"]
    assert dm.grade_scale.name == "extent4" and model.grade_scale.max_grade == 3
    assert model.grader.head.max_grade == 3.0
    targets = np.concatenate([t["edema_target"] for t in dm.targets.values()])
    assert np.nanmax(targets) <= 3
    # the head's range: even a huge logit stays at 3
    with torch.no_grad():
        model.grader.head.members[0].edema_out.bias[0] = 1e4
    batch = next(iter(dm.val_dataloader()))
    out = model.eval().grade_whole(batch)
    assert torch.allclose(out["edema"], torch.full_like(out["edema"], 3.0))
    assert np.isfinite(metrics["train/loss_edema"])
    # integer grades and kappa labels follow the scale: 3.8 is grade 3 on extent4 (its top),
    # grade 4 on beltrame6
    from nxp2seg.data.schema import get_grade_scale

    truth = np.tile([0.0, 1.0, 2.0, 3.0, 3.0, 1.0], (8, 1))
    pred = np.where(truth == 3, 3.8, truth)
    flags, zeros = (truth > 1).astype(float), np.zeros_like(truth)
    pattern = np.arange(8) % 4

    def kappa(scale):
        return grading_metrics(
            scale,
            pred,
            truth,
            truth,
            truth,
            zeros,
            flags,
            zeros,
            flags,
            np.eye(4)[pattern],
            pattern,
        )

    assert kappa(dm.grade_scale)["edema_kappa_quadratic"] == pytest.approx(1.0)
    assert kappa(dm.grade_scale)["pattern_kappa"] == pytest.approx(1.0)
    assert kappa(get_grade_scale("beltrame6"))["edema_kappa_quadratic"] < 1.0
    bundle = load_bundle(objects["bundle_dir"])
    assert bundle.grade_scale.name == "extent4"
    assert bundle.manifest["grader"]["kwargs"]["max_grade"] == 3


def test_whole_volume_smoke_run_logs_grading_and_round_trips(phantom4, tmp_path):
    from nxp2seg.models.bundle import load_bundle
    from nxp2seg.train import train

    cfg = compose_train(_overrides(phantom4, tmp_path))
    metrics, objects = train(cfg)
    logged = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    for key in GRADING_KEYS:
        assert f"val/{key}" in logged.columns, key
        assert f"val/{key}" in metrics
    # one validation per epoch, plus the re-validation of the best weights unless they are the last
    assert logged["val/edema_kappa_quadratic"].notna().sum() in (cfg.trainer.max_epochs, cfg.trainer.max_epochs + 1)
    assert 0.0 <= metrics["val/dice_mean"] <= 1.0
    assert "edema_icc" in objects["validation"]["val"]
    # bundle: the grading head's weights and settings come back and grade the same
    bundle = load_bundle(objects["bundle_dir"])
    assert bundle.has_grading and bundle.preprocessing.canvas_size is not None
    assert any(k.startswith("grader.") for k in bundle.state_dict)
    rebuilt = bundle.build_model()
    model = objects["model"].eval()
    batch = next(iter(objects["datamodule"].val_dataloader()))
    expected = model.grade_whole(batch)
    got = rebuilt.predict(batch["image"], batch["station"])
    assert torch.allclose(got["logits"], expected["logits"], atol=1e-4)
    assert torch.allclose(got["edema"], expected["edema"], atol=1e-4)
    assert torch.allclose(
        got["pattern_prob"], torch.softmax(expected["pattern_logits"], -1), atol=1e-4
    )
    assert got["logits"].shape[2:] == batch["image"].shape[2:]


@pytest.mark.gpu
def test_gpu_grading_one_step(phantom4, tmp_path):
    from nxp2seg.train import train

    cfg = compose_train(
        _overrides(phantom4, tmp_path, "trainer=gpu", "trainer.max_steps=1", "trainer.max_epochs=1")
    )
    metrics, objects = train(cfg)
    assert objects["trainer"].precision in ("bf16-mixed", "16-mixed")
    assert np.isfinite(metrics["train/loss_edema"]) and "val/edema_icc" in metrics
