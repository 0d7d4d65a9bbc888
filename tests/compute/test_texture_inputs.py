"""Bad and degenerate input to the texture features: clear ValueErrors, or documented IBSI/NaN values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.compute.backend import gpu_unavailable_reason
from gateway.compute.features.texture import (
    ALL_AGGREGATIONS,
    glcm_features,
    gldzm_features,
    glrlm_features,
    glszm_features,
    ngldm_features,
    ngtdm_features,
    texture_features,
)

_NO_GPU_REASON = gpu_unavailable_reason()
BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("numba", id="numba"),
    pytest.param(
        "cupy", id="cupy",
        marks=[pytest.mark.gpu, pytest.mark.skipif(_NO_GPU_REASON is not None, reason=str(_NO_GPU_REASON))],
    ),
]

GLCM_FAMILY = "Grey level co-occurrence based features"
NGTDM_FAMILY = "Neighbourhood grey tone difference based features"


def _volume(shape: tuple[int, ...] = (3, 4, 5), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 5, size=shape), np.ones(shape, dtype=bool)


def test_empty_mask_is_rejected() -> None:
    image, mask = _volume()
    with pytest.raises(ValueError, match="mask is empty"):
        texture_features(image, np.zeros_like(mask), 4)


@pytest.mark.parametrize("which", ["mask", "morphological mask"])
def test_shape_mismatch_is_rejected(which: str) -> None:
    image, mask = _volume()
    wrong = np.ones((3, 4, 6), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        if which == "mask":
            texture_features(image, wrong, 4)
        else:
            texture_features(image, mask, 4, morphological_mask=wrong)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda image: image.__setitem__((0, 0, 0), 0), "must lie in 1..4"),
        (lambda image: image.__setitem__((0, 0, 0), 5), "must lie in 1..4"),
        (lambda image: image.__setitem__((0, 0, 0), 2.5), "whole-number"),
        (lambda image: image.__setitem__((0, 0, 0), np.nan), "NaN"),
    ],
    ids=["zero", "above-Ng", "fraction", "nan"],
)
def test_grey_levels_outside_the_discretisation_are_rejected(edit, message: str) -> None:
    image, mask = _volume()
    image = image.astype(float)
    edit(image)
    with pytest.raises(ValueError, match=message):
        texture_features(image, mask, 4)


def test_values_outside_the_roi_are_ignored() -> None:
    image, mask = _volume()
    mask[0] = False
    padded = image.astype(float)
    padded[0] = np.nan  # e.g. NaN padding of an undiscretised background
    expected = texture_features(image, mask, 4, backend="numpy")
    assert [v.value for v in texture_features(padded, mask, 4, backend="numpy")] == [v.value for v in expected]


@pytest.mark.parametrize("n_levels", [0, -3, 2.5, True])
def test_invalid_number_of_levels_is_rejected(n_levels: object) -> None:
    image, mask = _volume()
    with pytest.raises(ValueError):
        texture_features(np.ones_like(image), mask, n_levels)  # type: ignore[arg-type]


def test_unknown_aggregation_and_family_are_rejected() -> None:
    image, mask = _volume()
    with pytest.raises(ValueError, match="aggregation"):
        texture_features(image, mask, 4, aggregations=("3D fused",))
    with pytest.raises(ValueError, match="famil"):
        texture_features(image, mask, 4, families=("glcmx",))
    with pytest.raises(ValueError, match="aggregation"):
        texture_features(image, mask, 4, aggregations=())


def test_bad_dimensions_are_rejected() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        texture_features(np.ones(5, dtype=int), np.ones(5, dtype=bool), 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_voxel_roi(backend: str) -> None:
    """No voxel pairs: GLCM and NGTDM are undefined (NaN); runs, zones and dependences are the IBSI values
    of one run/zone/voxel."""
    image, _ = _volume()
    mask = np.zeros(image.shape, dtype=bool)
    mask[1, 2, 3] = True
    values = texture_features(image, mask, 4, aggregations=ALL_AGGREGATIONS, backend=backend)
    for value in values:
        if value.family in (GLCM_FAMILY, NGTDM_FAMILY):
            assert math.isnan(value.value), value
        else:
            assert math.isfinite(value.value), value
    by_key = {(v.key, v.aggregation): v.value for v in values}
    level = float(image[1, 2, 3])
    assert by_key[("rlm_sre", "3D merged")] == 1.0
    assert by_key[("rlm_r_perc", "3D averaged")] == 1.0
    assert by_key[("szm_hgze", "3D")] == level**2
    assert by_key[("dzm_sde", "2D")] == 1.0
    assert by_key[("ngl_dc_perc", "2.5D")] == 1.0
    assert by_key[("ngl_lde", "3D")] == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_grey_level(backend: str) -> None:
    """One grey level: only the features whose IBSI formula divides by zero are NaN."""
    image, mask = _volume()
    values = texture_features(np.full(image.shape, 3), mask, 4, aggregations=ALL_AGGREGATIONS, backend=backend)
    undefined = {v.key for v in values if math.isnan(v.value)}
    assert undefined == {
        "cm_corr", "cm_info_corr_1", "ngt_coarseness", "ngt_contrast", "ngt_busyness", "ngt_strength",
    }
    by_key = {(v.key, v.aggregation): v.value for v in values}
    assert by_key[("cm_joint_max", "3D merged")] == 1.0
    assert by_key[("cm_joint_avg", "2D averaged")] == 3.0
    assert by_key[("rlm_gl_var", "3D merged")] == pytest.approx(0.0, abs=1e-12)
    assert by_key[("szm_z_perc", "3D")] == pytest.approx(1 / mask.sum())
    assert by_key[("ngt_complexity", "3D")] == 0.0


def test_two_dimensional_input_is_one_slice() -> None:
    image, mask = _volume((1, 6, 7))
    as_volume = texture_features(image, mask, 4, aggregations=ALL_AGGREGATIONS, backend="numpy")
    as_slice = texture_features(image[0], mask[0], 4, aggregations=ALL_AGGREGATIONS, backend="numpy")
    assert [v.value for v in as_slice] == pytest.approx([v.value for v in as_volume], nan_ok=True)
    by_key = {(v.key, v.aggregation): v.value for v in as_volume}
    # In one slice the 2-D and 3-D neighbourhoods see the same voxels.
    assert by_key[("cm_contrast", "2.5D merged")] == pytest.approx(by_key[("cm_contrast", "3D merged")])
    assert by_key[("szm_sze", "2D")] == pytest.approx(by_key[("szm_sze", "3D")])


def test_empty_slices_inside_the_box_are_skipped() -> None:
    # The ROI skips slice 1: 2-D aggregations average over the two occupied slices only (each slice has
    # the same number of direction matrices, so a plain mean of the per-slice results is the reference).
    image, mask = _volume((3, 5, 5))
    mask[1] = False
    two_d = ("2D averaged", "2D slice-merged", "2D")
    volume = texture_features(image, mask, 4, aggregations=two_d, backend="numpy")
    slices = [texture_features(image[z], mask[z], 4, aggregations=two_d, backend="numpy") for z in (0, 2)]
    for value, first, second in zip(volume, *slices, strict=True):
        assert value.value == pytest.approx(np.nanmean([first.value, second.value]), nan_ok=True), value


def test_family_functions_agree_with_entry_point() -> None:
    image, mask = _volume((4, 6, 6), seed=3)
    everything = {
        (v.key, v.aggregation): v.value for v in texture_features(image, mask, 4, aggregations=ALL_AGGREGATIONS)
    }
    for family in (glcm_features, glrlm_features, glszm_features, gldzm_features, ngtdm_features, ngldm_features):
        for value in family(image, mask, 4, aggregations=ALL_AGGREGATIONS):
            assert value.value == pytest.approx(everything[(value.key, value.aggregation)], nan_ok=True)


def test_morphological_mask_only_changes_distance_zones() -> None:
    image, wider = _volume((7, 9, 9), seed=4)
    mask = np.zeros_like(wider)
    mask[1:-1, 1:-1, 1:-1] = True  # one voxel in from the morphological border everywhere
    plain = {(v.key, v.aggregation): v.value for v in texture_features(image, mask, 4)}
    widened = {(v.key, v.aggregation): v.value for v in texture_features(image, mask, 4, morphological_mask=wider)}
    changed = {key for key in plain if plain[key] != pytest.approx(widened[key], nan_ok=True)}
    assert changed and all(key.startswith("dzm_") for key, _ in changed)
