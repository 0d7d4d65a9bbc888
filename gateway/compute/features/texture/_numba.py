"""Numba kernels for the texture matrices: the same counts as the NumPy references, in compiled loops.

Parallel work is split into blocks of whole slices. Per-slice results (2-D methods) use one block per slice,
so every block writes only its own part of the output; volume results use about one block per thread and
are summed afterwards, which keeps threads from contending for the same counters. All kernels take the
prepared int32 level-index volume (0 outside the ROI); ``cache=True`` keeps compiled code between runs.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from gateway.compute.features.texture.directions import DIRECTIONS_3D, NEIGHBOURS_2D, NEIGHBOURS_3D
from gateway.compute.features.texture.zones import Zones

_BLOCK_BUDGET_ENTRIES = 1 << 25
"""Largest number of counters the per-thread partial results may hold together (256 MiB of int64)."""

_SERIAL_BELOW_VOXELS = 1 << 16
"""Volumes smaller than this run single-threaded: waking the thread team would cost more than the loops,
and far more on a machine whose cores are all busy (e.g. many small lesions processed side by side)."""


def _runs_serially(n_voxels: int) -> bool:
    return n_voxels < _SERIAL_BELOW_VOXELS or numba.get_num_threads() == 1


class _ParallelOrSerial:
    """A loop nest compiled twice, with and without ``parallel=True``; the call picks by volume size.

    The first argument of every such kernel is the volume it loops over. Inside the serial build ``prange``
    is a plain ``range``.
    """

    def __init__(self, loops: Callable[..., Any]) -> None:
        self.parallel = njit(parallel=True, nogil=True, cache=True)(loops)
        serial_loops = types.FunctionType(
            loops.__code__, loops.__globals__, f"{loops.__name__}_serial", loops.__defaults__, loops.__closure__
        )
        # Numba names its on-disk cache after the qualified name; the serial build needs a name of its own.
        serial_loops.__qualname__ = f"{loops.__qualname__}_serial"
        self.serial = njit(nogil=True, cache=True)(serial_loops)

    def __call__(self, volume: np.ndarray, *arguments: Any) -> Any:
        kernel = self.serial if _runs_serially(volume.size) else self.parallel
        return kernel(volume, *arguments)


def _volume_blocks(level_index: np.ndarray, entries_per_block: int) -> int:
    """How many partial results to split a volume's counting into: one per thread, within the memory budget."""
    if _runs_serially(level_index.size):
        return 1
    by_memory = max(1, _BLOCK_BUDGET_ENTRIES // max(1, entries_per_block))
    return max(1, min(level_index.shape[0], numba.get_num_threads(), by_memory))


def _padded(level_index: np.ndarray) -> np.ndarray:
    """The level-index volume with a one-voxel border of zeros (outside the ROI) on every side.

    Every neighbour of an interior voxel then exists, so the kernels step through the flat array by fixed
    offsets with no bounds checks, and runs stop at the border by themselves.
    """
    padded = np.zeros(tuple(size + 2 for size in level_index.shape), dtype=np.int32)
    padded[1:-1, 1:-1, 1:-1] = level_index
    return padded


def _flat_offsets(shape: tuple[int, ...], steps: np.ndarray) -> np.ndarray:
    """(dz, dy, dx) steps as offsets in the flattened C-order array of ``shape``."""
    _, n_y, n_x = shape
    steps = np.asarray(steps, dtype=np.int64)
    return np.ascontiguousarray(steps[:, 0] * n_y * n_x + steps[:, 1] * n_x + steps[:, 2])


@_ParallelOrSerial
def _cooccurrence_kernel(padded: np.ndarray, offsets: np.ndarray, n_present: int, n_blocks: int) -> np.ndarray:
    n_z, n_y, n_x = padded.shape
    inner_slices = n_z - 2
    flat = padded.ravel()
    n_directions = offsets.shape[0]
    counts = np.zeros((n_blocks, n_directions, n_present, n_present), dtype=np.int64)
    for block in prange(n_blocks):
        for z in range(1 + block * inner_slices // n_blocks, 1 + (block + 1) * inner_slices // n_blocks):
            for y in range(1, n_y - 1):
                row = (z * n_y + y) * n_x
                for x in range(1, n_x - 1):
                    first = flat[row + x]
                    if first == 0:
                        continue
                    for d in range(n_directions):
                        second = flat[row + x + offsets[d]]
                        if second > 0:
                            counts[block, d, first - 1, second - 1] += 1
    return counts


def count_cooccurrences(
    level_index: np.ndarray, n_present: int, directions: np.ndarray, per_slice: bool
) -> np.ndarray:
    """Ordered-pair counts (slices or 1, directions, n_present, n_present); see the NumPy reference."""
    padded = _padded(level_index)
    offsets = _flat_offsets(padded.shape, directions)
    n_slices = level_index.shape[0]
    if per_slice:
        return _cooccurrence_kernel(padded, offsets, n_present, n_slices)
    blocks = _volume_blocks(level_index, len(directions) * n_present * n_present)
    return _cooccurrence_kernel(padded, offsets, n_present, blocks).sum(axis=0, keepdims=True)


@_ParallelOrSerial
def _run_kernel(padded: np.ndarray, offsets: np.ndarray, n_present: int, max_run: int, n_blocks: int) -> np.ndarray:
    n_z, n_y, n_x = padded.shape
    inner_slices = n_z - 2
    flat = padded.ravel()
    n_directions = offsets.shape[0]
    counts = np.zeros((n_blocks, n_directions, n_present, max_run), dtype=np.int64)
    for block in prange(n_blocks):
        # Direction outermost: the look-back then streams through memory at a fixed distance.
        for d in range(n_directions):
            step = offsets[d]
            for z in range(1 + block * inner_slices // n_blocks, 1 + (block + 1) * inner_slices // n_blocks):
                for y in range(1, n_y - 1):
                    row = (z * n_y + y) * n_x
                    for x in range(1, n_x - 1):
                        voxel = row + x
                        level = flat[voxel]
                        # Only the first voxel of a run walks it, so each run is counted once.
                        if level == 0 or flat[voxel - step] == level:
                            continue
                        length = 1
                        ahead = voxel + step
                        while flat[ahead] == level:
                            length += 1
                            ahead += step
                        counts[block, d, level - 1, length - 1] += 1
    return counts


def count_runs(
    level_index: np.ndarray, n_present: int, directions: np.ndarray, per_slice: bool, max_run: int
) -> np.ndarray:
    """Run counts (slices or 1, directions, n_present, max_run); see the NumPy reference."""
    padded = _padded(level_index)
    offsets = _flat_offsets(padded.shape, directions)
    n_slices = level_index.shape[0]
    if per_slice:
        return _run_kernel(padded, offsets, n_present, max_run, n_slices)
    blocks = _volume_blocks(level_index, len(directions) * n_present * max_run)
    return _run_kernel(padded, offsets, n_present, max_run, blocks).sum(axis=0, keepdims=True)


@_ParallelOrSerial
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
def _unite_slice_with_earlier(
    flat: np.ndarray, parent: np.ndarray, earlier: np.ndarray, z: int, n_y: int, n_x: int,
    with_previous_slice: bool,
) -> None:
    # ``earlier`` holds the flat offsets of the 4 in-plane neighbours that precede a voxel in memory order,
    # then the 9 of the previous slice. Two same-level neighbours that touch each other are already joined
    # (the later of them was processed before this voxel), which lets the common cases skip most unions.
    plane = n_y * n_x
    n_earlier = earlier.shape[0] if with_previous_slice else 4
    for y in range(1, n_y - 1):
        row = (z * n_y + y) * n_x
        for x in range(1, n_x - 1):
            voxel = row + x
            level = flat[voxel]
            if level == 0:
                continue
            if with_previous_slice and flat[voxel - plane] == level:
                # The voxel straight below touches all 12 other earlier neighbours.
                _unite(parent, voxel, voxel - plane)
                continue
            if flat[voxel - n_x] == level:
                # The voxel straight above in the slice touches all earlier neighbours but the three of
                # the previous slice's next row.
                _unite(parent, voxel, voxel - n_x)
                if with_previous_slice:
                    for dx in range(-1, 2):
                        other = voxel - plane + n_x + dx
                        if flat[other] == level:
                            _unite(parent, voxel, other)
                continue
            for k in range(n_earlier):
                other = voxel + earlier[k]
                if flat[other] == level:
                    _unite(parent, voxel, other)


@_ParallelOrSerial
def _label_zones_kernel(padded: np.ndarray, earlier: np.ndarray, n_slabs: int, join_slices: bool) -> np.ndarray:
    # Union-find over voxels, each joined with its already-visited neighbours of the same level. Slabs of
    # slices are labelled in parallel (a slab's unions touch only its own voxels), then the seams between
    # slabs are joined one after another.
    n_z, n_y, n_x = padded.shape
    inner_slices = n_z - 2
    flat = padded.ravel()
    n_voxels = flat.shape[0]
    parent = np.arange(n_voxels, dtype=np.int32)  # int32 halves the memory; the wrapper checks the size
    for slab in prange(n_slabs):
        first_slice = 1 + slab * inner_slices // n_slabs
        for z in range(first_slice, 1 + (slab + 1) * inner_slices // n_slabs):
            _unite_slice_with_earlier(flat, parent, earlier, z, n_y, n_x, join_slices and z > first_slice)
    if join_slices:
        for slab in range(1, n_slabs):
            _unite_slice_with_earlier(flat, parent, earlier, 1 + slab * inner_slices // n_slabs, n_y, n_x, True)
    root = np.empty(n_voxels, dtype=np.int32)
    for voxel in prange(n_voxels):
        if flat[voxel] == 0:
            root[voxel] = -1
            continue
        ancestor = np.int64(voxel)
        while parent[ancestor] != ancestor:  # read-only walk: threads share ``parent`` here
            ancestor = parent[ancestor]
        root[voxel] = ancestor
    return root


@njit(nogil=True, cache=True)
def _zone_statistics_kernel(
    padded: np.ndarray, root: np.ndarray, distance: np.ndarray, with_distance: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    plane = padded.shape[1] * padded.shape[2]
    flat_levels = padded.ravel()
    flat_distance = distance.ravel()
    size = np.zeros(root.shape[0], dtype=np.int32)
    nearest = np.full(root.shape[0], np.iinfo(np.int32).max, dtype=np.int32)
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
            zone_slice[k] = voxel // plane - 1  # back to unpadded slices
            if with_distance:
                zone_distance[k] = nearest[voxel]
            k += 1
    return zone_level, zone_size, zone_slice, zone_distance


def find_zones(level_index: np.ndarray, in_plane: bool, distance: np.ndarray | None) -> Zones:
    """Zones by union-find; see ``zones.find_zones_reference``."""
    padded = _padded(level_index)
    if padded.size >= np.iinfo(np.int32).max:
        raise ValueError("the ROI's bounding box is too large for zone labelling (2^31 voxels or more)")
    # Negated forward directions are the neighbours that precede a voxel in memory order, in-plane first.
    earlier = _flat_offsets(padded.shape, -DIRECTIONS_3D)
    n_slices = level_index.shape[0]
    n_slabs = n_slices if in_plane else _volume_blocks(level_index, 1)
    root = _label_zones_kernel(padded, earlier, n_slabs, not in_plane)
    with_distance = distance is not None
    padded_distance = _padded(distance) if distance is not None else np.zeros((1, 1, 1), dtype=np.int32)
    levels, sizes, slices, distances = _zone_statistics_kernel(padded, root, padded_distance, with_distance)
    return Zones(levels, sizes, slices, distances if with_distance else None)


@_ParallelOrSerial
def _grey_tone_kernel(
    padded: np.ndarray, grey_values: np.ndarray, offsets: np.ndarray, n_blocks: int
) -> tuple[np.ndarray, np.ndarray]:
    n_z, n_y, n_x = padded.shape
    inner_slices = n_z - 2
    flat = padded.ravel()
    n_present = grey_values.shape[0]
    voxel_counts = np.zeros((n_blocks, n_present), dtype=np.int64)
    difference_sums = np.zeros((n_blocks, n_present), dtype=np.float64)
    for block in prange(n_blocks):
        for z in range(1 + block * inner_slices // n_blocks, 1 + (block + 1) * inner_slices // n_blocks):
            for y in range(1, n_y - 1):
                row = (z * n_y + y) * n_x
                for x in range(1, n_x - 1):
                    level = flat[row + x]
                    if level == 0:
                        continue
                    neighbour_sum = 0.0
                    neighbour_count = 0
                    for k in range(offsets.shape[0]):
                        neighbour = flat[row + x + offsets[k]]
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
    padded = _padded(level_index)
    offsets = _flat_offsets(padded.shape, NEIGHBOURS_2D if in_plane else NEIGHBOURS_3D)
    grey_values = np.ascontiguousarray(grey_values, dtype=np.float64)
    n_slices = level_index.shape[0]
    if in_plane:
        return _grey_tone_kernel(padded, grey_values, offsets, n_slices)
    blocks = _volume_blocks(level_index, 2 * len(grey_values))
    voxel_counts, difference_sums = _grey_tone_kernel(padded, grey_values, offsets, blocks)
    return voxel_counts.sum(axis=0, keepdims=True), difference_sums.sum(axis=0, keepdims=True)


@_ParallelOrSerial
def _dependence_kernel(
    padded: np.ndarray, offsets: np.ndarray, n_present: int, n_columns: int, n_blocks: int
) -> np.ndarray:
    n_z, n_y, n_x = padded.shape
    inner_slices = n_z - 2
    flat = padded.ravel()
    counts = np.zeros((n_blocks, n_present, n_columns), dtype=np.int64)
    for block in prange(n_blocks):
        for z in range(1 + block * inner_slices // n_blocks, 1 + (block + 1) * inner_slices // n_blocks):
            for y in range(1, n_y - 1):
                row = (z * n_y + y) * n_x
                for x in range(1, n_x - 1):
                    level = flat[row + x]
                    if level == 0:
                        continue
                    dependence = 1
                    for k in range(offsets.shape[0]):
                        if flat[row + x + offsets[k]] == level:
                            dependence += 1
                    counts[block, level - 1, dependence - 1] += 1
    return counts


def count_dependences(level_index: np.ndarray, n_present: int, in_plane: bool, n_columns: int) -> np.ndarray:
    """Dependence counts (slices or 1, n_present, n_columns); see ``ngldm.count_dependences_reference``."""
    padded = _padded(level_index)
    offsets = _flat_offsets(padded.shape, NEIGHBOURS_2D if in_plane else NEIGHBOURS_3D)
    n_slices = level_index.shape[0]
    if in_plane:
        return _dependence_kernel(padded, offsets, n_present, n_columns, n_slices)
    blocks = _volume_blocks(level_index, n_present * n_columns)
    return _dependence_kernel(padded, offsets, n_present, n_columns, blocks).sum(axis=0, keepdims=True)
