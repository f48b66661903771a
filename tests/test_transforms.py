"""Preprocessing plan, transforms, networks and station masking, on tensors small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest
import monai.transforms as mt
import torch

from nxp2seg.data import Cohort, default_compartment_schema, default_muscle_schema
from nxp2seg.data.preprocessing import (
    CohortFingerprint,
    Preprocessing,
    oriented_geometry,
    plan_preprocessing,
)
from nxp2seg.data.transforms import NormalizeForeground, RandFlipSwapLRd, lr_swap_lut, world_lr_axis


def _world_x(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask)
    return (np.c_[ijk, np.ones(len(ijk))] @ np.asarray(affine, dtype=float).T)[:, 0]


def _sides_correct(label: np.ndarray, affine: np.ndarray, schema) -> bool:
    """Every *_right voxel lies at world x > 0 (RAS: patient's right), every *_left at x < 0."""
    for name, value in schema.labels.items():
        x = _world_x(affine, label == value)
        if name.endswith("_right") and len(x) and not (x > 0).all():
            return False
        if name.endswith("_left") and len(x) and not (x < 0).all():
            return False
    return True


@pytest.mark.parametrize("case_id", ["S000_thigh", "S000_calf"])  # RAS and LPS affines
def test_flip_keeps_right_and_left_in_world_space(synthetic_cohort, case_id):
    from monai.transforms import LoadImaged

    cohort = Cohort.open(synthetic_cohort)
    schema = cohort.dataset.schema
    load = LoadImaged(
        ["image", "label"], reader="NibabelReader", image_only=True, ensure_channel_first=True
    )
    d = load({"image": str(cohort.t1_path(case_id)), "label": str(cohort.label_path(case_id))})
    affine = d["label"].affine.numpy()
    assert _sides_correct(d["label"][0].numpy(), affine, schema)
    out = RandFlipSwapLRd(keys=["image", "label"], label_keys=["label"], schema=schema, prob=1.0)(d)
    flipped = out["label"][0].numpy()
    assert not np.array_equal(flipped, d["label"][0].numpy())  # it did mirror
    assert np.allclose(out["label"].affine.numpy(), affine)  # in the same world frame
    assert _sides_correct(
        flipped, affine, schema
    )  # the label under the patient's right is still *_right
    # the image moved with its labels: bone (bright on T1) still under the bone label
    bone = flipped == schema.labels["bone"]
    assert (
        out["image"][0].numpy()[bone].mean() > 2 * out["image"][0].numpy()[flipped > 0].mean() / 3
    )
    # mirroring without the swap would have put left labels on the right
    plain = np.flip(d["label"][0].numpy(), axis=world_lr_axis(affine))
    assert not _sides_correct(plain, affine, schema)


def test_lr_swap_lut_pairs_every_sided_label():
    for schema in (default_compartment_schema(), default_muscle_schema()):
        lut = lr_swap_lut(schema)
        assert (lut[lut] == np.arange(len(lut))).all()  # an involution
        for name, v in schema.labels.items():
            if name.endswith("_right"):
                assert schema.name_of(lut[v]) == name[: -len("_right")] + "_left"
            elif not name.endswith("_left"):
                assert lut[v] == v
    s = default_compartment_schema()
    assert lr_swap_lut(s)[s.labels["thigh_anterior_right"]] == s.labels["thigh_anterior_left"] == 4


def test_world_lr_axis_reads_the_affine():
    assert world_lr_axis(np.diag([2.0, 2.0, 5.0, 1.0])) == 0
    swapped = np.array(
        [[0, 0, -3.0, 0], [2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]]
    )  # array axis 2 runs along x
    assert world_lr_axis(swapped) == 2


def test_normalisation_ignores_scanner_gain():
    rng = np.random.default_rng(0)
    img = np.zeros((2, 20, 20, 4), dtype=np.float32)
    img[:, 5:15, 5:15] = rng.uniform(1.0, 3.0, (2, 10, 10, 4))
    img += rng.uniform(0, 0.02, img.shape).astype(np.float32)  # background noise
    norm = NormalizeForeground("zscore_foreground", clip=None)
    a = norm(torch.as_tensor(img))
    b = norm(torch.as_tensor(img * np.array([1500.0, 37.0], dtype=np.float32)[:, None, None, None]))
    assert torch.allclose(a, b, atol=1e-4)
    fg = a[:, 5:15, 5:15]
    assert torch.allclose(fg.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(fg.std(dim=(1, 2, 3)), torch.ones(2), atol=1e-2)


def test_oriented_geometry_of_lps_and_permuted_affines():
    lps = np.diag([-2.0, -2.0, 6.0, 1.0])
    sp, sh = oriented_geometry(lps, (10, 8, 4))
    assert sp.tolist() == [2.0, 2.0, 6.0] and sh.tolist() == [10, 8, 4]
    perm = np.array(
        [[0, 0, 1.0, 0], [0, 6.0, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1]]
    )  # axes stored z, y, x
    sp, sh = oriented_geometry(perm, (4, 8, 10))
    assert sp.tolist() == [1.0, 6.0, 2.5] and sh.tolist() == [10, 8, 4]


def test_plan_keeps_thick_slices_and_rounds_patch():
    spacings = np.array([[2.5, 2.5, 6.0], [2.4, 2.4, 8.0], [2.6, 2.6, 5.0], [2.5, 2.5, 6.0]])
    shapes = np.array([[160, 112, 16], [166, 116, 12], [154, 108, 19], [160, 112, 16]])
    prep = plan_preprocessing(
        CohortFingerprint(spacings, shapes), {"max_patch_size": [128, 128, 32]}
    )
    assert prep.target_spacing == (2.5, 2.5, 6.0)
    assert prep.patch_size == (128, 112, 16)
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    fixed = plan_preprocessing(
        CohortFingerprint(spacings, shapes),
        {"target_spacing": [3, 3, 6], "patch_size": [64, 64, 8]},
    )
    assert fixed.target_spacing == (3.0, 3.0, 6.0) and fixed.patch_size == (64, 64, 8)
    with pytest.raises(ValueError, match="unknown keys"):
        plan_preprocessing(CohortFingerprint(spacings, shapes), {"patchsize": [1, 2, 3]})


def test_kernels_and_strides_follow_anisotropy():
    from nxp2seg.models.networks import patch_divisor, plan_kernels_strides

    kernels, strides = plan_kernels_strides((2.5, 2.5, 6.0), (128, 112, 16), n_levels=4)
    assert kernels[0] == [3, 3, 1]  # thick axis: no 3-wide kernel at full resolution
    assert strides == [
        [1, 1, 1],
        [2, 2, 1],
        [2, 2, 2],
        [2, 2, 2],
    ]  # z pooled once in-plane caught up
    assert patch_divisor(strides) == [8, 8, 4]
    _, strides = plan_kernels_strides((1.0, 1.0, 1.0), (16, 16, 6), n_levels=4)
    assert [s[2] for s in strides] == [1, 1, 1, 1]  # 6 -> 3 would drop below min_feature_size


def test_station_mask_never_labels_the_other_station():
    from nxp2seg.data.datamodule import CohortDataModule
    from nxp2seg.models.segmenter import Segmenter, mask_logits

    schema = default_compartment_schema()
    thigh = np.zeros(16, dtype=bool)
    thigh[sorted(schema.station_labels("thigh"))] = True
    logits = torch.randn(2, 16, 6, 5, 4) * 10
    logits[:, 7:13] += 100.0  # the network is sure it sees calf
    allowed = torch.as_tensor(
        np.stack([thigh, ~thigh | (np.arange(16) == 0) | (np.arange(16) >= 13)])
    )
    pred = mask_logits(logits, allowed).argmax(1)
    assert not torch.isin(pred[0], torch.arange(7, 13)).any()  # thigh case: no calf label
    assert not torch.isin(pred[1], torch.arange(1, 7)).any()  # calf case: no thigh label
    assert CohortDataModule.allowed_labels.__doc__  # the data module builds the same masks per case
    net = torch.nn.Conv3d(2, 16, 1)
    module = Segmenter(net, torch.nn.Identity(), torch.optim.SGD, patch_size=(6, 5, 4))
    out = module(torch.randn(1, 2, 6, 5, 4), torch.as_tensor(thigh)[None])
    assert not torch.isin(out["logits"].argmax(1), torch.arange(7, 13)).any()


@pytest.mark.parametrize("lps", [0.0, 1.0])
def test_laterality_channel_is_positive_on_the_patients_right(tmp_path, lps):
    """The laterality channel separates the legs in world space, also after a flip."""
    from nxp2seg.data.cohort import Cohort
    from nxp2seg.data.preprocessing import fingerprint_cohort, plan_preprocessing
    from nxp2seg.data.schema import default_compartment_schema
    from nxp2seg.data.transforms import Augmentation, Sampling, eval_transforms, train_transforms
    from nxp2seg.phantom import generate_cohort

    root = generate_cohort(
        tmp_path / "c", subjects=2, preset="tiny", seed=3, workers=1,
        acquisition={"lps_probability": lps, "oblique_probability": 1.0},
    )
    cohort = Cohort.open(root)
    schema = default_compartment_schema()
    right = torch.tensor([v for n, v in schema.labels.items() if n.endswith("_right")]).float()
    left = torch.tensor([v for n, v in schema.labels.items() if n.endswith("_left")]).float()
    prep = plan_preprocessing(fingerprint_cohort(cohort, cohort.case_ids, "RAS"))
    assert prep.laterality and prep.in_channels == 3
    ev = eval_transforms(prep)
    ev = mt.Compose(ev) if isinstance(ev, list) else ev
    flip = train_transforms(prep, schema, Augmentation(flip_lr_prob=1.0, affine_prob=0.0), Sampling())
    for cid in cohort.case_ids:
        item = {"t1": str(cohort.t1_path(cid)), "stir": str(cohort.stir_path(cid)), "label": str(cohort.label_path(cid))}
        for d in (ev(dict(item)), flip(dict(item))):
            d = d[0] if isinstance(d, list) else d
            lat, lab = d["image"][2], d["label"][0]
            on_right, on_left = lat[torch.isin(lab, right)], lat[torch.isin(lab, left)]
            assert (on_right > 0).float().mean() > 0.98, cid
            assert (on_left < 0).float().mean() > 0.98, cid


def test_body_box_grows_to_the_window_and_stays_inside():
    from nxp2seg.models.segmenter import body_box

    image = torch.full((1, 3, 40, 30, 10), -1.0)  # air
    image[0, 0, 10:20, 12:18, 2:8] = 2.0  # the body on T1
    box = body_box(image, min_size=(8, 12, 4), margin=(2, 2, 0))
    assert box == (slice(8, 22), slice(9, 21), slice(2, 8))  # margin 2; y grown 10 -> 12 around the body
    # a window larger than the volume: the whole axis
    assert body_box(image, min_size=(64, 12, 4))[0] == slice(0, 40)
    # near an edge the grown box shifts inside the volume
    edge = torch.full((1, 3, 40, 30, 10), -1.0)
    edge[0, 0, 0:3, 12:18, 2:8] = 2.0
    assert body_box(edge, min_size=(16, 12, 4), margin=(0, 0, 0))[0] == slice(0, 16)
    # nothing above air: the whole volume
    assert body_box(torch.zeros(1, 3, 5, 5, 5), (2, 2, 2)) == (slice(0, 5),) * 3


def test_inference_outside_the_body_box_is_background():
    from nxp2seg.models.segmenter import Segmenter

    class Const(torch.nn.Module):
        def forward(self, x):  # class 1 everywhere the network looks
            out = torch.zeros(x.shape[0], 3, *x.shape[2:])
            out[:, 1] = 5.0
            return out

    image = torch.full((1, 3, 32, 24, 8), -1.0)
    image[0, 0, 12:20, 8:16, :] = 2.0
    seg = Segmenter(net=Const(), loss=torch.nn.Identity(), optimizer=torch.optim.SGD, patch_size=(8, 8, 8),
                    inference={"flip_tta": False})
    labels = seg.infer(image).argmax(1)[0]
    assert (labels[12:20, 8:16] == 1).all() and (labels[:8] == 0).all() and (labels[:, :4] == 0).all()
    whole = Segmenter(net=Const(), loss=torch.nn.Identity(), optimizer=torch.optim.SGD, patch_size=(8, 8, 8),
                      inference={"flip_tta": False, "crop_to_body": False})
    assert (whole.infer(image).argmax(1) == 1).all()


def test_one_body_mask_rule_for_normalisation_midline_and_window():
    """The three body masks are one rule (data.intensity.body_mask) with named settings."""
    from nxp2seg.data.intensity import MIDLINE_BODY, WINDOW_BODY, BodyMaskSettings, body_mask
    from nxp2seg.models.segmenter import body_box

    rng = np.random.default_rng(3)
    t1 = torch.as_tensor(rng.uniform(0, 0.05, (24, 20, 6)).astype(np.float32))
    t1[4:20, 5:15] += torch.as_tensor(rng.uniform(0.5, 1.0, (16, 10, 6)).astype(np.float32))
    t1[10, 2, 3] = 0.2  # a faint voxel: body for the generous window, not for the midline
    ref_q = lambda q: float(np.quantile(t1.numpy(), q))  # noqa: E731
    by_hand = t1 > 0.1 * ref_q(0.99)
    norm = NormalizeForeground(fraction=0.1, percentile=99.0)
    assert torch.equal(norm.foreground(t1[None]), by_hand)
    assert torch.equal(norm.foreground(t1[None]), body_mask(t1, BodyMaskSettings(0.1, None, 0.99)))
    lo, hi = ref_q(0.02), ref_q(0.98)
    assert torch.equal(body_mask(t1), t1 > lo + 0.3 * (hi - lo)) and MIDLINE_BODY.fraction == 0.3
    window = body_mask(t1, WINDOW_BODY)
    assert bool(window[10, 2, 3]) and not bool(body_mask(t1)[10, 2, 3])
    box = body_box(t1[None, None], min_size=(1, 1, 1), margin=(0, 0, 0))
    idx = torch.nonzero(window)
    assert box == tuple(slice(int(idx[:, a].min()), int(idx[:, a].max()) + 1) for a in range(3))
