"""Input checks, host/GPU transfers and the Numba decorator shared by the kernels and feature families.

Kernels take and return NumPy arrays; the CuPy backend moves its inputs to the GPU and its results back, so
callers never see device arrays. Every check raises ValueError with a message that names what is wrong,
because a radiomics value computed from a malformed input is worse than no value.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    import numba
except ImportError:  # the NumPy backend keeps working; resolve_backend refuses "numba"
    numba = None

Spacing = tuple[float, float, float]


def as_volume(image: Any, name: str = "image") -> np.ndarray:
    """The image as a C-contiguous float64 (z, y, x) array."""
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D (z, y, x) array, got {array.ndim} dimension(s)")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise ValueError(f"{name} must be real-valued, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float64)


def as_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """The mask as a C-contiguous bool array of ``shape``; only booleans or the values 0 and 1 pass."""
    array = np.asarray(mask)
    if array.shape != tuple(shape):
        raise ValueError(f"{name} shape {array.shape} does not match image shape {tuple(shape)}")
    if array.dtype != np.bool_:
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{name} must be boolean or 0/1, got dtype {array.dtype}")
        # A label map (values 2, 3, ...) or a partial-volume fraction would be silently misread as one ROI.
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must contain only 0 and 1 (or booleans); binarise label maps first")
    return np.ascontiguousarray(array, dtype=np.bool_)


def as_spacing(spacing: Sequence[float], name: str = "spacing") -> Spacing:
    """Three finite, positive voxel sizes (z, y, x) in mm."""
    values = tuple(float(value) for value in spacing)
    if len(values) != 3:
        raise ValueError(f"{name} must have three values (z, y, x), got {len(values)}")
    if not all(math.isfinite(value) and value > 0 for value in values):
        raise ValueError(f"{name} must be finite and positive, got {values}")
    return values  # type: ignore[return-value]


def require_nonempty(mask: np.ndarray, what: str = "region of interest") -> None:
    if not mask.any():
        raise ValueError(f"{what} is empty: the mask selects no voxel")


def require_finite(values: np.ndarray, what: str) -> None:
    if not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise ValueError(f"{what} contains {bad} non-finite value(s) (NaN or infinity)")


def bounding_box(mask: np.ndarray, what: str = "region of interest") -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest (inclusive) voxel index of the (z, y, x) mask along each axis.

    One pass over the whole mask finds the occupied slices; only that slab is read again for y and x, which
    keeps a small lesion in a large scan cheap. Raises ValueError for an empty mask.
    """
    occupied_slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if occupied_slices.size == 0:
        raise ValueError(f"{what} is empty: the mask selects no voxel")
    slab = mask[occupied_slices[0] : occupied_slices[-1] + 1]
    rows = np.flatnonzero(slab.any(axis=(0, 2)))
    columns = np.flatnonzero(slab.any(axis=(0, 1)))
    return (
        np.array([occupied_slices[0], rows[0], columns[0]], dtype=np.int64),
        np.array([occupied_slices[-1], rows[-1], columns[-1]], dtype=np.int64),
    )


def to_device(array: np.ndarray) -> Any:
    import cupy

    return cupy.asarray(array)


@functools.cache
def cupy_raw_kernel(source: str, name: str) -> Any:
    """A compiled CUDA kernel, built once per process (CuPy also caches the binary on disk)."""
    import cupy

    return cupy.RawKernel(source, name)


def to_host(array: Any) -> np.ndarray:
    if isinstance(array, np.ndarray):
        return array
    return array.get()


# Below this many inner-loop iterations (about a millisecond of serial work) a kernel runs serially: starting
# a parallel region costs tens of microseconds on an idle machine but milliseconds on a busy one (measured:
# 20 ms instead of 1 ms for the Moran pair sums of a 900-voxel lesion), which small regions cannot win back.
PARALLEL_MIN_WORK = 1 << 20


def jit_kernel(*, parallel: bool = False) -> Any:
    """Numba's ``njit`` as every kernel here uses it (no GIL, cached); a no-op decorator without Numba.

    ``parallel=True`` gives a ParallelKernel: the function compiled twice, with ``prange`` parallel and serial,
    called as ``kernel(*args, work=n)``.
    """
    if not parallel:
        return numba.njit(nogil=True, cache=True) if numba is not None else (lambda function: function)
    return ParallelKernel


class ParallelKernel:
    """A Numba kernel with a parallel and a serial build; each call picks one by its amount of ``work``."""

    def __init__(self, function: Any) -> None:
        functools.update_wrapper(self, function)
        if numba is None:
            self.parallel = self.serial = function
            return
        # A second function object with its own name, so that Numba's on-disk cache (keyed by the qualified
        # name) keeps the two builds apart.
        serial_function = types.FunctionType(
            function.__code__, function.__globals__, function.__name__, function.__defaults__, function.__closure__
        )
        serial_function.__qualname__ = f"{function.__qualname__}_serial"
        serial_function.__module__ = function.__module__
        self.parallel = numba.njit(parallel=True, nogil=True, cache=True)(function)
        self.serial = numba.njit(nogil=True, cache=True)(serial_function)

    def __call__(self, *args: Any, work: int) -> Any:
        return (self.parallel if work >= PARALLEL_MIN_WORK else self.serial)(*args)


prange = numba.prange if numba is not None else range
