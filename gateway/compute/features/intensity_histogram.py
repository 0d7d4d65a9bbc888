"""IBSI 1 intensity histogram features (ZVCW), computed on the discretised intensities of the intensity mask.

Every feature is a function of the histogram ``n_i`` (i = 1..Ng), so the voxels are counted once (a kernel
with NumPy, Numba and CuPy versions) and the rest costs O(Ng). Percentiles are read off the cumulative
histogram with the same linear interpolation between order statistics as the intensity statistics, which is
exact, not a binned approximation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gateway.compute.features.base import FeatureValue
from gateway.compute.kernels.intensity import count_levels

FAMILY = "Intensity histogram features"

FEATURES: tuple[tuple[str, str, str], ...] = (
    ("Mean discretised intensity", "X6K6", "ih_mean"),
    ("Discretised intensity variance", "CH89", "ih_var"),
    ("Discretised intensity skewness", "88K1", "ih_skew"),
    ("(Excess) discretised intensity kurtosis", "C3I7", "ih_kurt"),
    ("Median discretised intensity", "WIFQ", "ih_median"),
    ("Minimum discretised intensity", "1PR8", "ih_min"),
    # The manual's web edition gives this feature the same code as the minimum; kept as published.
    ("10th discretised intensity percentile", "1PR8", "ih_p10"),
    ("90th discretised intensity percentile", "GPMT", "ih_p90"),
    ("Maximum discretised intensity", "3NCY", "ih_max"),
    ("Intensity histogram mode", "AMMC", "ih_mode"),
    ("Discretised intensity interquartile range", "WR0O", "ih_iqr"),
    ("Discretised intensity range", "5Z3W", "ih_range"),
    ("Intensity histogram mean absolute deviation", "D2ZX", "ih_mad"),
    ("Intensity histogram robust mean absolute deviation", "WRZB", "ih_rmad"),
    ("Intensity histogram median absolute deviation", "4RNL", "ih_medad"),
    ("Intensity histogram coefficient of variation", "CWYJ", "ih_cov"),
    ("Intensity histogram quartile coefficient of dispersion", "SLWD", "ih_qcod"),
    ("Discretised intensity entropy", "TLU2", "ih_entropy"),
    ("Discretised intensity uniformity", "BJ5W", "ih_uniformity"),
    ("Maximum histogram gradient", "12CE", "ih_max_grad"),
    ("Maximum histogram gradient intensity", "8E6O", "ih_max_grad_gl"),
    ("Minimum histogram gradient", "VQB3", "ih_min_grad"),
    ("Minimum histogram gradient intensity", "RHQZ", "ih_min_grad_gl"),
)


def intensity_histogram_features(levels: Any, n_levels: int | None = None, *,
                                 backend: str | None = None) -> list[FeatureValue]:
    """Features of the discretised intensities ``levels`` (whole numbers 1..Ng, one per voxel in the mask).

    ``n_levels`` is Ng, the number of bins of the discretisation (fixed bin number: the bin number); without
    it, the highest level present. The histogram runs over all bins 1..Ng, empty ones included, as the
    gradient features require.
    """
    data = np.asarray(levels).ravel()
    if data.size == 0:
        raise ValueError("the intensity histogram needs at least one voxel in the intensity mask")
    if data.dtype.kind == "f":
        if not np.isfinite(data).all() or not (data == np.round(data)).all():
            raise ValueError("discretised intensities must be whole numbers")
    elif data.dtype.kind not in "iu":
        raise ValueError(f"discretised intensities must be integers, got dtype {data.dtype}")
    data = data.astype(np.int64)
    lowest, highest = int(data.min()), int(data.max())
    n_bins = highest if n_levels is None else int(n_levels)
    if lowest < 1 or highest > n_bins:
        raise ValueError(f"discretised intensities must lie in 1..{n_bins}, got {lowest}..{highest}")
    counts = count_levels(data, n_bins + 1, backend=backend)[1:]
    return [FeatureValue(family=FAMILY, name=name, ibsi_code=code, key=key, value=float(value))
            for (name, code, key), value in zip(FEATURES, histogram_feature_values(counts), strict=True)]


def histogram_feature_values(counts: np.ndarray) -> np.ndarray:
    """The feature values, in the order of FEATURES, of the histogram ``counts[i - 1] = n_i``."""
    counts = np.asarray(counts, dtype=np.float64)
    grey = np.arange(1, counts.size + 1, dtype=np.float64)
    total = counts.sum()
    p = counts / total
    mean = float((grey * p).sum())
    variance = float(((grey - mean) ** 2 * p).sum())
    if variance > 0:
        skewness = float(((grey - mean) ** 3 * p).sum()) / variance**1.5
        kurtosis = float(((grey - mean) ** 4 * p).sum()) / variance**2 - 3.0
    else:
        skewness = kurtosis = 0.0
    cumulative = np.cumsum(counts)
    p10, p25, median, p75, p90 = (_percentile(cumulative, q) for q in (10.0, 25.0, 50.0, 75.0, 90.0))
    present = np.flatnonzero(counts)
    minimum, maximum = float(present[0] + 1), float(present[-1] + 1)

    # Mode: the fullest bin; ties go to the bin nearest the mean, then to the lower bin.
    fullest = np.flatnonzero(counts == counts.max()) + 1.0
    mode = float(fullest[np.argmin(np.abs(fullest - mean))])

    central = (grey >= p10) & (grey <= p90) & (counts > 0)
    robust_mad = math.nan  # two occupied bins far apart leave none in [P10, P90]: undefined
    if central.any():
        central_mean = float((grey[central] * counts[central]).sum() / counts[central].sum())
        robust_mad = float((np.abs(grey[central] - central_mean) * counts[central]).sum() / counts[central].sum())

    occupied = p[p > 0]
    gradient = _histogram_gradient(counts)
    std = math.sqrt(variance)
    return np.array([
        mean, variance, skewness, kurtosis, median, minimum, p10, p90, maximum, mode, p75 - p25,
        maximum - minimum, float((np.abs(grey - mean) * p).sum()), robust_mad,
        float((np.abs(grey - median) * p).sum()),
        std / mean,  # discretised intensities are >= 1, so the mean is positive
        (p75 - p25) / (p75 + p25), float(-(occupied * np.log2(occupied)).sum()), float((p**2).sum()),
        float(gradient.max()), float(np.argmax(gradient) + 1), float(gradient.min()), float(np.argmin(gradient) + 1),
    ])


def _percentile(cumulative: np.ndarray, percentile: float) -> float:
    """Linear-interpolation percentile of the values 1..Ng counted by ``cumulative`` (a cumulative histogram)."""
    position = percentile / 100.0 * (cumulative[-1] - 1)
    below = math.floor(position)
    # The k-th smallest value (0-based) is the first grey level whose cumulative count exceeds k.
    low = float(np.searchsorted(cumulative, below, side="right") + 1)
    high = float(np.searchsorted(cumulative, min(below + 1, cumulative[-1] - 1), side="right") + 1)
    return low + (position - below) * (high - low)


def _histogram_gradient(counts: np.ndarray) -> np.ndarray:
    """IBSI's H': one-sided differences at the first and last bin, central differences in between."""
    if counts.size == 1:
        return np.zeros(1)
    return np.gradient(counts)
