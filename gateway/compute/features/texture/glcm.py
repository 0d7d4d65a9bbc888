"""Grey level co-occurrence matrix (GLCM) features, IBSI 1 section 3.6.

Distance 1 (Chebyshev), symmetric matrices (a pair i→j also counts as j→i), 13 directions in 3-D and 4 in
2-D, all six aggregation methods. Only pairs whose two voxels are both in the ROI are counted.
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
    directional_aggregations,
    labelled,
)
from gateway.compute.features.texture.context import TextureContext
from gateway.compute.features.texture.directional import aggregate_directional
from gateway.compute.features.texture.directions import overlapping_slices
from gateway.compute.features.texture.matrix_features import cooccurrence_features
from gateway.compute.features.texture.roi import prepare_roi

FAMILY = "Grey level co-occurrence based features"
FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("Joint maximum", "GYBY", "cm.joint.max"),
    FeatureSpec("Joint average", "60VM", "cm.joint.avg"),
    FeatureSpec("Joint variance", "UR99", "cm.joint.var"),
    FeatureSpec("Joint entropy", "TU9B", "cm.joint.entr"),
    FeatureSpec("Difference average", "TF7R", "cm.diff.avg"),
    FeatureSpec("Difference variance", "D3YU", "cm.diff.var"),
    FeatureSpec("Difference entropy", "NTRS", "cm.diff.entr"),
    FeatureSpec("Sum average", "ZGXS", "cm.sum.avg"),
    FeatureSpec("Sum variance", "OEEB", "cm.sum.var"),
    FeatureSpec("Sum entropy", "P6QZ", "cm.sum.entr"),
    FeatureSpec("Angular second moment", "8ZQL", "cm.energy"),
    FeatureSpec("Contrast", "ACUI", "cm.contrast"),
    FeatureSpec("Dissimilarity", "8S9J", "cm.dissimilarity"),
    FeatureSpec("Inverse difference", "IB1Z", "cm.inv.diff"),
    FeatureSpec("Normalised inverse difference", "NDRX", "cm.inv.diff.norm"),
    FeatureSpec("Inverse difference moment", "WF0Z", "cm.inv.diff.mom"),
    FeatureSpec("Normalised inverse difference moment", "1QCO", "cm.inv.diff.mom.norm"),
    FeatureSpec("Inverse variance", "E8JP", "cm.inv.var"),
    FeatureSpec("Correlation", "NI2N", "cm.corr"),
    FeatureSpec("Autocorrelation", "QWB0", "cm.auto.corr"),
    FeatureSpec("Cluster tendency", "DG8W", "cm.clust.tend"),
    FeatureSpec("Cluster shade", "7NFM", "cm.clust.shade"),
    FeatureSpec("Cluster prominence", "AE86", "cm.clust.prom"),
    FeatureSpec("Information correlation 1", "R8DG", "cm.info.corr.1"),
    FeatureSpec("Information correlation 2", "JN9H", "cm.info.corr.2"),
)


def count_cooccurrences_reference(
    level_index: Any, n_present: int, directions: np.ndarray, per_slice: bool, xp: Any = np
) -> Any:
    """The definition: for each direction d, count ordered pairs (p, p + d) with both voxels in the ROI.

    Returns counts (slices if ``per_slice`` else 1, directions, n_present, n_present), not yet symmetric;
    a pair belongs to the slice of its first voxel (in-plane pairs lie in one slice anyway). Written against
    the NumPy API so that CuPy runs it unchanged (``xp=cupy``): a bincount per direction is all it needs.
    """
    n_slices = level_index.shape[0]
    n_blocks = n_slices if per_slice else 1
    matrix_size = n_present * n_present
    slice_of_voxel = xp.broadcast_to(xp.arange(n_slices)[:, None, None], level_index.shape)
    counts = []
    for direction in directions:
        here, there = overlapping_slices(level_index.shape, direction)
        first = level_index[here]
        second = level_index[there]
        both_in_roi = (first > 0) & (second > 0)
        pair_key = (first[both_in_roi] - 1) * n_present + (second[both_in_roi] - 1)
        if per_slice:
            pair_key = pair_key + slice_of_voxel[here][both_in_roi] * matrix_size
        counts.append(xp.bincount(pair_key.ravel(), minlength=n_blocks * matrix_size))
    per_direction = xp.stack(counts).reshape(len(directions), n_blocks, n_present, n_present)
    return per_direction.transpose(1, 0, 2, 3)


def count_cooccurrences(
    level_index: np.ndarray, n_present: int, directions: np.ndarray, per_slice: bool, backend: Backend
) -> np.ndarray:
    """Symmetric co-occurrence counts (slices or 1, directions, n_present, n_present) as int64 on the host."""
    if backend == "numba":
        from gateway.compute.features.texture import _numba

        counts = _numba.count_cooccurrences(level_index, n_present, directions, per_slice)
    elif backend == "cupy":
        from gateway.compute.features.texture import _cupy

        counts = _cupy.count_cooccurrences(level_index, n_present, directions, per_slice)
    else:
        counts = count_cooccurrences_reference(level_index, n_present, directions, per_slice)
    counts = np.asarray(counts, dtype=np.int64)
    return counts + counts.swapaxes(-1, -2)


def glcm_from_context(context: TextureContext, aggregations: Iterable[str]) -> list[FeatureValue]:
    roi, backend = context.roi, context.backend
    methods = directional_aggregations(aggregations)

    def count(directions: np.ndarray, per_slice: bool) -> np.ndarray:
        return count_cooccurrences(roi.level_index, roi.n_present, directions, per_slice, backend)

    def features_of(matrices: np.ndarray) -> np.ndarray:
        return cooccurrence_features(matrices, roi.grey_values, roi.n_levels)

    values = aggregate_directional(methods, count, features_of)
    return [item for method in methods for item in labelled(FAMILY, FEATURES, values[method], method)]


def glcm_features(
    discretised: np.ndarray,
    mask: np.ndarray,
    n_levels: int,
    *,
    aggregations: Iterable[str] = DEFAULT_AGGREGATIONS,
    backend: str | None = None,
) -> list[FeatureValue]:
    """The 25 IBSI GLCM features for each requested aggregation (see ``texture_features``)."""
    context = TextureContext(prepare_roi(discretised, mask, n_levels), resolve_backend(backend))
    return glcm_from_context(context, aggregations)
