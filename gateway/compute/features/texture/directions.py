"""Neighbour offsets shared by the texture kernels, as (dz, dy, dx) steps in a (z, y, x) volume.

IBSI 1 uses Chebyshev distance 1 throughout: 13 unique directions in 3-D (each unordered voxel pair is seen
once; the co-occurrence matrix is symmetrised afterwards) and their 4 in-plane members for 2-D. The in-plane
directions come first so that ``DIRECTIONS_3D[:4]`` is ``DIRECTIONS_2D``: per-slice counts summed over slices
then give the first four 3-D matrices without counting them again.
"""

from __future__ import annotations

import numpy as np

DIRECTIONS_2D: np.ndarray = np.array(
    [(0, 0, 1), (0, 1, 1), (0, 1, 0), (0, 1, -1)],
    dtype=np.int64,
)
DIRECTIONS_3D: np.ndarray = np.concatenate([
    DIRECTIONS_2D,
    np.array(
        [(1, 0, 0), (1, 0, 1), (1, 0, -1), (1, 1, 0), (1, -1, 0), (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1)],
        dtype=np.int64,
    ),
])
OUT_OF_PLANE_DIRECTIONS: np.ndarray = DIRECTIONS_3D[len(DIRECTIONS_2D):]

# Full Chebyshev-1 neighbourhoods (both signs of each direction), for NGTDM and NGLDM.
NEIGHBOURS_2D: np.ndarray = np.concatenate([DIRECTIONS_2D, -DIRECTIONS_2D])
NEIGHBOURS_3D: np.ndarray = np.concatenate([DIRECTIONS_3D, -DIRECTIONS_3D])


def overlapping_slices(
    shape: tuple[int, ...], offset: np.ndarray | tuple[int, ...]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices (here, there) such that ``array[there]`` holds, for every voxel of ``array[here]``, the voxel at
    ``position + offset``; voxels whose partner falls outside the array are left out."""
    here: list[slice] = []
    there: list[slice] = []
    for size, step in zip(shape, offset, strict=True):
        step = int(step)
        if step >= 0:
            here.append(slice(0, size - step))
            there.append(slice(step, size))
        else:
            here.append(slice(-step, size))
            there.append(slice(0, size + step))
    return tuple(here), tuple(there)
