"""Intensity harmonisation, re-segmentation and discretisation kernels.

- clipping / windowing;
- z-score normalisation with the mean and standard deviation of a region;
- Nyúl–Udupa histogram standardisation: landmarks (percentiles) learnt from a set of images, then a
  piecewise-linear map of each image's landmarks onto the standard ones;
- re-segmentation (IBSI 1 "Re-segmentation", IF9H) by range (USB3) and by the outlier rule mean ± 3 sd (7ACA);
- discretisation (IBSI 1 "Intensity discretisation", 4R0B) by fixed bin number (K15C) and fixed bin size
  (Q3RU), which give bins 1, 2, ... inside the mask and 0 outside.

Each kernel runs on NumPy (the reference), Numba or CuPy; the CuPy versions run the reference's array code on
the GPU, which for these element-wise operations is already the fast form there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from gateway.compute.backend import resolve_backend
from gateway.compute.kernels.arrays import (
    as_mask,
    as_volume,
    jit_kernel,
    prange,
    require_finite,
    require_nonempty,
    to_device,
    to_host,
)

# Landmarks of Nyúl & Udupa (1999): the 1st and 99th percentiles bound the map, deciles shape it.
DEFAULT_NYUL_PERCENTILES: tuple[float, ...] = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
# Chunks of the Numba reductions: enough to keep every core busy, few enough to combine cheaply.
_REDUCTION_CHUNKS = 256


def _image_and_mask(image: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    volume = as_volume(image)
    region = as_mask(mask, volume.shape)
    require_nonempty(region)
    require_finite(volume[region], "the image inside the mask")
    return volume, region


# --- clipping and windowing -------------------------------------------------------------------------------

def clip_intensities(image: Any, lower: float | None = None, upper: float | None = None, *,
                     backend: str | None = None) -> np.ndarray:
    """Intensities limited to ``[lower, upper]`` (either bound may be None for no limit)."""
    volume = as_volume(image)
    low = -math.inf if lower is None else float(lower)
    high = math.inf if upper is None else float(upper)
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"clipping bounds must satisfy lower <= upper, got [{lower}, {upper}]")
    match resolve_backend(backend):
        case "numpy":
            return np.clip(volume, low, high)
        case "numba":
            return _clip_numba(volume.ravel(), low, high, work=volume.size).reshape(volume.shape)
        case "cupy":
            import cupy

            return to_host(cupy.clip(to_device(volume), low, high))


def window_intensities(image: Any, centre: float, width: float, *, backend: str | None = None) -> np.ndarray:
    """Intensities limited to the display window ``[centre - width/2, centre + width/2]``."""
    if not (math.isfinite(centre) and math.isfinite(width)) or width <= 0:
        raise ValueError(f"window needs a finite centre and a positive width, got centre={centre}, width={width}")
    return clip_intensities(image, centre - width / 2.0, centre + width / 2.0, backend=backend)


@jit_kernel(parallel=True)
def _clip_numba(values: np.ndarray, low: float, high: float) -> np.ndarray:
    result = np.empty_like(values)
    for k in prange(values.size):
        result[k] = min(max(values[k], low), high)
    return result


# --- z-score ----------------------------------------------------------------------------------------------

def region_mean_and_std(image: Any, mask: Any, *, backend: str | None = None) -> tuple[float, float]:
    """Mean and population standard deviation of the intensities inside ``mask``."""
    volume, region = _image_and_mask(image, mask)
    match resolve_backend(backend):
        case "numpy":
            values = volume[region]
            return float(values.mean()), float(values.std())
        case "numba":
            mean, std = _mean_std_numba(volume.ravel(), region.ravel(), work=volume.size)
            return float(mean), float(std)
        case "cupy":
            values = to_device(volume)[to_device(region)]
            return float(values.mean()), float(values.std())


def zscore_normalise(image: Any, mask: Any, *, backend: str | None = None) -> np.ndarray:
    """``(image - mean) / sd`` with the mean and population sd of the region inside ``mask``.

    The whole image is transformed, so that surrounding tissue stays comparable to the region.
    """
    volume, region = _image_and_mask(image, mask)
    mean, std = region_mean_and_std(volume, region, backend=backend)
    if std == 0.0:
        raise ValueError("z-score normalisation needs intensity variation inside the mask; all values are equal")
    match resolve_backend(backend):
        case "numpy":
            return (volume - mean) / std
        case "numba":
            return _affine_numba(volume.ravel(), mean, std, work=volume.size).reshape(volume.shape)
        case "cupy":
            return to_host((to_device(volume) - mean) / std)


@jit_kernel(parallel=True)
def _mean_std_numba(values: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    total = 0.0
    count = 0
    for k in prange(values.size):
        if mask[k]:
            total += values[k]
            count += 1
    mean = total / count
    squares = 0.0
    for k in prange(values.size):
        if mask[k]:
            squares += (values[k] - mean) ** 2
    return mean, math.sqrt(squares / count)


@jit_kernel(parallel=True)
def _affine_numba(values: np.ndarray, shift: float, scale: float) -> np.ndarray:
    result = np.empty_like(values)
    for k in prange(values.size):
        result[k] = (values[k] - shift) / scale
    return result


# --- Nyúl histogram standardisation -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NyulStandard:
    """The learnt standard histogram: ``landmarks[i]`` is where percentile ``percentiles[i]`` is mapped to."""

    percentiles: tuple[float, ...]
    landmarks: tuple[float, ...]


def image_landmarks(image: Any, mask: Any | None = None, percentiles: Sequence[float] = DEFAULT_NYUL_PERCENTILES,
                    *, backend: str | None = None) -> np.ndarray:
    """Percentiles (linear interpolation) of the intensities inside ``mask`` (whole image without one)."""
    volume = as_volume(image)
    region = np.ones(volume.shape, dtype=np.bool_) if mask is None else as_mask(mask, volume.shape)
    require_nonempty(region, "the foreground used for histogram landmarks")
    values = volume[region]
    require_finite(values, "the image inside the mask")
    q = _check_percentiles(percentiles)
    match resolve_backend(backend):
        case "numpy":
            return np.percentile(values, q)
        case "numba":
            return _percentiles_of_sorted_numba(np.sort(values), q)
        case "cupy":
            import cupy

            return to_host(cupy.percentile(to_device(values), to_device(q)))


def learn_nyul_standard(images: Sequence[Any], masks: Sequence[Any | None] | None = None, *,
                        percentiles: Sequence[float] = DEFAULT_NYUL_PERCENTILES,
                        standard_range: tuple[float, float] = (0.0, 100.0),
                        backend: str | None = None) -> NyulStandard:
    """Learn standard landmarks: each image's percentile landmarks, scaled so that the lowest and highest land
    on ``standard_range``, averaged over the images (Nyúl, Udupa & Zhang, IEEE TMI 2000)."""
    if len(images) == 0:
        raise ValueError("learning a histogram standard needs at least one image")
    masks = [None] * len(images) if masks is None else list(masks)
    if len(masks) != len(images):
        raise ValueError(f"got {len(images)} images but {len(masks)} masks")
    low, high = (float(v) for v in standard_range)
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"standard_range must be finite and increasing, got {standard_range}")
    q = _check_percentiles(percentiles)
    scaled = []
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        landmarks = image_landmarks(image, mask, q, backend=backend)
        _require_increasing(landmarks, f"image {index}")
        scaled.append(low + (landmarks - landmarks[0]) * (high - low) / (landmarks[-1] - landmarks[0]))
    standard = np.mean(scaled, axis=0)
    return NyulStandard(percentiles=tuple(float(v) for v in q), landmarks=tuple(float(v) for v in standard))


def nyul_standardise(image: Any, standard: NyulStandard, mask: Any | None = None, *,
                     backend: str | None = None) -> np.ndarray:
    """Map ``image`` onto the standard: its own landmarks (inside ``mask``) go to the standard landmarks,
    linearly in between and beyond the end landmarks along the first and last segments."""
    landmarks = image_landmarks(image, mask, standard.percentiles, backend=backend)
    _require_increasing(landmarks, "the image")
    return piecewise_linear_map(image, landmarks, np.asarray(standard.landmarks), backend=backend)


def piecewise_linear_map(image: Any, source: np.ndarray, target: np.ndarray, *,
                         backend: str | None = None) -> np.ndarray:
    """Map intensities through the polyline ``source[i] -> target[i]``, extended linearly at both ends."""
    volume = as_volume(image)
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.ndim != 1 or source.shape != target.shape or source.size < 2:
        raise ValueError("source and target landmarks must be 1-D of equal length, at least 2")
    _require_increasing(source, "the source landmarks")
    match resolve_backend(backend):
        case "numpy":
            return _piecewise_array(np, volume, source, target)
        case "numba":
            return _piecewise_numba(volume.ravel(), source, target, work=volume.size).reshape(volume.shape)
        case "cupy":
            import cupy

            return to_host(_piecewise_array(cupy, to_device(volume), to_device(source), to_device(target)))


def _piecewise_array(xp: ModuleType, values: Any, source: Any, target: Any) -> Any:
    result = xp.interp(values, source, target)
    first_slope = (target[1] - target[0]) / (source[1] - source[0])
    last_slope = (target[-1] - target[-2]) / (source[-1] - source[-2])
    result = xp.where(values < source[0], target[0] + (values - source[0]) * first_slope, result)
    return xp.where(values > source[-1], target[-1] + (values - source[-1]) * last_slope, result)


@jit_kernel(parallel=True)
def _piecewise_numba(values: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    result = np.empty_like(values)
    last = source.size - 1
    for k in prange(values.size):
        # The segment whose start is the last landmark at or below the value; the end segments extend outwards.
        segment = min(max(np.searchsorted(source, values[k], side="right") - 1, 0), last - 1)
        slope = (target[segment + 1] - target[segment]) / (source[segment + 1] - source[segment])
        result[k] = target[segment] + (values[k] - source[segment]) * slope
    return result


def _check_percentiles(percentiles: Sequence[float]) -> np.ndarray:
    q = np.asarray(percentiles, dtype=np.float64)
    if q.ndim != 1 or q.size < 2 or not np.all(np.diff(q) > 0) or q[0] < 0 or q[-1] > 100:
        raise ValueError(f"percentiles must be at least two increasing values in [0, 100], got {percentiles}")
    return q


def _require_increasing(landmarks: np.ndarray, what: str) -> None:
    if not np.all(np.diff(landmarks) > 0):
        raise ValueError(f"the histogram landmarks of {what} are not strictly increasing ({landmarks.tolist()}); "
                         "its intensities are too uniform for histogram standardisation")


@jit_kernel()
def _percentiles_of_sorted_numba(ordered: np.ndarray, percentiles: np.ndarray) -> np.ndarray:
    """NumPy's default ('linear') percentile on an already sorted array."""
    result = np.empty(percentiles.size)
    for p in range(percentiles.size):
        position = percentiles[p] / 100.0 * (ordered.size - 1)
        below = math.floor(position)
        above = min(below + 1, ordered.size - 1)
        result[p] = ordered[below] + (position - below) * (ordered[above] - ordered[below])
    return result


