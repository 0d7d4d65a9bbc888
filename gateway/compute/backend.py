"""Choice of array backend for compute kernels.

Every kernel exists three times behind one interface: a plain NumPy reference (the definition), a Numba
version for CPUs and a CuPy version for GPUs. Callers pass ``backend=None`` to get the best available one,
or name one to force it; tests name each in turn and compare with ``"numpy"``.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

Backend = Literal["numpy", "numba", "cupy"]
BACKENDS: tuple[Backend, ...] = ("numpy", "numba", "cupy")
ENV_BACKEND = "GATEWAY_COMPUTE_BACKEND"


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (e.g. CuPy without a usable GPU)."""


@functools.cache
def gpu_unavailable_reason() -> str | None:
    """None when CuPy can run kernels on a GPU here, otherwise why not (for test skips and logs)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return f"CuPy is not importable: {exc}"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device visible"
        # A trivial kernel proves the driver, runtime and compiler work together.
        (cupy.arange(4) * 2).sum().item()
    except Exception as exc:
        return f"CUDA is not usable: {exc}"
    return None


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str | None = None) -> Backend:
    """Return the backend to use: the one asked for (checked), else $GATEWAY_COMPUTE_BACKEND, else auto."""
    requested = backend or os.environ.get(ENV_BACKEND) or None
    if requested is None or requested == "auto":
        if gpu_unavailable_reason() is None:
            return "cupy"
        return "numba" if numba_available() else "numpy"
    if requested not in BACKENDS:
        raise ValueError(f"unknown compute backend {requested!r}; choose one of {', '.join(BACKENDS)} or auto")
    if requested == "cupy" and (reason := gpu_unavailable_reason()) is not None:
        raise BackendUnavailable(f"backend 'cupy' requested but {reason}")
    if requested == "numba" and not numba_available():
        raise BackendUnavailable("backend 'numba' requested but Numba is not installed")
    return requested  # type: ignore[return-value]
