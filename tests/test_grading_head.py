"""Grading head: region pooling, the grader's shapes, ranges and calls, masked losses, flip of
grade targets, cases without masks, and kappa following the grade scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from nxp2seg.data.regions import lr_permutation, region_membership, subcut_membership
from nxp2seg.data.schema import default_compartment_schema, default_muscle_schema
from nxp2seg.models.grading import build_grader
from nxp2seg.models.grading_spec import GraderSpec
from nxp2seg.models.losses import masked_regression, soft_cross_entropy
from nxp2seg.models.pooling import masked_mean, pool_regions, region_masks


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


#: Thresholds of a grader in tissue units (normally set from the training cohort).
THRESHOLDS = {
    "stir_tau": [1.15, 1.4, 1.8, 2.2, 2.8, 3.5], "t1_tau": [0.1, 0.25, 0.5, 0.75],
    "soft_q": 0.06, "soft_f": 0.05, "subcut_q": 0.55, "subcut_f": 0.3,
    "clean": [-0.25, 0.13], "muscle_like": [-0.17, 0.27], "hist_range": [-0.7, 1.26],
}


def _grader(channels=0, max_grade=3):
    spec = GraderSpec.from_mapping({"features": {"decoder_features": channels > 0}, "head": {"ensemble": 2}})
    grader = build_grader(spec.to_dict(), feature_channels=channels, spacing=[4.0, 4.0, 6.0],
                          max_grade=max_grade, bone_label=15)
    grader.features.set_thresholds(THRESHOLDS)
    return grader


def test_grader_shapes_ranges_and_gradients():
    torch.manual_seed(0)
    schema = default_compartment_schema()
    grader = _grader(channels=8)
    probs = torch.softmax(torch.randn(2, 16, 12, 10, 4), 1).requires_grad_(True)
    image = torch.randn(2, 3, 12, 10, 4)
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
    assert not any(p.requires_grad for p in grader.features.parameters())  # thresholds are buffers
    with pytest.raises(RuntimeError, match="thresholds not set"):
        build_grader(GraderSpec().to_dict(), 8, [4.0, 4.0, 6.0], 3).features(probs, image, decoder, rm, sm)


def test_grader_calls_follow_its_operating_points():
    grader = _grader()
    out = {
        "edema": torch.tensor([[0.4, 0.5, 1.49, 2.6, 3.0, 0.0]]),
        "fat": torch.tensor([[0.0, 0.6, 1.4, 2.5, 3.9, 4.0]]),
        "fascial_logit": torch.logit(torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])),
        "subcut_logit": torch.logit(torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])),
        "pattern_logits": torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]])),
    }
    st = torch.tensor([0])
    calls = grader.calls(out, st)  # defaults: rounding half up, flags at 0.5, the argmax
    assert calls["edema_int"].tolist() == [[0, 1, 1, 3, 3, 0]]
    assert calls["fat_int"].tolist() == [[0, 1, 1, 3, 4, 4]]
    assert calls["fascial_flag"].tolist() == [[False, False, False, False, True, True]]
    assert int(calls["pattern_index"]) == 0
    assert torch.allclose(calls["pattern_prob"], torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    grader.set_operating_points({"edema_cuts": [0.4, 1.6, 2.7], "fascial_threshold": 0.25,
                                 "pattern_offset": {"none": 0.0, "patchy": 0.0, "mixed": 0.0, "diffuse": 1.5}})
    calls = grader.calls(out, st)
    assert calls["edema_int"].tolist() == [[1, 1, 1, 2, 3, 0]]  # 0.4 reaches the first cut
    assert calls["fascial_flag"].tolist() == [[False, False, True, True, True, True]]
    assert calls["subcut_flag"].tolist() == [[False, False, False, False, True, True]]  # unchanged
    assert int(calls["pattern_index"]) == 3  # log 0.1 + 1.5 > log 0.4
    assert grader.operating_points()["fascial_threshold"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="shape"):
        grader.set_operating_points({"edema_cuts": [0.5, 1.5]})


# -- losses -----------------------------------------------------------------------


def test_masked_losses_ignore_missing_grades():
    pred = torch.tensor([[1.0, 2.0, 2.5], [0.5, 4.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.5, float("nan"), 3.0], [float("nan"), float("nan"), 0.0]])
    valid = torch.isfinite(target)
    for loss_fn in (
        lambda p, t: masked_regression(p, t, "smooth_l1", 0.5),
        lambda p, t: masked_regression(p, t, "mse"),
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


def test_kappa_and_integer_grades_follow_the_scale():
    from nxp2seg.data.schema import get_grade_scale
    from nxp2seg.models.metrics import grading_metrics

    # integer grades and kappa labels follow the scale: 3.8 is grade 3 on extent4 (its top),
    # grade 4 on beltrame6
    truth = np.tile([0.0, 1.0, 2.0, 3.0, 3.0, 1.0], (8, 1))
    pred = np.where(truth == 3, 3.8, truth)
    flags, zeros = (truth > 1).astype(float), np.zeros_like(truth)
    pattern = np.arange(8) % 4

    def kappa(scale):
        return grading_metrics(scale, pred, truth, truth, truth, zeros, flags, zeros, flags,
                               np.eye(4)[pattern], pattern)

    extent4 = get_grade_scale("extent4")
    assert kappa(extent4)["edema_kappa_quadratic"] == pytest.approx(1.0)
    assert kappa(extent4)["pattern_kappa"] == pytest.approx(1.0)
    assert kappa(get_grade_scale("beltrame6"))["edema_kappa_quadratic"] < 1.0
