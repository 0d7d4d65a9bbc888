"""IBSI 1 texture feature families: GLCM, GLRLM, GLSZM, GLDZM, NGTDM and NGLDM.

Input: a discretised image (z, y, x) whose ROI voxels hold grey levels 1..Ng, the ROI (intensity) mask, Ng,
and for the GLDZM the morphological mask (defaults to the ROI mask). Everything is cropped to the masks'
bounding box first. Each family builds its matrices with one of three interchangeable kernels (NumPy
reference, Numba, CuPy; see ``gateway.compute.backend``) and evaluates the IBSI formulas on them with
NumPy (``matrix_features``).

Aggregations (FeatureValue.aggregation): "2D averaged", "2D slice-merged", "2.5D direction-merged",
"2.5D merged", "3D averaged", "3D merged" for GLCM and GLRLM; "2D", "2.5D", "3D" for the other four.
Requesting a GLCM-style name selects the matching dimension of the others ("3D merged" → "3D"), and a bare
"2D"/"2.5D"/"3D" selects both GLCM/GLRLM methods of that dimension.

Bad input and undefined values:
- ValueError: shape mismatch between image and masks, empty ROI mask, Ng < 1, ROI grey levels that are not
  whole numbers in 1..Ng, unknown aggregation or family names.
- NaN (the IBSI formula divides by zero, so the feature is undefined for that matrix): all GLCM features
  when no two ROI voxels are neighbours (e.g. a single-voxel ROI); GLCM correlation and information
  correlation 1 for a single grey level (zero variance, zero marginal entropy); all NGTDM features when no
  ROI voxel has an ROI neighbour; NGTDM coarseness, contrast, busyness and strength for a single grey level.
  Averaging aggregations average over the matrices where a feature is defined.
- A single grey level otherwise gives the IBSI values (e.g. GLRLM grey level variance 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from gateway.compute.backend import resolve_backend
from gateway.compute.features.base import FeatureValue
from gateway.compute.features.texture.aggregation import (
    ALL_AGGREGATIONS,
    DEFAULT_AGGREGATIONS,
    DIRECTIONAL_AGGREGATIONS,
    NON_DIRECTIONAL_AGGREGATIONS,
    non_directional_aggregations,
)
from gateway.compute.features.texture.context import TextureContext
from gateway.compute.features.texture.glcm import glcm_features, glcm_from_context
from gateway.compute.features.texture.gldzm import gldzm_features, gldzm_from_context
from gateway.compute.features.texture.glrlm import glrlm_features, glrlm_from_context
from gateway.compute.features.texture.glszm import glszm_features, glszm_from_context
from gateway.compute.features.texture.ngldm import ngldm_features, ngldm_from_context
from gateway.compute.features.texture.ngtdm import ngtdm_features, ngtdm_from_context
from gateway.compute.features.texture.roi import prepare_roi

FAMILIES: dict[str, Callable[[TextureContext, Iterable[str]], list[FeatureValue]]] = {
    "glcm": glcm_from_context,
    "glrlm": glrlm_from_context,
    "glszm": glszm_from_context,
    "gldzm": gldzm_from_context,
    "ngtdm": ngtdm_from_context,
    "ngldm": ngldm_from_context,
}


def texture_features(
    discretised: np.ndarray,
    mask: np.ndarray,
    n_levels: int,
    *,
    morphological_mask: np.ndarray | None = None,
    aggregations: Iterable[str] = DEFAULT_AGGREGATIONS,
    families: Iterable[str] = tuple(FAMILIES),
    backend: str | None = None,
) -> list[FeatureValue]:
    """All IBSI texture features of the requested families and aggregations, in family order.

    ``discretised``: grey levels 1..``n_levels`` inside ``mask`` (anything outside is ignored), (z, y, x) or a
    single (y, x) slice. ``morphological_mask`` (GLDZM border distances) defaults to ``mask``.
    ``aggregations`` defaults to "3D averaged" and "3D merged" (so "3D" for the other families); pass
    ``ALL_AGGREGATIONS`` for every IBSI method. ``families`` names a subset of ``FAMILIES``. ``backend``:
    "numpy", "numba", "cupy" or None for the best available (``gateway.compute.backend.resolve_backend``).
    The ROI is validated and prepared once, and zones are labelled once for GLSZM and GLDZM together.
    """
    chosen = [families] if isinstance(families, str) else list(families)
    unknown = [name for name in chosen if name not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown texture family/families {unknown}; choose from {', '.join(FAMILIES)}")
    aggregations = tuple(aggregations) if not isinstance(aggregations, str) else (aggregations,)
    non_directional_aggregations(aggregations)  # fail on unknown names before any work is done
    roi = prepare_roi(discretised, mask, n_levels, morphological_mask)
    context = TextureContext(roi, resolve_backend(backend), zone_distances="gldzm" in chosen)
    return [value for name in FAMILIES if name in chosen for value in FAMILIES[name](context, aggregations)]


__all__ = [
    "ALL_AGGREGATIONS",
    "DEFAULT_AGGREGATIONS",
    "DIRECTIONAL_AGGREGATIONS",
    "FAMILIES",
    "NON_DIRECTIONAL_AGGREGATIONS",
    "glcm_features",
    "gldzm_features",
    "glrlm_features",
    "glszm_features",
    "ngldm_features",
    "ngtdm_features",
    "texture_features",
]
