"""The out-of-distribution guard, one leg, and Dixon fat fractions in predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nxp2seg.data.schema import default_compartment_schema
from nxp2seg.data.signature import TOO_LITTLE_MUSCLE, build_signature, exam_features, ood_score
from nxp2seg.inference.exam_checks import fat_fractions, one_leg, two_legs_seen
from nxp2seg.io import make_nifti, save_nifti
from nxp2seg.models.bundle import load_bundle

SCHEMA = default_compartment_schema()


def _two_tissue(fat_level: float, muscle_level: float, c1_fat: float, c1_muscle: float, seed: int = 0):
    """A slab: muscle in the middle, fat around it, air outside; two channels."""
    rng = np.random.default_rng(seed)
    shape = (40, 40, 4)
    c0, c1 = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    body = np.zeros(shape, bool)
    body[5:35, 5:35] = True
    muscle = np.zeros(shape, bool)
    muscle[12:28, 12:28] = True
    c0[body], c1[body] = fat_level, c1_fat
    c0[muscle], c1[muscle] = muscle_level, c1_muscle
    c0 += rng.normal(0, 0.01, shape).astype(np.float32)
    c1 += rng.normal(0, 0.01, shape).astype(np.float32)
    return [np.abs(c0), np.abs(c1)], muscle


def test_features_are_tissue_ratios_and_geometry_by_hand():
    ch, muscle = _two_tissue(3.0, 1.0, 0.2, 1.0)
    f = exam_features(ch, muscle, np.diag([2.0, 2.0, 6.0, 1.0]), ["T1", "STIR"])
    assert np.isclose(np.exp(f["t1_bright_over_muscle"]), 3.0, rtol=0.02)
    assert np.isclose(np.exp(f["stir_bright_over_muscle"]), 0.2, rtol=0.1)
    assert np.isclose(np.exp(f["inplane_spacing_mm"]), 2.0) and np.isclose(np.exp(f["slice_spacing_mm"]), 6.0)
    assert np.isclose(np.exp(f["matrix"]), 40) and np.isclose(np.exp(f["field_of_view_mm"]), 80)
    assert exam_features(ch, np.zeros_like(muscle), np.eye(4), ["T1", "STIR"]) is None


def test_score_is_the_largest_robust_z_and_flags_dixon_given_as_t1_stir():
    aff = np.diag([2.0, 2.0, 6.0, 1.0])
    train = [exam_features(*_two_tissue(f, 1.0, s, 1.0, seed=i), aff, ["T1", "STIR"])
             for i, (f, s) in enumerate([(2.8, 0.18), (3.0, 0.2), (3.2, 0.25), (3.4, 0.22), (3.1, 0.3)])]
    sig = build_signature(train, ["T1", "STIR"])
    ref = sig["features"]["t1_bright_over_muscle"]
    assert np.isclose(ref["median"], np.log(3.1), atol=0.02)
    assert sig["features"]["matrix"]["scale"] == 0.25  # shared by every training case: the floor
    like = ood_score(sig, exam_features(*_two_tissue(3.05, 1.0, 0.21, 1.0, seed=9), aff, ["T1", "STIR"]))
    assert not like["unlike_training"] and like["ood_score"] < sig["threshold"]
    dixon = ood_score(sig, exam_features(*_two_tissue(1.0, 0.06, 0.05, 1.0, seed=9), aff, ["T1", "STIR"]))
    assert dixon["unlike_training"] and dixon["feature"] == "contrast" and dixon["contrast_distance"] > 10
    # the Mahalanobis distance by hand
    c = sig["contrast"]
    f = exam_features(*_two_tissue(1.0, 0.06, 0.05, 1.0, seed=9), aff, ["T1", "STIR"])
    d = np.array([f[n] for n in c["names"]]) - np.array(c["mean"])
    assert np.isclose(dixon["contrast_distance"], np.sqrt(d @ np.linalg.inv(np.array(c["covariance"])) @ d), rtol=1e-3)
    bigger = ood_score(sig, {**like_f(aff), "matrix": np.log(40 * 4)})  # 4x the matrix: z = log 4 / 0.25
    assert bigger["feature"] == "matrix" and np.isclose(bigger["ood_score"], np.log(4) / 0.25, rtol=1e-3)
    # an exam that could not be measured is flagged (test_an_exam_with_too_little_muscle_to_measure_is_flagged)
    assert ood_score(sig, None)["unlike_training"] is True and np.isnan(ood_score(sig, None)["ood_score"])


def like_f(aff):
    return exam_features(*_two_tissue(3.05, 1.0, 0.21, 1.0, seed=9), aff, ["T1", "STIR"])


def test_fat_fraction_by_hand_with_a_noise_floor():
    fat = np.zeros((10, 10, 2), np.float32)
    water = np.zeros((10, 10, 2), np.float32)
    labels = np.zeros((10, 10, 2), np.uint8)
    fat[:, :, :], water[:, :, :] = 1.0, 1.0  # air: noise of 2 in fat + water
    labels[2:5, 2:5] = 1
    fat[2:5, 2:5], water[2:5, 2:5] = 300.0, 700.0  # 30% fat
    labels[5:8, 5:8] = 2
    fat[5:8, 5:8], water[5:8, 5:8] = 600.0, 400.0
    fat[5, 5], water[5, 5] = 2.0, 3.0  # under the noise floor (5 x air's 2): left out
    ff = fat_fractions(fat, water, labels, {"a": [1], "b": [2]})
    assert ff["a"] == pytest.approx(0.3) and ff["b"] == pytest.approx(0.6)


def _t1(shape, *legs, seed: int = 0) -> np.ndarray:
    """A T1 with air (noise) and a bright box per ``(slice, slice)`` leg: one box, one outline."""
    t1 = np.random.default_rng(seed).normal(5.0, 1.0, shape).astype(np.float32)
    for leg in legs:
        t1[leg] = 100.0
    return t1


def test_one_leg_is_seen_from_the_regions_when_the_image_shows_one_outline():
    regions = {n: SCHEMA.regions[n] for n in SCHEMA.region_names("thigh")}
    labels = np.zeros((20, 10, 2), np.uint8)
    t1 = _t1(labels.shape, np.s_[:, 1:9])  # one body outline (one leg, or two that touch)
    assert not two_legs_seen(t1, np.eye(4))
    labels[:8, :, :] = SCHEMA.labels["thigh_anterior_right"]
    assert one_leg(labels, regions, np.eye(4), t1) == "right"
    labels[15:, :5, :] = SCHEMA.labels["thigh_medial_left"]  # beside it along x: two legs
    assert one_leg(labels, regions, np.eye(4), t1) is None
    labels[15:] = 0
    labels[3:6, :5, :] = SCHEMA.labels["thigh_medial_left"]  # inside the right leg's span: one leg
    assert one_leg(labels, regions, np.eye(4), t1) == "right"


def test_two_legs_in_the_image_are_never_one_leg():
    """A weak segmentation (nearly all of it on one side) does not erase a leg the image shows."""
    regions = {n: SCHEMA.regions[n] for n in SCHEMA.region_names("thigh")}
    labels = np.zeros((24, 10, 3), np.uint8)
    labels[14:22, 2:8] = SCHEMA.labels["thigh_anterior_right"]  # world x > 0 with the affine below
    labels[2:10, 2:8] = SCHEMA.labels["thigh_anterior_right"]  # the other leg called right as well
    labels[4, 4, 0] = SCHEMA.labels["thigh_medial_left"]
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    affine[0, 3] = -12.0
    two = _t1(labels.shape, np.s_[1:11, 1:9], np.s_[13:23, 1:9])
    assert two_legs_seen(two, affine)
    assert one_leg(labels, regions, affine, two) is None
    one = _t1(labels.shape, np.s_[1:23, 1:9])  # the same segmentation, one outline: it decides
    assert one_leg(labels, regions, affine, one) == "right"


def test_one_leg_in_the_image_gives_the_side_the_segmentation_shows():
    regions = {n: SCHEMA.regions[n] for n in SCHEMA.region_names("thigh")}
    labels = np.zeros((24, 10, 3), np.uint8)
    labels[3:10, 2:8] = SCHEMA.labels["thigh_posterior_left"]  # world x < 0: the patient's left
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    affine[0, 3] = -12.0
    t1 = _t1(labels.shape, np.s_[1:11, 1:9])
    assert not two_legs_seen(t1, affine)
    assert one_leg(labels, regions, affine, t1) == "left"
    with pytest.raises(ValueError, match="same grid"):
        one_leg(labels, regions, affine, t1[:, :, :2])


def test_two_legs_are_side_by_side_along_world_x_in_most_axial_slices():
    # array axes (z, x, y): the slices are along axis 0, world x along axis 1
    affine = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [4.0, 0, 0, 0], [0, 0, 0, 1]])
    shape = (5, 24, 10)
    assert two_legs_seen(_t1(shape, np.s_[:, 1:11, 1:9], np.s_[:, 13:23, 1:9]), affine)
    assert not two_legs_seen(_t1(shape, np.s_[:, 4:20, 0:4], np.s_[:, 4:20, 6:10]), affine)  # front and back
    assert not two_legs_seen(_t1(shape, np.s_[:, 1:11, 1:9], np.s_[:, 13:15, 1:3]), affine)  # a sliver beside
    pelvis = _t1(shape, np.s_[:, 1:11, 1:9], np.s_[:, 13:23, 1:9])
    pelvis[3:, 1:23, 1:9] = 100.0  # two of five slices through the pelvis: one outline, outvoted
    assert two_legs_seen(pelvis, affine)
    pelvis[2:, 1:23, 1:9] = 100.0  # three of five: not seen
    assert not two_legs_seen(pelvis, affine)
    ring = _t1(shape, np.s_[:, 1:11, 1:9], np.s_[:, 13:23, 1:9])
    ring[:, 3:9, 3:7] = ring[:, 15:21, 3:7] = 5.0  # Dixon fat: dark muscle inside a ring of fat
    assert two_legs_seen(ring, affine)


def _dixon_like(src: Path, dst: Path, name: str, seed: int) -> None:
    """A T1/STIR exam of the synthetic cohort redrawn as Dixon fat/water (fat bright / dark)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    label = nib.load(src)
    lab = np.asarray(label.dataobj)
    fatty = np.isin(lab, [SCHEMA.labels["subcutaneous_right"], SCHEMA.labels["subcutaneous_left"], SCHEMA.labels["bone"]])
    body = lab > 0
    fat = np.where(fatty, 1.0, np.where(body, 0.05, 0.0)) * 900 + rng.normal(0, 9, lab.shape)
    water = np.where(fatty, 0.06, np.where(body, 1.0, 0.0)) * 900 + rng.normal(0, 9, lab.shape)
    save_nifti(make_nifti(np.abs(fat).astype(np.float32), label.affine), dst / f"{name}_T1.nii.gz")
    save_nifti(make_nifti(np.abs(water).astype(np.float32), label.affine), dst / f"{name}_STIR.nii.gz")


