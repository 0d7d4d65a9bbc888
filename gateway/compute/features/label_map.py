"""All IBSI 1 features of every lesion of a label map in one call.

``extract_label_map_features(image, labels, spacing, ...)`` gives, for each label value present, exactly what
``extract_features(image, labels == label, spacing, ...)`` gives (the per-lesion path stays the definition;
``tests/compute/test_label_map.py`` compares the two on random label maps), as one table of values instead of
hundreds of FeatureValue objects per lesion.

How the Numba backend gets there faster than a loop over lesions: one pass over the label map finds every
lesion's bounding box; each lesion is cropped with the margin the local intensity peak needs (as
prepare_region crops); then a single parallel kernel (``_label_map_numba.lesion_features``) computes, lesion
by lesion on each thread, everything that loops over voxels: statistics, histograms, local intensity peaks,
the pairwise Moran/Geary sums and all six texture families in 3-D with their features. Python is left only
with the surface mesh (scikit-image), the convex hull (its own Numba kernel, per lesion) and the FFT form of
Moran's I/Geary's C for lesions where it is the cheaper one.

Resampling, texture aggregations other than "3D averaged"/"3D merged" ("3D" for the others) and the NumPy and
CuPy backends take the per-lesion path (``extract_features``, the CuPy kernels per lesion), so every option
of extract_features is available here too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.compute.backend import resolve_backend
from gateway.compute.features import intensity_histogram, intensity_stats, ivh, local_intensity, morphology
from gateway.compute.features.base import FeatureValue
from gateway.compute.features.local_intensity import sphere_offsets
from gateway.compute.features.pipeline import (
    IntensityRange,
    PreparedRegion,
    _bounds,
    discretise_region,
    extract_features,
    finish_region,
)
from gateway.compute.features.texture import (
    DEFAULT_AGGREGATIONS,
    glcm,
    gldzm,
    glrlm,
    glszm,
    ngldm,
    ngtdm,
    texture_features,
)
from gateway.compute.features.texture.aggregation import directional_aggregations, non_directional_aggregations
from gateway.compute.kernels.arrays import as_spacing, bounding_box, require_finite
from gateway.compute.kernels.resample import ImageInterpolation, MaskInterpolation

_BATCHED_DIRECTIONAL = ("3D averaged", "3D merged")


@dataclass(frozen=True, slots=True)
class FeatureColumn:
    """What one column of a LabelMapFeatures table holds (the fields of FeatureValue but the value)."""

    family: str
    name: str
    ibsi_code: str
    key: str
    aggregation: str | None = None

    @property
    def label(self) -> str:
        """``key``, or ``key [aggregation]`` for texture features: unique within a table."""
        return self.key if self.aggregation is None else f"{self.key} [{self.aggregation}]"


@dataclass(frozen=True)
class LabelMapFeatures:
    """Feature values of several lesions: ``values[i, j]`` is feature ``columns[j]`` of lesion ``labels[i]``."""

    labels: tuple[int, ...]
    columns: tuple[FeatureColumn, ...]
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def row(self, label: int) -> np.ndarray:
        try:
            return self.values[self.labels.index(label)]
        except ValueError:
            raise KeyError(f"label {label} is not in this table (labels {list(self.labels)})") from None

    def features(self, label: int) -> list[FeatureValue]:
        """The lesion's features as extract_features returns them."""
        return [FeatureValue(family=c.family, name=c.name, ibsi_code=c.ibsi_code, key=c.key, value=float(v),
                             aggregation=c.aggregation) for c, v in zip(self.columns, self.row(label), strict=True)]

    def as_dict(self, label: int) -> dict[str, float]:
        """``{column label: value}`` of one lesion."""
        return dict(zip((c.label for c in self.columns), self.row(label).tolist(), strict=True))

    def as_dicts(self) -> dict[int, dict[str, float]]:
        names = [c.label for c in self.columns]
        return {label: dict(zip(names, row, strict=True)) for label, row in zip(self.labels, self.values.tolist(),
                                                                                  strict=True)}

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return iter(zip(self.labels, self.values, strict=True))


