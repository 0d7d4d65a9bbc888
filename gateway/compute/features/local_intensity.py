"""IBSI 1 local intensity features (9ST6): local and global intensity peak.

The peak is the mean intensity in a 1 cm³ sphere (radius ``(3 / (4 pi))^(1/3)`` cm ~ 6.2 mm, voxel centres
within it, the centre voxel included) around a voxel of the intensity mask. The sphere takes every image voxel,
in the ROI or not; near the image border it takes the voxels that exist, which reproduces the IBSI digital
phantom (zero padding would not). The local peak is centred on the voxel(s) of highest intensity in the mask
(the highest mean if there are several), the global peak is the highest mean over all voxels of the mask.

The image passed in must therefore extend at least one radius beyond the ROI where the original image does;
the pipeline crops with that margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gateway.compute.backend import resolve_backend
from gateway.compute.features.base import FeatureValue
from gateway.compute.kernels.arrays import (
    as_mask,
    as_spacing,
    as_volume,
    cupy_raw_kernel,
    jit_kernel,
    prange,
    require_finite,
    require_nonempty,
    to_device,
    to_host,
)

FAMILY = "Local intensity features"
PEAK_RADIUS_MM = 10.0 * (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)

FEATURES: tuple[tuple[str, str, str], ...] = (
    ("Local intensity peak", "VJGA", "loc_peak_local"),
    ("Global intensity peak", "0F91", "loc_peak_global"),
)


def sphere_offsets(spacing: Sequence[float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """(K, 3) voxel offsets (z, y, x) whose centres lie within ``radius_mm`` of the centre voxel's centre."""
    spacing = as_spacing(spacing)
    reach = [math.floor(radius_mm / s) for s in spacing]
    grids = np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    distance_squared = ((offsets * np.asarray(spacing)) ** 2).sum(axis=1)
    # A centre exactly on the sphere counts as inside; allow for rounding in the squared distance.
    return np.ascontiguousarray(offsets[distance_squared <= radius_mm**2 * (1 + 1e-12)], dtype=np.int64)


def sphere_means(image: Any, centres: np.ndarray, offsets: np.ndarray, *,
                 backend: str | None = None) -> np.ndarray:
    """Mean of the image voxels at ``centre + offset`` (those inside the image) for each of the (n, 3) centres."""
    volume = as_volume(image)
    centres = np.ascontiguousarray(centres, dtype=np.int64).reshape(-1, 3)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1, 3)
    if centres.size and ((centres < 0).any() or (centres >= np.asarray(volume.shape)).any()):
        raise ValueError("sphere centres must lie inside the image")
    if not (offsets == 0).all(axis=1).any():
        raise ValueError("the sphere offsets must include the centre voxel (0, 0, 0)")
    match resolve_backend(backend):
        case "numpy":
            return _sphere_means_numpy(volume, centres, offsets)
        case "numba":
            runs = _offset_runs(offsets)
            prefix = np.zeros((volume.shape[0], volume.shape[1], volume.shape[2] + 1))
            np.cumsum(volume, axis=2, out=prefix[:, :, 1:])
            return _sphere_means_numba(prefix, centres, runs, work=centres.shape[0] * runs.shape[0])
        case "cupy":
            return _sphere_means_cupy(volume, centres, offsets)


def local_intensity_features(image: Any, intensity_mask: Any, spacing: Sequence[float], *,
                             backend: str | None = None) -> list[FeatureValue]:
    """Local and global intensity peak of the region ``intensity_mask`` in ``image`` (see module docstring)."""
    volume = as_volume(image)
    region = as_mask(intensity_mask, volume.shape, "intensity mask")
    require_nonempty(region, "the intensity mask")
    offsets = sphere_offsets(spacing)
    reach = np.abs(offsets).max(axis=0)
    centres = np.argwhere(region)
    low = np.maximum(centres.min(axis=0) - reach, 0)
    high = np.minimum(centres.max(axis=0) + reach + 1, volume.shape)
    require_finite(volume[low[0]:high[0], low[1]:high[1], low[2]:high[2]],
                   "the image within a peak-sphere radius of the region of interest")
    centre_values = volume[region]
    hottest = centres[centre_values == centre_values.max()]
    local_peak = float(sphere_means(volume, hottest, offsets, backend=backend).max())
    global_peak = float(sphere_means(volume, centres, offsets, backend=backend).max())
    return [FeatureValue(family=FAMILY, name=name, ibsi_code=code, key=key, value=value)
            for (name, code, key), value in zip(FEATURES, (local_peak, global_peak), strict=True)]


