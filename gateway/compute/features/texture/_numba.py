"""Numba kernels for the texture matrices: the same counts as the NumPy references, in compiled loops.

Parallel work is split into blocks of whole slices. Per-slice results (2-D methods) use one block per slice,
so every block writes only its own part of the output; volume results use about one block per thread and
are summed afterwards, which keeps threads from contending for the same counters. All kernels take the
prepared int32 level-index volume (0 outside the ROI); ``cache=True`` keeps compiled code between runs.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from gateway.compute.features.texture.directions import DIRECTIONS_2D, DIRECTIONS_3D, NEIGHBOURS_2D, NEIGHBOURS_3D
from gateway.compute.features.texture.zones import Zones

_BLOCK_BUDGET_ENTRIES = 1 << 25
"""Largest number of counters the per-thread partial results may hold together (256 MiB of int64)."""


def _volume_blocks(n_slices: int, entries_per_block: int) -> int:
    by_memory = max(1, _BLOCK_BUDGET_ENTRIES // max(1, entries_per_block))
    return max(1, min(n_slices, numba.get_num_threads(), by_memory))


def _volume_int32(level_index: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(level_index, dtype=np.int32)


@njit(parallel=True, nogil=True, cache=True)
def _cooccurrence_kernel(
    level_index: np.ndarray, directions: np.ndarray, n_present: int, n_blocks: int
) -> np.ndarray:
    n_z, n_y, n_x = level_index.shape
    n_directions = directions.shape[0]
    counts = np.zeros((n_blocks, n_directions, n_present, n_present), dtype=np.int64)
    for block in prange(n_blocks):
        for z in range(block * n_z // n_blocks, (block + 1) * n_z // n_blocks):
            for y in range(n_y):
                for x in range(n_x):
                    first = level_index[z, y, x]
                    if first == 0:
                        continue
                    for d in range(n_directions):
                        zz = z + directions[d, 0]
                        yy = y + directions[d, 1]
                        xx = x + directions[d, 2]
                        if zz < 0 or zz >= n_z or yy < 0 or yy >= n_y or xx < 0 or xx >= n_x:
                            continue
                        second = level_index[zz, yy, xx]
                        if second > 0:
                            counts[block, d, first - 1, second - 1] += 1
    return counts


def count_cooccurrences(
    level_index: np.ndarray, n_present: int, directions: np.ndarray, per_slice: bool
) -> np.ndarray:
    """Ordered-pair counts (slices or 1, directions, n_present, n_present); see the NumPy reference."""
    level_index = _volume_int32(level_index)
    directions = np.ascontiguousarray(directions, dtype=np.int64)
    n_slices = level_index.shape[0]
    if per_slice:
        return _cooccurrence_kernel(level_index, directions, n_present, n_slices)
    blocks = _volume_blocks(n_slices, len(directions) * n_present * n_present)
    return _cooccurrence_kernel(level_index, directions, n_present, blocks).sum(axis=0, keepdims=True)


@njit(parallel=True, nogil=True, cache=True)
def _run_kernel(
    level_index: np.ndarray, directions: np.ndarray, n_present: int, max_run: int, n_blocks: int
) -> np.ndarray:
    n_z, n_y, n_x = level_index.shape
    n_directions = directions.shape[0]
    counts = np.zeros((n_blocks, n_directions, n_present, max_run), dtype=np.int64)
    for block in prange(n_blocks):
        for z in range(block * n_z // n_blocks, (block + 1) * n_z // n_blocks):
            for y in range(n_y):
                for x in range(n_x):
                    level = level_index[z, y, x]
                    if level == 0:
                        continue
                    for d in range(n_directions):
                        step_z = directions[d, 0]
                        step_y = directions[d, 1]
                        step_x = directions[d, 2]
                        # Only the first voxel of a run walks it, so each run is counted once.
                        zz = z - step_z
                        yy = y - step_y
                        xx = x - step_x
                        if (0 <= zz < n_z and 0 <= yy < n_y and 0 <= xx < n_x
                                and level_index[zz, yy, xx] == level):
                            continue
                        length = 1
                        zz = z + step_z
                        yy = y + step_y
                        xx = x + step_x
                        while (0 <= zz < n_z and 0 <= yy < n_y and 0 <= xx < n_x
                               and level_index[zz, yy, xx] == level):
                            length += 1
                            zz += step_z
                            yy += step_y
                            xx += step_x
                        counts[block, d, level - 1, length - 1] += 1
    return counts


def count_runs(
    level_index: np.ndarray, n_present: int, directions: np.ndarray, per_slice: bool, max_run: int
) -> np.ndarray:
    """Run counts (slices or 1, directions, n_present, max_run); see the NumPy reference."""
    level_index = _volume_int32(level_index)
    directions = np.ascontiguousarray(directions, dtype=np.int64)
    n_slices = level_index.shape[0]
    if per_slice:
        return _run_kernel(level_index, directions, n_present, max_run, n_slices)
    blocks = _volume_blocks(n_slices, len(directions) * n_present * max_run)
    return _run_kernel(level_index, directions, n_present, max_run, blocks).sum(axis=0, keepdims=True)


@njit(parallel=True, nogil=True, cache=True)
def _border_distance_kernel(mask: np.ndarray, in_plane: bool) -> np.ndarray:
    # The city-block distance transform is separable: along each axis in turn, a forward and a backward
    # sweep propagate d = min(d, d_neighbour + 1). Outside the array counts as outside the ROI (distance 0).
    n_z, n_y, n_x = mask.shape
    unreached = n_z + n_y + n_x + 1
    distance = np.empty(mask.shape, dtype=np.int32)
    for z in prange(n_z):
        for y in range(n_y):
            previous = 0
            for x in range(n_x):
                current = unreached if mask[z, y, x] else 0
                if previous + 1 < current:
                    current = previous + 1
                distance[z, y, x] = current
                previous = current
            previous = 0
            for x in range(n_x - 1, -1, -1):
                if previous + 1 < distance[z, y, x]:
                    distance[z, y, x] = previous + 1
                previous = distance[z, y, x]
        for y in range(n_y):
            for x in range(n_x):
                reach = 1 if y == 0 else distance[z, y - 1, x] + 1
                if reach < distance[z, y, x]:
                    distance[z, y, x] = reach
        for y in range(n_y - 1, -1, -1):
            for x in range(n_x):
                reach = 1 if y == n_y - 1 else distance[z, y + 1, x] + 1
                if reach < distance[z, y, x]:
                    distance[z, y, x] = reach
    if not in_plane:
        for y in prange(n_y):
            for z in range(n_z):
                for x in range(n_x):
                    reach = 1 if z == 0 else distance[z - 1, y, x] + 1
                    if reach < distance[z, y, x]:
                        distance[z, y, x] = reach
            for z in range(n_z - 1, -1, -1):
                for x in range(n_x):
                    reach = 1 if z == n_z - 1 else distance[z + 1, y, x] + 1
                    if reach < distance[z, y, x]:
                        distance[z, y, x] = reach
    return distance


def border_distance(morphological_mask: np.ndarray, in_plane: bool) -> np.ndarray:
    """int32 distance to the ROI border; see ``zones.border_distance_reference``."""
    return _border_distance_kernel(np.ascontiguousarray(morphological_mask, dtype=np.bool_), in_plane)


@njit(nogil=True, cache=True)
def _find_root(parent: np.ndarray, voxel: int) -> int:
    while parent[voxel] != voxel:
        grandparent = parent[parent[voxel]]
        parent[voxel] = grandparent  # path halving keeps later look-ups short
        voxel = grandparent
    return voxel


@njit(nogil=True, cache=True)
def _unite(parent: np.ndarray, first: int, second: int) -> None:
    first_root = _find_root(parent, first)
    second_root = _find_root(parent, second)
    # Hanging the larger root under the smaller makes every root its zone's first voxel in memory order.
    if first_root < second_root:
        parent[second_root] = first_root
    elif second_root < first_root:
        parent[first_root] = second_root


@njit(nogil=True, cache=True)
def _unite_with_earlier_neighbours(
    level_index: np.ndarray, parent: np.ndarray, earlier: np.ndarray, z: int, lowest_z: int
) -> None:
    n_z, n_y, n_x = level_index.shape
    for y in range(n_y):
        for x in range(n_x):
            level = level_index[z, y, x]
            if level == 0:
                continue
            voxel = (z * n_y + y) * n_x + x
            for k in range(earlier.shape[0]):
                zz = z + earlier[k, 0]
                yy = y + earlier[k, 1]
                xx = x + earlier[k, 2]
                if zz < lowest_z or yy < 0 or yy >= n_y or xx < 0 or xx >= n_x:
                    continue
                if level_index[zz, yy, xx] == level:
                    _unite(parent, voxel, (zz * n_y + yy) * n_x + xx)


@njit(parallel=True, nogil=True, cache=True)
def _label_zones_kernel(
    level_index: np.ndarray, earlier: np.ndarray, n_slabs: int, join_seams: bool
) -> np.ndarray:
    # Union-find over voxels, each joined with its already-visited neighbours of the same level. Slabs of
    # slices are labelled in parallel (a slab's unions touch only its own voxels), then the seams between
    # slabs are joined one after another.
    n_z, n_y, n_x = level_index.shape
    n_voxels = n_z * n_y * n_x
    parent = np.arange(n_voxels)
    for slab in prange(n_slabs):
        first_slice = slab * n_z // n_slabs
        for z in range(first_slice, (slab + 1) * n_z // n_slabs):
            _unite_with_earlier_neighbours(level_index, parent, earlier, z, first_slice)
    if join_seams:
        for slab in range(1, n_slabs):
            seam = slab * n_z // n_slabs
            _unite_with_earlier_neighbours(level_index, parent, earlier, seam, 0)
    flat_levels = level_index.ravel()
    root = np.empty(n_voxels, dtype=np.int64)
    for voxel in prange(n_voxels):
        if flat_levels[voxel] == 0:
            root[voxel] = -1
            continue
        ancestor = np.int64(voxel)
        while parent[ancestor] != ancestor:  # read-only walk: threads share ``parent`` here
            ancestor = parent[ancestor]
        root[voxel] = ancestor
    return root


@njit(nogil=True, cache=True)
def _zone_statistics_kernel(
    level_index: np.ndarray, root: np.ndarray, distance: np.ndarray, with_distance: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n_z, n_y, n_x = level_index.shape
    plane = n_y * n_x
    flat_levels = level_index.ravel()
    flat_distance = distance.ravel()
    size = np.zeros(root.shape[0], dtype=np.int64)
    nearest = np.full(root.shape[0], np.iinfo(np.int32).max, dtype=np.int64)
    n_zones = 0
    for voxel in range(root.shape[0]):
        zone = root[voxel]
        if zone < 0:
            continue
        if zone == voxel:
            n_zones += 1
        size[zone] += 1
        if with_distance and flat_distance[voxel] < nearest[zone]:
            nearest[zone] = flat_distance[voxel]
    zone_level = np.empty(n_zones, dtype=np.int64)
    zone_size = np.empty(n_zones, dtype=np.int64)
    zone_slice = np.empty(n_zones, dtype=np.int64)
    zone_distance = np.zeros(n_zones, dtype=np.int64)
    k = 0
    for voxel in range(root.shape[0]):
        if root[voxel] == voxel:
            zone_level[k] = flat_levels[voxel]
            zone_size[k] = size[voxel]
            zone_slice[k] = voxel // plane
            if with_distance:
                zone_distance[k] = nearest[voxel]
            k += 1
    return zone_level, zone_size, zone_slice, zone_distance


def find_zones(level_index: np.ndarray, in_plane: bool, distance: np.ndarray | None) -> Zones:
    """Zones by union-find; see ``zones.find_zones_reference``."""
    level_index = _volume_int32(level_index)
    n_slices = level_index.shape[0]
    # Negated forward directions are the neighbours already visited in memory order.
    earlier = np.ascontiguousarray(-(DIRECTIONS_2D if in_plane else DIRECTIONS_3D))
    n_slabs = n_slices if in_plane else max(1, min(n_slices, numba.get_num_threads()))
    root = _label_zones_kernel(level_index, earlier, n_slabs, not in_plane)
    with_distance = distance is not None
    distance_volume = (
        np.ascontiguousarray(distance, dtype=np.int32) if distance is not None
        else np.zeros((1, 1, 1), dtype=np.int32)
    )
    levels, sizes, slices, distances = _zone_statistics_kernel(level_index, root, distance_volume, with_distance)
    return Zones(levels, sizes, slices, distances if with_distance else None)


@njit(parallel=True, nogil=True, cache=True)
def _grey_tone_kernel(
    level_index: np.ndarray, grey_values: np.ndarray, neighbours: np.ndarray, n_blocks: int
) -> tuple[np.ndarray, np.ndarray]:
    n_z, n_y, n_x = level_index.shape
    n_present = grey_values.shape[0]
    voxel_counts = np.zeros((n_blocks, n_present), dtype=np.int64)
    difference_sums = np.zeros((n_blocks, n_present), dtype=np.float64)
    for block in prange(n_blocks):
        for z in range(block * n_z // n_blocks, (block + 1) * n_z // n_blocks):
            for y in range(n_y):
                for x in range(n_x):
                    level = level_index[z, y, x]
                    if level == 0:
                        continue
                    neighbour_sum = 0.0
                    neighbour_count = 0
                    for k in range(neighbours.shape[0]):
                        zz = z + neighbours[k, 0]
                        yy = y + neighbours[k, 1]
                        xx = x + neighbours[k, 2]
                        if zz < 0 or zz >= n_z or yy < 0 or yy >= n_y or xx < 0 or xx >= n_x:
                            continue
                        neighbour = level_index[zz, yy, xx]
                        if neighbour > 0:
                            neighbour_sum += grey_values[neighbour - 1]
                            neighbour_count += 1
                    if neighbour_count > 0:
                        voxel_counts[block, level - 1] += 1
                        difference_sums[block, level - 1] += abs(
                            grey_values[level - 1] - neighbour_sum / neighbour_count
                        )
    return voxel_counts, difference_sums


def grey_tone_differences(
    level_index: np.ndarray, grey_values: np.ndarray, in_plane: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(n_i, s_i) per slice or for the volume; see ``ngtdm.grey_tone_differences_reference``."""
    level_index = _volume_int32(level_index)
    grey_values = np.ascontiguousarray(grey_values, dtype=np.float64)
    neighbours = np.ascontiguousarray(NEIGHBOURS_2D if in_plane else NEIGHBOURS_3D)
    n_slices = level_index.shape[0]
    if in_plane:
        return _grey_tone_kernel(level_index, grey_values, neighbours, n_slices)
    blocks = _volume_blocks(n_slices, 2 * len(grey_values))
    voxel_counts, difference_sums = _grey_tone_kernel(level_index, grey_values, neighbours, blocks)
    return voxel_counts.sum(axis=0, keepdims=True), difference_sums.sum(axis=0, keepdims=True)


