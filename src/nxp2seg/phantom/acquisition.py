"""Acquisition: voxel grids and affines, partial-volume rendering, scanner effects.

A :class:`Grid` is a voxel array shape with its NIfTI affine (voxel index ->
world RAS+ mm). Grids are axial stacks whose array axes run R->L or L->R, A->P
or P->A (``RAS`` or ``LPS`` axis order), optionally tilted a few degrees
(obliquity). Rendering samples ``s x s x t`` sub-voxel points per voxel and
averages them (partial volume); labels take the most frequent sub-sample.
Then: per-channel contrast jitter, a smooth multiplicative bias field stronger
at the edges of the field of view, a global gain, and Rician noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nxp2seg.phantom.fields import SmoothField

__all__ = ["Grid", "make_grid", "rotation_matrix", "render_grid", "apply_scanner", "apply_scanner_dixon"]


@dataclass(frozen=True)
class Grid:
    """Voxel grid: ``shape`` (i, j, k) and 4x4 ``affine`` to world RAS+ mm."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    def world(self, i, j, k) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates of (broadcastable) voxel indices."""
        A = self.affine
        x = A[0, 0] * i + A[0, 1] * j + A[0, 2] * k + A[0, 3]
        y = A[1, 0] * i + A[1, 1] * j + A[1, 2] * k + A[1, 3]
        z = A[2, 0] * i + A[2, 1] * j + A[2, 2] * k + A[2, 3]
        return x, y, z

    def centres(self) -> np.ndarray:
        """World coordinates of every voxel centre, ``(3, N)`` in C order."""
        i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in self.shape], indexing="ij")
        return np.stack([c.ravel() for c in self.world(i, j, k)])

    def corners(self) -> np.ndarray:
        """World coordinates of the 8 outer corners of the grid, ``(3, 8)``."""
        idx = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in self.shape], indexing="ij")).reshape(3, -1)
        return np.stack(self.world(*idx))