def _sphere_means_numpy(volume: np.ndarray, centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The definition, one offset at a time over all centres."""
    shape = np.asarray(volume.shape)
    sums = np.zeros(centres.shape[0])
    counts = np.zeros(centres.shape[0])
    for offset in offsets:
        neighbours = centres + offset
        inside = ((neighbours >= 0) & (neighbours < shape)).all(axis=1)
        inner = neighbours[inside]
        sums[inside] += volume[inner[:, 0], inner[:, 1], inner[:, 2]]
        counts += inside
    return sums / counts


def _offset_runs(offsets: np.ndarray) -> np.ndarray:
    """The offsets as runs along x: rows (dz, dy, first dx, last dx) covering consecutive dx."""
    ordered = offsets[np.lexsort((offsets[:, 2], offsets[:, 1], offsets[:, 0]))]
    starts_run = np.ones(ordered.shape[0], dtype=bool)
    starts_run[1:] = (
        (ordered[1:, 0] != ordered[:-1, 0])
        | (ordered[1:, 1] != ordered[:-1, 1])
        | (ordered[1:, 2] != ordered[:-1, 2] + 1)
    )
    first = np.flatnonzero(starts_run)
    last = np.append(first[1:], ordered.shape[0]) - 1
    return np.ascontiguousarray(
        np.column_stack([ordered[first, 0], ordered[first, 1], ordered[first, 2], ordered[last, 2]])
    )


@jit_kernel(parallel=True)
def _sphere_means_numba(prefix: np.ndarray, centres: np.ndarray, runs: np.ndarray) -> np.ndarray:
    # A sphere is a few dozen runs of voxels along x; with running sums along x (prefix[z, y, x] = sum of the
    # first x voxels of the row) each run costs two look-ups instead of one per voxel.
    nz, ny, nx = prefix.shape[0], prefix.shape[1], prefix.shape[2] - 1
    means = np.empty(centres.shape[0])
    for p in prange(centres.shape[0]):
        total = 0.0
        count = 0
        for r in range(runs.shape[0]):
            z = centres[p, 0] + runs[r, 0]
            y = centres[p, 1] + runs[r, 1]
            if z < 0 or z >= nz or y < 0 or y >= ny:
                continue
            first = max(centres[p, 2] + runs[r, 2], 0)
            last = min(centres[p, 2] + runs[r, 3], nx - 1)
            if first <= last:
                total += prefix[z, y, last + 1] - prefix[z, y, first]
                count += last - first + 1
        means[p] = total / count
    return means


_SPHERE_MEANS_SOURCE = r"""
extern "C" __global__
void sphere_means(const double* volume, const long long nz, const long long ny, const long long nx,
                  const long long* centres, const long long n_centres,
                  const long long* offsets, const long long n_offsets, double* means)
{
    const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_centres) {
        return;
    }
    double total = 0.0;
    long long count = 0;
    for (long long o = 0; o < n_offsets; ++o) {
        const long long z = centres[3 * p] + offsets[3 * o];
        const long long y = centres[3 * p + 1] + offsets[3 * o + 1];
        const long long x = centres[3 * p + 2] + offsets[3 * o + 2];
        if (z >= 0 && z < nz && y >= 0 && y < ny && x >= 0 && x < nx) {
            total += volume[(z * ny + y) * nx + x];
            count += 1;
        }
    }
    means[p] = total / (double)count;
}
"""

_THREADS_PER_BLOCK = 256


def _sphere_means_cupy(volume: np.ndarray, centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """One GPU thread per centre, each summing its sphere (a fused form of the NumPy loop)."""
    import cupy

    n_centres = centres.shape[0]
    if n_centres == 0:
        return np.empty(0)
    kernel = cupy_raw_kernel(_SPHERE_MEANS_SOURCE, "sphere_means")
    means = cupy.empty(n_centres, dtype=cupy.float64)
    blocks = (n_centres + _THREADS_PER_BLOCK - 1) // _THREADS_PER_BLOCK
    nz, ny, nx = volume.shape
    kernel((blocks,), (_THREADS_PER_BLOCK,),
           (to_device(volume), np.int64(nz), np.int64(ny), np.int64(nx), to_device(centres),
            np.int64(n_centres), to_device(offsets), np.int64(offsets.shape[0]), means))
    return to_host(means)
