"""Building and aggregating the per-direction matrices of GLCM and GLRLM.

Both families count, for every direction, something about voxel pairs or lines in that direction. The 2-D
and 2.5D methods need one matrix per slice and in-plane direction; the 3-D methods need one matrix per 3-D
direction over the whole volume. The per-slice in-plane matrices summed over slices are exactly the first
four 3-D matrices, so when both are requested those four are not counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from gateway.compute.features.texture.aggregation import average_over_matrices
from gateway.compute.features.texture.directions import DIRECTIONS_2D, DIRECTIONS_3D, OUT_OF_PLANE_DIRECTIONS

CountMatrices = Callable[[np.ndarray, bool], np.ndarray]
"""(directions, per_slice) → counts (slices or 1, directions, rows, columns)."""
FeaturesOf = Callable[[np.ndarray], np.ndarray]
"""counts (matrices, rows, columns) → features (matrices, n_features)."""


def _non_empty(matrices: np.ndarray) -> np.ndarray:
    # Slices of the bounding box that the ROI skips have no matrix in IBSI's sense: leave them out.
    return matrices[matrices.reshape(matrices.shape[0], -1).any(axis=1)]


def aggregate_directional(
    aggregations: Sequence[str], count: CountMatrices, features_of: FeaturesOf
) -> dict[str, np.ndarray]:
    """Feature values for each requested method of ``aggregation.DIRECTIONAL_AGGREGATIONS``."""
    needs_slices = any(not method.startswith("3D") for method in aggregations)
    needs_volume = any(method.startswith("3D") for method in aggregations)
    per_slice = count(DIRECTIONS_2D, True) if needs_slices else None  # (slices, 4, rows, columns)
    per_direction = None  # (13, rows, columns)
    if needs_volume:
        if per_slice is not None:
            out_of_plane = count(OUT_OF_PLANE_DIRECTIONS, False)[0]
            per_direction = np.concatenate([per_slice.sum(axis=0), out_of_plane])
        else:
            per_direction = count(DIRECTIONS_3D, False)[0]

    values: dict[str, np.ndarray] = {}
    for method in aggregations:
        if method == "2D averaged":
            assert per_slice is not None
            matrices = _non_empty(per_slice.reshape(-1, *per_slice.shape[2:]))
        elif method == "2D slice-merged":
            assert per_slice is not None
            matrices = _non_empty(per_slice.sum(axis=1))
        elif method == "2.5D direction-merged":
            assert per_slice is not None
            matrices = _non_empty(per_slice.sum(axis=0))
        elif method == "2.5D merged":
            assert per_slice is not None
            matrices = per_slice.sum(axis=(0, 1))[np.newaxis]
        elif method == "3D averaged":
            assert per_direction is not None
            matrices = _non_empty(per_direction)
        elif method == "3D merged":
            assert per_direction is not None
            matrices = per_direction.sum(axis=0)[np.newaxis]
        else:
            raise ValueError(f"{method!r} is not a directional aggregation")
        values[method] = average_over_matrices(features_of(matrices))
    return values