# --- re-segmentation --------------------------------------------------------------------------------------

def resegment_range(image: Any, mask: Any, lower: float | None = None, upper: float | None = None, *,
                    backend: str | None = None) -> np.ndarray:
    """The mask without voxels outside ``[lower, upper]`` (None: open on that side); IBSI USB3."""
    volume = as_volume(image)
    region = as_mask(mask, volume.shape)
    low = -math.inf if lower is None else float(lower)
    high = math.inf if upper is None else float(upper)
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"re-segmentation range must satisfy lower <= upper, got [{lower}, {upper}]")
    match resolve_backend(backend):
        case "numpy":
            return region & (volume >= low) & (volume <= high)
        case "numba":
            return _within_range_numba(volume.ravel(), region.ravel(), low, high, work=volume.size).reshape(
                volume.shape
            )
        case "cupy":
            device_volume = to_device(volume)
            return to_host(to_device(region) & (device_volume >= low) & (device_volume <= high))


def outlier_range(image: Any, mask: Any, n_sigma: float = 3.0, *,
                  backend: str | None = None) -> tuple[float, float]:
    """``(mean - n_sigma sd, mean + n_sigma sd)`` of the intensities inside ``mask``; IBSI 7ACA."""
    if not (math.isfinite(n_sigma) and n_sigma > 0):
        raise ValueError(f"n_sigma must be positive, got {n_sigma}")
    mean, std = region_mean_and_std(image, mask, backend=backend)
    return mean - n_sigma * std, mean + n_sigma * std


