"""Neighbourhood grey tone difference matrix (NGTDM) features, IBSI 1 section 3.10.

Chebyshev distance 1: 26 neighbours in 3-D, 8 within the slice in 2-D. A voxel's neighbourhood average uses
only neighbours inside the ROI; voxels with no neighbour in the ROI are left out entirely (not counted in
n_i). The average is over the grey levels themselves, not over level indices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from gateway.compute.backend import Backend, resolve_backend
from gateway.compute.features.base import FeatureValue
from gateway.compute.features.texture.aggregation import (
    DEFAULT_AGGREGATIONS,
    FeatureSpec,
    labelled,
    non_directional_aggregations,
)
from gateway.compute.features.texture.context import TextureContext
from gateway.compute.features.texture.directions import NEIGHBOURS_2D, NEIGHBOURS_3D, overlapping_slices
from gateway.compute.features.texture.matrix_features import ngtdm_features as ngtdm_formulas
from gateway.compute.features.texture.nondirectional import (
    BlockMatrices,
    aggregate_nondirectional,
    voxels_per_block,
)
from gateway.compute.features.texture.roi import prepare_roi

FAMILY = "Neighbourhood grey tone difference based features"
FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("Coarseness", "QCDE", "ngt.coarseness"),
    FeatureSpec("Contrast", "65HE", "ngt.contrast"),
    FeatureSpec("Busyness", "NQ30", "ngt.busyness"),
    # The reference manual's math id reads "ntg.complexity", a slip; the key follows the family's prefix.
    FeatureSpec("Complexity", "HDEZ", "ngt.complexity"),
    FeatureSpec("Strength", "1X9X", "ngt.strength"),
)


def neighbourhood_totals_reference(
    level_index: Any, grey_values: Any, in_plane: bool, xp: Any = np
) -> tuple[Any, Any]:
    """Sum of the neighbours' grey levels and number of neighbours, for every voxel, counting only
    neighbours inside the ROI. Written against the NumPy API so that CuPy runs it unchanged (``xp=cupy``)."""
    in_roi = level_index > 0
    grey = xp.where(in_roi, xp.concatenate([xp.zeros(1), xp.asarray(grey_values)])[level_index], 0.0)
    neighbour_sum = xp.zeros(level_index.shape, dtype=xp.float64)
    neighbour_count = xp.zeros(level_index.shape, dtype=xp.int32)
    for offset in NEIGHBOURS_2D if in_plane else NEIGHBOURS_3D:
        here, there = overlapping_slices(level_index.shape, offset)
        neighbour_sum[here] += grey[there]
        neighbour_count[here] += in_roi[there]
    return neighbour_sum, neighbour_count


def grey_tone_differences_reference(
    level_index: Any, grey_values: np.ndarray, in_plane: bool, xp: Any = np
) -> tuple[Any, Any]:
    """The definition: n_i and s_i = Σ |i − Ā| per slice (in-plane) or for the volume, as (blocks, levels)."""
    n_present = len(grey_values)
    neighbour_sum, neighbour_count = neighbourhood_totals_reference(level_index, grey_values, in_plane, xp)
    counted = (level_index > 0) & (neighbour_count > 0)
    levels = level_index[counted] - 1
    grey = xp.asarray(grey_values)[levels]
    difference = xp.abs(grey - neighbour_sum[counted] / neighbour_count[counted])
    n_blocks = level_index.shape[0] if in_plane else 1
    key = levels
    if in_plane:
        slice_of_voxel = xp.broadcast_to(xp.arange(n_blocks)[:, None, None], level_index.shape)
        key = key + slice_of_voxel[counted] * n_present
    voxel_counts = xp.bincount(key, minlength=n_blocks * n_present).reshape(n_blocks, n_present)
    difference_sums = xp.bincount(key, weights=difference, minlength=n_blocks * n_present)
    return voxel_counts, difference_sums.reshape(n_blocks, n_present)


def grey_tone_differences(
    level_index: np.ndarray, grey_values: np.ndarray, in_plane: bool, backend: Backend
) -> tuple[np.ndarray, np.ndarray]:
    """(n_i, s_i) per slice (in-plane) or for the volume, as host arrays (blocks, levels)."""
    if backend == "numba":
        from gateway.compute.features.texture import _numba

        return _numba.grey_tone_differences(level_index, grey_values, in_plane)
    if backend == "cupy":
        from gateway.compute.features.texture import _cupy

        return _cupy.grey_tone_differences(level_index, grey_values, in_plane)
    return grey_tone_differences_reference(level_index, grey_values, in_plane)


def ngtdm_from_context(context: TextureContext, aggregations: Iterable[str]) -> list[FeatureValue]:
    roi = context.roi
    methods = non_directional_aggregations(aggregations)

    def matrices_of(in_plane: bool) -> BlockMatrices:
        voxel_counts, difference_sums = grey_tone_differences(
            roi.level_index, roi.grey_values, in_plane, context.backend
        )
        return BlockMatrices((voxel_counts, difference_sums), voxels_per_block(roi.level_index, in_plane))

    def features_of(blocks: BlockMatrices) -> np.ndarray:
        voxel_counts, difference_sums = blocks.arrays
        return ngtdm_formulas(voxel_counts, difference_sums, roi.grey_values)

    values = aggregate_nondirectional(methods, matrices_of, features_of)
    return [item for method in methods for item in labelled(FAMILY, FEATURES, values[method], method)]


def ngtdm_features(
    discretised: np.ndarray,
    mask: np.ndarray,
    n_levels: int,
    *,
    aggregations: Iterable[str] = DEFAULT_AGGREGATIONS,
    backend: str | None = None,
) -> list[FeatureValue]:
    """The 5 IBSI NGTDM features for each requested aggregation (see ``texture_features``)."""
    context = TextureContext(prepare_roi(discretised, mask, n_levels), resolve_backend(backend))
    return ngtdm_from_context(context, aggregations)
