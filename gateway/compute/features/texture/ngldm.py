"""Neighbouring grey level dependence matrix (NGLDM) features, IBSI 1 section 3.11.

Chebyshev distance 1 (26 neighbours in 3-D, 8 within the slice in 2-D) and coarseness α = 0: a neighbour is
dependent when it is in the ROI and has the same grey level. The dependence count j of a voxel is 1 plus its
number of dependent neighbours, so j runs from 1 to 27 (9 in 2-D). Every ROI voxel is counted once.
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
from gateway.compute.features.texture.matrix_features import zone_features
from gateway.compute.features.texture.nondirectional import (
    BlockMatrices,
    aggregate_nondirectional,
    voxels_per_block,
)
from gateway.compute.features.texture.roi import prepare_roi

FAMILY = "Neighbouring grey level dependence based features"
FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("Low dependence emphasis", "SODN", "ngl.lde"),
    FeatureSpec("High dependence emphasis", "IMOQ", "ngl.hde"),
    FeatureSpec("Low grey level count emphasis", "TL9H", "ngl.lgce"),
    FeatureSpec("High grey level count emphasis", "OAE7", "ngl.hgce"),
    FeatureSpec("Low dependence low grey level emphasis", "EQ3F", "ngl.ldlge"),
    FeatureSpec("Low dependence high grey level emphasis", "JA6D", "ngl.ldhge"),
    FeatureSpec("High dependence low grey level emphasis", "NBZI", "ngl.hdlge"),
    FeatureSpec("High dependence high grey level emphasis", "9QMG", "ngl.hdhge"),
    FeatureSpec("Grey level non-uniformity", "FP8K", "ngl.glnu"),
    FeatureSpec("Normalised grey level non-uniformity", "5SPA", "ngl.glnu.norm"),
    FeatureSpec("Dependence count non-uniformity", "Z87G", "ngl.dcnu"),
    FeatureSpec("Normalised dependence count non-uniformity", "OKJI", "ngl.dcnu.norm"),
    FeatureSpec("Dependence count percentage", "6XV8", "ngl.dc.perc"),
    FeatureSpec("Grey level variance", "1PFV", "ngl.gl.var"),
    FeatureSpec("Dependence count variance", "DNX2", "ngl.dc.var"),
    FeatureSpec("Dependence count entropy", "FCBV", "ngl.dc.entr"),
    FeatureSpec("Dependence count energy", "CAS9", "ngl.dc.energy"),
)


def max_dependence(in_plane: bool) -> int:
    return (len(NEIGHBOURS_2D) if in_plane else len(NEIGHBOURS_3D)) + 1


def count_dependences_reference(level_index: Any, n_present: int, in_plane: bool, xp: Any = np) -> Any:
    """The definition: counts (slices if ``in_plane`` else 1, n_present, max dependence) of voxels by grey
    level and dependence count. Written against the NumPy API so that CuPy runs it unchanged (``xp=cupy``)."""
    dependence = xp.ones(level_index.shape, dtype=xp.int64)
    for offset in NEIGHBOURS_2D if in_plane else NEIGHBOURS_3D:
        here, there = overlapping_slices(level_index.shape, offset)
        # Outside the ROI the level index is 0, so equal indices of an ROI voxel mean an ROI neighbour.
        dependence[here] += level_index[here] == level_index[there]
    in_roi = level_index > 0
    n_columns = max_dependence(in_plane)
    n_blocks = level_index.shape[0] if in_plane else 1
    key = (level_index[in_roi] - 1) * n_columns + (dependence[in_roi] - 1)
    if in_plane:
        slice_of_voxel = xp.broadcast_to(xp.arange(n_blocks)[:, None, None], level_index.shape)
        key = key + slice_of_voxel[in_roi] * (n_present * n_columns)
    counts = xp.bincount(key, minlength=n_blocks * n_present * n_columns)
    return counts.reshape(n_blocks, n_present, n_columns)


def count_dependences(level_index: np.ndarray, n_present: int, in_plane: bool, backend: Backend) -> np.ndarray:
    """Dependence counts (slices or 1, n_present, max dependence) as int64 on the host."""
    if backend == "numba":
        from gateway.compute.features.texture import _numba

        return _numba.count_dependences(level_index, n_present, in_plane, max_dependence(in_plane))
    if backend == "cupy":
        from gateway.compute.features.texture import _cupy

        return _cupy.count_dependences(level_index, n_present, in_plane)
    return count_dependences_reference(level_index, n_present, in_plane)


def ngldm_from_context(context: TextureContext, aggregations: Iterable[str]) -> list[FeatureValue]:
    roi = context.roi
    methods = non_directional_aggregations(aggregations)

    def matrices_of(in_plane: bool) -> BlockMatrices:
        counts = count_dependences(roi.level_index, roi.n_present, in_plane, context.backend)
        dependence_values = np.arange(1, counts.shape[-1] + 1, dtype=np.float64)
        return BlockMatrices((counts,), voxels_per_block(roi.level_index, in_plane), dependence_values)

    def features_of(blocks: BlockMatrices) -> np.ndarray:
        assert blocks.column_values is not None
        return zone_features(blocks.arrays[0], roi.grey_values, blocks.column_values, blocks.n_voxels)

    values = aggregate_nondirectional(methods, matrices_of, features_of)
    return [item for method in methods for item in labelled(FAMILY, FEATURES, values[method], method)]


def ngldm_features(
    discretised: np.ndarray,
    mask: np.ndarray,
    n_levels: int,
    *,
    aggregations: Iterable[str] = DEFAULT_AGGREGATIONS,
    backend: str | None = None,
) -> list[FeatureValue]:
    """The 17 IBSI NGLDM features for each requested aggregation (see ``texture_features``)."""
    context = TextureContext(prepare_roi(discretised, mask, n_levels), resolve_backend(backend))
    return ngldm_from_context(context, aggregations)
