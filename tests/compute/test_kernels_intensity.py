"""Intensity kernels: IBSI discretisation and re-segmentation, normalisation, Nyúl standardisation, histograms;
every backend against the NumPy reference; bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.compute.backend import gpu_unavailable_reason
from gateway.compute.kernels.intensity import (
    clip_intensities,
    count_levels,
    discretise_fixed_bin_number,
    discretise_fixed_bin_size,
    image_landmarks,
    learn_nyul_standard,
    nyul_standardise,
    outlier_range,
    piecewise_linear_map,
    region_mean_and_std,
    resegment_outliers,
    resegment_range,
    window_intensities,
    zscore_normalise,
)
from tests.compute.ibsi import load_digital_phantom

GPU_SKIP = pytest.mark.skipif(gpu_unavailable_reason() is not None,
                              reason=f"CuPy backend unavailable: {gpu_unavailable_reason()}")
BACKENDS = ["numpy", "numba", pytest.param("cupy", marks=[GPU_SKIP, pytest.mark.gpu])]
ACCELERATED = ["numba", pytest.param("cupy", marks=[GPU_SKIP, pytest.mark.gpu])]


def _row(values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(values, dtype=np.float64).reshape(1, 1, -1)
    return image, np.ones(image.shape, dtype=bool)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_bin_number_follows_ibsi(backend: str) -> None:
    image, mask = _row([0.0, 0.99, 1.0, 2.5, 3.999, 4.0])
    mask[0, 0, 1] = False
    # Xmin 0, Xmax 4, Ng 4: floor(4 (X - 0) / 4) + 1, and Ng at the maximum.
    result = discretise_fixed_bin_number(image, mask, 4, backend=backend)
    assert result.dtype == np.int32
    assert result[0, 0].tolist() == [1, 0, 2, 3, 4, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_bin_number_of_a_constant_region_is_ng(backend: str) -> None:
    image, mask = _row([7.0, 7.0, 7.0])
    assert discretise_fixed_bin_number(image, mask, 16, backend=backend)[0, 0].tolist() == [16, 16, 16]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_bin_size_follows_ibsi(backend: str) -> None:
    image, mask = _row([-500.0, -476.0, -475.0, -1.0, 400.0])
    result = discretise_fixed_bin_size(image, mask, 25.0, lower_bound=-500.0, backend=backend)
    assert result[0, 0].tolist() == [1, 1, 2, 20, 37]
    # Without a lower bound the ROI minimum anchors the bins.
    assert discretise_fixed_bin_size(image + 3, mask, 25.0, backend=backend)[0, 0].tolist() == [1, 1, 2, 20, 37]


@pytest.mark.parametrize("backend", BACKENDS)
def test_digital_phantom_grey_levels_are_kept_by_both_discretisations(backend: str) -> None:
    image, mask, _ = load_digital_phantom()
    by_size = discretise_fixed_bin_size(image, mask, 1.0, backend=backend)
    by_number = discretise_fixed_bin_number(image, mask, 6, backend=backend)
    np.testing.assert_array_equal(by_size[mask], image[mask])
    np.testing.assert_array_equal(by_number[mask], image[mask])
    assert (by_size[~mask] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_resegmentation(backend: str) -> None:
    image, mask = _row([-1000.0, -500.0, 0.0, 400.0, 401.0])
    assert resegment_range(image, mask, -500, 400, backend=backend)[0, 0].tolist() == [False, True, True, True,
                                                                                        False]
    assert resegment_range(image, mask, -500, None, backend=backend)[0, 0].tolist() == [False, True, True, True,
                                                                                         True]
    values = np.concatenate([np.zeros(50), [100.0]])
    image, mask = _row(values.tolist())
    low, high = outlier_range(image, mask, 3.0, backend=backend)
    assert low == pytest.approx(values.mean() - 3 * values.std())
    assert high == pytest.approx(values.mean() + 3 * values.std())
    kept = resegment_outliers(image, mask, backend=backend)
    assert kept[0, 0, :50].all() and not kept[0, 0, 50]


@pytest.mark.parametrize("backend", BACKENDS)
def test_zscore_and_clipping(backend: str) -> None:
    rng = np.random.default_rng(5)
    image = rng.normal(40, 9, size=(6, 7, 8))
    mask = rng.random(image.shape) > 0.4
    normalised = zscore_normalise(image, mask, backend=backend)
    assert normalised[mask].mean() == pytest.approx(0.0, abs=1e-12)
    assert normalised[mask].std() == pytest.approx(1.0)
    mean, std = region_mean_and_std(image, mask, backend=backend)
    assert mean == pytest.approx(image[mask].mean()) and std == pytest.approx(image[mask].std())
    clipped = clip_intensities(image, 35.0, None, backend=backend)
    assert clipped.min() == 35.0 and clipped.max() == image.max()
    windowed = window_intensities(image, 40.0, 10.0, backend=backend)
    assert windowed.min() == 35.0 and windowed.max() == 45.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_nyul_maps_affinely_related_images_onto_one_scale(backend: str) -> None:
    rng = np.random.default_rng(6)
    base = rng.gamma(3.0, 20.0, size=(8, 9, 10))
    images = [base, 2.5 * base + 100.0, 0.5 * base - 7.0]
    standard = learn_nyul_standard(images, backend=backend, standard_range=(0.0, 100.0))
    assert standard.landmarks[0] == pytest.approx(0.0) and standard.landmarks[-1] == pytest.approx(100.0)
    results = [nyul_standardise(image, standard, backend=backend) for image in images]
    np.testing.assert_allclose(results[1], results[0], atol=1e-9)
    np.testing.assert_allclose(results[2], results[0], atol=1e-9)
    landmarks = image_landmarks(results[0], None, standard.percentiles, backend=backend)
    np.testing.assert_allclose(landmarks, standard.landmarks, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_piecewise_map_extrapolates_along_end_segments(backend: str) -> None:
    image, _ = _row([-10.0, 0.0, 5.0, 10.0, 30.0])
    result = piecewise_linear_map(image, np.array([0.0, 10.0, 20.0]), np.array([0.0, 50.0, 60.0]),
                                  backend=backend)
    np.testing.assert_allclose(result[0, 0], [-50.0, 0.0, 25.0, 50.0, 70.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_count_levels(backend: str) -> None:
    levels = np.array([0, 2, 2, 5, 2, 0])
    assert count_levels(levels, 7, backend=backend).tolist() == [2, 0, 3, 0, 0, 1, 0]
    assert count_levels(np.array([], dtype=np.int64), 3, backend=backend).tolist() == [0, 0, 0]


@pytest.mark.parametrize("backend", ACCELERATED)
@pytest.mark.parametrize("seed", range(5))
def test_backends_match_numpy_on_random_input(backend: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 20, size=3))
    image = rng.normal(rng.uniform(-200, 200), rng.uniform(1, 300), size=shape).round(int(rng.integers(0, 3)))
    mask = rng.random(shape) > rng.uniform(0.1, 0.9)
    mask.flat[int(rng.integers(mask.size))] = True
    bins = int(rng.integers(1, 64))
    width = float(rng.uniform(0.5, 40))
    calls = [
        lambda b: discretise_fixed_bin_number(image, mask, bins, backend=b),
        lambda b: discretise_fixed_bin_size(image, mask, width, backend=b),
        lambda b: discretise_fixed_bin_size(image, mask, width, float(image[mask].min()) - 3.0, backend=b),
        lambda b: resegment_range(image, mask, -50.0, 120.0, backend=b),
        lambda b: resegment_outliers(image, mask, 2.0, backend=b),
        lambda b: clip_intensities(image, -20.0, 20.0, backend=b),
        lambda b: np.asarray(region_mean_and_std(image, mask, backend=b)),
        lambda b: image_landmarks(image, mask, backend=b),
        lambda b: count_levels(discretise_fixed_bin_number(image, mask, bins)[mask], bins + 1, backend=b),
    ]
    for call in calls:
        expected = call("numpy")
        result = call(backend)
        assert result.dtype == expected.dtype
        np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-9)
    if np.unique(image[mask]).size > 20:
        standard = learn_nyul_standard([image, image * 3], [mask, mask], backend="numpy")
        np.testing.assert_allclose(nyul_standardise(image, standard, mask, backend=backend),
                                   nyul_standardise(image, standard, mask, backend="numpy"), rtol=1e-12, atol=1e-9)
        if np.std(image[mask]) > 0:
            np.testing.assert_allclose(zscore_normalise(image, mask, backend=backend),
                                       zscore_normalise(image, mask, backend="numpy"), rtol=1e-12, atol=1e-12)


def test_bad_input_is_rejected() -> None:
    image, mask = _row([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="empty"):
        discretise_fixed_bin_number(image, np.zeros_like(mask), 4)
    with pytest.raises(ValueError, match="does not match"):
        discretise_fixed_bin_size(image, np.ones((1, 1, 4), bool), 1.0)
    nan_image = image.copy()
    nan_image[0, 0, 1] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        discretise_fixed_bin_number(nan_image, mask, 4)
    with pytest.raises(ValueError, match="bin_number"):
        discretise_fixed_bin_number(image, mask, 0)
    with pytest.raises(ValueError, match="bin_number"):
        discretise_fixed_bin_number(image, mask, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bin_width"):
        discretise_fixed_bin_size(image, mask, -1.0)
    with pytest.raises(ValueError, match="below the lower bound"):
        discretise_fixed_bin_size(image, mask, 1.0, lower_bound=2.0)
    with pytest.raises(ValueError, match="lower <= upper"):
        resegment_range(image, mask, 5.0, 1.0)
    with pytest.raises(ValueError, match="all values are equal"):
        zscore_normalise(np.ones((2, 2, 2)), np.ones((2, 2, 2), bool))
    with pytest.raises(ValueError, match="not strictly increasing"):
        learn_nyul_standard([np.ones((3, 3, 3))])
    with pytest.raises(ValueError, match="masks"):
        learn_nyul_standard([image, image], [mask])
    with pytest.raises(ValueError, match="levels must lie"):
        count_levels(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="only 0 and 1"):
        resegment_range(image, np.full(image.shape, 3), 0.0, 1.0)
    with pytest.raises(ValueError, match="positive width"):
        window_intensities(image, 0.0, 0.0)
