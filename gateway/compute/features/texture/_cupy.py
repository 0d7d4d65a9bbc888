"""CuPy kernels for the texture matrices, for a CUDA GPU.

Where the NumPy reference is a handful of whole-array operations (co-occurrence pairs, neighbourhood sums,
dependence counts), it runs unchanged on CuPy arrays: one definition, two devices. Runs, zones and border
distances need per-voxel walks or a union-find, so they are CUDA kernels below, one thread per voxel (runs,
zones) or per line (distances). Results return to the host as NumPy arrays; the matrices are small.

CuPy is imported inside the functions so that this module imports on machines without it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from gateway.compute.features.texture.glcm import count_cooccurrences_reference
from gateway.compute.features.texture.ngldm import count_dependences_reference
from gateway.compute.features.texture.ngtdm import grey_tone_differences_reference
from gateway.compute.features.texture.zones import Zones

_THREADS_PER_BLOCK = 256

_KERNEL_SOURCE = r"""
extern "C" __global__
void count_runs(const int* level_index, const long long* directions, const int n_directions,
                const int n_z, const int n_y, const int n_x, const int n_present, const int max_run,
                const int per_slice, unsigned long long* counts)
{
    const long long voxel = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (voxel >= (long long)n_z * n_y * n_x) return;
    const int level = level_index[voxel];
    if (level == 0) return;
    const int x = (int)(voxel % n_x);
    const int y = (int)((voxel / n_x) % n_y);
    const int z = (int)(voxel / ((long long)n_x * n_y));
    const long long block = per_slice ? z : 0;
    for (int d = 0; d < n_directions; ++d) {
        const int step_z = (int)directions[3 * d];
        const int step_y = (int)directions[3 * d + 1];
        const int step_x = (int)directions[3 * d + 2];
        // Only the first voxel of a run walks it, so each run is counted once.
        int zz = z - step_z, yy = y - step_y, xx = x - step_x;
        if (zz >= 0 && zz < n_z && yy >= 0 && yy < n_y && xx >= 0 && xx < n_x
                && level_index[((long long)zz * n_y + yy) * n_x + xx] == level) {
            continue;
        }
        int length = 1;
        zz = z + step_z; yy = y + step_y; xx = x + step_x;
        while (zz >= 0 && zz < n_z && yy >= 0 && yy < n_y && xx >= 0 && xx < n_x
                && level_index[((long long)zz * n_y + yy) * n_x + xx] == level) {
            ++length;
            zz += step_z; yy += step_y; xx += step_x;
        }
        atomicAdd(&counts[((block * n_directions + d) * n_present + (level - 1)) * max_run + (length - 1)],
                  1ULL);
    }
}

extern "C" __global__
void border_distance_pass(int* distance, const long long n_lines, const long long lines_per_group,
                          const long long line_stride, const long long group_stride, const long long step,
                          const int length)
{
    // One thread per line along the axis: a forward and a backward sweep of d = min(d, d_previous + 1),
    // with the outside of the array at distance 0.
    const long long line = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (line >= n_lines) return;
    const long long start = (line / lines_per_group) * group_stride + (line % lines_per_group) * line_stride;
    int previous = 0;
    for (int k = 0; k < length; ++k) {
        const long long at = start + k * step;
        int current = distance[at];
        if (previous + 1 < current) current = previous + 1;
        distance[at] = current;
        previous = current;
    }
    previous = 0;
    for (int k = length - 1; k >= 0; --k) {
        const long long at = start + k * step;
        int current = distance[at];
        if (previous + 1 < current) current = previous + 1;
        distance[at] = current;
        previous = current;
    }
}

__device__ int find_root(const int* parent, int voxel)
{
    // volatile: other threads re-hang roots while we walk, and we must see their writes.
    const volatile int* shared_parent = parent;
    int next = shared_parent[voxel];
    while (next != voxel) {
        voxel = next;
        next = shared_parent[voxel];
    }
    return voxel;
}

