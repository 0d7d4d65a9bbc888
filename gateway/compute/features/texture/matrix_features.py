"""IBSI feature formulas evaluated on texture matrices, vectorised over a batch of matrices.

Matrices are small next to the image (levels × levels, levels × lengths), so every backend hands its counts
to these NumPy formulas; the kernels that build the matrices are where the backends differ. Each function
takes raw counts and returns one row of feature values per matrix, NaN where the formula divides by zero
(see ``aggregation`` for how NaN is treated when averaging).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_BATCH_ELEMENTS = 1 << 22
"""Matrices are processed in groups of about this many entries, bounding the temporary arrays' memory."""


def _in_groups(
    formula: Callable[..., np.ndarray],
    n_features: int,
    counts: np.ndarray,
    *per_matrix: np.ndarray,
    **shared: object,
) -> np.ndarray:
    if counts.shape[0] == 0:
        return np.empty((0, n_features))
    entries_per_matrix = max(1, int(np.prod(counts.shape[1:])))
    group = max(1, _BATCH_ELEMENTS // entries_per_matrix)
    if counts.shape[0] <= group:
        return formula(counts, *per_matrix, **shared)
    return np.concatenate([
        formula(counts[start:start + group], *(values[start:start + group] for values in per_matrix), **shared)
        for start in range(0, counts.shape[0], group)
    ])


def _sum_plog2p(probabilities: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """Σ p log2 p, with 0 log 0 = 0."""
    positive = probabilities > 0
    logs = np.log2(probabilities, where=positive, out=np.zeros_like(probabilities))
    return (probabilities * logs).sum(axis=axis)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is zero (the feature is undefined there)."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, float), np.asarray(denominator, float))
    result = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=result, where=denominator != 0)
    return result


def _grouped_columns(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For summing matrix entries that share a key (|i-j| or i+j): the order that sorts the flattened keys,
    where each run of equal keys starts, and the key of each run."""
    flat = keys.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_keys = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return order, starts, sorted_keys[starts]


COOCCURRENCE_FEATURE_COUNT = 25


def cooccurrence_features(counts: np.ndarray, grey_values: np.ndarray, n_levels: int) -> np.ndarray:
    """IBSI 3.6 GLCM features of symmetric co-occurrence counts (batch, levels, levels) → (batch, 25).

    Columns in IBSI order: joint maximum, average, variance, entropy; difference average, variance,
    entropy; sum average, variance, entropy; angular second moment; contrast; dissimilarity; inverse
    difference and its normalised form; inverse difference moment and its normalised form; inverse
    variance; correlation; autocorrelation; cluster tendency, shade, prominence; information
    correlation 1 and 2. An empty matrix gives a row of NaN.
    """
    return _in_groups(
        _cooccurrence_features, COOCCURRENCE_FEATURE_COUNT, counts, grey_values=grey_values, n_levels=n_levels
    )


def _cooccurrence_features(counts: np.ndarray, *, grey_values: np.ndarray, n_levels: int) -> np.ndarray:
    counts = counts.astype(np.float64)
    totals = counts.sum(axis=(1, 2))
    empty = totals == 0
    p = counts / np.where(empty, 1.0, totals)[:, None, None]
    i = grey_values[:, None]
    j = grey_values[None, :]
    difference = np.abs(i - j)
    squared_difference = difference**2

    row_marginal = p.sum(axis=2)  # p_i; the matrix is symmetric, so p_j is the same vector
    mean_row = row_marginal @ grey_values
    centred = grey_values[None, :] - mean_row[:, None]
    variance_row = np.maximum(np.einsum("bi,bi->b", row_marginal, centred**2), 0.0)

    # Diagonal (|i-j| = k) and cross-diagonal (i+j = k) marginals, only for the k that can occur.
    diff_order, diff_starts, diff_keys = _grouped_columns(difference)
    p_flat = p.reshape(p.shape[0], -1)
    p_diff = np.add.reduceat(p_flat[:, diff_order], diff_starts, axis=1)
    sum_order, sum_starts, sum_keys = _grouped_columns(i + j)
    p_sum = np.add.reduceat(p_flat[:, sum_order], sum_starts, axis=1)

    joint_max = p.max(axis=(1, 2))
    joint_avg = np.einsum("bij,i->b", p, grey_values)
    joint_var = np.einsum("bij,bi->b", p, (grey_values[None, :] - joint_avg[:, None]) ** 2)
    joint_entropy = -_sum_plog2p(p, axis=(1, 2))

    diff_avg = p_diff @ diff_keys
    diff_var = np.einsum("bk,bk->b", p_diff, (diff_keys[None, :] - diff_avg[:, None]) ** 2)
    diff_entropy = -_sum_plog2p(p_diff, axis=1)
    sum_avg = p_sum @ sum_keys
    sum_var = np.einsum("bk,bk->b", p_sum, (sum_keys[None, :] - sum_avg[:, None]) ** 2)
    sum_entropy = -_sum_plog2p(p_sum, axis=1)

    energy = np.einsum("bij,bij->b", p, p)
    contrast = np.einsum("bij,ij->b", p, squared_difference)
    dissimilarity = np.einsum("bij,ij->b", p, difference)
    inverse_difference = np.einsum("bij,ij->b", p, 1.0 / (1.0 + difference))
    inverse_difference_norm = np.einsum("bij,ij->b", p, 1.0 / (1.0 + difference / n_levels))
    inverse_difference_moment = np.einsum("bij,ij->b", p, 1.0 / (1.0 + squared_difference))
    inverse_difference_moment_norm = np.einsum("bij,ij->b", p, 1.0 / (1.0 + squared_difference / n_levels**2))
    off_diagonal = difference > 0
    inverse_variance = np.einsum(
        "bij,ij->b", p, np.divide(1.0, squared_difference, where=off_diagonal, out=np.zeros_like(difference))
    )

    covariance = np.einsum("bij,bi,bj->b", p, centred, centred)
    correlation = _safe_divide(covariance, variance_row)
    autocorrelation = np.einsum("bij,ij->b", p, i * j)
    cluster_offset = (centred[:, :, None] + centred[:, None, :])
    cluster_tendency = np.einsum("bij,bij->b", p, cluster_offset**2)
    cluster_shade = np.einsum("bij,bij->b", p, cluster_offset**3)
    cluster_prominence = np.einsum("bij,bij->b", p, cluster_offset**4)

    # Entropies of the marginals for the information correlations; with a symmetric matrix HX = HY.
    outer_marginals = row_marginal[:, :, None] * row_marginal[:, None, :]
    log_outer = np.log2(outer_marginals, where=outer_marginals > 0, out=np.zeros_like(outer_marginals))
    hx = -_sum_plog2p(row_marginal, axis=1)
    hxy1 = -np.einsum("bij,bij->b", p, log_outer)
    hxy2 = -np.einsum("bij,bij->b", outer_marginals, log_outer)
    info_corr_1 = _safe_divide(joint_entropy - hxy1, hx)
    # HXY2 ≥ HXY mathematically; clip rounding so the square root stays real.
    info_corr_2 = np.sqrt(np.maximum(1.0 - np.exp(-2.0 * (hxy2 - joint_entropy)), 0.0))

    features = np.stack([
        joint_max, joint_avg, joint_var, joint_entropy,
        diff_avg, diff_var, diff_entropy,
        sum_avg, sum_var, sum_entropy,
        energy, contrast, dissimilarity,
        inverse_difference, inverse_difference_norm, inverse_difference_moment, inverse_difference_moment_norm,
        inverse_variance, correlation, autocorrelation,
        cluster_tendency, cluster_shade, cluster_prominence,
        info_corr_1, info_corr_2,
    ], axis=1)
    features[empty] = np.nan
    return features


ZONE_FEATURE_COUNT = 17


def zone_features(
    counts: np.ndarray, grey_values: np.ndarray, column_values: np.ndarray, n_voxels: np.ndarray
) -> np.ndarray:
    """Features shared by GLRLM, GLSZM, GLDZM and NGLDM, from counts (batch, levels, columns) → (batch, 17).

    The column quantity j is the run length, zone size, zone distance or dependence count; ``column_values``
    holds its value for each column (columns that cannot occur may be left out). ``n_voxels`` is N_v of each
    matrix for the percentage feature. Columns, with run-length names: short/long emphasis; low/high grey
    level emphasis; short-low, short-high, long-low, long-high emphasis; grey level non-uniformity and its
    normalised form; column (run length) non-uniformity and its normalised form; percentage N_s/N_v; grey level
    variance; column variance; entropy; energy (Σp², used by NGLDM only). An empty matrix gives NaN.
    """
    return _in_groups(
        _zone_features, ZONE_FEATURE_COUNT, counts, np.asarray(n_voxels, np.float64),
        grey_values=grey_values, column_values=np.asarray(column_values, np.float64),
    )


def _zone_features(
    counts: np.ndarray, n_voxels: np.ndarray, *, grey_values: np.ndarray, column_values: np.ndarray
) -> np.ndarray:
    counts = counts.astype(np.float64)
    n_entries = counts.sum(axis=(1, 2))  # N_s: runs, zones or voxels
    empty = n_entries == 0
    n_entries_safe = np.where(empty, 1.0, n_entries)
    per_level = counts.sum(axis=2)
    per_column = counts.sum(axis=1)
    i2 = grey_values**2
    j2 = column_values**2

    short_emphasis = per_column @ (1.0 / j2) / n_entries_safe
    long_emphasis = per_column @ j2 / n_entries_safe
    low_grey_emphasis = per_level @ (1.0 / i2) / n_entries_safe
    high_grey_emphasis = per_level @ i2 / n_entries_safe
    short_low = np.einsum("bij,i,j->b", counts, 1.0 / i2, 1.0 / j2) / n_entries_safe
    short_high = np.einsum("bij,i,j->b", counts, i2, 1.0 / j2) / n_entries_safe
    long_low = np.einsum("bij,i,j->b", counts, 1.0 / i2, j2) / n_entries_safe
    long_high = np.einsum("bij,i,j->b", counts, i2, j2) / n_entries_safe
    grey_nonuniformity = (per_level**2).sum(axis=1) / n_entries_safe
    grey_nonuniformity_norm = grey_nonuniformity / n_entries_safe
    column_nonuniformity = (per_column**2).sum(axis=1) / n_entries_safe
    column_nonuniformity_norm = column_nonuniformity / n_entries_safe
    percentage = _safe_divide(n_entries, n_voxels)

    p = counts / n_entries_safe[:, None, None]
    p_level = p.sum(axis=2)
    p_column = p.sum(axis=1)
    mean_level = p_level @ grey_values
    mean_column = p_column @ column_values
    grey_variance = np.einsum("bi,bi->b", p_level, (grey_values[None, :] - mean_level[:, None]) ** 2)
    column_variance = np.einsum("bj,bj->b", p_column, (column_values[None, :] - mean_column[:, None]) ** 2)
    entropy = -_sum_plog2p(p, axis=(1, 2))
    energy = np.einsum("bij,bij->b", p, p)

    features = np.stack([
        short_emphasis, long_emphasis, low_grey_emphasis, high_grey_emphasis,
        short_low, short_high, long_low, long_high,
        grey_nonuniformity, grey_nonuniformity_norm, column_nonuniformity, column_nonuniformity_norm,
        percentage, grey_variance, column_variance, entropy, energy,
    ], axis=1)
    features[empty] = np.nan
    return features


NGTDM_FEATURE_COUNT = 5


def ngtdm_features(
    voxel_counts: np.ndarray, difference_sums: np.ndarray, grey_values: np.ndarray
) -> np.ndarray:
    """IBSI 3.10 NGTDM features from n_i and s_i (batch, levels) → (batch, 5): coarseness, contrast,
    busyness, complexity, strength.

    n_i counts the voxels of level i that have at least one neighbour in the ROI (IBSI: voxels without a
    neighbour are left out), so N_v,c = Σ n_i. Undefined (NaN): everything when no voxel has a neighbour;
    coarseness when Σ p_i s_i = 0 (no grey-tone difference at all, e.g. one grey level); contrast when only
    one grey level is present (N_g,p − 1 = 0); busyness when the denominator Σ|i p_i − j p_j| is zero (one
    grey level); strength when Σ s_i = 0.
    """
    return _in_groups(
        _ngtdm_features, NGTDM_FEATURE_COUNT, voxel_counts.astype(np.float64), difference_sums,
        grey_values=grey_values,
    )


def _ngtdm_features(voxel_counts: np.ndarray, difference_sums: np.ndarray, *, grey_values: np.ndarray) -> np.ndarray:
    n_counted = voxel_counts.sum(axis=1)  # N_v,c
    empty = n_counted == 0
    p = voxel_counts / np.where(empty, 1.0, n_counted)[:, None]
    s = np.asarray(difference_sums, np.float64)
    present = p > 0
    n_present = present.sum(axis=1)  # N_g,p
    both_present = present[:, :, None] & present[:, None, :]
    level_difference = grey_values[:, None] - grey_values[None, :]

    weighted_differences = np.einsum("bi,bi->b", p, s)
    coarseness = _safe_divide(np.ones_like(weighted_differences), weighted_differences)
    contrast = _safe_divide(
        np.einsum("bi,bj,ij->b", p, p, level_difference**2), n_present * (n_present - 1.0)
    ) * s.sum(axis=1) / np.where(empty, 1.0, n_counted)
    scaled = p * grey_values[None, :]
    busyness_denominator = np.where(both_present, np.abs(scaled[:, :, None] - scaled[:, None, :]), 0.0).sum(
        axis=(1, 2)
    )
    busyness = _safe_divide(weighted_differences, busyness_denominator)
    p_sum = p[:, :, None] + p[:, None, :]
    ps = p * s
    complexity_terms = np.abs(level_difference)[None] * (ps[:, :, None] + ps[:, None, :]) / np.where(
        both_present, p_sum, 1.0
    )
    complexity = np.where(both_present, complexity_terms, 0.0).sum(axis=(1, 2)) / np.where(empty, 1.0, n_counted)
    strength = _safe_divide(
        np.where(both_present, p_sum * level_difference[None] ** 2, 0.0).sum(axis=(1, 2)), s.sum(axis=1)
    )
    features = np.stack([coarseness, contrast, busyness, complexity, strength], axis=1)
    features[empty] = np.nan
    return features
