"""Smooth random fields defined in world coordinates.

A field is white noise on a coarse world-aligned grid, Gaussian-smoothed to a
correlation length and normalised to zero mean and unit variance, sampled at
arbitrary world points by trilinear interpolation. Because it lives in world
space, the same field gives the same value at the same anatomical point in a
T1 and a STIR acquisition with different grids.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

__all__ = ["SmoothField"]


class SmoothField:
    """Zero-mean, unit-variance Gaussian random field over a world box.

    Args:
        rng: random generator.
        lo, hi: ``(3,)`` corners of the box in world mm; points outside are clamped.
        corr_mm: correlation length per axis ``(x, y, z)`` in mm (scalar for isotropic).
    """

    def __init__(self, rng: np.random.Generator, lo, hi, corr_mm):
        corr = np.broadcast_to(np.asarray(corr_mm, dtype=float), (3,))
        self.step = corr / 2.0  # grid step: 2 samples per correlation length
        lo = np.asarray(lo, float) - 2 * corr
        hi = np.asarray(hi, float) + 2 * corr
        shape = np.maximum(np.ceil((hi - lo) / self.step).astype(int) + 1, 4)
        noise = rng.standard_normal(tuple(shape))
        field = gaussian_filter(noise, sigma=1.0, mode="wrap")
        field -= field.mean()
        field /= field.std() + 1e-12
        self.origin = lo
        self.grid = field.astype(np.float32)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Sample at world points (arrays of equal shape); returns float32 of that shape."""
        shape = np.shape(x)
        coords = np.stack(
            [
                (np.ravel(x) - self.origin[0]) / self.step[0],
                (np.ravel(y) - self.origin[1]) / self.step[1],
                (np.ravel(z) - self.origin[2]) / self.step[2],
            ]
        ).astype(np.float32)
        out = map_coordinates(self.grid, coords, order=1, mode="nearest", prefilter=False)
        return out.reshape(shape)