def resegment_outliers(image: Any, mask: Any, n_sigma: float = 3.0, *, backend: str | None = None) -> np.ndarray:
    """The mask without voxels farther than ``n_sigma`` population sd from the region's mean."""
    lower, upper = outlier_range(image, mask, n_sigma, backend=backend)
    return resegment_range(image, mask, lower, upper, backend=backend)


@jit_kernel(parallel=True)
def _within_range_numba(values: np.ndarray, mask: np.ndarray, low: float, high: float) -> np.ndarray:
    result = np.empty(values.size, dtype=np.bool_)
    for k in prange(values.size):
        result[k] = mask[k] and low <= values[k] <= high
    return result


# --- discretisation ---------------------------------------------------------------------------------------

def discretise_fixed_bin_number(image: Any, mask: Any, bin_number: int, *,
                                backend: str | None = None) -> np.ndarray:
    """IBSI K15C: ``floor(Ng (X - Xmin) / (Xmax - Xmin)) + 1``, and ``Ng`` where ``X = Xmax``.

    ``Xmin`` and ``Xmax`` are the region's own extremes. Returns int32 bins 1..Ng inside ``mask``, 0 outside.
    A region of one intensity has ``X = Xmax`` everywhere, so every voxel is bin Ng.
    """
    if isinstance(bin_number, bool) or int(bin_number) != bin_number or bin_number < 1:
        raise ValueError(f"bin_number must be a positive whole number, got {bin_number!r}")
    volume, region = _image_and_mask(image, mask)
    bins = int(bin_number)
    match resolve_backend(backend):
        case "numpy":
            return _fixed_bin_number_array(np, volume, region, bins)
        case "numba":
            values, inside = volume.ravel(), region.ravel()
            low, high = _masked_min_max_numba(values, inside, work=values.size)
            return _fixed_bin_number_numba(values, inside, bins, low, high, work=values.size).reshape(volume.shape)
        case "cupy":
            import cupy

            return to_host(_fixed_bin_number_array(cupy, to_device(volume), to_device(region), bins))