__device__ void unite(int* parent, int first, int second)
{
    // Lock-free union: hang the larger root under the smaller with compare-and-swap; if another thread
    // re-hung that root first, look the roots up again and retry. Parents only ever decrease, so no cycle.
    while (true) {
        first = find_root(parent, first);
        second = find_root(parent, second);
        if (first == second) return;
        if (first > second) { const int swap = first; first = second; second = swap; }
        if (atomicCAS(&parent[second], second, first) == second) return;
    }
}

extern "C" __global__
void unite_zones(const int* level_index, int* parent, const int n_z, const int n_y, const int n_x,
                 const int in_plane)
{
    const long long voxel = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (voxel >= (long long)n_z * n_y * n_x) return;
    const int level = level_index[voxel];
    if (level == 0) return;
    const int x = (int)(voxel % n_x);
    const int y = (int)((voxel / n_x) % n_y);
    const int z = (int)(voxel / ((long long)n_x * n_y));
    // The 13 (4 in-plane) neighbours that come earlier in memory order; the others reach us from theirs.
    for (int dz = in_plane ? 0 : -1; dz <= 0; ++dz) {
        for (int dy = -1; dy <= 1; ++dy) {
            for (int dx = -1; dx <= 1; ++dx) {
                if (dz == 0 && (dy > 0 || (dy == 0 && dx >= 0))) continue;
                const int zz = z + dz, yy = y + dy, xx = x + dx;
                if (zz < 0 || yy < 0 || yy >= n_y || xx < 0 || xx >= n_x) continue;
                const int neighbour = (zz * n_y + yy) * n_x + xx;
                if (level_index[neighbour] == level) unite(parent, (int)voxel, neighbour);
            }
        }
    }
}

extern "C" __global__
void zone_roots(const int* level_index, const int* parent, int* root, const long long n_voxels)
{
    const long long voxel = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (voxel >= n_voxels) return;
    root[voxel] = level_index[voxel] > 0 ? find_root(parent, (int)voxel) : -1;
}

