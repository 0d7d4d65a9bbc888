"""IBSI texture aggregation methods, and turning per-matrix feature rows into labelled FeatureValues.

IBSI 1 (section 3.6.1 ff.) lets a texture family be computed per slice (2-D), from slice matrices merged over
the volume (2.5D) or from volumetric neighbourhoods (3-D). Families with directions (GLCM, GLRLM) add a
second choice: average the features over the per-direction matrices, or merge the matrices first.

Undefined values: when an IBSI formula divides by zero for a matrix (e.g. GLCM correlation of a single grey
level, or any feature of an empty matrix) the value for that matrix is NaN. Averaging aggregations average
over the matrices where the feature is defined, so one uniform slice does not make the whole 2-D average
NaN; the result is NaN only where the feature is undefined for every matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.compute.features.base import FeatureValue

DIRECTIONAL_AGGREGATIONS: tuple[str, ...] = (
    "2D averaged",
    "2D slice-merged",
    "2.5D direction-merged",
    "2.5D merged",
    "3D averaged",
    "3D merged",
)
"""Aggregations of the families with directions: GLCM and GLRLM."""

NON_DIRECTIONAL_AGGREGATIONS: tuple[str, ...] = ("2D", "2.5D", "3D")
"""Aggregations of GLSZM, GLDZM, NGTDM and NGLDM, whose matrices have no direction."""

ALL_AGGREGATIONS: tuple[str, ...] = DIRECTIONAL_AGGREGATIONS + NON_DIRECTIONAL_AGGREGATIONS
DEFAULT_AGGREGATIONS: tuple[str, ...] = ("3D averaged", "3D merged")


def _dimension(aggregation: str) -> str:
    return aggregation.split(" ", 1)[0]


def _check(aggregations: Iterable[str]) -> list[str]:
    requested = [aggregations] if isinstance(aggregations, str) else list(aggregations)
    unknown = [name for name in requested if name not in ALL_AGGREGATIONS]
    if unknown:
        raise ValueError(f"unknown texture aggregation(s) {unknown}; choose from {', '.join(ALL_AGGREGATIONS)}")
    if not requested:
        raise ValueError("no texture aggregation requested")
    return requested


def directional_aggregations(aggregations: Iterable[str]) -> tuple[str, ...]:
    """The GLCM/GLRLM methods meant by ``aggregations``; a bare "2D", "2.5D" or "3D" means both of its kind."""
    chosen: set[str] = set()
    for name in _check(aggregations):
        if name in DIRECTIONAL_AGGREGATIONS:
            chosen.add(name)
        else:
            chosen.update(method for method in DIRECTIONAL_AGGREGATIONS if _dimension(method) == name)
    return tuple(method for method in DIRECTIONAL_AGGREGATIONS if method in chosen)


def non_directional_aggregations(aggregations: Iterable[str]) -> tuple[str, ...]:
    """The GLSZM/GLDZM/NGTDM/NGLDM methods meant by ``aggregations`` ("3D merged" → "3D", and so on)."""
    chosen = {_dimension(name) for name in _check(aggregations)}
    return tuple(method for method in NON_DIRECTIONAL_AGGREGATIONS if method in chosen)


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    ibsi_code: str
    math_id: str

    @property
    def key(self) -> str:
        return self.math_id.replace(".", "_")


def average_over_matrices(per_matrix: np.ndarray) -> np.ndarray:
    """Mean of each feature (column) over the matrices (rows) where it is defined; NaN where it never is."""
    if per_matrix.shape[0] == 0:
        return np.full(per_matrix.shape[1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice" is the intended NaN
        return np.nanmean(per_matrix, axis=0)


def labelled(
    family: str, specs: Sequence[FeatureSpec], values: np.ndarray, aggregation: str
) -> list[FeatureValue]:
    return [
        FeatureValue(
            family=family, name=spec.name, ibsi_code=spec.ibsi_code, key=spec.key,
            value=float(value), aggregation=aggregation,
        )
        for spec, value in zip(specs, values, strict=True)
    ]