def discretise_fixed_bin_size(image: Any, mask: Any, bin_width: float, lower_bound: float | None = None, *,
                              backend: str | None = None) -> np.ndarray:
    """IBSI Q3RU: ``floor((X - Xmin) / w) + 1``.

    ``Xmin`` is ``lower_bound`` (IBSI recommends the lower bound of the re-segmentation range) or else the
    region's minimum. Returns int32 bins inside ``mask``, 0 outside.
    """
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be finite and positive, got {bin_width}")
    volume, region = _image_and_mask(image, mask)
    minimum = float(volume[region].min())
    if lower_bound is None:
        lower_bound = minimum
    elif not math.isfinite(lower_bound):
        raise ValueError(f"lower_bound must be finite, got {lower_bound}")
    elif minimum < lower_bound:
        raise ValueError(f"intensities inside the mask go down to {minimum}, below the lower bound {lower_bound} "
                         "of the fixed-bin-size discretisation; re-segment to the range first")
    low, width = float(lower_bound), float(bin_width)
    match resolve_backend(backend):
        case "numpy":
            return _fixed_bin_size_array(np, volume, region, low, width)
        case "numba":
            return _fixed_bin_size_numba(volume.ravel(), region.ravel(), low, width, work=volume.size).reshape(
                volume.shape
            )
        case "cupy":
            import cupy

            return to_host(_fixed_bin_size_array(cupy, to_device(volume), to_device(region), low, width))


