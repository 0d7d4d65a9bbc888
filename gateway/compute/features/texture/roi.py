"""Checking and preparing a discretised region of interest for the texture kernels.

Every kernel works on the same prepared form: the volume cropped to the ROI's bounding box, with each voxel
holding a *level index* (0 outside the intensity mask, 1..n inside) into ``grey_values``, the grey levels that
actually occur in the ROI. Absent grey levels only add empty rows and columns to the texture matrices, and
every IBSI feature sums over matrix entries, so dropping them changes no value; it keeps the matrices as small
as the data allow when Ng is large (e.g. a fixed bin width over a wide HU range). The features use the grey
levels themselves (``grey_values``), never the indices, and the normalised features use the true Ng.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PreparedRoi:
    level_index: np.ndarray
    """int32 (z, y, x): 0 outside the intensity mask, else the 1-based index into ``grey_values``."""
    grey_values: np.ndarray
    """float64: the grey levels present in the ROI, ascending."""
    n_levels: int
    """Ng, the number of grey levels of the discretisation (not only those present)."""
    morphological_mask: np.ndarray
    """bool (z, y, x), cropped like ``level_index``; defines the distance to the ROI border (GLDZM)."""

    @property
    def n_present(self) -> int:
        return len(self.grey_values)


def _as_volume(array: np.ndarray, name: str) -> np.ndarray:
    if hasattr(array, "__cuda_array_interface__") and hasattr(array, "get"):
        array = array.get()  # a CuPy array from a GPU pipeline: preparation runs on the host
    array = np.asarray(array)
    if array.ndim == 2:
        # A single slice is a volume one slice thick; its 3-D features then equal the 2-D ones.
        array = array[np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"{name} must be a (z, y, x) volume or a (y, x) slice, got {array.ndim} dimensions")
    return array


def _as_mask(mask: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    mask = _as_volume(mask, name)
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {mask.shape} but the discretised image has shape {shape}")
    if mask.dtype != np.bool_:
        if not np.isin(np.unique(mask), (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or hold only 0 and 1)")
        mask = mask.astype(bool)
    return mask


def prepare_roi(
    discretised: np.ndarray,
    mask: np.ndarray,
    n_levels: int,
    morphological_mask: np.ndarray | None = None,
) -> PreparedRoi:
    """Validate the inputs and build the cropped, level-indexed volume.

    Raises ValueError for: a shape mismatch between image and masks, an empty intensity mask, ``n_levels`` < 1,
    and ROI voxels that are not whole numbers in 1..``n_levels`` (values outside the ROI are ignored, so NaN
    padding there is fine).
    """
    image = _as_volume(discretised, "discretised image")
    intensity_mask = _as_mask(mask, "mask", image.shape)
    morph_mask = intensity_mask if morphological_mask is None else _as_mask(
        morphological_mask, "morphological mask", image.shape
    )
    if isinstance(n_levels, bool) or int(n_levels) != n_levels or n_levels < 1:
        raise ValueError(f"n_levels must be a positive whole number, got {n_levels!r}")
    n_levels = int(n_levels)
    if not intensity_mask.any():
        raise ValueError("the mask is empty: texture features need at least one voxel in the ROI")

    # Crop to the box holding both masks: the distance to the ROI border can depend on morphological-mask
    # voxels outside the intensity mask.
    box = tuple(
        slice(int(np.flatnonzero(axis_has)[0]), int(np.flatnonzero(axis_has)[-1]) + 1)
        for axis_has in (
            np.logical_or(intensity_mask, morph_mask).any(axis=axes) for axes in ((1, 2), (0, 2), (0, 1))
        )
    )
    image = image[box]
    intensity_mask = intensity_mask[box]
    morph_mask = morph_mask[box]

    roi_values = image[intensity_mask]
    if roi_values.dtype.kind == "f":
        if not np.isfinite(roi_values).all():
            raise ValueError("the discretised image holds NaN or infinite values inside the ROI")
        if not (roi_values == np.round(roi_values)).all():
            raise ValueError("the discretised image must hold whole-number grey levels inside the ROI")
    elif roi_values.dtype.kind not in "iub":
        raise ValueError(f"the discretised image must be numeric, got dtype {roi_values.dtype}")
    lowest, highest = roi_values.min(), roi_values.max()
    if lowest < 1 or highest > n_levels:
        raise ValueError(
            f"grey levels inside the ROI must lie in 1..{n_levels} (n_levels), found {lowest:g}..{highest:g}"
        )

    roi_levels = roi_values.astype(np.int64)
    present = np.flatnonzero(np.bincount(roi_levels, minlength=n_levels + 1))
    index_of_level = np.zeros(n_levels + 1, dtype=np.int32)
    index_of_level[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    level_index = np.zeros(image.shape, dtype=np.int32)
    level_index[intensity_mask] = index_of_level[roi_levels]
    return PreparedRoi(
        level_index=level_index,
        grey_values=present.astype(np.float64),
        n_levels=n_levels,
        morphological_mask=np.ascontiguousarray(morph_mask),
    )
