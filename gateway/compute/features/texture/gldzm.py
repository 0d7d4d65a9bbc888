"""Grey level distance zone matrix (GLDZM) features, IBSI 1 section 3.9.

Zones as for the GLSZM (from the intensity mask); a zone's distance is the smallest distance of its voxels
to the border of the morphological mask (face-connected steps: 6-connectedness in 3-D, 4 within a slice in
2-D; border voxels have distance 1). The matrix counts zones by grey level and distance. N_v of the zone
percentage is the ROI's voxel count (of the slice, for 2D).
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

FAMILY = "Grey level distance zone based features"
FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("Small distance emphasis", "0GBI", "dzm.sde"),
    FeatureSpec("Large distance emphasis", "MB4I", "dzm.lde"),
    FeatureSpec("Low grey level zone emphasis", "S1RA", "dzm.lgze"),
    FeatureSpec("High grey level zone emphasis", "K26C", "dzm.hgze"),
    FeatureSpec("Small distance low grey level emphasis", "RUVG", "dzm.sdlge"),
    FeatureSpec("Small distance high grey level emphasis", "DKNJ", "dzm.sdhge"),
    FeatureSpec("Large distance low grey level emphasis", "A7WM", "dzm.ldlge"),
    FeatureSpec("Large distance high grey level emphasis", "KLTH", "dzm.ldhge"),
    FeatureSpec("Grey level non-uniformity", "VFT7", "dzm.glnu"),
    FeatureSpec("Normalised grey level non-uniformity", "7HP3", "dzm.glnu.norm"),
    FeatureSpec("Zone distance non-uniformity", "V294", "dzm.zdnu"),
    FeatureSpec("Normalised zone distance non-uniformity", "IATH", "dzm.zdnu.norm"),
    FeatureSpec("Zone percentage", "VIWW", "dzm.z.perc"),
    FeatureSpec("Grey level variance", "QK93", "dzm.gl.var"),
    FeatureSpec("Zone distance variance", "7WT1", "dzm.zd.var"),
    FeatureSpec("Zone distance entropy", "GBDU", "dzm.zd.entr"),
)


def gldzm_from_context(context: TextureContext, aggregations: Iterable[str]) -> list[FeatureValue]:
    roi = context.roi
    methods = non_directional_aggregations(aggregations)

    def matrices_of(in_plane: bool) -> BlockMatrices:
        zones = context.zones(in_plane, with_distance=True)
        assert zones.border_distance is not None
        n_voxels = voxels_per_block(roi.level_index, in_plane)
        block = zones.slice_index if in_plane else np.zeros_like(zones.slice_index)
        matrices, distances = zone_matrices(
            block, zones.level_index, zones.border_distance, len(n_voxels), roi.n_present
        )
        return BlockMatrices((matrices,), n_voxels, distances)

    def features_of(blocks: BlockMatrices) -> np.ndarray:
        assert blocks.column_values is not None
        return zone_features(blocks.arrays[0], roi.grey_values, blocks.column_values, blocks.n_voxels)[:, :16]

    values = aggregate_nondirectional(methods, matrices_of, features_of)
    return [item for method in methods for item in labelled(FAMILY, FEATURES, values[method], method)]


def gldzm_features(
    discretised: np.ndarray,
    mask: np.ndarray,
    n_levels: int,
    *,
    morphological_mask: np.ndarray | None = None,
    aggregations: Iterable[str] = DEFAULT_AGGREGATIONS,
    backend: str | None = None,
) -> list[FeatureValue]:
    """The 16 IBSI GLDZM features for each requested aggregation (see ``texture_features``).

    ``morphological_mask`` defaults to ``mask``: they differ only after intensity re-segmentation.
    """
    roi = prepare_roi(discretised, mask, n_levels, morphological_mask)
    context = TextureContext(roi, resolve_backend(backend), zone_distances=True)
    return gldzm_from_context(context, aggregations)
