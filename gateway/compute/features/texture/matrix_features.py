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

# Products below are einsum rather than ``@``: these matrices are far too small to gain from BLAS, and a
# threaded BLAS waking its threads (next to Numba's, on busy cores) costs more than the arithmetic.


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
    # Only a few passes touch whole matrices; everything else comes from the marginals, which keeps the
    # per-slice batches of the 2-D methods cheap. The identities used are noted where they apply.
    n_matrices = counts.shape[0]
    totals = counts.sum(axis=(1, 2), dtype=np.float64)
    empty = totals == 0
    p = counts / np.where(empty, 1.0, totals)[:, None, None]
    p_flat = p.reshape(n_matrices, -1)
    i = grey_values[:, None]
    j = grey_values[None, :]
    difference = np.abs(i - j)
    squared_difference = difference**2

    # Features that weight every entry with a fixed function of (i, j): one matrix product for all.
    inverse_squared_difference = np.divide(1.0, squared_difference, where=difference > 0, out=np.zeros_like(difference))
    fixed_weights = np.stack(
        [
            squared_difference,  # contrast
            difference,  # dissimilarity
            1.0 / (1.0 + difference),  # inverse difference
            1.0 / (1.0 + difference / n_levels),  # normalised inverse difference
            1.0 / (1.0 + squared_difference),  # inverse difference moment
            1.0 / (1.0 + squared_difference / n_levels**2),  # normalised inverse difference moment
            inverse_squared_difference,  # inverse variance (Σ_k≥1 p_{i-j}(k)/k²)
            i * j,  # autocorrelation
        ]
    ).reshape(8, -1)
    (
        contrast,
        dissimilarity,
        inverse_difference,
        inverse_difference_norm,
        inverse_difference_moment,
        inverse_difference_moment_norm,
        inverse_variance,
        autocorrelation,
    ) = np.einsum("bk,fk->fb", p_flat, fixed_weights)

    joint_max = p_flat.max(axis=1)
    joint_entropy = -_sum_plog2p(p_flat, axis=1)
    energy = np.einsum("bk,bk->b", p_flat, p_flat)

    # The matrix is symmetric, so p_i = p_j, μ_i = μ_j = joint average and σ_i = σ_j.
    marginal = p.sum(axis=2)
    joint_avg = np.einsum("bi,i->b", marginal, grey_values)
    centred = grey_values[None, :] - joint_avg[:, None]
    joint_var = np.einsum("bi,bi->b", marginal, centred**2)
    # Rounding can leave a tiny variance where the true one is zero (one grey level); dividing by it would
    # turn an undefined correlation into a huge number.
    joint_var = np.where(joint_var <= 1e-12 * np.maximum(joint_avg**2, 1.0), 0.0, joint_var)
    correlation = _safe_divide(autocorrelation - joint_avg**2, joint_var)

    # Diagonal (|i-j| = k) and cross-diagonal (i+j = k) marginals, only for the k that can occur.
    diff_order, diff_starts, diff_keys = _grouped_columns(difference)
    p_diff = np.add.reduceat(p_flat[:, diff_order], diff_starts, axis=1)
    sum_order, sum_starts, sum_keys = _grouped_columns(i + j)
    p_sum = np.add.reduceat(p_flat[:, sum_order], sum_starts, axis=1)

    diff_avg = np.einsum("bk,k->b", p_diff, diff_keys)
    diff_var = np.einsum("bk,bk->b", p_diff, (diff_keys[None, :] - diff_avg[:, None]) ** 2)
    diff_entropy = -_sum_plog2p(p_diff, axis=1)
    sum_avg = np.einsum("bk,k->b", p_sum, sum_keys)
    sum_centred = sum_keys[None, :] - sum_avg[:, None]
    sum_centred_squared = sum_centred * sum_centred
    sum_var = np.einsum("bk,bk->b", p_sum, sum_centred_squared)
    sum_entropy = -_sum_plog2p(p_sum, axis=1)
    # i + j − μ_i − μ_j is the centred sum i + j, so the cluster moments are moments of p_{i+j}.
    cluster_tendency = sum_var
    cluster_shade = np.einsum("bk,bk->b", p_sum, sum_centred_squared * sum_centred)
    cluster_prominence = np.einsum("bk,bk->b", p_sum, sum_centred_squared * sum_centred_squared)

    # With marginals p_i = p_j, both HXY1 = −Σ p_ij log2(p_i p_j) and HXY2 = −Σ p_i p_j log2(p_i p_j)
    # reduce to HX + HY = 2 HX.
    hx = -_sum_plog2p(marginal, axis=1)
    info_corr_1 = _safe_divide(joint_entropy - 2.0 * hx, hx)
    # HXY2 ≥ HXY mathematically; clip rounding so the square root stays real.
    info_corr_2 = np.sqrt(np.maximum(1.0 - np.exp(-2.0 * (2.0 * hx - joint_entropy)), 0.0))

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

    short_emphasis = np.einsum("bj,j->b", per_column, 1.0 / j2) / n_entries_safe
    long_emphasis = np.einsum("bj,j->b", per_column, j2) / n_entries_safe
    low_grey_emphasis = np.einsum("bi,i->b", per_level, 1.0 / i2) / n_entries_safe
    high_grey_emphasis = np.einsum("bi,i->b", per_level, i2) / n_entries_safe
    # Σ_ij r_ij a_i b_j for the four joint emphases, via one product over columns then one over levels.
    by_column_weight = np.einsum("bij,jk->bik", counts, np.stack([1.0 / j2, j2], axis=1))  # k: short, long
    short_low, long_low = np.einsum("bik,i->kb", by_column_weight, 1.0 / i2) / n_entries_safe
    short_high, long_high = np.einsum("bik,i->kb", by_column_weight, i2) / n_entries_safe
    grey_nonuniformity = (per_level**2).sum(axis=1) / n_entries_safe
    grey_nonuniformity_norm = grey_nonuniformity / n_entries_safe
    column_nonuniformity = (per_column**2).sum(axis=1) / n_entries_safe
    column_nonuniformity_norm = column_nonuniformity / n_entries_safe
    percentage = _safe_divide(n_entries, n_voxels)

    p = counts / n_entries_safe[:, None, None]
    p_level = p.sum(axis=2)
    p_column = p.sum(axis=1)
    mean_level = np.einsum("bi,i->b", p_level, grey_values)
    mean_column = np.einsum("bj,j->b", p_column, column_values)
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
