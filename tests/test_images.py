"""One image-check module (nxp2seg.data.images) for verify and predict, with explicit policies."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nxp2seg.data.images import (
    PREDICT_POLICY,
    VERIFY_POLICY,
    axial_tilt,
    constant_value,
    field_of_view_overlap,
    geometry_codes,
    nonfinite_count,
    spatial_shape,
)
from nxp2seg.inference.inputs import CaseInput
from nxp2seg.inference.loading import CaseError, load_case_images

SRC = Path(__file__).resolve().parents[1] / "src" / "nxp2seg"


def test_checks_by_hand():
    assert spatial_shape((4, 5, 6)) == ((4, 5, 6), False)
    assert spatial_shape((4, 5, 6, 1)) == ((4, 5, 6), True)
    assert spatial_shape((4, 5, 6, 2)) == (None, False) and spatial_shape((4, 5)) == (None, False)
    assert nonfinite_count(np.array([1.0, np.nan, np.inf])) == 2 and nonfinite_count(np.arange(3)) == 0
    assert constant_value(np.zeros((2, 2))) == 0.0 and constant_value(np.arange(4)) is None
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    assert geometry_codes(img.header, img.affine)[0] is True
    assert geometry_codes(img.header, np.zeros((4, 4)))[0] is False
    # a 10 x 10 x 10 mm box (voxel faces) and one shifted by 7 mm along x: 30% of it covered
    assert field_of_view_overlap((10, 10, 10), np.eye(4), (10, 10, 10), np.eye(4)) == 1.0
    shifted = np.eye(4)
    shifted[0, 3] = 7.0
    assert field_of_view_overlap((10, 10, 10), np.eye(4), (10, 10, 10), shifted) == pytest.approx(0.3)
    shifted[0, 3] = 10.0  # faces touch: an overlap, never a false "no"
    assert field_of_view_overlap((10, 10, 10), np.eye(4), (10, 10, 10), shifted) > 0
    shifted[0, 3] = 11.0
    assert field_of_view_overlap((10, 10, 10), np.eye(4), (10, 10, 10), shifted) == 0.0
    sagittal = np.array([[5.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    tilt = axial_tilt(sagittal)
    assert tilt is not None and tilt.plane == "sagittal" and not tilt.axial and tilt.tilt_deg == 90
    assert axial_tilt(np.diag([1.0, 1.0, 5.0, 1.0])).axial and axial_tilt(np.eye(4)) is None


def test_the_policies_differ_only_by_their_flags():
    assert VERIFY_POLICY.stir_overlap_ok(0.3) and not PREDICT_POLICY.stir_overlap_ok(0.3)
    assert not VERIFY_POLICY.stir_overlap_ok(0.0) and not PREDICT_POLICY.stir_overlap_ok(0.0)
    assert PREDICT_POLICY.constant_is_error and not VERIFY_POLICY.constant_is_error
    assert PREDICT_POLICY.require_axial and not VERIFY_POLICY.require_axial


def _pair(tmp_path: Path, stir_shift_mm: float) -> CaseInput:
    rng = np.random.default_rng(0)
    t1 = nib.Nifti1Image(rng.uniform(1, 2, (10, 10, 10)).astype(np.float32), np.eye(4))
    aff = np.eye(4)
    aff[0, 3] = stir_shift_mm
    stir = nib.Nifti1Image(rng.uniform(1, 2, (10, 10, 10)).astype(np.float32), aff)
    nib.save(t1, tmp_path / "c_T1.nii.gz")
    nib.save(stir, tmp_path / "c_STIR.nii.gz")
    return CaseInput(case_id="c", subject_id="s", station="thigh", source="nifti",
                     t1=tmp_path / "c_T1.nii.gz", stir=tmp_path / "c_STIR.nii.gz")


def test_predict_applies_its_policy_to_the_pair(tmp_path):
    load_case_images(_pair(tmp_path, 4.0), tmp_path)  # 60% covered: accepted
    with pytest.raises(CaseError, match="overlap in only 30%"):
        load_case_images(_pair(tmp_path, 7.0), tmp_path)


def test_verify_and_predict_use_the_one_module():
    for rel in ("data/verify/images.py", "inference/loading.py"):
        text = (SRC / rel).read_text(encoding="utf-8")
        assert "from nxp2seg.data.images import" in text, rel
        assert "isfinite" not in text and "sform_code" not in text and "arccos" not in text, rel
