"""Numba kernels of the label-map path: every lesion's voxel-level features in one parallel call.

``lesion_features`` takes all lesions of a label map at once, each cropped and flattened into shared arrays,
and computes per lesion (one lesion per thread at a time, no Python in between): discretisation, intensity
statistics, intensity histogram, intensity-volume histogram, local intensity peaks, the Moran/Geary pair
sums where the pairwise form is the cheaper one, and the 3-D texture matrices of all six families with
their features ("3D averaged" and "3D merged" for GLCM and GLRLM, "3D" for the others).

Every formula here restates a NumPy reference elsewhere in ``gateway.compute.features`` (named in each
function's docstring), which stays the definition; ``tests/compute/test_label_map.py`` checks that the
label-map path equals extracting each lesion on its own. One jitted entry point holds everything, so a new
process loads a single object from Numba's on-disk cache instead of one per kernel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from gateway.compute.features.intensity_stats import _statistics_numba
from gateway.compute.features.texture import _numba as texture_kernels
from gateway.compute.features.texture.directions import DIRECTIONS_3D, NEIGHBOURS_3D

STATISTICS = 18
HISTOGRAM = 23
IVH = 7
LOCAL_INTENSITY = 2
MORAN_SUMS = 3  # weight sum, cross sum, difference sum over ordered pairs (see morphology._pair_sums)
GLCM = 25
GLRLM = 16
GLSZM = 16
GLDZM = 16
NGTDM = 5
NGLDM = 17

# Column layout of the output rows.
STATISTICS_AT = 0
HISTOGRAM_AT = STATISTICS_AT + STATISTICS
IVH_AT = HISTOGRAM_AT + HISTOGRAM
LOCAL_INTENSITY_AT = IVH_AT + IVH
MORAN_AT = LOCAL_INTENSITY_AT + LOCAL_INTENSITY
N_LEVELS_AT = MORAN_AT + MORAN_SUMS
GLCM_AT = N_LEVELS_AT + 1  # "3D averaged", then "3D merged"
GLRLM_AT = GLCM_AT + 2 * GLCM  # "3D averaged", then "3D merged"
GLSZM_AT = GLRLM_AT + 2 * GLRLM
GLDZM_AT = GLSZM_AT + GLSZM
NGTDM_AT = GLDZM_AT + GLDZM
NGLDM_AT = NGTDM_AT + NGTDM
COLUMNS = NGLDM_AT + NGLDM

DISCRETISE_NONE, DISCRETISE_BIN_NUMBER, DISCRETISE_BIN_WIDTH = 0, 1, 2
IVH_DISCRETE, IVH_BIN_WIDTH, IVH_BIN_NUMBER = 0, 1, 2

_DIRECTIONS = np.ascontiguousarray(DIRECTIONS_3D, dtype=np.int64)
_NEIGHBOURS = np.ascontiguousarray(NEIGHBOURS_3D, dtype=np.int64)
_BORDER_DISTANCE = texture_kernels._border_distance_kernel.serial
_LABEL_ZONES = texture_kernels._label_zones_kernel.serial
_ZONE_STATISTICS = texture_kernels._zone_statistics_kernel


# --- label map -----------------------------------------------------------------------------------------------

@njit(parallel=True, nogil=True, cache=True)
def label_boxes(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """(n_labels + 1, 6): lowest z, y, x then highest z, y, x of each label value (lowest > highest: absent).
    Labels must not be negative (the caller checks).

    Slabs of slices run in parallel, each with its own boxes, merged at the end (the NumPy reference is
    ``scipy.ndimage.find_objects``)."""
    n_z, n_y, n_x = labels.shape
    n_slabs = min(n_z, 64)
    partial = np.empty((n_slabs, n_labels + 1, 6), dtype=np.int64)
    for slab in prange(n_slabs):
        boxes = partial[slab]
        for label in range(n_labels + 1):
            boxes[label, 0] = n_z
            boxes[label, 1] = n_y
            boxes[label, 2] = n_x
            boxes[label, 3] = -1
            boxes[label, 4] = -1
            boxes[label, 5] = -1
        for z in range(slab * n_z // n_slabs, (slab + 1) * n_z // n_slabs):
            for y in range(n_y):
                row = labels[z, y]
                # Most rows of a label map are empty; an OR over the row vectorises, the box updates do not.
                occupied = row[0]
                for x in range(1, n_x):
                    occupied |= row[x]
                if occupied == 0:
                    continue
                for x in range(n_x):
                    label = row[x]
                    if label <= 0:
                        continue
                    if z < boxes[label, 0]:
                        boxes[label, 0] = z
                    if y < boxes[label, 1]:
                        boxes[label, 1] = y
                    if x < boxes[label, 2]:
                        boxes[label, 2] = x
                    if z > boxes[label, 3]:
                        boxes[label, 3] = z
                    if y > boxes[label, 4]:
                        boxes[label, 4] = y
                    if x > boxes[label, 5]:
                        boxes[label, 5] = x
    merged = partial[0].copy()
    for slab in range(1, n_slabs):
        for label in range(n_labels + 1):
            for axis in range(3):
                merged[label, axis] = min(merged[label, axis], partial[slab, label, axis])
                merged[label, axis + 3] = max(merged[label, axis + 3], partial[slab, label, axis + 3])
    return merged


# --- first-order families ------------------------------------------------------------------------------------

@njit(nogil=True, cache=True)
def _histogram_percentile(cumulative: np.ndarray, percentile: float) -> float:
    """intensity_histogram._percentile."""
    total = cumulative[-1]
    position = percentile / 100.0 * (total - 1)
    below = math.floor(position)
    low = np.searchsorted(cumulative, below, side="right") + 1.0
    high = np.searchsorted(cumulative, min(below + 1, total - 1), side="right") + 1.0
    return low + (position - below) * (high - low)


@njit(nogil=True, cache=True)
def histogram_values(counts: np.ndarray, out: np.ndarray) -> None:
    """intensity_histogram.histogram_feature_values of ``counts[i - 1] = n_i``, written into ``out`` (23)."""
    n_bins = counts.size
    total = counts.sum()
    mean = 0.0
    for k in range(n_bins):
        mean += (k + 1.0) * counts[k] / total
    second = third = fourth = 0.0
    for k in range(n_bins):
        p = counts[k] / total
        d = k + 1.0 - mean
        second += d * d * p
        third += d * d * d * p
        fourth += d * d * d * d * p
    variance = second
    skewness = kurtosis = 0.0
    if variance > 0:
        skewness = third / variance**1.5
        kurtosis = fourth / variance**2 - 3.0
    cumulative = np.cumsum(counts)
    p10 = _histogram_percentile(cumulative, 10.0)
    p25 = _histogram_percentile(cumulative, 25.0)
    median = _histogram_percentile(cumulative, 50.0)
    p75 = _histogram_percentile(cumulative, 75.0)
    p90 = _histogram_percentile(cumulative, 90.0)
    first = 0
    while counts[first] == 0:
        first += 1
    last = n_bins - 1
    while counts[last] == 0:
        last -= 1
    minimum, maximum = first + 1.0, last + 1.0
    fullest = counts.max()
    mode = 0.0
    nearest = np.inf
    for k in range(n_bins):
        # Ties go to the bin nearest the mean, then to the lower bin (strict < keeps the first).
        if counts[k] == fullest and abs(k + 1.0 - mean) < nearest:
            nearest = abs(k + 1.0 - mean)
            mode = k + 1.0
    central_count = central_sum = 0.0
    for k in range(n_bins):
        if p10 <= k + 1.0 <= p90:
            central_count += counts[k]
            central_sum += (k + 1.0) * counts[k]
    # Two occupied bins far apart leave none in [P10, P90]: the robust deviation is undefined (NaN).
    central_mean = central_sum / central_count if central_count > 0 else 0.0
    robust = mad = medad = entropy = uniformity = 0.0
    for k in range(n_bins):
        p = counts[k] / total
        grey = k + 1.0
        if p10 <= grey <= p90:
            robust += abs(grey - central_mean) * counts[k]
        mad += abs(grey - mean) * p
        medad += abs(grey - median) * p
        if p > 0:
            entropy -= p * math.log2(p)
        uniformity += p * p
    gradient = np.zeros(n_bins)
    if n_bins > 1:
        gradient[0] = counts[1] - counts[0]
        gradient[n_bins - 1] = counts[n_bins - 1] - counts[n_bins - 2]
        for k in range(1, n_bins - 1):
            gradient[k] = (counts[k + 1] - counts[k - 1]) / 2.0
    values = (
        mean, variance, skewness, kurtosis, median, minimum, p10, p90, maximum, mode, p75 - p25,
        maximum - minimum, mad, robust / central_count if central_count > 0 else math.nan, medad,
        math.sqrt(variance) / mean,
        (p75 - p25) / (p75 + p25), entropy, uniformity, gradient.max(), np.argmax(gradient) + 1.0,
        gradient.min(), np.argmin(gradient) + 1.0,
    )
    for k in range(HISTOGRAM):
        out[k] = values[k]


@njit(nogil=True, cache=True)
def ivh_values(values: np.ndarray, mode: int, ivh_bin_width: float, ivh_bin_number: int, range_lower: float,
               range_upper: float, out: np.ndarray) -> None:
    """ivh.ivh_features of the ROI intensities ``values`` (7), range bounds +-inf where open."""
    minimum, maximum = values.min(), values.max()
    low = range_lower if math.isfinite(range_lower) else minimum
    high = range_upper if math.isfinite(range_upper) else maximum
    n = values.size
    steps = np.empty(n, dtype=np.int64)
    if mode == IVH_BIN_NUMBER:
        for k in range(n):
            if maximum > minimum:
                steps[k] = min(math.floor(ivh_bin_number * (values[k] - minimum) / (maximum - minimum)) + 1,
                               ivh_bin_number) - 1
            else:
                steps[k] = ivh_bin_number - 1
        first, step, n_levels, span = 1.0, 1.0, ivh_bin_number, float(ivh_bin_number - 1)
    elif mode == IVH_BIN_WIDTH:
        for k in range(n):
            steps[k] = math.floor((values[k] - low) / ivh_bin_width)
        first, step, span = low + 0.5 * ivh_bin_width, ivh_bin_width, max(high - low - ivh_bin_width, 0.0)
        n_levels = math.floor(span / ivh_bin_width + 1e-9) + 1
    else:
        for k in range(n):
            steps[k] = math.floor(values[k] - low)
        first, step, span = low, 1.0, high - low
        n_levels = math.floor(span + 1e-9) + 1
    counts = np.zeros(n_levels, dtype=np.int64)
    for k in range(n):
        counts[min(steps[k], n_levels - 1)] += 1
    volume_fraction = np.empty(n_levels)
    intensity_fraction = np.zeros(n_levels)
    at_least = 0
    for k in range(n_levels - 1, -1, -1):
        at_least += counts[k]
        volume_fraction[k] = at_least / n
    if span > 0:
        for k in range(n_levels):
            intensity_fraction[k] = k * step / span
    for slot, fraction in ((0, 0.10), (1, 0.90)):
        out[slot] = 0.0
        for k in range(n_levels):
            if intensity_fraction[k] >= fraction:
                out[slot] = volume_fraction[k]
                break
    for slot, fraction in ((2, 0.10), (3, 0.90)):
        reached = n_levels
        for k in range(n_levels):
            if volume_fraction[k] <= fraction:
                reached = k
                break
        out[slot] = first + reached * step
    out[4] = out[0] - out[1]
    out[5] = out[2] - out[3]
    area = 0.0
    for k in range(n_levels - 1):
        area += (volume_fraction[k + 1] + volume_fraction[k]) * (intensity_fraction[k + 1] - intensity_fraction[k])
    out[6] = area / 2.0


@njit(nogil=True, cache=True)
def peak_values(volume: np.ndarray, region: np.ndarray, runs: np.ndarray, out: np.ndarray) -> None:
    """local_intensity.local_intensity_features: local and global peak via running sums along x (see
    local_intensity._sphere_means_numba)."""
    n_z, n_y, n_x = volume.shape
    prefix = np.zeros((n_z, n_y, n_x + 1))
    for z in range(n_z):
        for y in range(n_y):
            for x in range(n_x):
                prefix[z, y, x + 1] = prefix[z, y, x] + volume[z, y, x]
    hottest = -np.inf
    for z in range(n_z):
        for y in range(n_y):
            for x in range(n_x):
                if region[z, y, x] and volume[z, y, x] > hottest:
                    hottest = volume[z, y, x]
    local_peak = global_peak = -np.inf
    for z in range(n_z):
        for y in range(n_y):
            for x in range(n_x):
                if not region[z, y, x]:
                    continue
                total = 0.0
                count = 0
                for r in range(runs.shape[0]):
                    zz = z + runs[r, 0]
                    yy = y + runs[r, 1]
                    if zz < 0 or zz >= n_z or yy < 0 or yy >= n_y:
                        continue
                    first = max(x + runs[r, 2], 0)
                    last = min(x + runs[r, 3], n_x - 1)
                    if first <= last:
                        total += prefix[zz, yy, last + 1] - prefix[zz, yy, first]
                        count += last - first + 1
                mean = total / count
                global_peak = max(global_peak, mean)
                if volume[z, y, x] == hottest:
                    local_peak = max(local_peak, mean)
    out[0] = local_peak
    out[1] = global_peak


@njit(nogil=True, cache=True)
def moran_pair_sums(volume: np.ndarray, region: np.ndarray, spacing: np.ndarray, out: np.ndarray) -> None:
    """morphology._pair_sums over ordered pairs of intensity-mask voxels (each unordered pair once, doubled)."""
    n = 0
    for value in region.ravel():
        n += value
    positions = np.empty((n, 3))
    values = np.empty(n)
    k = 0
    n_z, n_y, n_x = volume.shape
    for z in range(n_z):
        for y in range(n_y):
            for x in range(n_x):
                if region[z, y, x]:
                    positions[k, 0] = z * spacing[0]
                    positions[k, 1] = y * spacing[1]
                    positions[k, 2] = x * spacing[2]
                    values[k] = volume[z, y, x]
                    k += 1
    deviations = values - values.mean()
    weight_sum = cross_sum = difference_sum = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            weight = 1.0 / math.sqrt((positions[i, 0] - positions[j, 0]) ** 2
                                     + (positions[i, 1] - positions[j, 1]) ** 2
                                     + (positions[i, 2] - positions[j, 2]) ** 2)
            weight_sum += weight
            cross_sum += weight * deviations[i] * deviations[j]
            difference_sum += weight * (deviations[i] - deviations[j]) ** 2
    out[0] = 2.0 * weight_sum
    out[1] = 2.0 * cross_sum
    out[2] = 2.0 * difference_sum


# --- texture feature formulas (matrix_features, one matrix at a time) ---------------------------------------

@njit(nogil=True, cache=True)
def _plog2p(p: float) -> float:
    return p * math.log2(p) if p > 0 else 0.0


@njit(nogil=True, cache=True)
def cooccurrence_values(counts: np.ndarray, grey: np.ndarray, n_levels: int, out: np.ndarray) -> None:
    """matrix_features._cooccurrence_features of one symmetric count matrix (25 values, NaN when empty)."""
    n = grey.size
    total = counts.sum()
    if total == 0:
        out[:GLCM] = np.nan
        return
    highest = int(grey.max())
    p_diff = np.zeros(highest + 1)
    p_sum = np.zeros(2 * highest + 1)
    marginal = np.zeros(n)
    joint_max = joint_entropy = energy = 0.0
    contrast = dissimilarity = inv_diff = inv_diff_norm = inv_diff_mom = inv_diff_mom_norm = 0.0
    inv_var = autocorrelation = 0.0
    for i in range(n):
        for j in range(n):
            if counts[i, j] == 0:
                continue
            p = counts[i, j] / total
            difference = abs(grey[i] - grey[j])
            squared = difference * difference
            joint_max = max(joint_max, p)
            joint_entropy -= _plog2p(p)
            energy += p * p
            contrast += p * squared
            dissimilarity += p * difference
            inv_diff += p / (1.0 + difference)
            inv_diff_norm += p / (1.0 + difference / n_levels)
            inv_diff_mom += p / (1.0 + squared)
            inv_diff_mom_norm += p / (1.0 + squared / n_levels**2)
            if difference > 0:
                inv_var += p / squared
            autocorrelation += p * grey[i] * grey[j]
            marginal[i] += p
            p_diff[int(difference)] += p
            p_sum[int(grey[i] + grey[j])] += p
    joint_avg = 0.0
    for i in range(n):
        joint_avg += marginal[i] * grey[i]
    joint_var = hx = 0.0
    for i in range(n):
        joint_var += marginal[i] * (grey[i] - joint_avg) ** 2
        hx -= _plog2p(marginal[i])
    if joint_var <= 1e-12 * max(joint_avg**2, 1.0):
        joint_var = 0.0
    correlation = (autocorrelation - joint_avg**2) / joint_var if joint_var != 0 else np.nan
    diff_avg = diff_entropy = 0.0
    for k in range(p_diff.size):
        diff_avg += p_diff[k] * k
        diff_entropy -= _plog2p(p_diff[k])
    diff_var = 0.0
    for k in range(p_diff.size):
        diff_var += p_diff[k] * (k - diff_avg) ** 2
    sum_avg = sum_entropy = 0.0
    for k in range(p_sum.size):
        sum_avg += p_sum[k] * k
        sum_entropy -= _plog2p(p_sum[k])
    sum_var = cluster_shade = cluster_prominence = 0.0
    for k in range(p_sum.size):
        centred = k - sum_avg
        sum_var += p_sum[k] * centred * centred
        cluster_shade += p_sum[k] * centred * centred * centred
        cluster_prominence += p_sum[k] * centred * centred * centred * centred
    info_corr_1 = (joint_entropy - 2.0 * hx) / hx if hx != 0 else np.nan
    info_corr_2 = math.sqrt(max(1.0 - math.exp(-2.0 * (2.0 * hx - joint_entropy)), 0.0))
    values = (
        joint_max, joint_avg, joint_var, joint_entropy, diff_avg, diff_var, diff_entropy, sum_avg, sum_var,
        sum_entropy, energy, contrast, dissimilarity, inv_diff, inv_diff_norm, inv_diff_mom, inv_diff_mom_norm,
        inv_var, correlation, autocorrelation, sum_var, cluster_shade, cluster_prominence, info_corr_1,
        info_corr_2,
    )
    for k in range(GLCM):
        out[k] = values[k]


@njit(nogil=True, cache=True)
def zone_values(counts: np.ndarray, grey: np.ndarray, column_values: np.ndarray, n_voxels: float,
                out: np.ndarray) -> None:
    """matrix_features._zone_features of one (levels, columns) count matrix (17 values, NaN when empty)."""
    n_rows, n_columns = counts.shape
    n_entries = counts.sum()
    if n_entries == 0:
        out[:17] = np.nan
        return
    per_level = np.zeros(n_rows)
    per_column = np.zeros(n_columns)
    short_low = short_high = long_low = long_high = entropy = energy = 0.0
    for i in range(n_rows):
        i2 = grey[i] * grey[i]
        for j in range(n_columns):
            count = counts[i, j]
            if count == 0:
                continue
            j2 = column_values[j] * column_values[j]
            per_level[i] += count
            per_column[j] += count
            short_low += count / (j2 * i2)
            short_high += count * i2 / j2
            long_low += count * j2 / i2
            long_high += count * i2 * j2
            p = count / n_entries
            entropy -= _plog2p(p)
            energy += p * p
    short = long = low = high = level_nonuniformity = column_nonuniformity = 0.0
    mean_level = mean_column = 0.0
    for i in range(n_rows):
        i2 = grey[i] * grey[i]
        low += per_level[i] / i2
        high += per_level[i] * i2
        level_nonuniformity += per_level[i] ** 2
        mean_level += per_level[i] / n_entries * grey[i]
    for j in range(n_columns):
        j2 = column_values[j] * column_values[j]
        short += per_column[j] / j2
        long += per_column[j] * j2
        column_nonuniformity += per_column[j] ** 2
        mean_column += per_column[j] / n_entries * column_values[j]
    level_variance = column_variance = 0.0
    for i in range(n_rows):
        level_variance += per_level[i] / n_entries * (grey[i] - mean_level) ** 2
    for j in range(n_columns):
        column_variance += per_column[j] / n_entries * (column_values[j] - mean_column) ** 2
    values = (
        short / n_entries, long / n_entries, low / n_entries, high / n_entries, short_low / n_entries,
        short_high / n_entries, long_low / n_entries, long_high / n_entries, level_nonuniformity / n_entries,
        level_nonuniformity / n_entries / n_entries, column_nonuniformity / n_entries,
        column_nonuniformity / n_entries / n_entries, n_entries / n_voxels if n_voxels != 0 else np.nan,
        level_variance, column_variance, entropy, energy,
    )
    for k in range(17):
        out[k] = values[k]


@njit(nogil=True, cache=True)
def grey_tone_values(voxel_counts: np.ndarray, difference_sums: np.ndarray, grey: np.ndarray,
                     out: np.ndarray) -> None:
    """matrix_features._ngtdm_features of one NGTDM (5 values)."""
    n = grey.size
    n_counted = voxel_counts.sum()
    if n_counted == 0:
        out[:NGTDM] = np.nan
        return
    p = voxel_counts / n_counted
    n_present = 0
    weighted = s_total = 0.0
    for i in range(n):
        n_present += p[i] > 0
        weighted += p[i] * difference_sums[i]
        s_total += difference_sums[i]
    contrast_sum = busyness_denominator = complexity = strength_sum = 0.0
    for i in range(n):
        for j in range(n):
            level_difference = grey[i] - grey[j]
            contrast_sum += p[i] * p[j] * level_difference**2
            if p[i] > 0 and p[j] > 0:
                busyness_denominator += abs(p[i] * grey[i] - p[j] * grey[j])
                complexity += abs(level_difference) * (p[i] * difference_sums[i] + p[j] * difference_sums[j]) / (
                    p[i] + p[j])
                strength_sum += (p[i] + p[j]) * level_difference**2
    pairs = n_present * (n_present - 1.0)
    out[0] = 1.0 / weighted if weighted != 0 else np.nan
    out[1] = (contrast_sum / pairs if pairs != 0 else np.nan) * s_total / n_counted
    out[2] = weighted / busyness_denominator if busyness_denominator != 0 else np.nan
    out[3] = complexity / n_counted
    out[4] = strength_sum / s_total if s_total != 0 else np.nan


@njit(nogil=True, cache=True)
def _average_defined(per_matrix: np.ndarray, out: np.ndarray) -> None:
    """aggregation.average_over_matrices: mean over the rows where each column is defined (not NaN)."""
    for f in range(per_matrix.shape[1]):
        total = 0.0
        count = 0
        for m in range(per_matrix.shape[0]):
            if not math.isnan(per_matrix[m, f]):
                total += per_matrix[m, f]
                count += 1
        out[f] = total / count if count > 0 else np.nan


# --- texture matrices of one lesion --------------------------------------------------------------------------

@njit(nogil=True, cache=True)
def _flat_steps(shape: tuple[int, int, int], steps: np.ndarray) -> np.ndarray:
    offsets = np.empty(steps.shape[0], dtype=np.int64)
    for k in range(steps.shape[0]):
        offsets[k] = (steps[k, 0] * shape[1] + steps[k, 1]) * shape[2] + steps[k, 2]
    return offsets


@njit(nogil=True, cache=True)
def texture_values(levels: np.ndarray, intensity: np.ndarray, morphological: np.ndarray, n_levels: int,
                   out: np.ndarray) -> None:
    """All 3-D texture features of one lesion (texture.texture_features with "3D averaged"/"3D merged")
    into ``out[GLCM_AT:]`` (the columns from GLCM_AT on, shifted to 0)."""
    # The prepared ROI (texture.roi.prepare_roi): the box holding both masks, grey levels present, and a
    # one-voxel border of zeros so that neighbour offsets need no bounds checks.
    n_z, n_y, n_x = levels.shape
    low = np.array([n_z, n_y, n_x])
    high = np.array([-1, -1, -1])
    present = np.zeros(n_levels + 1, dtype=np.int64)
    for z in range(n_z):
        for y in range(n_y):
            for x in range(n_x):
                if intensity[z, y, x] or morphological[z, y, x]:
                    low[0], low[1], low[2] = min(low[0], z), min(low[1], y), min(low[2], x)
                    high[0], high[1], high[2] = max(high[0], z), max(high[1], y), max(high[2], x)
                if intensity[z, y, x]:
                    present[levels[z, y, x]] += 1
    n_present = 0
    index_of_level = np.zeros(n_levels + 1, dtype=np.int32)
    for level in range(1, n_levels + 1):
        if present[level] > 0:
            n_present += 1
            index_of_level[level] = n_present
    grey = np.empty(n_present)
    for level in range(1, n_levels + 1):
        if present[level] > 0:
            grey[index_of_level[level] - 1] = level
    box_z, box_y, box_x = high[0] - low[0] + 1, high[1] - low[1] + 1, high[2] - low[2] + 1
    padded = np.zeros((box_z + 2, box_y + 2, box_x + 2), dtype=np.int32)
    morph_box = np.zeros((box_z, box_y, box_x), dtype=np.bool_)
    n_voxels = 0
    for z in range(box_z):
        for y in range(box_y):
            for x in range(box_x):
                zz, yy, xx = z + low[0], y + low[1], x + low[2]
                morph_box[z, y, x] = morphological[zz, yy, xx]
                if intensity[zz, yy, xx]:
                    padded[z + 1, y + 1, x + 1] = index_of_level[levels[zz, yy, xx]]
                    n_voxels += 1
    flat = padded.ravel()
    shape = padded.shape
    directions = _flat_steps(shape, _DIRECTIONS)
    neighbours = _flat_steps(shape, _NEIGHBOURS)
    plane, row_length = shape[1] * shape[2], shape[2]
    max_run = max(box_z, max(box_y, box_x))

    # GLCM and GLRLM: one matrix per direction (texture._numba._cooccurrence_kernel, _run_kernel).
    n_directions = directions.size
    cooccurrences = np.zeros((n_directions, n_present, n_present), dtype=np.int64)
    runs = np.zeros((n_directions, n_present, max_run), dtype=np.int64)
    dependences = np.zeros((n_present, neighbours.size + 1), dtype=np.int64)
    tone_counts = np.zeros(n_present)
    tone_sums = np.zeros(n_present)
    for z in range(1, shape[0] - 1):
        for y in range(1, shape[1] - 1):
            start = z * plane + y * row_length
            for voxel in range(start + 1, start + shape[2] - 1):
                level = flat[voxel]
                if level == 0:
                    continue
                for d in range(n_directions):
                    step = directions[d]
                    partner = flat[voxel + step]
                    if partner > 0:
                        cooccurrences[d, level - 1, partner - 1] += 1
                    if flat[voxel - step] != level:  # the first voxel of a run walks it
                        length = 1
                        while flat[voxel + length * step] == level:
                            length += 1
                        runs[d, level - 1, length - 1] += 1
                # NGTDM and NGLDM (texture._numba._grey_tone_kernel, _dependence_kernel).
                neighbour_sum = 0.0
                neighbour_count = 0
                dependence = 1
                for k in range(neighbours.size):
                    neighbour = flat[voxel + neighbours[k]]
                    if neighbour > 0:
                        neighbour_sum += grey[neighbour - 1]
                        neighbour_count += 1
                        if neighbour == level:
                            dependence += 1
                dependences[level - 1, dependence - 1] += 1
                if neighbour_count > 0:
                    tone_counts[level - 1] += 1
                    tone_sums[level - 1] += abs(grey[level - 1] - neighbour_sum / neighbour_count)

    per_matrix = np.empty((n_directions, GLCM))
    merged_cooccurrences = np.zeros((n_present, n_present), dtype=np.int64)
    n_matrices = 0
    for d in range(n_directions):
        symmetric = cooccurrences[d] + cooccurrences[d].T
        merged_cooccurrences += symmetric
        if symmetric.sum() > 0:  # directions without a pair in the ROI have no matrix
            cooccurrence_values(symmetric, grey, n_levels, per_matrix[n_matrices])
            n_matrices += 1
    _average_defined(per_matrix[:n_matrices], out[0:GLCM])
    cooccurrence_values(merged_cooccurrences, grey, n_levels, out[GLCM:2 * GLCM])

    at = 2 * GLCM
    run_lengths = np.arange(1, max_run + 1).astype(np.float64)
    zone_row = np.empty(17)
    per_matrix = np.empty((n_directions, GLRLM))
    merged_runs = np.zeros((n_present, max_run))
    n_matrices = 0
    for d in range(n_directions):
        matrix = runs[d].astype(np.float64)
        merged_runs += matrix
        covered = 0.0  # N_v of a run-length matrix is the number of voxels its runs cover
        for j in range(max_run):
            covered += matrix[:, j].sum() * run_lengths[j]
        if covered > 0:
            zone_values(matrix, grey, run_lengths, covered, zone_row)
            per_matrix[n_matrices] = zone_row[:GLRLM]
            n_matrices += 1
    _average_defined(per_matrix[:n_matrices], out[at:at + GLRLM])
    merged_covered = 0.0
    for j in range(max_run):
        merged_covered += merged_runs[:, j].sum() * run_lengths[j]
    zone_values(merged_runs, grey, run_lengths, merged_covered, zone_row)
    out[at + GLRLM:at + 2 * GLRLM] = zone_row[:GLRLM]

    # GLSZM and GLDZM from one labelling of 26-connected zones (texture._numba.find_zones).
    at += 2 * GLRLM
    distance = _BORDER_DISTANCE(morph_box, False)
    padded_distance = np.zeros(shape, dtype=np.int32)
    padded_distance[1:-1, 1:-1, 1:-1] = distance
    earlier = _flat_steps(shape, -_DIRECTIONS)
    root = _LABEL_ZONES(padded, earlier, 1, True)
    zone_level, zone_size, _, zone_distance = _ZONE_STATISTICS(padded, root, padded_distance, True)
    for column_of_zone, width in ((zone_size, GLSZM), (zone_distance, GLDZM)):
        column_values = np.unique(column_of_zone)
        matrix = np.zeros((n_present, column_values.size))
        for zone in range(zone_level.size):
            matrix[zone_level[zone] - 1, np.searchsorted(column_values, column_of_zone[zone])] += 1
        zone_values(matrix, grey, column_values.astype(np.float64), float(n_voxels), zone_row)
        out[at:at + width] = zone_row[:width]
        at += width

    grey_tone_values(tone_counts, tone_sums, grey, out[at:at + NGTDM])
    at += NGTDM
    zone_values(dependences.astype(np.float64), grey, np.arange(1, neighbours.size + 2).astype(np.float64),
                float(n_voxels), out[at:at + NGLDM])


# --- all lesions ---------------------------------------------------------------------------------------------

@njit(nogil=True, cache=True)
def _discretise(values: np.ndarray, mode: int, bin_number: int, bin_width: float, range_lower: float,
                range_upper: float) -> tuple[np.ndarray, int]:
    """pipeline.discretise_region on the ROI intensities: levels 1..Ng and Ng."""
    minimum, maximum = values.min(), values.max()
    levels = np.empty(values.size, dtype=np.int32)
    if mode == DISCRETISE_BIN_NUMBER:
        for k in range(values.size):
            if maximum > minimum:
                levels[k] = min(math.floor(bin_number * (values[k] - minimum) / (maximum - minimum)) + 1, bin_number)
            else:
                levels[k] = bin_number
        return levels, bin_number
    low = range_lower if math.isfinite(range_lower) else minimum
    for k in range(values.size):
        levels[k] = math.floor((values[k] - low) / bin_width) + 1
    highest = levels.max()
    if math.isfinite(range_lower) and math.isfinite(range_upper):
        highest = max(highest, math.floor((range_upper - range_lower) / bin_width) + 1)
    return levels, highest


@njit(parallel=True, nogil=True, cache=True)
def lesion_features(images: np.ndarray, morphological: np.ndarray, intensity: np.ndarray, starts: np.ndarray,
                    shapes: np.ndarray, order: np.ndarray, spacing: np.ndarray, sphere_runs: np.ndarray,
                    discretisation: int, bin_number: int, bin_width: float, range_lower: float,
                    range_upper: float, ivh_mode: int, ivh_bin_width: float, ivh_bin_number: int,
                    pairwise_moran: np.ndarray, with_texture: bool) -> np.ndarray:
    """One row of COLUMNS values per lesion (NaN where a family was not asked for).

    Lesion k's crop is ``images[starts[k]:starts[k + 1]]`` reshaped to ``shapes[k]`` (C order), likewise its
    masks. Lesions are visited in ``order`` (largest first, so that dynamic scheduling balances threads).
    """
    n_lesions = shapes.shape[0]
    out = np.full((n_lesions, COLUMNS), np.nan)
    for position in prange(n_lesions):
        k = order[position]
        shape = (shapes[k, 0], shapes[k, 1], shapes[k, 2])
        volume = images[starts[k]:starts[k + 1]].reshape(shape)
        morph = morphological[starts[k]:starts[k + 1]].reshape(shape)
        region = intensity[starts[k]:starts[k + 1]].reshape(shape)
        row = out[k]
        values = volume.ravel()[region.ravel()]
        row[STATISTICS_AT:STATISTICS_AT + STATISTICS] = _statistics_numba(values)
        ivh_values(values, ivh_mode, ivh_bin_width, ivh_bin_number, range_lower, range_upper,
                   row[IVH_AT:IVH_AT + IVH])
        peak_values(volume, region, sphere_runs, row[LOCAL_INTENSITY_AT:LOCAL_INTENSITY_AT + LOCAL_INTENSITY])
        if pairwise_moran[k]:
            moran_pair_sums(volume, region, spacing, row[MORAN_AT:MORAN_AT + MORAN_SUMS])
        if discretisation == DISCRETISE_NONE:
            continue
        roi_levels, n_levels = _discretise(values, discretisation, bin_number, bin_width, range_lower, range_upper)
        row[N_LEVELS_AT] = n_levels
        counts = np.zeros(n_levels)
        for level in roi_levels:
            counts[level - 1] += 1
        histogram_values(counts, row[HISTOGRAM_AT:HISTOGRAM_AT + HISTOGRAM])
        if with_texture:
            levels = np.zeros(shape, dtype=np.int32)
            levels.ravel()[region.ravel()] = roi_levels
            texture_values(levels, region, morph, n_levels, row[GLCM_AT:])
    return out
