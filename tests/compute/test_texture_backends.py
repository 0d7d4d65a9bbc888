"""Numba and CuPy texture kernels against the NumPy references on random discretised volumes and masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from gateway.compute.backend import gpu_unavailable_reason
from gateway.compute.features.texture import ALL_AGGREGATIONS, texture_features
from gateway.compute.features.texture.directions import DIRECTIONS_2D, DIRECTIONS_3D
from gateway.compute.features.texture.glcm import count_cooccurrences
from gateway.compute.features.texture.glrlm import count_runs
from gateway.compute.features.texture.ngldm import count_dependences
from gateway.compute.features.texture.ngtdm import grey_tone_differences
from gateway.compute.features.texture.roi import PreparedRoi, prepare_roi
from gateway.compute.features.texture.zones import Zones, border_distance_map, find_zones

_NO_GPU_REASON = gpu_unavailable_reason()
FAST_BACKENDS = [
    pytest.param("numba", id="numba"),
    pytest.param(
        "cupy", id="cupy",
        marks=[pytest.mark.gpu, pytest.mark.skipif(_NO_GPU_REASON is not None, reason=str(_NO_GPU_REASON))],
    ),
]


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Image, intensity mask, morphological mask and Ng, with shapes and textures that vary with ``seed``:
    blocky textures for long runs and large zones, masks with holes, full boxes, thin slabs."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(size) for size in rng.integers(1, 14, size=3))
    n_levels = int(rng.integers(1, 10))
    image = rng.integers(1, n_levels + 1, size=shape)
    if seed % 3 == 1:
        smooth = ndimage.uniform_filter(rng.random(shape), size=3)
        image = 1 + np.minimum((smooth - smooth.min()) / (np.ptp(smooth) + 1e-12) * n_levels, n_levels - 1).astype(int)
    if seed % 4 == 0:
        mask = np.ones(shape, dtype=bool)
    else:
        mask = rng.random(shape) < rng.uniform(0.3, 0.95)
        mask.flat[rng.integers(mask.size)] = True
    morphological_mask = mask | (rng.random(shape) < 0.15) if seed % 2 else mask
    return image, mask, morphological_mask, n_levels


def _prepared(seed: int) -> PreparedRoi:
    image, mask, morphological_mask, n_levels = _random_case(seed)
    return prepare_roi(image, mask, n_levels, morphological_mask)


def _assert_same_features(reference: list, candidate: list) -> None:
    assert [(v.key, v.aggregation) for v in reference] == [(v.key, v.aggregation) for v in candidate]
    expected = np.array([v.value for v in reference])
    actual = np.array([v.value for v in candidate])
    np.testing.assert_array_equal(np.isnan(expected), np.isnan(actual))
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("seed", range(16))
def test_all_features_match_reference(backend: str, seed: int) -> None:
    image, mask, morphological_mask, n_levels = _random_case(seed)
    arguments = dict(morphological_mask=morphological_mask, aggregations=ALL_AGGREGATIONS)
    reference = texture_features(image, mask, n_levels, backend="numpy", **arguments)
    _assert_same_features(reference, texture_features(image, mask, n_levels, backend=backend, **arguments))


@pytest.mark.parametrize("seed", range(0, 16, 3))
def test_parallel_numba_matches_reference(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small volumes take the serial builds; force the parallel ones (several blocks, slab seams) here.
    from gateway.compute.features.texture import _numba

    monkeypatch.setattr(_numba, "_SERIAL_BELOW_VOXELS", 0)
    image, mask, morphological_mask, n_levels = _random_case(seed)
    arguments = dict(morphological_mask=morphological_mask, aggregations=ALL_AGGREGATIONS)
    reference = texture_features(image, mask, n_levels, backend="numpy", **arguments)
    _assert_same_features(reference, texture_features(image, mask, n_levels, backend="numba", **arguments))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("per_slice", [True, False], ids=["per-slice", "volume"])
def test_directional_counts_match_reference(backend: str, seed: int, per_slice: bool) -> None:
    roi = _prepared(seed)
    directions = DIRECTIONS_2D if per_slice else DIRECTIONS_3D
    for count in (count_cooccurrences, count_runs):
        expected = count(roi.level_index, roi.n_present, directions, per_slice, "numpy")
        np.testing.assert_array_equal(count(roi.level_index, roi.n_present, directions, per_slice, backend), expected)


def _zone_table(zones: Zones) -> np.ndarray:
    """Zones as sorted rows (level, size, slice, distance): the backends may list them in any order."""
    distance = zones.border_distance if zones.border_distance is not None else np.zeros_like(zones.size)
    table = np.stack([zones.level_index, zones.size, zones.slice_index, distance], axis=1).astype(np.int64)
    return table[np.lexsort(table.T[::-1])]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("in_plane", [True, False], ids=["2D", "3D"])
def test_zones_and_distances_match_reference(backend: str, seed: int, in_plane: bool) -> None:
    roi = _prepared(seed)
    distance = border_distance_map(roi.morphological_mask, in_plane, "numpy")
    np.testing.assert_array_equal(border_distance_map(roi.morphological_mask, in_plane, backend), distance)
    expected = _zone_table(find_zones(roi.level_index, in_plane, "numpy", distance))
    np.testing.assert_array_equal(_zone_table(find_zones(roi.level_index, in_plane, backend, distance)), expected)
    assert find_zones(roi.level_index, in_plane, backend).border_distance is None


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("in_plane", [True, False], ids=["2D", "3D"])
def test_neighbourhood_counts_match_reference(backend: str, seed: int, in_plane: bool) -> None:
    roi = _prepared(seed)
    expected_n, expected_s = grey_tone_differences(roi.level_index, roi.grey_values, in_plane, "numpy")
    actual_n, actual_s = grey_tone_differences(roi.level_index, roi.grey_values, in_plane, backend)
    np.testing.assert_array_equal(actual_n, expected_n)
    np.testing.assert_allclose(actual_s, expected_s, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(
        count_dependences(roi.level_index, roi.n_present, in_plane, backend),
        count_dependences(roi.level_index, roi.n_present, in_plane, "numpy"),
    )


def test_zones_span_slab_seams(monkeypatch: pytest.MonkeyPatch) -> None:
    # A zone that runs through every slice only joins up if the slabs labelled in parallel are stitched.
    from gateway.compute.features.texture import _numba

    monkeypatch.setattr(_numba, "_SERIAL_BELOW_VOXELS", 0)
    image = np.ones((24, 5, 5), dtype=int)
    image[:, 2, 2] = 2
    image[::2, 2, 2] = 3  # level 3 voxels alternate slices: diagonal-free, so each is its own 3-D zone
    mask = np.ones(image.shape, dtype=bool)
    roi = prepare_roi(image, mask, 3)
    for backend in ("numpy", "numba"):
        zones = find_zones(roi.level_index, False, backend)
        assert sorted(zones.size.tolist()) == [1] * 12 + [1] * 12 + [24 * 25 - 24]


def test_border_distance_reference_is_city_block_distance() -> None:
    # Brute force: the smallest |dz|+|dy|+|dx| to a voxel outside the mask, the world beyond the box included.
    rng = np.random.default_rng(7)
    mask = ndimage.binary_closing(rng.random((7, 9, 8)) < 0.8)
    padded = np.pad(mask, 1)
    outside = np.argwhere(~padded)
    expected = np.zeros(padded.shape, dtype=int)
    for voxel in np.argwhere(padded):
        expected[tuple(voxel)] = np.abs(outside - voxel).sum(axis=1).min()
    np.testing.assert_array_equal(border_distance_map(mask, False, "numpy"), expected[1:-1, 1:-1, 1:-1])
