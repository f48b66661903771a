"""Tissue units (STIR ratio to normal muscle, T1 fat index), the reference estimator, the
cohort's statistics, and the region features built on them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nxp2seg.models.grading_scale import CohortSample, fit_cohort_scale, peak_spread, thresholds
from nxp2seg.models.grading_spec import FeatureSpec, ReferenceSpec
from nxp2seg.models.region_features import RegionFeatures
from nxp2seg.models.tissue import (
    LowestPeakReference,
    context_names,
    lowest_peak,
    make_reference,
    real_voxels,
    reference_context,
    tissue_units,
)

CLEAN = (-0.25, 0.12)  # a clean-muscle window (normally the cohort's)
THRESHOLDS = {
    "stir_tau": [1.15, 1.3, 1.5, 1.8, 2.2, 2.7], "t1_tau": [0.1, 0.25, 0.5, 0.75],
    "soft_q": 0.06, "soft_f": 0.06, "subcut_q": 0.55, "subcut_f": 0.3,
    "clean": list(CLEAN), "muscle_like": [-0.12, 0.25], "hist_range": [-0.6, 1.2],
}


def tissue_reference(image, muscle, fat, lateral=None):
    return LowestPeakReference()(image, muscle, fat, CLEAN, lateral=lateral)

# A hand-made station, one row of voxels per tissue block along x (relative signal, muscle = 1):
#   x 0..39    air                       T1 0,   STIR 0
#   x 40..59   subcutaneous fat          T1 3.2, STIR 0.2
#   x 60..99   normal muscle             T1 1,   STIR 1
#   x 100..219 edematous muscle          T1 0.9, STIR 2.5
# then the scanner: gain, and a foreground z-score (an affine map per channel), as preprocessing does.
N = 220


def _station(gain=(700.0, 300.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    t1 = torch.zeros(N, 3, 2)
    stir = torch.zeros(N, 3, 2)
    t1[40:60], stir[40:60] = 3.2, 0.2
    t1[60:100], stir[60:100] = 1.0, 1.0
    t1[100:], stir[100:] = 0.9, 2.5
    t1 = gain[0] * (t1 + 0.01 * torch.randn(t1.shape, generator=g))
    stir = gain[1] * (stir + 0.01 * torch.randn(stir.shape, generator=g))
    body = slice(40, N)
    z1 = (t1 - t1[body].mean()) / t1[body].std()
    z2 = (stir - stir[body].mean()) / stir[body].std()
    image = torch.stack([z1, z2])[None]  # (1, 2, X, Y, Z)
    muscle = torch.zeros(1, N, 3, 2)
    muscle[0, 60:] = 1.0
    fat = torch.zeros(1, N, 3, 2)
    fat[0, 40:60] = 1.0
    return image, muscle, fat


def test_tissue_units_read_normal_muscle_as_one_and_fat_index_from_muscle_to_fat():
    image, muscle, fat = _station()
    ref = tissue_reference(image, muscle, fat)
    q, f = tissue_units(image, ref)
    assert q.shape == f.shape == (1, 1, N, 3, 2)
    # 3/4 of the muscle is edematous: the median would be edema, the lowest peak is normal muscle
    assert abs(float(q[0, 0, 60:100].mean()) - 1.0) < 0.03
    assert abs(float(q[0, 0, 100:].mean()) - 2.5) < 0.08
    assert abs(float(q[0, 0, 40:60].mean()) - 0.2) < 0.03
    assert abs(float(q[0, 0, :40].mean())) < 0.03  # air reads 0
    # fat index: 0 at the muscle median (edema, 0.9), 1 at fat
    assert abs(float(f[0, 0, 40:60].mean()) - 1.0) < 0.02
    assert abs(float(f[0, 0, 100:].mean())) < 0.02


def test_tissue_units_do_not_depend_on_scanner_gain():
    def units(gain):
        image, muscle, fat = _station(gain)
        return tissue_units(image, tissue_reference(image, muscle, fat))

    for x, y in zip(units((700.0, 300.0)), units((2500.0, 90.0))):
        assert torch.allclose(x, y, atol=0.05)


def test_real_voxels_skip_zero_padding():
    image = torch.ones(2, 3, 4, 4, 2)
    image[:, :, :1] = 0.0  # padded rows: every channel exactly 0
    image[1, 1, 1] = 0.0  # one channel 0 only: a real voxel
    real = real_voxels(image)
    assert real.shape == (2, 4, 4, 2)
    assert not real[:, 0].any() and real[:, 1:].all()


def test_lowest_peak_finds_the_darker_population():
    g = torch.Generator().manual_seed(0)
    normal = 1.0 + 0.05 * torch.randn(2500, generator=g)  # a quarter of the muscle is normal
    edema = 1.8 + 0.1 * torch.randn(7500, generator=g)
    assert abs(float(lowest_peak(torch.cat([edema, normal]))) - 1.0) < 0.05
    assert abs(float(lowest_peak(edema)) - 1.8) < 0.05  # one population: its mode
    assert float(lowest_peak(torch.tensor([3.0, 1.0]))) == 1.0  # too few samples: the median


def test_reference_context_describes_the_muscle_histogram():
    image, muscle, fat = _station()
    ref = tissue_reference(image, muscle, fat)
    q, f = tissue_units(image, ref)
    bone = torch.zeros_like(muscle)
    ctx = reference_context(q, f, muscle, fat, bone, CLEAN, 1.25, (-0.6, 1.2), 12)
    names = context_names(12)
    assert ctx.shape == (1, len(names))
    named = dict(zip(names, ctx[0].tolist()))
    assert abs(named["muscle_above_lowest_threshold"] - 0.75) < 0.01  # 120 of 160 muscle columns
    assert abs(named["muscle_q10"] - 1.0) < 0.05 and abs(named["muscle_q50"] - 2.5) < 0.1
    assert abs(named["fat_q50"] - 0.2) < 0.03
    assert named["marrow_q50"] == pytest.approx(0.0)  # no bone: 0
    hist = [named[k] for k in names if k.startswith("muscle_hist")]
    assert sum(hist) == pytest.approx(1.0, abs=1e-5)


def test_region_features_extent_and_brightness_by_hand():
    """One region: 40 normal + 120 edematous muscle columns; the extent share and brightness are read back."""
    image, muscle, fat = _station()
    c = 3  # labels: background, muscle region, subcutaneous
    probs = torch.zeros(1, c, N, 3, 2)
    probs[0, 1] = muscle[0]
    probs[0, 2] = fat[0]
    probs[0, 0] = 1.0 - probs[0, 1] - probs[0, 2]
    membership = torch.tensor([[[0.0, 1.0, 0.0]]])
    subcut = torch.tensor([[[0.0, 0.0, 1.0]]])
    feats = RegionFeatures(LowestPeakReference(), (2.0, 2.0, 5.0))
    feats.set_thresholds(THRESHOLDS)
    x = feats(probs, image, None, membership, subcut)
    assert x.shape == (1, 1, feats.out_features)
    per_weight = feats.voxel_channels + feats.derived_features
    region = x[0, 0, :per_weight]
    derived = region[feats.voxel_channels :]
    share = derived[: feats.n_stir].tolist()  # thresholds 1.15 ... 2.7
    assert share[0] == pytest.approx(0.75, abs=0.02)  # 120 / 160 muscle-like voxels above 1.15
    assert share[-1] == pytest.approx(0.0, abs=0.02)  # none above 2.7
    assert float(derived[-1]) == pytest.approx(2.5, abs=0.1)  # brightness of the edematous part
    # q, q^2, f, m pooled over the region: mean ratio (40 * 1 + 120 * 2.5) / 160
    assert float(region[0]) == pytest.approx((40 + 120 * 2.5) / 160, abs=0.05)
    assert float(region[3]) == pytest.approx(1.0, abs=0.02)  # all of it muscle-like


def test_region_features_sizes_and_options():
    with_dec = RegionFeatures(LowestPeakReference(), (2.0, 2.0, 5.0), feature_channels=16)
    without = RegionFeatures(LowestPeakReference(), (2.0, 2.0, 5.0))
    assert with_dec.out_features - without.out_features == 4 * 16  # pooled under 4 weights
    more = RegionFeatures(LowestPeakReference(), (2.0, 2.0, 5.0), stir_levels=8)
    assert more.out_features - without.out_features == 4 * 2 * 2  # each level: a map and a share
    with pytest.raises(ValueError, match="shape"):
        more.set_thresholds(THRESHOLDS)  # 6 STIR thresholds for 8 levels
    with pytest.raises(ValueError, match="reference.name"):
        make_reference(ReferenceSpec(name="peak"))


def test_feature_names_match_the_columns():
    for channels in (0, 8):
        feats = RegionFeatures(LowestPeakReference(), (2.0, 2.0, 5.0), feature_channels=channels)
        names = feats.feature_names()
        assert len(names) == feats.out_features and len(set(names)) == len(names)
    names = RegionFeatures(LowestPeakReference(), (2.0, 2.0, 5.0)).feature_names()
    assert names[0] == "region/q" and "rim/extent3" in names and names[-1] == "case/leg_left"


# -- the cohort's statistics ----------------------------------------------------------


def test_peak_spread_reads_the_narrower_side_of_a_peak():
    g = torch.Generator().manual_seed(0)
    peak = 1.0 + 0.06 * torch.randn(40_000, generator=g)
    tail = 1.3 + 0.4 * torch.rand(20_000, generator=g)  # edema: a tail on the right only
    mode, sd = peak_spread(torch.cat([peak, tail]), 1.0, 0.6)
    assert mode == pytest.approx(1.0, abs=0.02) and sd == pytest.approx(0.06, abs=0.006)
    mad = 1.4826 * float((torch.cat([peak, tail]) - 1.0).abs().median())
    assert mad > 1.5 * sd  # what a MAD would have read


def _cohort_case(seed, normal_sd=0.05, t1_sd=0.03, edema=2.2, gain=500.0):
    """A case's muscle and fat voxels: 40% normal muscle, 60% edema, on a gain (as preprocessing leaves them)."""
    g = torch.Generator().manual_seed(seed)
    n, k = 6000, 2000
    q = torch.where(torch.arange(n) < 0.4 * n, 1.0 + normal_sd * torch.randn(n, generator=g),
                    edema + 0.2 * torch.randn(n, generator=g))
    t1 = 1.0 + t1_sd * torch.randn(n, generator=g)
    lat = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    fat_t1 = 3.2 + t1_sd * torch.randn(k, generator=g)
    fat_stir = 0.2 + 0.02 * torch.randn(k, generator=g)
    return CohortSample(
        muscle=torch.stack([gain * t1, gain * q, lat]),
        fat=torch.stack([gain * fat_t1, gain * fat_stir]),
        zero=torch.tensor(0.0),
    )


