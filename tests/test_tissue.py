"""Tissue units (STIR ratio to normal muscle, T1 fat index) and the region features built on them."""

from __future__ import annotations

import pytest
import torch

from nxp2seg.models.region_features import RegionFeatures
from nxp2seg.models.tissue import (
    CONTEXT_FEATURES,
    lowest_peak,
    real_voxels,
    reference_context,
    tissue_reference,
    tissue_units,
)

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
    a = tissue_units(*(lambda im, m, fa: (im, tissue_reference(im, m, fa)))(*_station((700.0, 300.0))))
    b = tissue_units(*(lambda im, m, fa: (im, tissue_reference(im, m, fa)))(*_station((2500.0, 90.0))))
    for x, y in zip(a, b):
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
    ctx = reference_context(q, f, muscle, fat, bone)
    assert ctx.shape == (1, len(CONTEXT_FEATURES))
    named = dict(zip(CONTEXT_FEATURES, ctx[0].tolist()))
    assert abs(named["muscle_above_1.25"] - 0.75) < 0.01  # 120 of 160 muscle columns
    assert abs(named["muscle_q10"] - 1.0) < 0.05 and abs(named["muscle_q50"] - 2.5) < 0.1
    assert abs(named["fat_q50"] - 0.2) < 0.03
    assert named["marrow_q50"] == pytest.approx(0.2)  # no bone: the default
    hist = [named[k] for k in CONTEXT_FEATURES if k.startswith("muscle_hist")]
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
    feats = RegionFeatures(0, (2.0, 2.0, 5.0), learn_thresholds=False, decoder_features=False)
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
    with_dec = RegionFeatures(16, (2.0, 2.0, 5.0))
    without = RegionFeatures(16, (2.0, 2.0, 5.0), decoder_features=False)
    assert with_dec.out_features - without.out_features == 4 * 16  # pooled under 4 weights
    z = RegionFeatures(16, (2.0, 2.0, 5.0), reference="none", stir_thresholds=(0.5, 1.0), t1_thresholds=(0.0,))
    assert z.out_features == 4 * (16 + 4 + 2 + 1) + 1
    with pytest.raises(ValueError, match="reference"):
        RegionFeatures(4, (2.0, 2.0, 5.0), reference="peak")


def test_feature_names_match_the_columns():
    for kw in ({}, {"decoder_features": False}, {"reference": "none"}):
        feats = RegionFeatures(8, (2.0, 2.0, 5.0), **kw)
        names = feats.feature_names()
        assert len(names) == feats.out_features and len(set(names)) == len(names)
    names = RegionFeatures(0, (2.0, 2.0, 5.0), decoder_features=False).feature_names()
    assert names[0] == "region/q" and "rim/extent>1.8" in names and names[-1] == "case/leg_left"
