"""The label-map path (extract_label_map_features) against the per-lesion definition (extract_features).

The batched Numba kernels restate the NumPy formulas lesion by lesion; these tests check every feature of
every lesion of random label maps (touching lesions, lesions on the image border, single voxels, constant
intensities) against extract_features on the lesion's own mask with the NumPy reference backend.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from gateway.compute.backend import gpu_unavailable_reason
from gateway.compute.features import _label_map_numba as kernels
from gateway.compute.features.base import FeatureValue
from gateway.compute.features.label_map import extract_label_map_features
from gateway.compute.features.pipeline import extract_features
from gateway.compute.features.texture import ALL_AGGREGATIONS
from gateway.compute.features.texture.matrix_features import (
    cooccurrence_features,
    ngtdm_features,
    zone_features,
)

GPU_SKIP = pytest.mark.skipif(gpu_unavailable_reason() is not None,
                              reason=f"CuPy backend unavailable: {gpu_unavailable_reason()}")
RTOL = 1e-9
ABS = 1e-9

OPTIONS: list[dict[str, object]] = [
    {"bin_width": 10.0},
    {"bin_number": 16, "resegment_range": (-60.0, 200.0), "ivh_bin_width": 2.5},
    {"bin_width": 7.0, "resegment_range": (-80.0, 150.0)},
    {"bin_number": 8, "outlier_sigma": 2.0, "ivh_bin_number": 40, "texture_aggregations": ("3D merged",)},
    {},  # no discretisation: no histogram, no texture
]


def random_label_map(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Blobs (unions of ellipsoids) with labels 1..n in noise; some touch, one sits on the image border, one is
    a single voxel and one has a constant intensity."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(14, 30, size=3))
    grid = np.indices(shape).transpose(1, 2, 3, 0).astype(np.float64)
    labels = np.zeros(shape, dtype=np.uint8)
    n_blobs = int(rng.integers(3, 7))
    for label in range(1, n_blobs + 1):
        centre = rng.uniform(0.0, 1.0, size=3) * (np.asarray(shape) - 1)
        radii = rng.uniform(1.0, 0.3 * min(shape), size=3)
        labels[(((grid - centre) / radii) ** 2).sum(axis=3) <= 1.0] = label
        labels[tuple(np.round(centre).astype(int))] = label
    labels[0, 0, 0] = n_blobs + 1  # on the border, a single voxel unless a blob reaches it
    image = np.round(rng.normal(rng.uniform(-20, 60), rng.uniform(5, 60), size=shape))
    image[labels == n_blobs] = 42.0  # constant intensity: undefined Moran's I, skewness 0, ...
    spacing = tuple(float(s) for s in rng.uniform(0.6, 2.5, size=3))
    return image, labels, spacing  # type: ignore[return-value]


def assert_same(got: list[FeatureValue], want: list[FeatureValue], context: str) -> None:
    assert [(f.key, f.aggregation) for f in got] == [(f.key, f.aggregation) for f in want], context
    for a, b in zip(got, want, strict=True):
        assert (a.family, a.name, a.ibsi_code) == (b.family, b.name, b.ibsi_code)
        if math.isnan(b.value):
            assert math.isnan(a.value), f"{context}: {a.key} [{a.aggregation}] = {a.value}, expected NaN"
        else:
            assert a.value == pytest.approx(b.value, rel=RTOL, abs=ABS), f"{context}: {a.key} [{a.aggregation}]"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("option", range(len(OPTIONS)))
def test_batched_equals_each_lesion_by_the_reference(seed: int, option: int) -> None:
    image, labels, spacing = random_label_map(seed)
    options = OPTIONS[option]
    table = extract_label_map_features(image, labels, spacing, backend="numba", **options)  # type: ignore[arg-type]
    assert list(table.labels) == sorted(int(v) for v in np.unique(labels) if v > 0)
    for label in table.labels:
        expected = extract_features(image, labels == label, spacing, backend="numpy", **options)  # type: ignore[arg-type]
        assert_same(table.features(label), expected, f"seed {seed}, options {options}, label {label}")


@pytest.mark.parametrize("backend", ["numpy", "numba", pytest.param("cupy", marks=[GPU_SKIP, pytest.mark.gpu])])
def test_every_backend_and_the_per_lesion_fallbacks_agree(backend: str) -> None:
    # Resampling and 2-D aggregations take the per-lesion path (texture per lesion on the batched path).
    image, labels, spacing = random_label_map(7)
    for options in ({"bin_number": 12, "texture_aggregations": ALL_AGGREGATIONS},
                    {"bin_width": 12.0, "new_spacing": (1.5, 1.2, 1.0), "round_intensities": True},
                    {"bin_number": 10, "new_spacing": (1.1, 1.6, 1.3), "image_interpolation": "cubic",
                     "mask_interpolation": "nearest", "texture_aggregations": ("3D merged",)}):
        table = extract_label_map_features(image, labels, spacing, backend=backend, **options)  # type: ignore[arg-type]
        for label in table.labels:
            expected = extract_features(image, labels == label, spacing, backend="numpy", **options)  # type: ignore[arg-type]
            assert_same(table.features(label), expected, f"{backend}, {options}, label {label}")


def test_two_voxel_lesion_on_the_batched_path() -> None:
    image, labels, spacing = random_label_map(2)
    lesion = int(labels.max()) + 1
    labels[-1, -1, -3:-1] = lesion
    image[-1, -1, -3:-1] = [-200.0, 300.0]  # nothing between P10 and P90: robust deviations are NaN
    table = extract_label_map_features(image, labels, spacing, backend="numba", bin_number=8)
    expected = extract_features(image, labels == lesion, spacing, backend="numpy", bin_number=8)
    assert_same(table.features(lesion), expected, "two-voxel lesion")
    assert math.isnan(table.as_dict(lesion)["ih_rmad"])


def test_label_selection_and_table_access() -> None:
    image, labels, spacing = random_label_map(1)
    table = extract_label_map_features(image, labels, spacing, label_values=[3, 1], bin_width=10.0)
    assert table.labels == (1, 3)
    assert table.values.shape == (2, len(table.columns))
    row = table.as_dict(3)
    assert row["stat_mean"] == pytest.approx(float(image[labels == 3].mean()))
    assert row["cm_joint_max [3D merged]"] == table.row(3)[[c.label for c in table.columns].index(
        "cm_joint_max [3D merged]")]
    assert set(table.as_dicts()) == {1, 3}
    with pytest.raises(KeyError):
        table.row(2)


@pytest.mark.parametrize(("labels", "message"), [
    (np.full((4, 4, 4), -1, dtype=np.int16), "negative"),
    (np.zeros((4, 4, 4), dtype=np.uint8), "no lesion"),
    (np.ones((4, 4, 4), dtype=np.float32), "integers"),
    (np.ones((4, 4, 5), dtype=np.uint8), "does not match"),
])
def test_bad_label_maps_are_refused(labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        extract_label_map_features(np.zeros((4, 4, 4)), labels, (1.0, 1.0, 1.0), bin_width=1.0)


def test_absent_label_value_is_refused() -> None:
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 2
    with pytest.raises(ValueError, match=r"\[1\]"):
        extract_label_map_features(np.zeros((4, 4, 4)), labels, (1.0, 1.0, 1.0), label_values=[1, 2])


@pytest.mark.parametrize("seed", range(3))
def test_label_boxes_equal_find_objects(seed: int) -> None:
    _, labels, _ = random_label_map(seed)
    labels[labels == 2] = 0  # an absent label value in the middle of the range
    boxes = kernels.label_boxes(labels, int(labels.max()))
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            assert (boxes[label, :3] > boxes[label, 3:]).all()
        else:
            assert boxes[label].tolist() == [s.start for s in box] + [s.stop - 1 for s in box]


# --- the kernel formulas against matrix_features, including degenerate matrices --------------------------

def _random_grey(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.sort(rng.choice(np.arange(1, 3 * n + 2), size=n, replace=False)).astype(np.float64)


@pytest.mark.parametrize("seed", range(6))
def test_cooccurrence_formulas_match_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    ordered = rng.integers(0, 5, size=(n, n)) * (rng.random((n, n)) < 0.7)
    counts = ordered + ordered.T
    grey = _random_grey(rng, n)
    n_levels = int(grey.max()) + int(rng.integers(0, 3))
    got = np.empty(kernels.GLCM)
    kernels.cooccurrence_values(counts.astype(np.int64), grey, n_levels, got)
    want = cooccurrence_features(counts[np.newaxis], grey, n_levels)[0]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ABS, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_zone_and_grey_tone_formulas_match_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, n_columns = int(rng.integers(1, 6)), int(rng.integers(1, 8))
    counts = (rng.integers(0, 6, size=(n, n_columns)) * (rng.random((n, n_columns)) < 0.6)).astype(np.float64)
    grey = _random_grey(rng, n)
    column_values = np.sort(rng.choice(np.arange(1, 40), size=n_columns, replace=False)).astype(np.float64)
    n_voxels = float(counts.sum() + rng.integers(0, 10))
    got = np.empty(17)
    kernels.zone_values(counts, grey, column_values, n_voxels, got)
    want = zone_features(counts[np.newaxis], grey, column_values, np.array([n_voxels]))[0]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ABS, equal_nan=True)

    voxel_counts = counts[:, 0]
    difference_sums = rng.uniform(0, 20, size=n) * (voxel_counts > 0)
    got = np.empty(kernels.NGTDM)
    kernels.grey_tone_values(voxel_counts, difference_sums, grey, got)
    want = ngtdm_features(voxel_counts[np.newaxis], difference_sums[np.newaxis], grey)[0]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ABS, equal_nan=True)


def test_empty_matrices_give_nan() -> None:
    grey = np.array([1.0, 2.0])
    glcm = np.empty(kernels.GLCM)
    kernels.cooccurrence_values(np.zeros((2, 2), dtype=np.int64), grey, 2, glcm)
    zones = np.empty(17)
    kernels.zone_values(np.zeros((2, 3)), grey, np.array([1.0, 2.0, 3.0]), 5.0, zones)
    tones = np.empty(kernels.NGTDM)
    kernels.grey_tone_values(np.zeros(2), np.zeros(2), grey, tones)
    assert np.isnan(glcm).all() and np.isnan(zones).all() and np.isnan(tones).all()
