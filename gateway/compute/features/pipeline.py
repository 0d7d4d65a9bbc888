"""From an image and a mask to IBSI 1 features: preparation of the region of interest, then the families.

Processing follows the IBSI 1 scheme: (optional) interpolation of image and mask to a new spacing, rounding of
the interpolated intensities, re-segmentation of the intensity mask by range and/or outliers (the
morphological mask keeps the interpolated ROI), discretisation, then the feature families. Everything after
validation works on the ROI's bounding box plus the margin the local intensity peak needs (the 1 cm³ sphere),
so a small lesion in a large scan costs what the lesion costs; with resampling only that part of the new grid
is interpolated.

Texture families (GLCM, GLRLM, GLSZM, GLDZM, NGTDM, NGLDM) live in ``gateway.compute.features.texture``; they
take the same prepared region and discretisation, see the note in ``first_order_features``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.compute.backend import resolve_backend
from gateway.compute.features.base import FeatureValue
from gateway.compute.features.intensity_histogram import intensity_histogram_features
from gateway.compute.features.intensity_stats import intensity_statistics_features
from gateway.compute.features.ivh import ivh_features
from gateway.compute.features.local_intensity import local_intensity_features, sphere_offsets
from gateway.compute.features.morphology import MoranMethod, morphological_features
from gateway.compute.features.texture import DEFAULT_AGGREGATIONS, texture_features
from gateway.compute.kernels.arrays import (
    Spacing,
    as_mask,
    as_spacing,
    as_volume,
    bounding_box,
    require_finite,
    require_nonempty,
)
from gateway.compute.kernels.intensity import (
    discretise_fixed_bin_number,
    discretise_fixed_bin_size,
    outlier_range,
)
from gateway.compute.kernels.intensity import resegment_range as resegment_by_range
from gateway.compute.kernels.resample import (
    ImageInterpolation,
    MaskInterpolation,
    resample_image,
    resample_mask,
    resampled_grid,
)

IntensityRange = tuple[float | None, float | None]


@dataclass(frozen=True, slots=True)
class PreparedRegion:
    """The region of interest ready for feature calculation, cropped to its box plus the peak-sphere margin."""

    image: np.ndarray  # float64 (z, y, x)
    morphological_mask: np.ndarray  # bool, the (interpolated) ROI
    intensity_mask: np.ndarray  # bool, the morphological mask after re-segmentation
    spacing: Spacing
    resegment_range: IntensityRange | None  # as given (None: no range); the lower bound anchors fixed bin size


@dataclass(frozen=True, slots=True)
class Discretisation:
    levels: np.ndarray  # int32 (z, y, x): bins 1..n_levels inside the intensity mask, 0 outside
    n_levels: int  # Ng


def prepare_region(image: Any, mask: Any, spacing: Sequence[float], *,
                   new_spacing: Sequence[float | None] | None = None,
                   image_interpolation: ImageInterpolation = "linear",
                   mask_interpolation: MaskInterpolation = "partial_volume",
                   partial_volume_threshold: float = 0.5, round_intensities: bool = False,
                   resegment_range: IntensityRange | None = None, outlier_sigma: float | None = None,
                   backend: str | None = None) -> PreparedRegion:
    """Validate, crop, (resample,) round and re-segment; see the module docstring.

    ``new_spacing`` entries of None keep that axis (``(None, 2, 2)``: in-plane interpolation only).
    ``image_interpolation`` "cubic" is IBSI's tricubic spline (configuration E), see resample.interpolate_cubic.
    ``resegment_range`` is ``(lower, upper)`` with None for an open side; ``outlier_sigma`` adds the outlier
    rule mean ± sigma sd (IBSI: 3), taken over the morphological mask; both together keep the intersection.
    Raises ValueError for malformed input (shapes, spacing, empty mask, NaN near the ROI) and when
    resampling or re-segmentation leaves no voxel.
    """
    volume, roi, spacing, (low, high) = _checked_inputs(image, mask, spacing)
    if new_spacing is None:
        reach = np.abs(sphere_offsets(spacing)).max(axis=0)
        start = np.maximum(low - reach, 0)
        stop = np.minimum(high + reach + 1, volume.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
        cropped = as_volume(volume[box])
        require_finite(cropped, "the image around the region of interest")
        morph = as_mask(roi[box], cropped.shape)
    else:
        grid = resampled_grid(volume.shape, spacing, new_spacing)
        reach = np.abs(sphere_offsets(grid.spacing)).max(axis=0)
        window = grid.window_around(low, high, volume.shape, margin=reach)
        cropped = resample_image(volume, spacing, new_spacing, method=image_interpolation, window=window,
                                 backend=backend)
        morph = resample_mask(roi, spacing, new_spacing, method=mask_interpolation,
                              threshold=partial_volume_threshold, window=window, backend=backend)
        spacing = grid.spacing
        require_nonempty(morph, "the region of interest after resampling")
    return finish_region(cropped, morph, spacing, round_intensities=round_intensities,
                         resegment_range=resegment_range, outlier_sigma=outlier_sigma, backend=backend)


def finish_region(cropped: np.ndarray, morph: np.ndarray, spacing: Spacing, *, round_intensities: bool = False,
                  resegment_range: IntensityRange | None = None, outlier_sigma: float | None = None,
                  backend: str | None = None) -> PreparedRegion:
    """The steps of prepare_region after cropping (and resampling): rounding and re-segmentation.

    ``cropped`` (float64) and ``morph`` (bool) must already be the ROI's box plus the peak-sphere margin.
    """
    if round_intensities:
        cropped = np.rint(cropped)

    lower, upper = _bounds(resegment_range)
    if outlier_sigma is not None:
        outlier_low, outlier_high = outlier_range(cropped, morph, outlier_sigma, backend=backend)
        lower, upper = max(lower, outlier_low), min(upper, outlier_high)
    intensity = morph
    if math.isfinite(lower) or math.isfinite(upper):
        if lower > upper:
            raise ValueError(f"the re-segmentation range and the outlier range do not overlap ([{lower}, {upper}])")
        intensity = resegment_by_range(cropped, morph, None if math.isinf(lower) else lower,
                                       None if math.isinf(upper) else upper, backend=backend)
        require_nonempty(intensity, "the intensity mask after re-segmentation")
    return PreparedRegion(image=cropped, morphological_mask=morph, intensity_mask=intensity, spacing=spacing,
                          resegment_range=resegment_range)


def discretise_region(region: PreparedRegion, *, bin_number: int | None = None, bin_width: float | None = None,
                      backend: str | None = None) -> Discretisation:
    """Fixed bin number, or fixed bin size from the re-segmentation range's lower bound (else the ROI minimum).

    Ng is the bin number, or for a fixed bin size the number of bins up to the range's upper bound when it
    has one, else up to the highest bin present.
    """
    if (bin_number is None) == (bin_width is None):
        raise ValueError("discretisation needs exactly one of bin_number and bin_width")
    if bin_number is not None:
        levels = discretise_fixed_bin_number(region.image, region.intensity_mask, bin_number, backend=backend)
        return Discretisation(levels=levels, n_levels=int(bin_number))
    assert bin_width is not None
    lower, upper = _bounds(region.resegment_range)
    lower_bound = lower if math.isfinite(lower) else None
    levels = discretise_fixed_bin_size(region.image, region.intensity_mask, bin_width, lower_bound,
                                       backend=backend)
    highest = int(levels.max())
    if math.isfinite(lower) and math.isfinite(upper):
        highest = max(highest, math.floor((upper - lower) / bin_width) + 1)
    return Discretisation(levels=levels, n_levels=highest)


def region_first_order_features(
    region: PreparedRegion,
    *,
    discretisation: Discretisation | None = None,
    ivh_bin_width: float | None = None,
    ivh_bin_number: int | None = None,
    moran_method: MoranMethod = "auto",
    backend: str | None = None,
) -> list[FeatureValue]:
    """Morphology, local intensity, statistics, intensity histogram (with a discretisation) and IVH."""
    backend = resolve_backend(backend)
    features = morphological_features(
        region.image,
        region.morphological_mask,
        region.intensity_mask,
        region.spacing,
        moran_method=moran_method,
        backend=backend,
    )
    features += local_intensity_features(region.image, region.intensity_mask, region.spacing, backend=backend)
    features += intensity_statistics_features(region.image[region.intensity_mask], backend=backend)
    if discretisation is not None:
        features += intensity_histogram_features(
            discretisation.levels[region.intensity_mask], discretisation.n_levels, backend=backend
        )
    features += ivh_features(
        region.image,
        region.intensity_mask,
        bin_width=ivh_bin_width,
        bin_number=ivh_bin_number,
        intensity_range=region.resegment_range,
        backend=backend,
    )
    return features


def first_order_features(
    image: Any,
    mask: Any,
    spacing: Sequence[float],
    *,
    bin_number: int | None = None,
    bin_width: float | None = None,
    ivh_bin_width: float | None = None,
    ivh_bin_number: int | None = None,
    new_spacing: Sequence[float | None] | None = None,
    image_interpolation: ImageInterpolation = "linear",
    mask_interpolation: MaskInterpolation = "partial_volume",
    partial_volume_threshold: float = 0.5,
    round_intensities: bool = False,
    resegment_range: IntensityRange | None = None,
    outlier_sigma: float | None = None,
    backend: str | None = None,
) -> list[FeatureValue]:
    """All non-texture IBSI 1 features of the region ``mask``; see extract_features for the arguments."""
    return extract_features(
        image,
        mask,
        spacing,
        bin_number=bin_number,
        bin_width=bin_width,
        ivh_bin_width=ivh_bin_width,
        ivh_bin_number=ivh_bin_number,
        new_spacing=new_spacing,
        image_interpolation=image_interpolation,
        mask_interpolation=mask_interpolation,
        partial_volume_threshold=partial_volume_threshold,
        round_intensities=round_intensities,
        resegment_range=resegment_range,
        outlier_sigma=outlier_sigma,
        texture_aggregations=(),
        backend=backend,
    )


def extract_features(
    image: Any,
    mask: Any,
    spacing: Sequence[float],
    *,
    bin_number: int | None = None,
    bin_width: float | None = None,
    ivh_bin_width: float | None = None,
    ivh_bin_number: int | None = None,
    new_spacing: Sequence[float | None] | None = None,
    image_interpolation: ImageInterpolation = "linear",
    mask_interpolation: MaskInterpolation = "partial_volume",
    partial_volume_threshold: float = 0.5,
    round_intensities: bool = False,
    resegment_range: IntensityRange | None = None,
    outlier_sigma: float | None = None,
    texture_aggregations: Iterable[str] = DEFAULT_AGGREGATIONS,
    backend: str | None = None,
) -> list[FeatureValue]:
    """All IBSI 1 features of the region ``mask`` (0/1, same shape as ``image``) in ``image``.

    Arrays are (z, y, x), ``spacing`` (z, y, x) in mm. The intensity histogram and the texture families need
    one of ``bin_number`` (fixed bin number) and ``bin_width`` (fixed bin size) and are left out without
    either. The IVH uses the intensities as they are (discrete calibrated, e.g. CT) unless ``ivh_bin_width``
    (continuous calibrated, e.g. PET) or ``ivh_bin_number`` (arbitrary units, e.g. MRI) is given.
    ``new_spacing``, ``image_interpolation`` ("linear", "cubic" for IBSI's tricubic spline, or "nearest"),
    ``mask_interpolation``, ``partial_volume_threshold``, ``round_intensities``, ``resegment_range`` and
    ``outlier_sigma`` as for prepare_region; the interpolation options matter only with ``new_spacing``.
    ``texture_aggregations``: the texture aggregation methods (see gateway.compute.features.texture); empty
    for none.

    Bad input raises ValueError. Features a degenerate region leaves undefined are NaN (see the family
    modules, e.g. Moran's I of a single voxel); where IBSI defines a value for such a case it is used (e.g.
    skewness 0 at variance 0).
    """
    if bin_number is not None and bin_width is not None:
        raise ValueError("give bin_number or bin_width, not both")
    if ivh_bin_number is not None and ivh_bin_width is not None:
        raise ValueError("give ivh_bin_number or ivh_bin_width, not both")
    backend = resolve_backend(backend)
    region = prepare_region(
        image,
        mask,
        spacing,
        new_spacing=new_spacing,
        image_interpolation=image_interpolation,
        mask_interpolation=mask_interpolation,
        partial_volume_threshold=partial_volume_threshold,
        round_intensities=round_intensities,
        resegment_range=resegment_range,
        outlier_sigma=outlier_sigma,
        backend=backend,
    )
    discretisation = None
    if bin_number is not None or bin_width is not None:
        discretisation = discretise_region(region, bin_number=bin_number, bin_width=bin_width, backend=backend)
    features = region_first_order_features(
        region,
        discretisation=discretisation,
        ivh_bin_width=ivh_bin_width,
        ivh_bin_number=ivh_bin_number,
        backend=backend,
    )
    aggregations = tuple(texture_aggregations)
    if discretisation is not None and aggregations:
        # Same region and discretisation as the intensity histogram, as IBSI prescribes.
        features += texture_features(
            discretisation.levels,
            region.intensity_mask,
            discretisation.n_levels,
            morphological_mask=region.morphological_mask,
            aggregations=aggregations,
            backend=backend,
        )
    return features


def _checked_inputs(image: Any, mask: Any, spacing: Sequence[float]
                    ) -> tuple[np.ndarray, np.ndarray, Spacing, tuple[np.ndarray, np.ndarray]]:
    """Shape, dtype, spacing and non-empty checks that read the full arrays as little as possible; also
    returns the mask's bounding box."""
    volume = np.asarray(image)
    if volume.ndim != 3 or volume.size == 0:
        raise ValueError(f"image must be a non-empty 3-D (z, y, x) array, got shape {volume.shape}")
    if not (np.issubdtype(volume.dtype, np.number) or volume.dtype == np.bool_) or np.iscomplexobj(volume):
        raise ValueError(f"image must hold real numbers, got dtype {volume.dtype}")
    roi = np.asarray(mask)
    if roi.shape != volume.shape:
        raise ValueError(f"mask shape {roi.shape} does not match image shape {volume.shape}")
    spacing = as_spacing(spacing)
    low, high = bounding_box(roi)
    # Every non-zero mask voxel lies in the bounding box, so checking that the box holds only 0/1 checks all.
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(low, high, strict=True))
    as_mask(roi[box], roi[box].shape)
    return volume, roi, spacing, (low, high)


def _bounds(intensity_range: IntensityRange | None) -> tuple[float, float]:
    if intensity_range is None:
        return -math.inf, math.inf
    if len(intensity_range) != 2:
        raise ValueError(f"an intensity range is (lower, upper), got {intensity_range}")
    lower, upper = intensity_range
    low = -math.inf if lower is None else float(lower)
    high = math.inf if upper is None else float(upper)
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"intensity range must satisfy lower <= upper, got {intensity_range}")
    return low, high
