"""Grey level size zone matrix (GLSZM) features, IBSI 1 section 3.8.

Zones are 26-connected (3-D) or 8-connected within a slice (2-D) voxels of one grey level; the matrix counts
zones by grey level and size. N_v of the zone percentage is the ROI's voxel count (of the slice, for 2D).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from gateway.compute.backend import resolve_backend
from gateway.compute.features.base import FeatureValue
from gateway.compute.features.texture.aggregation import (
    DEFAULT_AGGREGATIONS,
    FeatureSpec,
    labelled,
    non_directional_aggregations,
)
from gateway.compute.features.texture.context import TextureContext
from gateway.compute.features.texture.matrix_features import zone_features
from gateway.compute.features.texture.nondirectional import (
    BlockMatrices,
    aggregate_nondirectional,
    voxels_per_block,
)
from gateway.compute.features.texture.roi import prepare_roi
from gateway.compute.features.texture.zones import zone_matrices

FAMILY = "Grey level size zone based features"
FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("Small zone emphasis", "5QRC", "szm.sze"),
    FeatureSpec("Large zone emphasis", "48P8", "szm.lze"),
    FeatureSpec("Low grey level zone emphasis", "XMSY", "szm.lgze"),
    FeatureSpec("High grey level zone emphasis", "5GN9", "szm.hgze"),
    FeatureSpec("Small zone low grey level emphasis", "5RAI", "szm.szlge"),
    FeatureSpec("Small zone high grey level emphasis", "HW1V", "szm.szhge"),
    FeatureSpec("Large zone low grey level emphasis", "YH51", "szm.lzlge"),
    FeatureSpec("Large zone high grey level emphasis", "J17V", "szm.lzhge"),
    FeatureSpec("Grey level non-uniformity", "JNSA", "szm.glnu"),
    FeatureSpec("Normalised grey level non-uniformity", "Y1RO", "szm.glnu.norm"),
    FeatureSpec("Zone size non-uniformity", "4JP3", "szm.zsnu"),
    FeatureSpec("Normalised zone size non-uniformity", "VB3A", "szm.zsnu.norm"),
    FeatureSpec("Zone percentage", "P30P", "szm.z.perc"),
    FeatureSpec("Grey level variance", "BYLV", "szm.gl.var"),
    FeatureSpec("Zone size variance", "3NSA", "szm.zs.var"),
    FeatureSpec("Zone size entropy", "GU8N", "szm.zs.entr"),
)


def glszm_from_context(context: TextureContext, aggregations: Iterable[str]) -> list[FeatureValue]:
    roi = context.roi
    methods = non_directional_aggregations(aggregations)

    def matrices_of(in_plane: bool) -> BlockMatrices:
        zones = context.zones(in_plane)
        n_voxels = voxels_per_block(roi.level_index, in_plane)
        block = zones.slice_index if in_plane else np.zeros_like(zones.slice_index)
        matrices, sizes = zone_matrices(block, zones.level_index, zones.size, len(n_voxels), roi.n_present)
        return BlockMatrices((matrices,), n_voxels, sizes)

    def features_of(blocks: BlockMatrices) -> np.ndarray:
        assert blocks.column_values is not None
        return zone_features(blocks.arrays[0], roi.grey_values, blocks.column_values, blocks.n_voxels)[:, :16]

    values = aggregate_nondirectional(methods, matrices_of, features_of)
    return [item for method in methods for item in labelled(FAMILY, FEATURES, values[method], method)]


def glszm_features(
    discretised: np.ndarray,
    mask: np.ndarray,
    n_levels: int,
    *,
    aggregations: Iterable[str] = DEFAULT_AGGREGATIONS,
    backend: str | None = None,
) -> list[FeatureValue]:
    """The 16 IBSI GLSZM features for each requested aggregation (see ``texture_features``)."""
    context = TextureContext(prepare_roi(discretised, mask, n_levels), resolve_backend(backend))
    return glszm_from_context(context, aggregations)
