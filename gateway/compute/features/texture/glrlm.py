"""Grey level run length matrix (GLRLM) features, IBSI 1 section 3.7.

A run is a maximal line of consecutive ROI voxels with one grey level along a direction; voxels outside the
ROI end a run. 13 directions in 3-D, 4 in 2-D, all six aggregation methods. N_v of the run percentage is
Σ_j j r_ij of the matrix it is computed from: the ROI's voxel count for one direction, and that count times
the number of directions for a merged matrix, as IBSI prescribes for merging.
"""

from __future__ import annotations

from collections.abc import Iterable

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
from gateway.compute.features.texture.matrix_features import zone_features
from gateway.compute.features.texture.roi import prepare_roi

FAMILY = "Grey level run length based features"
FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("Short runs emphasis", "22OV", "rlm.sre"),
    FeatureSpec("Long runs emphasis", "W4KF", "rlm.lre"),
    FeatureSpec("Low grey level run emphasis", "V3SW", "rlm.lgre"),
    FeatureSpec("High grey level run emphasis", "G3QZ", "rlm.hgre"),
    FeatureSpec("Short run low grey level emphasis", "HTZT", "rlm.srlge"),
    FeatureSpec("Short run high grey level emphasis", "GD3A", "rlm.srhge"),
    FeatureSpec("Long run low grey level emphasis", "IVPO", "rlm.lrlge"),
    FeatureSpec("Long run high grey level emphasis", "3KUM", "rlm.lrhge"),
    FeatureSpec("Grey level non-uniformity", "R5YN", "rlm.glnu"),
    FeatureSpec("Normalised grey level non-uniformity", "OVBL", "rlm.glnu.norm"),
    FeatureSpec("Run length non-uniformity", "W92Y", "rlm.rlnu"),
    FeatureSpec("Normalised run length non-uniformity", "IC23", "rlm.rlnu.norm"),
    FeatureSpec("Run percentage", "9ZK5", "rlm.r.perc"),
    FeatureSpec("Grey level variance", "8CE5", "rlm.gl.var"),
    FeatureSpec("Run length variance", "SXLW", "rlm.rl.var"),
    FeatureSpec("Run entropy", "HJ9O", "rlm.rl.entr"),
)


def longest_possible_run(shape: tuple[int, ...], directions: np.ndarray) -> int:
    """The longest line through the box along any of ``directions``: the run-length axis of the matrix."""
    longest = 1
    for direction in directions:
        steps = [size for size, step in zip(shape, direction, strict=True) if step != 0]
        longest = max(longest, min(steps))
    return longest


def count_runs_reference(
    level_index: np.ndarray, n_present: int, directions: np.ndarray, per_slice: bool
) -> np.ndarray:
    """The definition: runs per direction as counts (slices if ``per_slice`` else 1, directions, n_present,
    longest run); a run belongs to the slice of its first voxel.

    Vectorised per direction: a voxel starts a run when the voxel one step back is outside the ROI or has
    another level, and ends one when the voxel one step ahead does. Along each line starts and ends
    alternate, so sorting both by (line, position on the line) pairs every start with its end.
    """
    shape = level_index.shape
    n_blocks = shape[0] if per_slice else 1
    max_run = longest_possible_run(shape, directions)
    counts = np.zeros((n_blocks, len(directions), n_present, max_run), dtype=np.int64)
    in_roi = level_index > 0
    for direction_number, direction in enumerate(directions):
        same_as_previous = np.zeros(shape, dtype=bool)
        same_as_next = np.zeros(shape, dtype=bool)
        here, there = overlapping_slices(shape, direction)
        same = in_roi[here] & (level_index[here] == level_index[there])
        same_as_next[here] = same
        same_as_previous[there] = same
        starts = np.nonzero(in_roi & ~same_as_previous)
        ends = np.nonzero(in_roi & ~same_as_next)

        def line_and_position(
            voxels: tuple[np.ndarray, ...], direction: np.ndarray = direction
        ) -> tuple[np.ndarray, np.ndarray]:
            # Position = steps back to the box edge; the line is named by the voxel where it enters the box.
            steps_back = [
                coordinate if step > 0 else size - 1 - coordinate
                for coordinate, size, step in zip(voxels, shape, direction, strict=True)
                if step != 0
            ]
            position = np.minimum.reduce(steps_back)
            entry = tuple(coordinate - position * step for coordinate, step in zip(voxels, direction, strict=True))
            return np.ravel_multi_index(entry, shape), position

        start_line, start_position = line_and_position(starts)
        end_line, end_position = line_and_position(ends)
        start_order = np.lexsort((start_position, start_line))
        end_order = np.lexsort((end_position, end_line))
        run_length = end_position[end_order] - start_position[start_order] + 1
        run_level = level_index[starts][start_order]
        block = starts[0][start_order] if per_slice else np.zeros_like(run_length)
        np.add.at(counts, (block, direction_number, run_level - 1, run_length - 1), 1)
    return counts


def count_runs(
    level_index: np.ndarray, n_present: int, directions: np.ndarray, per_slice: bool, backend: Backend
) -> np.ndarray:
    """Run counts (slices or 1, directions, n_present, longest run) as int64 on the host."""
    if backend == "numba":
        from gateway.compute.features.texture import _numba

        max_run = longest_possible_run(level_index.shape, directions)
        return _numba.count_runs(level_index, n_present, directions, per_slice, max_run)
    if backend == "cupy":
        from gateway.compute.features.texture import _cupy

        max_run = longest_possible_run(level_index.shape, directions)
        return _cupy.count_runs(level_index, n_present, directions, per_slice, max_run)
    return count_runs_reference(level_index, n_present, directions, per_slice)


def glrlm_from_context(context: TextureContext, aggregations: Iterable[str]) -> list[FeatureValue]:
    roi, backend = context.roi, context.backend
    methods = directional_aggregations(aggregations)
    shape = roi.level_index.shape

    def count(directions: np.ndarray, per_slice: bool) -> np.ndarray:
        counts = count_runs(roi.level_index, roi.n_present, directions, per_slice, backend)
        # Pad to one common run-length axis so in-plane and out-of-plane counts can be merged.
        longest = max(shape)
        return np.pad(counts, [(0, 0)] * 3 + [(0, longest - counts.shape[-1])])

    def features_of(matrices: np.ndarray) -> np.ndarray:
        run_lengths = np.arange(1, matrices.shape[-1] + 1, dtype=np.float64)
        voxels_covered = np.einsum("bij,j->b", matrices, run_lengths)  # Σ_j j r_ij: N_v of each matrix
        return zone_features(matrices, roi.grey_values, run_lengths, voxels_covered)[:, :16]

    values = aggregate_directional(methods, count, features_of)
    return [item for method in methods for item in labelled(FAMILY, FEATURES, values[method], method)]


def glrlm_features(
    discretised: np.ndarray,
    mask: np.ndarray,
    n_levels: int,
    *,
    aggregations: Iterable[str] = DEFAULT_AGGREGATIONS,
    backend: str | None = None,
) -> list[FeatureValue]:
    """The 16 IBSI GLRLM features for each requested aggregation (see ``texture_features``)."""
    context = TextureContext(prepare_roi(discretised, mask, n_levels), resolve_backend(backend))
    return glrlm_from_context(context, aggregations)