def extract_label_map_features(
    image: Any,
    labels: Any,
    spacing: Sequence[float],
    *,
    label_values: Iterable[int] | None = None,
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
) -> LabelMapFeatures:
    """extract_features for each lesion of ``labels`` (same shape as ``image``; 0 is background, every
    positive whole number one lesion), or for the ``label_values`` given (each must be present).

    The options are those of extract_features, applied to every lesion. Raises ValueError for malformed input
    (as extract_features does for any lesion) and for labels that are negative, not whole numbers or absent.
    """
    if bin_number is not None and bin_width is not None:
        raise ValueError("give bin_number or bin_width, not both")
    if ivh_bin_number is not None and ivh_bin_width is not None:
        raise ValueError("give ivh_bin_number or ivh_bin_width, not both")
    volume = np.asarray(image)
    label_map = np.asarray(labels)
    if volume.ndim != 3 or volume.size == 0:
        raise ValueError(f"image must be a non-empty 3-D (z, y, x) array, got shape {volume.shape}")
    if not (np.issubdtype(volume.dtype, np.number) or volume.dtype == np.bool_) or np.iscomplexobj(volume):
        raise ValueError(f"image must hold real numbers, got dtype {volume.dtype}")
    if label_map.shape != volume.shape:
        raise ValueError(f"label map shape {label_map.shape} does not match image shape {volume.shape}")
    if label_map.dtype == np.bool_:
        label_map = label_map.view(np.uint8)
    if label_map.dtype.kind not in "iu":
        raise ValueError(f"the label map must hold integers, got dtype {label_map.dtype}")
    spacing = as_spacing(spacing)
    backend = resolve_backend(backend)
    aggregations = tuple(texture_aggregations)
    options = {
        "bin_number": bin_number, "bin_width": bin_width, "ivh_bin_width": ivh_bin_width,
        "ivh_bin_number": ivh_bin_number, "new_spacing": new_spacing, "image_interpolation": image_interpolation,
        "mask_interpolation": mask_interpolation, "partial_volume_threshold": partial_volume_threshold,
        "round_intensities": round_intensities,
        "resegment_range": resegment_range, "outlier_sigma": outlier_sigma, "texture_aggregations": aggregations,
    }

    boxes = _label_boxes(label_map, backend)
    present = [int(label) for label in np.flatnonzero(boxes[:, 3] >= 0) if label > 0]
    if label_values is None:
        chosen = present
    else:
        chosen = sorted({int(label) for label in label_values})
        absent = sorted(set(chosen) - set(present))
        if absent:
            raise ValueError(f"label value(s) {absent} do not occur in the label map")
    if not chosen:
        raise ValueError("the label map holds no lesion (no voxel above 0)")

    if backend != "numba" or new_spacing is not None:
        return _per_lesion(volume, label_map, spacing, chosen, boxes, options, backend)
    return _batched(volume, label_map, spacing, chosen, boxes, options)


# --- bounding boxes ------------------------------------------------------------------------------------------

def _label_boxes(label_map: np.ndarray, backend: str) -> np.ndarray:
    """(max label + 1, 6): lowest then highest (z, y, x) of each label value; lowest > highest when absent."""
    lowest, highest = _label_range(label_map)
    if lowest < 0:
        raise ValueError(f"label values must not be negative, found {lowest}")
    if backend == "numba":
        from gateway.compute.features import _label_map_numba

        return _label_map_numba.label_boxes(np.ascontiguousarray(label_map), highest)
    from scipy import ndimage

    boxes = np.empty((highest + 1, 6), dtype=np.int64)
    boxes[:, :3] = np.asarray(label_map.shape)
    boxes[:, 3:] = -1
    for label, box in enumerate(ndimage.find_objects(label_map), start=1):
        if box is not None:
            boxes[label] = [s.start for s in box] + [s.stop - 1 for s in box]
    return boxes


def _label_range(label_map: np.ndarray) -> tuple[int, int]:
    if label_map.dtype.kind == "u" and label_map.dtype.itemsize == 1:
        return 0, int(label_map.max())  # one pass: the lowest uint8 is never negative
    return int(label_map.min()), int(label_map.max())


def _crop(boxes: np.ndarray, label: int, reach: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The lesion's bounding box plus ``reach`` voxels on each side (clipped), as prepare_region crops."""
    start = np.maximum(boxes[label, :3] - reach, 0)
    stop = np.minimum(boxes[label, 3:] + reach + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))


# --- per-lesion path -----------------------------------------------------------------------------------------

def _per_lesion(volume: np.ndarray, label_map: np.ndarray, spacing: tuple[float, float, float],
                chosen: list[int], boxes: np.ndarray, options: dict[str, Any], backend: str) -> LabelMapFeatures:
    reach = np.abs(sphere_offsets(spacing)).max(axis=0)
    rows: list[list[float]] = []
    columns: tuple[FeatureColumn, ...] = ()
    for label in chosen:
        if options["new_spacing"] is None:
            # The crop holds all prepare_region reads, so the result is that of the whole arrays.
            box = _crop(boxes, label, reach, volume.shape)
            features = extract_features(volume[box], label_map[box] == label, spacing, backend=backend, **options)
        else:
            # The resampled grid is aligned with the whole image, so the lesion is not cropped first.
            features = extract_features(volume, label_map == label, spacing, backend=backend, **options)
        columns = tuple(FeatureColumn(f.family, f.name, f.ibsi_code, f.key, f.aggregation) for f in features)
        rows.append([f.value for f in features])
    return LabelMapFeatures(labels=tuple(chosen), columns=columns, values=np.asarray(rows, dtype=np.float64))


