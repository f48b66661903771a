"""Properties that must hold for every input (hypothesis): geometry, mirroring, agreement statistics.

Each property draws at most 50 small examples, without a deadline, derandomised
(the same examples on every run) and without a database, so the file runs in
seconds and never writes next to the sources.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nxp2seg.data import default_compartment_schema
from nxp2seg.data.transforms import flip_swap_lr, laterality_map, lr_swap_lut
from nxp2seg.inference.geometry import probabilities_to_labels, resample_to_grid
from nxp2seg.stats import cohen_kappa, icc

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None)

shapes = st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 5))
seeds = st.integers(0, 2**32 - 1)
spacings = st.tuples(*[st.sampled_from([0.5, 0.8, 1.0, 2.5, 4.0, 6.0])] * 3)


def _affine(spacing, signs, origin) -> np.ndarray:
    a = np.diag([*(np.asarray(spacing) * np.asarray(signs)), 1.0])
    a[:3, 3] = origin
    return a


affines = st.builds(
    _affine, spacings, st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    st.tuples(*[st.floats(-200.0, 200.0, allow_nan=False, width=32)] * 3))


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------


@FAST
@given(shape=shapes, affine=affines, seed=seeds, order=st.sampled_from([0, 1]))
def test_resampling_onto_the_same_grid_is_the_identity(shape, affine, seed, order):
    data = np.random.default_rng(seed).normal(100.0, 30.0, shape).astype(np.float32)
    out = resample_to_grid(data, affine, shape, affine, order=order)
    np.testing.assert_allclose(out, data, rtol=1e-5, atol=1e-4)


def _reoriented_and_back(shape, affine, seed, perm, flips) -> tuple[np.ndarray, np.ndarray]:
    """A random label volume, and the same volume reoriented (axis order, flips) and resampled back."""
    labels = np.random.default_rng(seed).integers(1, 16, shape).astype(np.float32)
    img = nib.Nifti1Image(labels, affine)
    other = img.as_reoriented(np.array([[p, f] for p, f in zip(perm, flips)], dtype=float))
    return labels, resample_to_grid(np.asarray(other.dataobj), other.affine, shape, affine, order=0)


reorientations = {"shape": shapes, "affine": affines, "seed": seeds, "perm": st.permutations([0, 1, 2]),
                  "flips": st.tuples(*[st.sampled_from([-1, 1])] * 3)}


@FAST
@given(**reorientations)
def test_reorienting_and_resampling_back_through_the_affines_is_exact(shape, affine, seed, perm, flips):
    """Any axis order and flips (LPS, slice axis first, ...): back on the original grid, voxel for voxel."""
    labels, back = _reoriented_and_back(shape, affine, seed, perm, flips)
    np.testing.assert_array_equal(back, labels)


@FAST
@given(**reorientations)
def test_reorienting_and_resampling_back_is_exact_inside_the_border(shape, affine, seed, perm, flips):
    labels, back = _reoriented_and_back(shape, affine, seed, perm, flips)
    inner = (slice(1, -1),) * 3
    np.testing.assert_array_equal(back[inner], labels[inner])
    assert set(np.unique(back)) <= set(np.unique(labels)) | {0.0}  # at worst a border voxel is lost


@FAST
@given(shape=shapes, affine=affines, seed=seeds, k=st.integers(2, 6))
def test_probabilities_to_labels_on_the_same_grid_is_the_argmax(shape, affine, seed, k):
    rng = np.random.default_rng(seed)
    # distinct probabilities per voxel (no ties), on a coarse lattice so round-off cannot reorder them
    ranks = np.argsort(rng.random((k, *shape)), axis=0).astype(np.float32)
    probs = (ranks + 1) / (k * (k + 1) / 2)
    values = sorted(rng.choice(np.arange(0, 40), size=k, replace=False).tolist())
    labels = probabilities_to_labels(probs, values, affine, shape, affine)
    assert labels.shape == shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.asarray(values)[probs.argmax(axis=0)])


LUT = lr_swap_lut(default_compartment_schema())


@FAST
@given(shape=shapes, seed=seeds, axis=st.integers(0, 2), channels=st.integers(1, 3))
def test_flip_swap_lr_twice_is_the_identity(shape, seed, axis, channels):
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.normal(size=(channels, *shape)).astype(np.float32))
    label = torch.from_numpy(rng.integers(0, 16, (1, *shape)).astype(np.int64))
    once_img, once_lab = flip_swap_lr(image, label, axis, LUT)
    twice_img, twice_lab = flip_swap_lr(once_img, once_lab, axis, LUT)
    assert torch.equal(twice_img, image) and torch.equal(twice_lab, label)
    # once: every sided label has become its twin (a right compartment is now a left one)
    assert torch.equal(once_lab, torch.as_tensor(LUT)[torch.flip(label, dims=(axis + 1,))])


@FAST
@given(width=st.integers(6, 10), gap=st.integers(1, 2), margins=st.tuples(st.integers(0, 5), st.integers(0, 5)),
       ny=st.integers(3, 6), nz=st.integers(2, 4), step=st.sampled_from([-3.0, -1.5, 1.0, 2.0]), seed=seeds)
def test_laterality_map_changes_sign_under_a_left_right_flip(width, gap, margins, ny, nz, step, seed):
    """Two legs side by side: the map of the mirrored patient is the mirrored map with its sign changed."""
    left, right = margins
    nx = left + width + gap + width + right
    t1 = np.zeros((nx, ny, nz), np.float32)
    rng = np.random.default_rng(seed)
    t1[left:left + width] = 100.0 + rng.normal(0.0, 5.0, (width, ny, nz))
    t1[left + width + gap:left + 2 * width + gap] = 100.0 + rng.normal(0.0, 5.0, (width, ny, nz))
    image = torch.from_numpy(t1)[None]
    affine = np.diag([step, 2.0, 5.0, 1.0])
    lat = laterality_map(image, affine)
    mirrored = laterality_map(torch.flip(image, dims=(1,)), affine)
    torch.testing.assert_close(mirrored, -torch.flip(lat, dims=(1,)), rtol=0, atol=1e-6)
    # positive on the patient's right: the leg at the larger world x (the second leg when step > 0)
    first, second = lat[0, left:left + width], lat[0, left + width + gap:left + 2 * width + gap]
    right_leg, left_leg = (second, first) if step > 0 else (first, second)
    assert (right_leg > 0).all() and (left_leg < 0).all()


# ---------------------------------------------------------------------------
# agreement statistics
# ---------------------------------------------------------------------------

GRADES = list(range(6))
ratings = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=2, max_size=40)
weights = st.sampled_from([None, "linear", "quadratic"])


@FAST
@given(pairs=ratings, w=weights)
def test_kappa_is_bounded_and_symmetric(pairs, w):
    a, b = map(np.array, zip(*pairs))
    k = cohen_kappa(a, b, weights=w, labels=GRADES)
    assume(not np.isnan(k))
    assert -1.0 - 1e-12 <= k <= 1.0 + 1e-12
    assert cohen_kappa(b, a, weights=w, labels=GRADES) == pytest.approx(k, abs=1e-12)


@FAST
@given(grades=st.lists(st.integers(0, 5), min_size=2, max_size=40), w=weights)
def test_kappa_of_identical_ratings_is_one(grades, w):
    assume(len(set(grades)) > 1)
    assert cohen_kappa(grades, grades, weights=w, labels=GRADES) == pytest.approx(1.0, abs=1e-12)


@FAST
@given(pairs=ratings, w=weights)
def test_kappa_equals_sklearn(pairs, w):
    from sklearn.metrics import cohen_kappa_score

    a, b = map(np.array, zip(*pairs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns (and returns NaN) when kappa is undefined
        ref = cohen_kappa_score(a, b, weights=w, labels=GRADES)
    ours = cohen_kappa(a, b, weights=w, labels=GRADES)
    if np.isnan(ref) or np.isnan(ours):
        assert np.isnan(ref) and np.isnan(ours)
    else:
        assert ours == pytest.approx(ref, abs=1e-10)


# ratings of n targets by k raters: grades in tenths, as readers' means and model outputs are
rating_matrices = st.integers(3, 15).flatmap(lambda n: st.integers(2, 4).flatmap(
    lambda k: st.lists(st.lists(st.integers(0, 50), min_size=k, max_size=k), min_size=n, max_size=n)))


def _icc21(y) -> float:
    return icc(np.asarray(y, dtype=float) / 10.0, ci=None)["icc"]


@FAST
@given(y=rating_matrices, shift=st.floats(-100.0, 100.0), scale=st.floats(0.01, 100.0))
def test_icc21_is_invariant_to_shift_and_positive_scale(y, shift, scale):
    base = _icc21(y)
    assume(not np.isnan(base))
    y = np.asarray(y, dtype=float)
    assert _icc21(y + 10.0 * shift) == pytest.approx(base, rel=1e-6, abs=1e-9)
    assert _icc21(y * scale) == pytest.approx(base, rel=1e-6, abs=1e-9)
    assert base <= 1.0 + 1e-12


@FAST
@given(target=st.lists(st.integers(0, 50), min_size=3, max_size=15), k=st.integers(2, 4))
def test_icc21_of_identical_raters_with_variance_is_one(target, k):
    assume(len(set(target)) > 1)
    y = np.repeat(np.asarray(target, dtype=float)[:, None], k, axis=1)
    assert _icc21(y) == pytest.approx(1.0, abs=1e-12)