extern "C" __global__
void zone_nearest_border(const int* root, const int* distance, int* nearest, const long long n_voxels)
{
    const long long voxel = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (voxel >= n_voxels) return;
    const int zone = root[voxel];
    if (zone >= 0) atomicMin(&nearest[zone], distance[voxel]);
}
"""


@functools.cache
def _module() -> Any:
    import cupy

    return cupy.RawModule(code=_KERNEL_SOURCE)


@functools.cache
def _kernel(name: str) -> Any:
    return _module().get_function(name)


def _launch(name: str, n_threads: int, *arguments: Any) -> None:
    blocks = max(1, (n_threads + _THREADS_PER_BLOCK - 1) // _THREADS_PER_BLOCK)
    _kernel(name)((blocks,), (_THREADS_PER_BLOCK,), arguments)


def _on_device(level_index: np.ndarray) -> Any:
    import cupy

    if level_index.size >= np.iinfo(np.int32).max:
        raise ValueError("the ROI's bounding box is too large for the GPU kernels (2^31 voxels or more)")
    return cupy.asarray(np.ascontiguousarray(level_index, dtype=np.int32))


def count_cooccurrences(
    level_index: np.ndarray, n_present: int, directions: np.ndarray, per_slice: bool
) -> np.ndarray:
    import cupy

    counts = count_cooccurrences_reference(_on_device(level_index), n_present, directions, per_slice, xp=cupy)
    return cupy.asnumpy(counts)


def count_runs(
    level_index: np.ndarray, n_present: int, directions: np.ndarray, per_slice: bool, max_run: int
) -> np.ndarray:
    import cupy

    levels = _on_device(level_index)
    n_z, n_y, n_x = level_index.shape
    n_blocks = n_z if per_slice else 1
    counts = cupy.zeros((n_blocks, len(directions), n_present, max_run), dtype=cupy.uint64)
    _launch(
        "count_runs", levels.size, levels, cupy.asarray(np.ascontiguousarray(directions, dtype=np.int64)),
        np.int32(len(directions)), np.int32(n_z), np.int32(n_y), np.int32(n_x), np.int32(n_present),
        np.int32(max_run), np.int32(per_slice), counts,
    )
    return cupy.asnumpy(counts).astype(np.int64)


def _border_distance_on_device(morphological_mask: np.ndarray, in_plane: bool) -> Any:
    import cupy

    n_z, n_y, n_x = morphological_mask.shape
    plane = n_y * n_x
    unreached = n_z + n_y + n_x + 1
    distance = cupy.asarray(morphological_mask).astype(cupy.int32) * np.int32(unreached)
    # (lines, lines per group, stride between lines, stride between groups, step along the line, length)
    passes = [
        (n_z * n_y, n_y, n_x, plane, 1, n_x),  # along x: groups are slices, lines are rows
        (n_z * n_x, n_x, 1, plane, n_x, n_y),  # along y: groups are slices, lines are columns
    ]
    if not in_plane:
        passes.append((plane, plane, 1, 0, plane, n_z))  # along z: one group of all (y, x) lines
    for n_lines, lines_per_group, line_stride, group_stride, step, length in passes:
        _launch(
            "border_distance_pass", n_lines, distance, np.int64(n_lines), np.int64(lines_per_group),
            np.int64(line_stride), np.int64(group_stride), np.int64(step), np.int32(length),
        )
    return distance


def border_distance(morphological_mask: np.ndarray, in_plane: bool) -> np.ndarray:
    import cupy

    return cupy.asnumpy(_border_distance_on_device(np.ascontiguousarray(morphological_mask), in_plane))


def find_zones(level_index: np.ndarray, in_plane: bool, distance: np.ndarray | None) -> Zones:
    import cupy

    levels = _on_device(level_index)
    n_z, n_y, n_x = level_index.shape
    n_voxels = levels.size
    parent = cupy.arange(n_voxels, dtype=cupy.int32)
    _launch("unite_zones", n_voxels, levels, parent, np.int32(n_z), np.int32(n_y), np.int32(n_x), np.int32(in_plane))
    root = cupy.empty(n_voxels, dtype=cupy.int32)
    _launch("zone_roots", n_voxels, levels, parent, root, np.int64(n_voxels))
    # Each zone's root is its first voxel in memory order (roots only ever hang under smaller ones).
    zone_ids = cupy.flatnonzero(root == cupy.arange(n_voxels, dtype=cupy.int32))
    sizes = cupy.bincount(root[root >= 0], minlength=n_voxels)[zone_ids]
    zone_levels = levels.ravel()[zone_ids]
    zone_slices = zone_ids // (n_y * n_x)
    zone_distance = None
    if distance is not None:
        nearest = cupy.full(n_voxels, np.iinfo(np.int32).max, dtype=cupy.int32)
        device_distance = cupy.asarray(np.ascontiguousarray(distance, dtype=np.int32))
        _launch("zone_nearest_border", n_voxels, root, device_distance, nearest, np.int64(n_voxels))
        zone_distance = cupy.asnumpy(nearest[zone_ids]).astype(np.int64)
    return Zones(
        cupy.asnumpy(zone_levels).astype(np.int64),
        cupy.asnumpy(sizes).astype(np.int64),
        cupy.asnumpy(zone_slices).astype(np.int64),
        zone_distance,
    )


def grey_tone_differences(
    level_index: np.ndarray, grey_values: np.ndarray, in_plane: bool
) -> tuple[np.ndarray, np.ndarray]:
    import cupy

    voxel_counts, difference_sums = grey_tone_differences_reference(
        _on_device(level_index), grey_values, in_plane, xp=cupy
    )
    return cupy.asnumpy(voxel_counts), cupy.asnumpy(difference_sums)


def count_dependences(level_index: np.ndarray, n_present: int, in_plane: bool) -> np.ndarray:
    import cupy

    return cupy.asnumpy(count_dependences_reference(_on_device(level_index), n_present, in_plane, xp=cupy))