@njit(parallel=True, nogil=True, cache=True)
def _dependence_kernel(
    level_index: np.ndarray, neighbours: np.ndarray, n_present: int, n_columns: int, n_blocks: int
) -> np.ndarray:
    n_z, n_y, n_x = level_index.shape
    counts = np.zeros((n_blocks, n_present, n_columns), dtype=np.int64)
    for block in prange(n_blocks):
        for z in range(block * n_z // n_blocks, (block + 1) * n_z // n_blocks):
            for y in range(n_y):
                for x in range(n_x):
                    level = level_index[z, y, x]
                    if level == 0:
                        continue
                    dependence = 1
                    for k in range(neighbours.shape[0]):
                        zz = z + neighbours[k, 0]
                        yy = y + neighbours[k, 1]
                        xx = x + neighbours[k, 2]
                        if zz < 0 or zz >= n_z or yy < 0 or yy >= n_y or xx < 0 or xx >= n_x:
                            continue
                        if level_index[zz, yy, xx] == level:
                            dependence += 1
                    counts[block, level - 1, dependence - 1] += 1
    return counts


def count_dependences(level_index: np.ndarray, n_present: int, in_plane: bool, n_columns: int) -> np.ndarray:
    """Dependence counts (slices or 1, n_present, n_columns); see ``ngldm.count_dependences_reference``."""
    level_index = _volume_int32(level_index)
    neighbours = np.ascontiguousarray(NEIGHBOURS_2D if in_plane else NEIGHBOURS_3D)
    n_slices = level_index.shape[0]
    if in_plane:
        return _dependence_kernel(level_index, neighbours, n_present, n_columns, n_slices)
    blocks = _volume_blocks(n_slices, n_present * n_columns)
    return _dependence_kernel(level_index, neighbours, n_present, n_columns, blocks).sum(axis=0, keepdims=True)
