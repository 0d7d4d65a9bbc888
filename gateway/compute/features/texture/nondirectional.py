"""Aggregating the families without directions (GLSZM, GLDZM, NGTDM, NGLDM): IBSI's 2D, 2.5D and 3D.

2D: one matrix per slice from in-plane neighbourhoods, features averaged over slices. 2.5D: the same slice
matrices summed into one. 3D: one matrix from volumetric neighbourhoods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.compute.features.texture.aggregation import average_over_matrices


@dataclass(frozen=True)
class BlockMatrices:
    """A family's matrices for each slice (in-plane neighbourhoods) or for the volume (one block)."""

    arrays: tuple[np.ndarray, ...]
    """count arrays with a leading block axis; merging sums them over that axis."""
    n_voxels: np.ndarray
    """ROI voxels of each block."""
    column_values: np.ndarray | None = field(default=None)
    """value of each matrix column (zone size, distance, ...), the same for every block."""


MatricesOf = Callable[[bool], BlockMatrices]
"""in_plane → the matrices of every slice (True) or of the volume (False)."""
FeaturesOf = Callable[[BlockMatrices], np.ndarray]
"""matrices → features (blocks, n_features)."""


def aggregate_nondirectional(
    aggregations: Sequence[str], matrices_of: MatricesOf, features_of: FeaturesOf
) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    if "2D" in aggregations or "2.5D" in aggregations:
        per_slice = matrices_of(True)
        occupied = per_slice.n_voxels > 0  # bounding-box slices the ROI skips have no matrix
        if "2D" in aggregations:
            occupied_slices = BlockMatrices(
                tuple(array[occupied] for array in per_slice.arrays),
                per_slice.n_voxels[occupied],
                per_slice.column_values,
            )
            values["2D"] = average_over_matrices(features_of(occupied_slices))
        if "2.5D" in aggregations:
            merged = BlockMatrices(
                tuple(array.sum(axis=0, keepdims=True) for array in per_slice.arrays),
                per_slice.n_voxels.sum(keepdims=True),
                per_slice.column_values,
            )
            values["2.5D"] = average_over_matrices(features_of(merged))
    if "3D" in aggregations:
        values["3D"] = average_over_matrices(features_of(matrices_of(False)))
    return values


def voxels_per_block(level_index: np.ndarray, in_plane: bool) -> np.ndarray:
    per_slice = np.count_nonzero(level_index, axis=(1, 2))
    return per_slice if in_plane else per_slice.sum(keepdims=True)