def test_cohort_scale_recovers_the_cohorts_statistics_whatever_the_gain():
    spec = ReferenceSpec()
    scale = fit_cohort_scale([_cohort_case(s) for s in range(4)], make_reference(spec), spec.clean_sd, 0.99)
    assert scale.n_cases == 4
    assert scale.q_sd == pytest.approx(0.05, rel=0.15)
    assert scale.f_sd == pytest.approx(0.03 / 2.2, rel=0.2)  # T1 SD over the muscle-to-fat range
    assert scale.q_fat == pytest.approx(0.2, abs=0.02)
    assert scale.q_high == pytest.approx(2.2 + 2.33 * 0.2, abs=0.1)  # the edema population's 98.3%
    other = fit_cohort_scale([_cohort_case(s, gain=3000.0) for s in range(4)], make_reference(spec),
                             spec.clean_sd, 0.99)
    assert other.q_sd == pytest.approx(scale.q_sd, rel=0.02) and other.q_high == pytest.approx(scale.q_high, rel=0.02)
    with pytest.raises(ValueError, match="label map"):
        fit_cohort_scale([], make_reference(spec), spec.clean_sd, 0.99)


def test_thresholds_are_set_in_units_of_the_cohort():
    spec = ReferenceSpec()
    scale = fit_cohort_scale([_cohort_case(s) for s in range(4)], make_reference(spec), spec.clean_sd, 0.99)
    features = FeatureSpec()
    th = thresholds(scale, features, spec)
    tau = th["stir_tau"]
    assert tau[0] == pytest.approx(1.0 + features.stir_low_sd * scale.q_sd)
    assert tau[-1] == pytest.approx(scale.q_high) and len(tau) == features.stir_levels
    ratios = np.diff(np.log(tau))
    assert np.allclose(ratios, ratios[0])  # evenly spaced in log
    assert th["soft_q"] == pytest.approx(scale.q_sd) and th["soft_f"] == pytest.approx(scale.f_sd)
    assert th["clean"] == pytest.approx((scale.f_mode - 4 * scale.f_sd, scale.f_mode + 3 * scale.f_sd))
    assert th["subcut_q"] == pytest.approx(math.sqrt(scale.q_fat))
    # a brighter cohort (edema 30% brighter on its scanner): the thresholds follow it
    bright = fit_cohort_scale([_cohort_case(s, edema=2.86) for s in range(4)], make_reference(spec),
                              spec.clean_sd, 0.99)
    assert thresholds(bright, features, spec)["stir_tau"][-1] > tau[-1] * 1.2
