"""Real thigh geometry in the phantom: sparse thick slices, touching legs, the pelvis, one leg."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from nxp2seg.data.cohort import Cohort
from nxp2seg.data.schema import default_compartment_schema
from nxp2seg.data.verify import verify_cohort
from nxp2seg.phantom import generate_cohort
from nxp2seg.phantom.config import PRESETS

L = default_compartment_schema().labels
SMALL_REAL = {"matrix": [96, 96], "min_spacing_thigh": 4.0, "min_spacing_calf": 3.0}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real") / "c"
    return generate_cohort(root, subjects=3, preset="real", seed=2, workers=1, sequence="dixon",
                           acquisition={**SMALL_REAL, "one_leg_probability": 0.0})


def test_real_preset_is_the_real_geometry():
    r = PRESETS["real"]
    assert r["matrix"] == (512, 512) and r["slice_count"] == (10, 16) and r["slice_spacing"] == (20.0, 26.0)
    assert r["leg_gap_thigh"][0] < 0 and r["pelvis_slices"][1] >= 1 and r["one_leg_probability"] > 0


def test_sparse_thick_slices_and_pelvis(real):
    assert verify_cohort(real).ok
    acq = pd.read_csv(real / "truth" / "acquisition.csv")
    assert acq.slice_spacing_mm.between(20, 26).all() and acq.slices.between(10, 16).all()
    cohort = Cohort.open(real)
    for _, row in acq.iterrows():
        img = nib.load(cohort.image_path(row.case_id, 0))
        assert img.shape[2] == row.slices
        assert np.isclose(img.header.get_zooms()[2], row.slice_spacing_mm, atol=1e-3)
        if row.station != "thigh":
            assert row.pelvis_slices == 0
            continue
        assert 1 <= row.pelvis_slices <= 3
        lab = np.asarray(nib.load(cohort.label_path(row.case_id)).dataobj)
        top = lab[..., -1]  # slices run inferior -> superior in world z for RAS and LPS alike
        assert not np.isin(top, [L[n] for n in default_compartment_schema().region_names("thigh")]).any()
        assert (top == L["bone"]).any() and np.isin(top, [L["subcutaneous_right"], L["subcutaneous_left"]]).any()
        body = lab[..., -1] > 0
        assert body.sum() > 0.3 * (lab[..., 0] > 0).sum()  # a body, not an empty slice


def test_touching_legs_keep_right_and_left_in_world_space(tmp_path):
    root = generate_cohort(tmp_path / "t", subjects=2, preset="real", seed=4, workers=1,
                           acquisition={**SMALL_REAL, "leg_gap_thigh": [-12, -8], "pelvis_slices": [0, 0],
                                        "one_leg_probability": 0.0})
    cohort = Cohort.open(root)
    for cid in cohort.case_ids:
        if cohort.station_of(cid) != "thigh":
            continue
        img = nib.load(cohort.label_path(cid))
        lab = np.asarray(img.dataobj)
        i, j, k = np.nonzero(lab > 0)
        x = img.affine[0, 0] * i + img.affine[0, 1] * j + img.affine[0, 2] * k + img.affine[0, 3]
        right = np.isin(lab[i, j, k], [L["thigh_anterior_right"], L["thigh_medial_right"], L["thigh_posterior_right"]])
        left = np.isin(lab[i, j, k], [L["thigh_anterior_left"], L["thigh_medial_left"], L["thigh_posterior_left"]])
        assert x[right].min() > x[left].max() - 1.0  # right leg at +x, the legs meet at the midline
        sub = lab[i, j, k] == L["subcutaneous_right"]
        gap = np.sort(x[(lab[i, j, k] > 0)])
        assert np.diff(gap).max() < 3 * abs(img.affine[0, 0]) + 1  # no air gap between the legs
        assert sub.any()


def test_one_leg_in_the_field_of_view(tmp_path):
    root = generate_cohort(tmp_path / "o", subjects=2, preset="real", seed=5, workers=1,
                           acquisition={**SMALL_REAL, "one_leg_probability": 1.0})
    acq = pd.read_csv(root / "truth" / "acquisition.csv")
    cohort = Cohort.open(root)
    for _, row in acq.iterrows():
        lab = np.asarray(nib.load(cohort.label_path(row.case_id)).dataobj)
        present = {s for s in ("right", "left") if (lab == L[f"subcutaneous_{s}"]).any()}
        assert present == {row.one_leg}, row.case_id
