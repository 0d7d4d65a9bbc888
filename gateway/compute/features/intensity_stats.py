"""IBSI 1 intensity-based statistical features (UHIW): 18 statistics of the intensities in the intensity mask.

Percentiles use linear interpolation between order statistics (NumPy's default), which reproduces the IBSI
digital-phantom values (P90 = 4; the manual notes that other percentile definitions give 4.2). Where the
variance is 0 the manual sets skewness and kurtosis to 0. The coefficient of variation (mean 0) and the
quartile coefficient of dispersion (P75 + P25 = 0) have no value there and are reported as NaN.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from gateway.compute.backend import resolve_backend
from gateway.compute.features.base import FeatureValue
from gateway.compute.kernels.arrays import jit_kernel, require_finite, to_device, to_host

FAMILY = "Intensity-based statistical features"

# (IBSI name, IBSI code, key) in the order of the values computed below.
FEATURES: tuple[tuple[str, str, str], ...] = (
    ("Mean intensity", "Q4LE", "stat_mean"),
    ("Intensity variance", "ECT3", "stat_var"),
    ("Intensity skewness", "KE2A", "stat_skew"),
    ("(Excess) intensity kurtosis", "IPH6", "stat_kurt"),
    ("Median intensity", "Y12H", "stat_median"),
    ("Minimum intensity", "1GSF", "stat_min"),
    ("10th intensity percentile", "QG58", "stat_p10"),
    ("90th intensity percentile", "8DWT", "stat_p90"),
    ("Maximum intensity", "84IY", "stat_max"),
    ("Intensity interquartile range", "SALO", "stat_iqr"),
    ("Intensity range", "2OJQ", "stat_range"),
    ("Intensity-based mean absolute deviation", "4FUA", "stat_mad"),
    ("Intensity-based robust mean absolute deviation", "1128", "stat_rmad"),
    ("Intensity-based median absolute deviation", "N72L", "stat_medad"),
    ("Intensity-based coefficient of variation", "7TET", "stat_cov"),
    ("Intensity-based quartile coefficient of dispersion", "9S40", "stat_qcod"),
    ("Intensity-based energy", "N8CA", "stat_energy"),
    ("Root mean square intensity", "5ZWQ", "stat_rms"),
)


def intensity_statistics_features(values: Any, *, backend: str | None = None) -> list[FeatureValue]:
    """The 18 statistics of ``values``, the intensities of the voxels in the intensity mask (any shape)."""
    data = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if data.size == 0:
        raise ValueError("intensity statistics need at least one voxel in the intensity mask")
    require_finite(data, "the intensities in the region of interest")
    match resolve_backend(backend):
        case "numpy":
            results = _statistics_array(np, data)
        case "numba":
            results = _statistics_numba(data)
        case "cupy":
            import cupy

            results = _statistics_array(cupy, to_device(data))
    return [FeatureValue(family=FAMILY, name=name, ibsi_code=code, key=key, value=float(value))
            for (name, code, key), value in zip(FEATURES, to_host(results), strict=True)]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else math.nan


def _statistics_array(xp: ModuleType, values: Any) -> Any:
    """The definitions, written once for NumPy and CuPy."""
    mean = values.mean()
    deviation = values - mean
    variance = (deviation**2).mean()
    if variance > 0:
        skewness = (deviation**3).mean() / variance**1.5
        kurtosis = (deviation**4).mean() / variance**2 - 3.0
    else:
        skewness = kurtosis = 0.0
    quantiles = xp.percentile(values, xp.asarray([10.0, 25.0, 50.0, 75.0, 90.0]))
    p10, p25, median, p75, p90 = (float(q) for q in quantiles)
    minimum, maximum = float(values.min()), float(values.max())
    central = values[(values >= p10) & (values <= p90)]
    # Two distinct values leave none in [P10, P90]: the robust deviation is undefined.
    robust_mad = xp.abs(central - central.mean()).mean() if central.size else math.nan
    energy = (values**2).sum()
    return np.array([
        float(mean), float(variance), float(skewness), float(kurtosis), median, minimum, p10, p90, maximum,
        p75 - p25, maximum - minimum, float(xp.abs(deviation).mean()), float(robust_mad),
        float(xp.abs(values - median).mean()), _ratio(math.sqrt(float(variance)), float(mean)),
        _ratio(p75 - p25, p75 + p25), float(energy), math.sqrt(float(energy) / values.size),
    ])


@jit_kernel()
def _percentile_of_sorted(ordered: np.ndarray, percentile: float) -> float:
    position = percentile / 100.0 * (ordered.size - 1)
    below = math.floor(position)
    above = min(below + 1, ordered.size - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


@jit_kernel()
def _statistics_numba(values: np.ndarray) -> np.ndarray:
    """One sort, then single passes over the sorted values."""
    ordered = np.sort(values)
    n = ordered.size
    mean = ordered.sum() / n
    second = third = fourth = absolute = energy = 0.0
    for x in ordered:
        d = x - mean
        second += d * d
        third += d * d * d
        fourth += d * d * d * d
        absolute += abs(d)
        energy += x * x
    variance = second / n
    skewness = kurtosis = 0.0
    if variance > 0:
        skewness = third / n / variance**1.5
        kurtosis = fourth / n / variance**2 - 3.0
    p10 = _percentile_of_sorted(ordered, 10.0)
    p25 = _percentile_of_sorted(ordered, 25.0)
    median = _percentile_of_sorted(ordered, 50.0)
    p75 = _percentile_of_sorted(ordered, 75.0)
    p90 = _percentile_of_sorted(ordered, 90.0)
    # The values in [P10, P90] form one contiguous run of the sorted array.
    first = np.searchsorted(ordered, p10, side="left")
    last = np.searchsorted(ordered, p90, side="right")
    robust = math.nan  # as in _statistics_array
    if last > first:
        central_mean = ordered[first:last].mean()
        robust = 0.0
        for k in range(first, last):
            robust += abs(ordered[k] - central_mean)
        robust /= last - first
    median_absolute = 0.0
    for x in ordered:
        median_absolute += abs(x - median)
    std = math.sqrt(variance)
    return np.array([
        mean, variance, skewness, kurtosis, median, ordered[0], p10, p90, ordered[n - 1], p75 - p25,
        ordered[n - 1] - ordered[0], absolute / n, robust, median_absolute / n,
        std / mean if mean != 0 else math.nan,
        (p75 - p25) / (p75 + p25) if p75 + p25 != 0 else math.nan,
        energy, math.sqrt(energy / n),
    ])