def rotation_matrix(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotation about ``axis`` by ``angle_rad`` (Rodrigues)."""
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * K + (1 - np.cos(angle_rad)) * K @ K


def make_grid(
    centre: np.ndarray,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    axcodes: str = "RAS",
    rotation: np.ndarray | None = None,
) -> Grid:
    """An axial grid centred on ``centre`` (world mm).

    ``axcodes`` is ``"RAS"`` (i -> patient right... as nibabel's aff2axcodes
    reads it: i towards R, j towards A, k towards S) or ``"LPS"`` (i towards L,
    j towards P, k towards S).
    """
    signs = {"RAS": (1.0, 1.0, 1.0), "LPS": (-1.0, -1.0, 1.0)}[axcodes]
    R = np.eye(3) if rotation is None else rotation
    M = R @ np.diag(np.asarray(spacing, float) * np.asarray(signs))
    affine = np.eye(4)
    affine[:3, :3] = M
    half = (np.asarray(shape, float) - 1) / 2
    affine[:3, 3] = np.asarray(centre, float) - M @ half
    return Grid(tuple(int(s) for s in shape), affine)


def _mode_blocks(lab: np.ndarray, blocks: tuple[int, int, int]) -> np.ndarray:
    """Most frequent value in each (s, s, t) block of a (A*s, B*s, t) array; ties -> lowest value."""
    s1, s2, t = blocks
    A, B = lab.shape[0] // s1, lab.shape[1] // s2
    blk = lab.reshape(A, s1, B, s2, t).transpose(0, 2, 1, 3, 4).reshape(A, B, -1)
    lo, hi = blk.min(axis=2), blk.max(axis=2)
    best = lo.copy()
    mixed = lo != hi
    if mixed.any():
        sub = blk[mixed]  # (M, s1*s2*t): only blocks on a boundary
        vals = np.unique(sub)
        counts = (sub[:, :, None] == vals[None, None, :]).sum(axis=1)
        best[mixed] = vals[np.argmax(counts, axis=1)]
    return best


def render_grid(
    grid: Grid, fn, fields: dict, supersample: tuple[int, int, int], labels=(), slab: float = 1.0
) -> dict[str, np.ndarray]:
    """Render ``fn`` (world x, y, z arrays -> dict of arrays) onto ``grid``.

    Args:
        fields: ``{name: dtype}`` of outputs to average over sub-samples.
        supersample: sub-samples per voxel along (i, j, k).
        labels: output names to reduce by the block mode instead.
        slab: share of the slice spacing the slice covers (its thickness over its
            spacing: 1 = contiguous slices; 0.3 = a 7 mm slice every 24 mm).

    Returns:
        ``{name: (i, j, k) array}`` plus ``_counts``: callers accumulate
        per-sub-sample statistics through ``fn`` side effects if needed.
    """
    s1, s2, t = supersample
    ni, nj, nk = grid.shape
    ii = (np.arange(ni * s1) + 0.5) / s1 - 0.5
    jj = (np.arange(nj * s2) + 0.5) / s2 - 0.5
    out = {k: np.zeros(grid.shape, dt) for k, dt in fields.items()}
    for name in labels:
        out[name] = np.zeros(grid.shape, np.uint8)
    I = ii[:, None, None]
    J = jj[None, :, None]
    for k in range(nk):
        kk = k + ((np.arange(t) + 0.5) / t - 0.5) * slab
        x, y, z = grid.world(I, J, kk[None, None, :])
        shape = (ni * s1, nj * s2, t)
        x, y, z = (np.broadcast_to(c, shape).astype(np.float64) for c in (x, y, z))
        res = fn(x, y, z)
        for name in fields:
            out[name][:, :, k] = res[name].reshape(ni, s1, nj, s2, t).mean(axis=(1, 3, 4))
        for name in labels:
            out[name][:, :, k] = _mode_blocks(res[name], (s1, s2, t))
    return out


def apply_scanner(
    signal: np.ndarray,
    grid: Grid,
    rng: np.random.Generator,
    bias: SmoothField,
    bias_amp: float,
    fov_half: np.ndarray,
    fov_centre: np.ndarray,
    gain: float,
    snr: float,
    jitter: float,
) -> np.ndarray:
    """Turn relative signal into scanner units: jitter, bias, gain, Rician noise; int16.

    Args:
        signal: relative signal (muscle = 1), float, on ``grid``.
        bias: smooth field shared by the channels of a case (world space).
        bias_amp: maximum relative deviation of the bias field (e.g. 0.25).
        fov_half, fov_centre: in-plane field-of-view half-size and centre (world mm);
            the bias grows towards the edges of the field of view.
        gain: muscle signal in scanner units.
        snr: muscle signal-to-noise ratio.
        jitter: per-channel contrast jitter (power law around muscle = 1).
    """
    gamma = 1.0 + rng.uniform(-jitter, jitter)
    s = np.power(np.maximum(signal, 0), gamma)
    field = _bias_field(grid, rng, bias, bias_amp, fov_half, fov_centre)
    return _rician(s * field * gain, gain / snr, rng)


def apply_scanner_dixon(
    fat: np.ndarray,
    water: np.ndarray,
    grid: Grid,
    rng: np.random.Generator,
    bias: SmoothField,
    bias_amp: float,
    fov_half: np.ndarray,
    fov_centre: np.ndarray,
    gain: float,
    snr: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Scanner effects of one chemical-shift acquisition: the fat and water images
    come from the same echoes, so they share the gain, the bias field and the
    noise level (no per-channel contrast jitter: fat / (fat + water) is a
    physical fraction); the noise itself is independent (magnitude images).
    """
    field = _bias_field(grid, rng, bias, bias_amp, fov_half, fov_centre)
    sigma = gain / snr
    return _rician(fat * field * gain, sigma, rng), _rician(water * field * gain, sigma, rng)


def _bias_field(grid: Grid, rng, bias: SmoothField, bias_amp: float, fov_half, fov_centre) -> np.ndarray:
    pts = grid.centres()
    b_smooth = bias(*pts).reshape(grid.shape)
    ex = ((pts[0] - fov_centre[0]) / fov_half[0]).reshape(grid.shape)
    ey = ((pts[1] - fov_centre[1]) / fov_half[1]).reshape(grid.shape)
    edge = ex**2 + ey**2  # 0 at the centre, ~1-2 at the edges
    direction = rng.choice([-1.0, 1.0])
    raw = 0.35 * b_smooth + direction * (edge - 0.5) + 0.25 * rng.uniform(-1, 1) * ex
    return 1.0 + bias_amp * np.tanh(raw)


def _rician(mean: np.ndarray, sigma: float, rng) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise, as int16 scanner units."""
    real = mean + rng.normal(0.0, sigma, mean.shape)
    imag = rng.normal(0.0, sigma, mean.shape)
    mag = np.sqrt(real**2 + imag**2)
    return np.clip(np.rint(mag), 0, 32767).astype(np.int16)
