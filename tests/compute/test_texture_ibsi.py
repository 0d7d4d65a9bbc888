"""IBSI 1 digital phantom: every texture feature and aggregation against the reference values, per backend."""

from __future__ import annotations

import functools

import pytest

from gateway.compute.backend import gpu_unavailable_reason
from gateway.compute.features.texture import ALL_AGGREGATIONS, texture_features
from tests.compute.ibsi import load_digital_phantom, load_reference, within_tolerance

_NO_GPU_REASON = gpu_unavailable_reason()
BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("numba", id="numba"),
    pytest.param(
        "cupy", id="cupy",
        marks=[pytest.mark.gpu, pytest.mark.skipif(_NO_GPU_REASON is not None, reason=str(_NO_GPU_REASON))],
    ),
]

# The phantom's grey levels (1, 3, 4, 6) are used as they are: Ng = 6, no re-discretisation.
PHANTOM_LEVELS = 6

TEXTURE_REFERENCES = [row for row in load_reference() if row.aggregation and row.value is not None]
FAMILY_AGGREGATIONS = sorted({(row.family, row.aggregation) for row in TEXTURE_REFERENCES})


def _our_label(reference_aggregation: str) -> str:
    # The reference table writes "3D, merged"; FeatureValue.aggregation writes "3D merged".
    return reference_aggregation.replace(", ", " ")


@functools.cache
def _phantom_features(backend: str) -> dict[tuple[str, str, str], float]:
    image, mask, _ = load_digital_phantom()
    values = texture_features(image, mask, PHANTOM_LEVELS, aggregations=ALL_AGGREGATIONS, backend=backend)
    return {(value.family, value.ibsi_code, value.aggregation or ""): value.value for value in values}


def test_reference_table_covers_all_texture_features() -> None:
    counts: dict[str, int] = {}
    for row in TEXTURE_REFERENCES:
        counts[row.family] = counts.get(row.family, 0) + 1
    assert counts == {
        "Grey level co-occurrence based features": 25 * 6,
        "Grey level run length based features": 16 * 6,
        "Grey level size zone based features": 16 * 3,
        "Grey level distance zone based features": 16 * 3,
        "Neighbourhood grey tone difference based features": 5 * 3,
        "Neighbouring grey level dependence based features": 17 * 3,
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("family", "aggregation"), FAMILY_AGGREGATIONS, ids=[f"{f.split()[2]}-{a}" for f, a in FAMILY_AGGREGATIONS]
)
def test_digital_phantom_matches_ibsi(backend: str, family: str, aggregation: str) -> None:
    ours = _phantom_features(backend)
    failures = []
    for row in TEXTURE_REFERENCES:
        if (row.family, row.aggregation) != (family, aggregation):
            continue
        key = (row.family, row.ibsi_code, _our_label(row.aggregation))
        assert key in ours, f"{row.feature} ({row.ibsi_code}) is missing for {aggregation}"
        if not within_tolerance(ours[key], row):
            failures.append(f"{row.feature} ({row.ibsi_code}): {ours[key]:.6g}, IBSI {row.value}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("backend", BACKENDS)
def test_phantom_feature_labels(backend: str) -> None:
    image, mask, _ = load_digital_phantom()
    values = texture_features(image, mask, PHANTOM_LEVELS, aggregations=("3D merged",), backend=backend)
    reference_names = {(row.ibsi_code, row.feature) for row in TEXTURE_REFERENCES}
    for value in values:
        assert (value.ibsi_code, value.name) in reference_names
        assert value.key == value.key.lower() and "." not in value.key
    # "3D merged" selects 3D merged for GLCM/GLRLM and 3D for the families without directions.
    assert {value.aggregation for value in values} == {"3D merged", "3D"}
    assert len(values) == 25 + 16 + 16 + 16 + 5 + 17