def test_predict_writes_ood_score_and_flags_dixon_given_to_a_t1_stir_bundle(trained_bundle, synthetic_cohort,
                                                                             tmp_path):
    from nxp2seg.predict import main

    bundle = load_bundle(trained_bundle)
    assert bundle.signature is not None and bundle.signature["channels"] == ["T1", "STIR"]
    assert bundle.signature["edema_graded_cases"] == 0
    cases = pd.read_csv(synthetic_cohort / "cases.csv")
    held_out = cases[cases.split == "test"].case_id.tolist()
    inputs = tmp_path / "in"
    inputs.mkdir()
    for cid in held_out:
        _dixon_like(synthetic_cohort / "labelsTr" / f"{cid}.nii.gz", inputs, f"dixon{cid}", seed=1)
    out = tmp_path / "out"
    assert main([f"model={trained_bundle}", f"input={synthetic_cohort}", "split=test", f"output={out / 'same'}",
                 "progress=false"]) == 0
    assert main([f"model={trained_bundle}", f"input={inputs}", f"output={out / 'dixon'}", "progress=false"]) == 0
    same = pd.read_csv(out / "same" / "cases.csv", keep_default_na=False)
    dixon = pd.read_csv(out / "dixon" / "cases.csv", keep_default_na=False)
    assert not same.warnings.str.contains("input_unlike_training").any()
    assert dixon.warnings.str.contains("input_unlike_training").all()
    report = json.loads((out / "dixon" / dixon.case_id[0] / "report.json").read_text())
    assert report["ood_score"] > bundle.signature["threshold"] and report["ood"]["feature"]
    assert "input_unlike_training" in report["warning_messages"]
    assert np.isfinite(same.ood_score).all() and (same.ood_score < bundle.signature["threshold"]).all()
    assert np.isfinite(pd.read_csv(out / "same" / "regions.csv").edema_fraction).all()  # STIR: measured


