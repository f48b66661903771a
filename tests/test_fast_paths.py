"""The fast paths give the slow paths' answers: quantiles, box filters, labels on the native grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nxp2seg.argmax import channel_argmax
from nxp2seg.inference.geometry import probabilities_to_labels, voxel_map
from nxp2seg.models.pooling import _box_mean_cumsum, _box_mean_shifts, box_mean
from nxp2seg.quantiles import quantile


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 100_001])
def test_quantile_equals_torch_quantile(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    for q in (0.0, 0.01, 0.5, 0.99, 1.0):
        assert torch.allclose(quantile(x, q), torch.quantile(x, q))
    levels = (0.02, 0.1, 0.5, 0.9)
    assert torch.allclose(quantile(x, levels), torch.quantile(x, torch.tensor(levels)))
    with pytest.raises(ValueError):
        quantile(x, 1.5)


def test_box_mean_by_shifted_adds_and_cumulative_sums_equals_avg_pool():
    x = torch.rand(2, 3, 20, 17, 5, generator=torch.Generator().manual_seed(0))
    for k in (3, 5, 9):
        ref = torch.nn.functional.avg_pool3d(x, (k, 1, 1), stride=1, padding=(k // 2, 0, 0), count_include_pad=False)
        assert torch.allclose(_box_mean_cumsum(x, 2, k // 2), ref, atol=1e-6)
        assert torch.allclose(_box_mean_shifts(x, 2, k // 2), ref, atol=1e-6)
    # windows wider than the axis (z has 5 voxels), by both paths and through box_mean
    for k in (7, 9, 31):
        assert torch.allclose(_box_mean_shifts(x, 4, k // 2), _box_mean_cumsum(x, 4, k // 2), atol=1e-6)
    assert torch.allclose(box_mean(x, [1, 1, 9]), x.mean(dim=4, keepdim=True).expand_as(x), atol=1e-6)
    # by hand: [1, 2, 3, 10] with a window of 3 -> [1.5, 2, 5, 6.5]
    v = torch.tensor([1.0, 2.0, 3.0, 10.0]).view(1, 1, 4, 1, 1)
    assert box_mean(v, [3, 1, 1]).flatten().tolist() == [1.5, 2.0, 5.0, 6.5]
    # a window wider than the axis: the mean over the whole axis inside the window
    wide = box_mean(x, [1, 1, 31])
    assert torch.allclose(wide, x.mean(dim=4, keepdim=True).expand_as(x), atol=1e-6)


def test_labels_on_the_native_grid_equal_the_trilinear_argmax():
    """Only cells whose corners disagree are interpolated; the result is grid_sample's argmax."""
    g = torch.Generator().manual_seed(0)
    k, shape = 5, (40, 30, 12)
    logits = torch.nn.functional.avg_pool3d(torch.randn(1, k, *shape, generator=g) * 5, 5, 1, 2)[0]
    p = torch.softmax(logits, 0)
    src_aff = np.diag([2.2, 2.2, 6.0, 1.0])
    th = 0.1
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    dst_aff = np.eye(4)
    dst_aff[:3, :3] = rot @ np.diag([1.1, 1.1, 3.0])
    dst_aff[:3, 3] = [3.0, -4.0, 1.0]
    dst = (80, 60, 24)
    got = probabilities_to_labels(p, list(range(k)), src_aff, dst, dst_aff, chunk_voxels=20_000, crop=False)
    m = torch.as_tensor(voxel_map(src_aff, dst_aff))
    ii, jj, kk = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in dst], indexing="ij")
    src = torch.stack([ii, jj, kk], -1) @ m[:3, :3].T + m[:3, 3]
    scale = torch.tensor([2.0 / (n - 1) for n in shape], dtype=torch.float64)
    grid = (src * scale - 1).flip(-1).float()[None]
    ref = torch.nn.functional.grid_sample(p[None], grid, mode="bilinear", padding_mode="border",
                                          align_corners=True)[0].argmax(0).numpy()
    assert (got == ref).mean() > 0.9999  # equal up to float ties


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_channel_argmax_equals_torch_argmax_ties_to_the_first(dim):
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 4, (5, 6, 7, 3), generator=gen).float()  # many ties
    for keepdim in (False, True):
        assert torch.equal(channel_argmax(x, dim, keepdim), x.argmax(dim=dim, keepdim=keepdim))
    # by hand: ties go to the first channel
    assert channel_argmax(torch.tensor([[1.0, 2.0], [3.0, 2.0], [3.0, 0.0]])).tolist() == [1, 0]


def test_images_already_read_give_the_bundle_transforms_bit_identical_input(tmp_path):
    """predict hands the voxels it read and checked to the bundle's transforms (no second read):
    the model input must equal what MONAI's LoadImaged gives from the files, to the bit."""
    import monai.transforms as mt
    import nibabel as nib

    from helpers_synthetic import grid_affine, render_case
    from nxp2seg.data.preprocessing import Preprocessing
    from nxp2seg.data.transforms import preprocess_transforms
    from nxp2seg.inference.predictor import _as_loaded

    rng = np.random.default_rng(0)
    t1_aff = grid_affine((60, 44, 8), (1.5, 1.5, 5.0), lps=True)
    stir_aff = grid_affine((40, 30, 8), (2.2, 2.2, 5.0))
    _, t1, _ = render_case(t1_aff, (60, 44, 8), "thigh", rng)
    _, _, stir = render_case(stir_aff, (40, 30, 8), "thigh", rng)
    paths = {}
    for key, data, aff in (("t1", t1, t1_aff), ("stir", stir, stir_aff)):
        img = nib.Nifti1Image(np.round(data * 1000).astype(np.int16), aff)
        img.header.set_slope_inter(0.5, 3.0)  # scaled integers, as scanners export
        paths[key] = tmp_path / f"{key}.nii.gz"
        nib.save(img, paths[key])
    steps = preprocess_transforms(Preprocessing(target_spacing=(2.5, 2.5, 5.0), patch_size=(16, 16, 4)),
                                  with_label=False)
    from_files = mt.Compose(steps)({k: str(p) for k, p in paths.items()})["image"]
    loaded = {k: nib.load(p) for k, p in paths.items()}
    read = {k: _as_loaded(img, img.get_fdata(dtype=np.float32), paths[k]) for k, img in loaded.items()}
    from_memory = mt.Compose(steps[1:])(read)["image"]
    assert torch.equal(from_files.as_tensor(), from_memory.as_tensor())
    assert np.array_equal(np.asarray(from_files.affine), np.asarray(from_memory.affine))
