"""Zones (connected voxels of one grey level) and the distance of voxels to the ROI border.

IBSI 1 sections 3.8 and 3.9: zones link voxels with 26-connectedness in 3-D and 8-connectedness within a
slice in 2-D. The distance of a voxel to the ROI border is the smallest number of steps between face
neighbours (6-connectedness in 3-D, 4 within a slice in 2-D) to a voxel outside the morphological mask;
voxels on the border have distance 1 and the world outside the image counts as outside the ROI. A zone's
distance is the smallest distance among its voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.compute.backend import Backend

# scipy.ndimage serves only the NumPy references below; it is imported where they run because importing it
# costs a fresh process about a tenth of a second (scipy.special and more) that the other backends never use.


@dataclass(frozen=True)
class Zones:
    level_index: np.ndarray
    """1-based level index of each zone."""
    size: np.ndarray
    """number of voxels of each zone."""
    slice_index: np.ndarray
    """slice of each zone's first voxel; the zone's slice for in-plane zones."""
    border_distance: np.ndarray | None
    """smallest distance to the ROI border among each zone's voxels, when asked for."""


def _zone_structure(in_plane: bool) -> np.ndarray:
    structure = np.ones((3, 3, 3), dtype=bool)
    if in_plane:
        structure[0] = structure[2] = False
    return structure


def _face_structure(in_plane: bool) -> np.ndarray:
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 1)
    if in_plane:
        structure[0] = structure[2] = False
    return structure


def border_distance_reference(morphological_mask: np.ndarray, in_plane: bool) -> np.ndarray:
    """The definition: peel the ROI one face-connected layer at a time; a voxel's distance is the number of
    layers that reach it. ``binary_erosion`` treats the outside of the array as background."""
    from scipy import ndimage

    distance = np.zeros(morphological_mask.shape, dtype=np.int32)
    remaining = morphological_mask.copy()
    structure = _face_structure(in_plane)
    while remaining.any():
        distance += remaining
        remaining = ndimage.binary_erosion(remaining, structure=structure, border_value=0)
    return distance


def border_distance_map(morphological_mask: np.ndarray, in_plane: bool, backend: Backend) -> np.ndarray:
    """int32 distance of every voxel to the ROI border (0 outside the morphological mask), on the host."""
    if backend == "numba":
        from gateway.compute.features.texture import _numba

        return _numba.border_distance(morphological_mask, in_plane)
    if backend == "cupy":
        from gateway.compute.features.texture import _cupy

        return _cupy.border_distance(morphological_mask, in_plane)
    return border_distance_reference(morphological_mask, in_plane)


def find_zones_reference(level_index: np.ndarray, in_plane: bool, distance: np.ndarray | None) -> Zones:
    """The definition: label each grey level's voxels into connected components with SciPy."""
    from scipy import ndimage

    structure = _zone_structure(in_plane)
    parts: list[tuple[np.ndarray, ...]] = []
    for level in range(1, int(level_index.max()) + 1):
        labels, n_zones = ndimage.label(level_index == level, structure=structure)
        if n_zones == 0:
            continue
        flat_labels = labels.ravel()
        sizes = np.bincount(flat_labels, minlength=n_zones + 1)[1:]
        labels_seen, first_voxel = np.unique(flat_labels, return_index=True)
        first_slice = np.unravel_index(first_voxel[labels_seen > 0], labels.shape)[0]
        zone_distance = (
            np.asarray(ndimage.minimum(distance, labels, index=np.arange(1, n_zones + 1)), dtype=np.int64)
            if distance is not None else np.zeros(n_zones, dtype=np.int64)
        )
        parts.append((np.full(n_zones, level), sizes, first_slice, zone_distance))
    levels, sizes, slices, distances = (np.concatenate(column) for column in zip(*parts, strict=True))
    return Zones(levels, sizes, slices, distances if distance is not None else None)


def find_zones(
    level_index: np.ndarray, in_plane: bool, backend: Backend, distance: np.ndarray | None = None
) -> Zones:
    """All zones of the ROI; in-plane zones never cross slices. With ``distance`` (a border-distance map),
    also each zone's distance to the border."""
    if backend == "numba":
        from gateway.compute.features.texture import _numba

        return _numba.find_zones(level_index, in_plane, distance)
    if backend == "cupy":
        from gateway.compute.features.texture import _cupy

        return _cupy.find_zones(level_index, in_plane, distance)
    return find_zones_reference(level_index, in_plane, distance)


def zone_matrices(
    block: np.ndarray, level_index: np.ndarray, column_value: np.ndarray, n_blocks: int, n_levels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Count zones by (block, level, column value) → (matrices (blocks, levels, columns), column values).

    Only column values that occur get a column: zone sizes run up to the ROI's voxel count, and empty
    columns change no feature.
    """
    column_values, column = np.unique(column_value, return_inverse=True)
    n_columns = len(column_values)
    key = (block * n_levels + (level_index - 1)) * n_columns + column.ravel()
    counts = np.bincount(key, minlength=n_blocks * n_levels * n_columns)
    return counts.reshape(n_blocks, n_levels, n_columns), column_values.astype(np.float64)