def _fixed_bin_number_array(xp: ModuleType, volume: Any, region: Any, bins: int) -> Any:
    values = volume[region]
    low, high = values.min(), values.max()
    if high > low:
        # Rounding can lift Ng (X - Xmin) / (Xmax - Xmin) to exactly Ng just below Xmax; that is still bin Ng.
        levels = xp.minimum(xp.floor(bins * (values - low) / (high - low)).astype(xp.int32) + 1, bins)
    else:
        levels = xp.full(values.shape, bins, dtype=xp.int32)
    result = xp.zeros(volume.shape, dtype=xp.int32)
    result[region] = levels
    return result


def _fixed_bin_size_array(xp: ModuleType, volume: Any, region: Any, low: float, width: float) -> Any:
    result = xp.zeros(volume.shape, dtype=xp.int32)
    result[region] = xp.floor((volume[region] - low) / width).astype(xp.int32) + 1
    return result


@jit_kernel(parallel=True)
def _masked_min_max_numba(values: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    chunk = (values.size + _REDUCTION_CHUNKS - 1) // _REDUCTION_CHUNKS
    lows = np.full(_REDUCTION_CHUNKS, np.inf)
    highs = np.full(_REDUCTION_CHUNKS, -np.inf)
    for c in prange(_REDUCTION_CHUNKS):
        for k in range(c * chunk, min((c + 1) * chunk, values.size)):
            if mask[k]:
                lows[c] = min(lows[c], values[k])
                highs[c] = max(highs[c], values[k])
    return lows.min(), highs.max()


@jit_kernel(parallel=True)
def _fixed_bin_number_numba(values: np.ndarray, mask: np.ndarray, bins: int, low: float, high: float) -> np.ndarray:
    result = np.zeros(values.size, dtype=np.int32)
    for k in prange(values.size):
        if mask[k]:
            if high > low:
                result[k] = min(math.floor(bins * (values[k] - low) / (high - low)) + 1, bins)
            else:
                result[k] = bins
    return result


@jit_kernel(parallel=True)
def _fixed_bin_size_numba(values: np.ndarray, mask: np.ndarray, low: float, width: float) -> np.ndarray:
    result = np.zeros(values.size, dtype=np.int32)
    for k in prange(values.size):
        if mask[k]:
            result[k] = math.floor((values[k] - low) / width) + 1
    return result


# --- histogram of integer levels --------------------------------------------------------------------------

def count_levels(levels: Any, n_levels: int, *, backend: str | None = None) -> np.ndarray:
    """``counts[k]`` = how many entries of the 1-D integer array ``levels`` equal ``k``, for k in 0..n_levels-1.

    Shared by the intensity histogram and the intensity-volume histogram; levels outside the range raise.
    """
    values = np.ascontiguousarray(levels, dtype=np.int64).ravel()
    if n_levels < 1:
        raise ValueError(f"n_levels must be positive, got {n_levels}")
    if values.size and (values.min() < 0 or values.max() >= n_levels):
        raise ValueError(f"levels must lie in 0..{n_levels - 1}, got {values.min()}..{values.max()}")
    match resolve_backend(backend):
        case "numpy":
            return np.bincount(values, minlength=n_levels).astype(np.int64)
        case "numba":
            return _count_levels_numba(values, n_levels, work=values.size)
        case "cupy":
            import cupy

            return to_host(cupy.bincount(to_device(values), minlength=n_levels)).astype(np.int64)


@jit_kernel(parallel=True)
def _count_levels_numba(values: np.ndarray, n_levels: int) -> np.ndarray:
    # One private histogram per chunk avoids atomic updates; the chunks are summed at the end.
    n_chunks = min(_REDUCTION_CHUNKS, max(1, values.size // 4096))
    chunk = (values.size + n_chunks - 1) // n_chunks
    partial = np.zeros((n_chunks, n_levels), dtype=np.int64)
    for c in prange(n_chunks):
        for k in range(c * chunk, min((c + 1) * chunk, values.size)):
            partial[c, values[k]] += 1
    return partial.sum(axis=0)