def test_one_leg_exam_gets_the_warning(trained_bundle, synthetic_cohort, tmp_path):
    import nibabel as nib

    from nxp2seg.predict import main

    cases = pd.read_csv(synthetic_cohort / "cases.csv")
    cid = cases[(cases.split == "test") & (cases.station == "thigh")].case_id.iloc[0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for ch, name in ((0, "T1"), (1, "STIR")):
        img = nib.load(synthetic_cohort / "imagesTr" / f"{cid}_{ch:04d}.nii.gz")
        data = img.get_fdata().astype(np.float32)
        i, j, k = np.meshgrid(*(np.arange(n) for n in data.shape), indexing="ij")
        x = img.affine[0, 0] * i + img.affine[0, 1] * j + img.affine[0, 2] * k + img.affine[0, 3]
        data[x < 0] = 0.0  # the patient's left leg is not in the field of view
        save_nifti(make_nifti(data, img.affine), inputs / f"oneleg_thigh_{name}.nii.gz")
    out = tmp_path / "out"
    assert main([f"model={trained_bundle}", f"input={inputs}", f"output={out}", "progress=false"]) == 0
    row = pd.read_csv(out / "cases.csv", keep_default_na=False).iloc[0]
    assert "one_leg" in row.warnings.split(";")
    report = json.loads((out / row.case_id / "report.json").read_text())
    assert "right" in report["warning_messages"]["one_leg"]
    volumes = pd.read_csv(out / "regions.csv").set_index("region")["volume_ml"]
    assert (volumes[[r for r in volumes.index if r.endswith("_left")]] == 0).all()
    seg = np.asarray(nib.load(out / row.case_id / "seg.nii.gz").dataobj)
    assert not np.isin(seg, [SCHEMA.labels[r] for r in volumes.index if r.endswith("_left")]).any()


def test_manifest_columns_are_the_bundle_channels_in_lower_case(tmp_path):
    from nxp2seg.inference.inputs import InputError, discover_cases

    for name in ("f.nii.gz", "w.nii.gz"):
        save_nifti(make_nifti(np.ones((4, 4, 2), np.float32), np.eye(4)), tmp_path / name)
    (tmp_path / "dixon.csv").write_text("case_id,fat,water,station\nc1,f.nii.gz,w.nii.gz,thigh\n")
    (case,) = discover_cases(None, manifest=tmp_path / "dixon.csv", channels=("fat", "water"))
    assert case.t1 == tmp_path / "f.nii.gz" and case.stir == tmp_path / "w.nii.gz" and case.error is None
    with pytest.raises(InputError, match="name the manifest's image columns fat, water"):
        (tmp_path / "t1.csv").write_text("case_id,t1,stir\nc1,f.nii.gz,w.nii.gz\n")
        discover_cases(None, manifest=tmp_path / "t1.csv", channels=("fat", "water"))


def test_a_signature_of_two_exams_does_not_flag_a_third_of_their_kind():
    aff = np.diag([2.0, 2.0, 6.0, 1.0])
    two = [exam_features(*_two_tissue(f, 1.0, s, 1.0, seed=i), aff, ["T1", "STIR"])
           for i, (f, s) in enumerate([(2.8, 0.18), (3.3, 0.24)])]  # a covariance of rank one
    sig = build_signature(two, ["T1", "STIR"])
    assert np.linalg.eigvalsh(np.array(sig["contrast"]["covariance"])).min() >= 0.15**2 - 1e-9
    third = ood_score(sig, exam_features(*_two_tissue(3.2, 1.0, 0.22, 1.0, seed=3), aff, ["T1", "STIR"]))
    assert not third["unlike_training"], third


def test_an_exam_with_too_little_muscle_to_measure_is_flagged():
    # an image the model finds no muscle in (another body part, a failed segmentation) cannot be
    # compared with the training images: flagged, never passed silently
    aff = np.diag([2.0, 2.0, 6.0, 1.0])
    channels, muscle = _two_tissue(3.0, 1.0, 0.2, 1.0, seed=0)
    sig = build_signature([exam_features(channels, muscle, aff, ["T1", "STIR"])] * 3, ["T1", "STIR"])
    empty = exam_features(channels, np.zeros_like(muscle), aff, ["T1", "STIR"])
    assert empty is None
    res = ood_score(sig, empty)
    assert res["unlike_training"] and res["feature"] == TOO_LITTLE_MUSCLE
    assert np.isnan(res["ood_score"])


def _as_dixon_bundle(src: Path, dst: Path) -> Path:
    """The segmentation-only bundle ``src`` written again as a Dixon model (channels FAT, WATER)."""
    import dataclasses

    from nxp2seg.models.bundle import write_bundle

    b = load_bundle(src)
    return write_bundle(dst, b.build_model("cpu"), config=b.config,
                        dataset=dataclasses.replace(b.dataset, channel_names={"0": "FAT", "1": "WATER"}),
                        preprocessing=dataclasses.replace(b.preprocessing, channels=("FAT", "WATER")),
                        validation=b.validation, network=b.manifest["network"])


def test_dixon_bundle_measures_no_edema_on_the_water_image(trained_bundle, synthetic_cohort, tmp_path):
    """A Dixon model that never learnt edema: no edema_fraction, no red edema on qc.png, rows named
    FAT / WATER (the water image is not STIR; found on the real thighs, docs/realdata.md)."""
    from PIL import Image

    from nxp2seg.predict import main

    dixon = _as_dixon_bundle(trained_bundle, tmp_path / "dixon_bundle")
    out = tmp_path / "out"
    assert main([f"model={dixon}", f"input={synthetic_cohort}", "split=test", f"output={out}",
                 "progress=false"]) == 0
    regions = pd.read_csv(out / "regions.csv")
    assert regions.volume_ml.gt(0).any() and regions.edema_fraction.isna().all()
    assert regions.fat_fraction.between(0, 1).any()
    for png in out.glob("*/qc.png"):
        rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
        lower = rgb[rgb.shape[0] // 2 + 20:]  # the water row: red is edema there
        assert not ((lower[..., 0] - lower[..., 1:].max(axis=-1)) > 100).any(), png


def test_qc_rows_are_named_by_the_bundle_channels(tmp_path):
    from nxp2seg.inference.writers import write_qc

    rng = np.random.default_rng(0)
    img = rng.random((24, 24, 3)).astype(np.float32)
    labels = np.zeros((24, 24, 3), np.uint8)
    labels[6:12, 6:12] = SCHEMA.labels["thigh_anterior_right"]
    args = (img, img, labels, np.zeros(labels.shape, bool), np.eye(4), SCHEMA, "t")
    a = write_qc(tmp_path / "a.png", *args).read_bytes()
    assert write_qc(tmp_path / "b.png", *args, channels=("T1", "STIR")).read_bytes() == a
    assert write_qc(tmp_path / "c.png", *args, channels=("FAT", "WATER")).read_bytes() != a