# --- batched path (Numba) ------------------------------------------------------------------------------------

def _batched(volume: np.ndarray, label_map: np.ndarray, spacing: tuple[float, float, float], chosen: list[int],
             boxes: np.ndarray, options: dict[str, Any]) -> LabelMapFeatures:
    import numba

    from gateway.compute.features import _label_map_numba as kernels

    offsets = sphere_offsets(spacing)
    reach = np.abs(offsets).max(axis=0)
    regions: list[PreparedRegion] = []
    for label in chosen:
        box = _crop(boxes, label, reach, volume.shape)
        cropped = np.ascontiguousarray(volume[box], dtype=np.float64)
        require_finite(cropped, "the image around the region of interest")
        regions.append(finish_region(cropped, label_map[box] == label, spacing,
                                     round_intensities=options["round_intensities"],
                                     resegment_range=options["resegment_range"],
                                     outlier_sigma=options["outlier_sigma"], backend="numba"))

    discretised = options["bin_number"] is not None or options["bin_width"] is not None
    aggregations = options["texture_aggregations"]
    texture_in_kernel = discretised and bool(aggregations) and _batchable(aggregations)

    sizes = np.array([region.image.size for region in regions], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    shapes = np.array([region.image.shape for region in regions], dtype=np.int64)
    pairwise = np.zeros(len(regions), dtype=np.bool_)
    moran_inputs: list[tuple[int, float]] = []  # (voxels, sum of squared deviations) per lesion
    for k, region in enumerate(regions):
        values = region.image[region.intensity_mask]
        squares = float(((values - values.mean()) ** 2).sum())
        moran_inputs.append((values.size, squares))
        if values.size >= 2 and squares != 0.0:
            low, high = bounding_box(region.intensity_mask)
            box_shape = tuple(int(h - lo + 1) for lo, h in zip(low, high, strict=True))
            pairwise[k] = morphology.cheaper_moran_method(values.size, box_shape) == "pairwise"
    range_lower, range_upper = _bounds(options["resegment_range"])
    if options["bin_number"] is not None:
        discretisation, bin_number, bin_width = kernels.DISCRETISE_BIN_NUMBER, int(options["bin_number"]), 1.0
        if isinstance(options["bin_number"], bool) or bin_number != options["bin_number"] or bin_number < 1:
            raise ValueError(f"bin_number must be a positive whole number, got {options['bin_number']!r}")
    elif options["bin_width"] is not None:
        discretisation, bin_number, bin_width = kernels.DISCRETISE_BIN_WIDTH, 0, float(options["bin_width"])
        if not (math.isfinite(bin_width) and bin_width > 0):
            raise ValueError(f"bin_width must be finite and positive, got {bin_width}")
    else:
        discretisation, bin_number, bin_width = kernels.DISCRETISE_NONE, 0, 1.0
    ivh_mode, ivh_width, ivh_number = _ivh_mode(options["ivh_bin_width"], options["ivh_bin_number"], kernels)

    previous_chunk = numba.get_parallel_chunksize()
    numba.set_parallel_chunksize(1)  # lesions differ in size: hand them out one at a time, largest first
    try:
        kernel_values = kernels.lesion_features(
            np.concatenate([region.image.ravel() for region in regions]),
            np.concatenate([region.morphological_mask.ravel() for region in regions]),
            np.concatenate([region.intensity_mask.ravel() for region in regions]),
            starts, shapes, np.argsort(-sizes, kind="stable"), np.asarray(spacing, dtype=np.float64),
            local_intensity._offset_runs(offsets), discretisation, bin_number, bin_width, range_lower, range_upper,
            ivh_mode, ivh_width, ivh_number, pairwise, texture_in_kernel)
    finally:
        numba.set_parallel_chunksize(previous_chunk)

    rows = []
    texture_columns: tuple[FeatureColumn, ...] = ()
    for k, region in enumerate(regions):
        n, squares = moran_inputs[k]
        moran_geary = _moran_geary(region, spacing, n, squares, pairwise[k],
                                   kernel_values[k, kernels.MORAN_AT:kernels.MORAN_AT + kernels.MORAN_SUMS])
        shape_values, _ = morphology.morphology_values(region.image, region.morphological_mask,
                                                       region.intensity_mask, spacing, moran_geary, backend="numba")
        row = [np.asarray(shape_values, dtype=np.float64),
               kernel_values[k, kernels.LOCAL_INTENSITY_AT:kernels.LOCAL_INTENSITY_AT + kernels.LOCAL_INTENSITY],
               kernel_values[k, kernels.STATISTICS_AT:kernels.STATISTICS_AT + kernels.STATISTICS]]
        if discretised:
            row.append(kernel_values[k, kernels.HISTOGRAM_AT:kernels.HISTOGRAM_AT + kernels.HISTOGRAM])
        row.append(kernel_values[k, kernels.IVH_AT:kernels.IVH_AT + kernels.IVH])
        if texture_in_kernel:
            row.append(kernel_values[k, _texture_columns_in_kernel(aggregations, kernels)])
        elif discretised and aggregations:
            levels = discretise_region(region, bin_number=options["bin_number"], bin_width=options["bin_width"],
                                       backend="numba")
            features = texture_features(levels.levels, region.intensity_mask, levels.n_levels,
                                        morphological_mask=region.morphological_mask, aggregations=aggregations,
                                        backend="numba")
            texture_columns = tuple(FeatureColumn(f.family, f.name, f.ibsi_code, f.key, f.aggregation)
                                    for f in features)
            row.append(np.array([f.value for f in features]))
        rows.append(np.concatenate(row))

    columns = _first_order_columns(discretised)
    if texture_in_kernel:
        columns += _texture_column_labels(aggregations)
    else:
        columns += texture_columns
    return LabelMapFeatures(labels=tuple(chosen), columns=columns, values=np.vstack(rows))


def _batchable(aggregations: tuple[str, ...]) -> bool:
    return (set(directional_aggregations(aggregations)) <= set(_BATCHED_DIRECTIONAL)
            and set(non_directional_aggregations(aggregations)) <= {"3D"})


def _ivh_mode(bin_width: float | None, bin_number: int | None, kernels: Any) -> tuple[int, float, int]:
    if bin_number is not None:
        if isinstance(bin_number, bool) or int(bin_number) != bin_number or bin_number < 1:
            raise ValueError(f"bin_number must be a positive whole number, got {bin_number!r}")
        return kernels.IVH_BIN_NUMBER, 1.0, int(bin_number)
    if bin_width is not None:
        if not (math.isfinite(bin_width) and bin_width > 0):
            raise ValueError(f"IVH bin_width must be finite and positive, got {bin_width}")
        return kernels.IVH_BIN_WIDTH, float(bin_width), 0
    return kernels.IVH_DISCRETE, 1.0, 0


def _moran_geary(region: PreparedRegion, spacing: tuple[float, float, float], n: int, squares: float,
                 pairwise: bool, pair_sums: np.ndarray) -> tuple[float, float]:
    """morphology.moran_geary from the kernel's pair sums, or by FFT where that is the cheaper method."""
    if n < 2 or squares == 0.0:
        return math.nan, math.nan
    if not pairwise:
        return morphology.moran_geary(region.image, region.intensity_mask, spacing, method="fft", backend="numba")
    weight_sum, cross_sum, difference_sum = (float(v) for v in pair_sums)
    return n / weight_sum * cross_sum / squares, (n - 1) / (2.0 * weight_sum) * difference_sum / squares


def _first_order_columns(discretised: bool) -> tuple[FeatureColumn, ...]:
    families = [(morphology.FAMILY, morphology.FEATURES), (local_intensity.FAMILY, local_intensity.FEATURES),
                (intensity_stats.FAMILY, intensity_stats.FEATURES)]
    if discretised:
        families.append((intensity_histogram.FAMILY, intensity_histogram.FEATURES))
    families.append((ivh.FAMILY, ivh.FEATURES))
    return tuple(FeatureColumn(family, name, code, key) for family, features in families
                 for name, code, key in features)


def _texture_columns_in_kernel(aggregations: tuple[str, ...], kernels: Any) -> np.ndarray:
    """Indices of the kernel's output columns in the order texture_features lists them."""
    methods = directional_aggregations(aggregations)
    indices: list[int] = []
    for at, width in ((kernels.GLCM_AT, kernels.GLCM), (kernels.GLRLM_AT, kernels.GLRLM)):
        for method in methods:
            first = at + (0 if method == "3D averaged" else width)
            indices += range(first, first + width)
    indices += range(kernels.GLSZM_AT, kernels.COLUMNS)  # GLSZM, GLDZM, NGTDM, NGLDM in "3D"
    return np.asarray(indices)


def _texture_column_labels(aggregations: tuple[str, ...]) -> tuple[FeatureColumn, ...]:
    methods = directional_aggregations(aggregations)
    columns: list[FeatureColumn] = []
    for module in (glcm, glrlm):
        columns += [FeatureColumn(module.FAMILY, spec.name, spec.ibsi_code, spec.key, method)
                    for method in methods for spec in module.FEATURES]
    for module in (glszm, gldzm, ngtdm, ngldm):
        columns += [FeatureColumn(module.FAMILY, spec.name, spec.ibsi_code, spec.key, "3D")
                    for spec in module.FEATURES]
    return tuple(columns)
