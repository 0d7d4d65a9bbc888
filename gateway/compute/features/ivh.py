"""IBSI 1 intensity-volume histogram features (P88C).

The IVH gives, for each discretised intensity ``i`` of the range ``G``, the fraction ``nu_i`` of the volume with
intensity at least ``i``, and the intensity fraction ``gamma_i = (i - min G) / (max G - min G)``. How the
intensities are discretised depends on what they mean (manual, "Intensity-volume histogram features"):

- discrete calibrated (e.g. CT in HU; the default here): the intensities themselves, ``w = 1``, ``G`` the
  re-segmentation range (a half-open one closed by the ROI maximum) or else ``[min, max]`` of the ROI;
- continuous calibrated (e.g. PET SUV; ``bin_width``): fixed bin size from the range's lower bound (else the
  ROI minimum), each bin represented by its centre, ``G = [Xmin + w/2, Xmax - w/2]``;
- arbitrary units (e.g. MRI; ``bin_number``): fixed bin number, ``G = [1, Ng]``, ``w = 1``.

In every case the voxels become whole-numbered steps above ``min G``, so ``nu`` is a reversed cumulative count
of those steps (one counting kernel, NumPy/Numba/CuPy), exact for any number of voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.compute.features.base import FeatureValue
from gateway.compute.kernels.arrays import as_mask, as_volume, require_finite, require_nonempty
from gateway.compute.kernels.intensity import (
    count_levels,
    discretise_fixed_bin_number,
    discretise_fixed_bin_size,
)

FAMILY = "Intensity-volume histogram features"

FEATURES: tuple[tuple[str, str, str], ...] = (
    ("Volume at intensity fraction", "BC2M", "ivh_v10"),
    ("Volume at intensity fraction", "BC2M", "ivh_v90"),
    ("Intensity at volume fraction", "GBPN", "ivh_i10"),
    ("Intensity at volume fraction", "GBPN", "ivh_i90"),
    ("Volume fraction difference between intensity fractions", "DDTU", "ivh_v10minusv90"),
    ("Intensity fraction difference between volume fractions", "CNV2", "ivh_i10minusi90"),
    ("Area under the IVH curve", "9CMM", "ivh_auc"),
)


@dataclass(frozen=True, slots=True)
class IntensityVolumeHistogram:
    """``volume_fraction[k]`` (nu) and ``intensity_fraction[k]`` (gamma) at intensity ``first + k * step``."""

    first: float
    step: float
    volume_fraction: np.ndarray
    intensity_fraction: np.ndarray

    def intensity(self, k: int) -> float:
        return self.first + k * self.step


def intensity_volume_histogram(image: Any, mask: Any, *, bin_width: float | None = None,
                               bin_number: int | None = None,
                               intensity_range: tuple[float | None, float | None] | None = None,
                               backend: str | None = None) -> IntensityVolumeHistogram:
    """The IVH of the voxels of ``image`` in the intensity ``mask``.

    ``intensity_range`` is the re-segmentation range (None or infinite bounds for none); give at most one
    of ``bin_width`` (continuous calibrated intensities) and ``bin_number`` (arbitrary units).
    """
    if bin_width is not None and bin_number is not None:
        raise ValueError("give the IVH either a bin width or a bin number, not both")
    volume = as_volume(image)
    region = as_mask(mask, volume.shape)
    require_nonempty(region, "the intensity mask")
    values = volume[region]
    require_finite(values, "the intensities in the region of interest")
    lower, upper = _range_bounds(intensity_range)
    low = float(values.min()) if lower is None else lower
    high = float(values.max()) if upper is None else upper
    if low > float(values.min()):
        raise ValueError(f"intensities in the mask go down to {values.min()}, below the IVH range start {low}")

    if bin_number is not None:
        steps = discretise_fixed_bin_number(volume, region, bin_number, backend=backend)[region] - 1
        first, step, n_levels, span = 1.0, 1.0, int(bin_number), float(bin_number - 1)
    elif bin_width is not None:
        if not (math.isfinite(bin_width) and bin_width > 0):
            raise ValueError(f"IVH bin_width must be finite and positive, got {bin_width}")
        # Bin d has centre low + (d - 1/2) w; G's grid points are exactly these centres.
        steps = discretise_fixed_bin_size(volume, region, bin_width, low, backend=backend)[region] - 1
        first, step, span = low + 0.5 * bin_width, float(bin_width), max(high - low - bin_width, 0.0)
        n_levels = math.floor(span / bin_width + 1e-9) + 1
    else:
        steps = discretise_fixed_bin_size(volume, region, 1.0, low, backend=backend)[region] - 1
        first, step, span = low, 1.0, high - low
        n_levels = math.floor(span + 1e-9) + 1
    # Intensities above max G count as "at least" every grid intensity, like those at max G.
    counts = count_levels(np.minimum(steps, n_levels - 1), n_levels, backend=backend)
    at_least = np.cumsum(counts[::-1])[::-1]
    volume_fraction = at_least / values.size
    intensity_fraction = (np.arange(n_levels) * step / span) if span > 0 else np.zeros(n_levels)
    return IntensityVolumeHistogram(first=first, step=step, volume_fraction=volume_fraction,
                                    intensity_fraction=intensity_fraction)


def ivh_features(image: Any, mask: Any, *, bin_width: float | None = None, bin_number: int | None = None,
                 intensity_range: tuple[float | None, float | None] | None = None,
                 backend: str | None = None) -> list[FeatureValue]:
    """V10, V90, I10, I90, V10 - V90, I10 - I90 and the area under the IVH (see intensity_volume_histogram)."""
    histogram = intensity_volume_histogram(image, mask, bin_width=bin_width, bin_number=bin_number,
                                           intensity_range=intensity_range, backend=backend)
    v10, v90 = (_volume_at_intensity_fraction(histogram, x) for x in (0.10, 0.90))
    i10, i90 = (_intensity_at_volume_fraction(histogram, x) for x in (0.10, 0.90))
    values = (v10, v90, i10, i90, v10 - v90, i10 - i90, _area_under_curve(histogram))
    return [FeatureValue(family=FAMILY, name=name, ibsi_code=code, key=key, value=float(value))
            for (name, code, key), value in zip(FEATURES, values, strict=True)]


def _range_bounds(intensity_range: tuple[float | None, float | None] | None) -> tuple[float | None, float | None]:
    if intensity_range is None:
        return None, None
    lower, upper = intensity_range
    lower = None if lower is None or math.isinf(lower) else float(lower)
    upper = None if upper is None or math.isinf(upper) else float(upper)
    if lower is not None and upper is not None and lower > upper:
        raise ValueError(f"IVH intensity range must satisfy lower <= upper, got {intensity_range}")
    return lower, upper


def _volume_at_intensity_fraction(histogram: IntensityVolumeHistogram, fraction: float) -> float:
    """V_x: the largest volume fraction at intensity fraction >= x (nu never grows with i: the first such)."""
    reached = np.flatnonzero(histogram.intensity_fraction >= fraction)
    # A one-intensity range has no intensity fraction above 0, so no volume reaches it.
    return float(histogram.volume_fraction[reached[0]]) if reached.size else 0.0


def _intensity_at_volume_fraction(histogram: IntensityVolumeHistogram, fraction: float) -> float:
    """I_x: the lowest intensity of G present in at most x of the volume."""
    reached = np.flatnonzero(histogram.volume_fraction <= fraction)
    # Past max G no voxel remains (nu = 0), so the next grid intensity is the answer when G has none.
    k = int(reached[0]) if reached.size else histogram.volume_fraction.size
    return histogram.intensity(k)


def _area_under_curve(histogram: IntensityVolumeHistogram) -> float:
    """Trapezoidal area under nu(gamma); 0 for a single intensity, as the manual defines."""
    if histogram.volume_fraction.size < 2:
        return 0.0
    nu, gamma = histogram.volume_fraction, histogram.intensity_fraction
    return float(((nu[1:] + nu[:-1]) * np.diff(gamma)).sum() / 2.0)
