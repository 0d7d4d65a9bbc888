"""ComBat harmonisation: remove batch (scanner, site) effects from features, keeping biological covariates.

Method: Johnson, Li & Rabinovic (2007), "Adjusting batch effects in microarray expression data using
empirical Bayes methods", Biostatistics 8:118-127, as adapted to imaging features by Fortin et al.
(NeuroImage 2017, 2018). For feature ``f`` and subject ``i`` in batch ``b``::

    y_fi = alpha_fb + x_i' beta_f + gamma_fb + sqrt(delta_fb) * eps_fi

The batch-specific location ``gamma`` and scale ``delta`` get empirical-Bayes priors estimated across
features (normal for ``gamma``, inverse gamma for ``delta``); the posterior estimates ``gamma*``, ``delta*``
are removed and the covariate effects ``x_i' beta_f`` are kept.

**Orientation: data are features × subjects** (one row per feature, one column per subject), as in
neuroCombat, everywhere in this module and in :mod:`gateway.compute.combat_distributed`. Covariate
matrices are subjects × columns.

Compatibility with the reference implementations (neuroCombat 0.2.12, and R ``sva::ComBat`` which it follows)
is deliberate, so that a study harmonised here can be compared with one harmonised there:

* The pooled variance divides by the number of subjects (not subjects − parameters).
* The parametric iteration stops, per batch, when the largest relative change over features of gamma* and
  delta* between two iterations is at most ``tol`` (1e-4), with the change measured as the reference does:
  ``(new - old) / old``. For gamma this is signed, so a feature whose gamma is negative never holds the
  iteration back on its own account; its delta (always positive, and what drives gamma's update) still
  does. Keeping the reference's criterion makes every batch stop at the same iteration as the reference,
  so results agree to rounding rather than to the tolerance.
* ``mean_only`` with the parametric prior uses ``n = 1`` and ``delta = 1`` in the posterior mean, as the
  reference does.
* A within-batch variance that is exactly zero is replaced by 1 before the priors are estimated.

Where this module deliberately differs:

* Features with (numerically) zero pooled residual variance, e.g. constant features, cannot be standardised.
  neuroCombat sets an exactly zero pooled variance to ``median(var != 0)`` (a boolean median, in practice
  1) and then shifts the feature by a batch-dependent gamma*, so an all-zero feature comes out
  non-constant (and the 0/0 in its relative change can stop the parametric iteration of all features
  early); a constant non-zero feature is standardised by its rounding noise. Here such features are left
  out of the prior estimation, returned unchanged, and flagged in ``CombatEstimates.unadjusted_features``
  (as R ``sva::ComBat`` returns zero-variance rows unadjusted).
* A gamma that stays exactly 0 (a 0/0 relative change) is skipped by the convergence test instead of
  ending its whole batch's iteration at once.
* Non-parametric likelihoods are combined in log space, so batches of hundreds of subjects do not
  underflow to 0/0 (neuroCombat returns NaN there).
* NaN or infinite values are refused (``ValueError``) rather than half-supported.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

DEFAULT_TOLERANCE = 1e-4
DEFAULT_MAX_ITERATIONS = 10_000
# Working memory for one chunk of the non-parametric feature × feature likelihood matrix.
DEFAULT_CHUNK_BYTES = 64 * 2**20
# Elements in one chunk of feature rows for the streaming passes over the data (4 MiB of float64).
_CHUNK_ELEMENTS = 2**19
# A feature whose residual standard deviation is below this fraction of its largest batch mean is treated as
# constant: least squares leaves ~1e-16 relative noise in the residuals of a truly constant feature.
ZERO_VARIANCE_RTOL = 1e-12


# --------------------------------------------------------------------------------------------------------
# Covariates
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CovariateSpec:
    """How covariates become design-matrix columns, recorded so that new subjects are encoded identically.

    Numeric covariates become one column each. A categorical covariate with levels ``(l0, l1, ..., lk)``
    becomes k indicator columns for ``l1..lk``; the first level is the reference and gets none, because the
    batch indicators already span the intercept. Levels are compared as strings.
    """

    numeric: tuple[str, ...] = ()
    categorical: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        names = list(self.numeric)
        for name, levels in self.categorical:
            names.extend(f"{name}={level}" for level in levels[1:])
        return tuple(names)

    @property
    def n_columns(self) -> int:
        return len(self.column_names)

    def encode(self, covariates: Mapping[str, ArrayLike] | ArrayLike | None, n_subjects: int) -> FloatArray:
        """Design columns (subjects × ``n_columns``) for ``covariates``.

        ``covariates`` is a mapping name → values (one per subject), or an already numeric subjects × columns
        matrix in ``column_names`` order, or None when the spec has no columns.
        """
        if covariates is None:
            if self.n_columns:
                raise ValueError(f"covariates {list(self.column_names)} are required but none were given")
            return np.zeros((n_subjects, 0))
        if not isinstance(covariates, Mapping):
            matrix = np.asarray(covariates, dtype=np.float64)
            if matrix.ndim == 1:
                matrix = matrix[:, None]
            if matrix.shape != (n_subjects, self.n_columns):
                raise ValueError(
                    f"covariate matrix has shape {matrix.shape}; expected subjects × columns "
                    f"({n_subjects}, {self.n_columns})"
                )
            _require_finite(matrix, "covariates")
            return matrix
        missing = [name for name in (*self.numeric, *(n for n, _ in self.categorical)) if name not in covariates]
        if missing:
            raise ValueError(f"covariates {missing} are missing")
        columns: list[FloatArray] = []
        for name in self.numeric:
            values = _subject_vector(covariates[name], n_subjects, name)
            try:
                numeric = values.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"numeric covariate {name!r} has non-numeric values; list it as categorical if it is one"
                ) from exc
            _require_finite(numeric, f"covariate {name!r}")
            columns.append(numeric)
        for name, levels in self.categorical:
            values = _subject_vector(covariates[name], n_subjects, name).astype(str)
            unknown = sorted(set(np.unique(values)) - set(levels))
            if unknown:
                raise ValueError(f"categorical covariate {name!r} has levels {unknown} not in {list(levels)}")
            columns.extend((values == level).astype(np.float64) for level in levels[1:])
        if not columns:
            return np.zeros((n_subjects, 0))
        return np.column_stack(columns)

    def to_json(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": [{"name": name, "levels": list(levels)} for name, levels in self.categorical],
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> CovariateSpec:
        return cls(
            numeric=tuple(str(name) for name in payload.get("numeric", ())),
            categorical=tuple(
                (str(item["name"]), tuple(str(level) for level in item["levels"]))
                for item in payload.get("categorical", ())
            ),
        )


def covariate_spec(covariates: Mapping[str, ArrayLike], categorical: Iterable[str] = ()) -> CovariateSpec:
    """Infer a :class:`CovariateSpec` from data: names in ``categorical`` are one-hot coded (levels sorted,
    the first one the reference), every other name is numeric."""
    categorical_names = list(categorical)
    unknown = [name for name in categorical_names if name not in covariates]
    if unknown:
        raise ValueError(f"categorical covariates {unknown} are not among the covariates {list(covariates)}")
    levels = []
    for name in categorical_names:
        values = np.asarray(covariates[name]).ravel()
        # np.unique on the original values keeps numeric codes in numeric order (2 before 10).
        levels.append((name, tuple(dict.fromkeys(str(value) for value in np.unique(values)))))
    numeric = tuple(name for name in covariates if name not in categorical_names)
    return CovariateSpec(numeric=numeric, categorical=tuple(levels))


def covariate_design(
    covariates: Mapping[str, ArrayLike], categorical: Iterable[str] = ()
) -> tuple[FloatArray, CovariateSpec]:
    """Covariate design matrix (subjects × columns) and the spec that re-creates it for new subjects."""
    spec = covariate_spec(covariates, categorical)
    lengths = {np.asarray(values).ravel().shape[0] for values in covariates.values()}
    if len(lengths) > 1:
        raise ValueError(f"covariates have different lengths {sorted(lengths)}")
    n_subjects = lengths.pop() if lengths else 0
    return spec.encode(covariates, n_subjects), spec


def _subject_vector(values: ArrayLike, n_subjects: int, name: str) -> np.ndarray:
    vector = np.asarray(values).ravel()
    if vector.shape[0] != n_subjects:
        raise ValueError(f"covariate {name!r} has {vector.shape[0]} values for {n_subjects} subjects")
    return vector


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CombatEstimates:
    """Everything needed to harmonise new subjects from a known batch with :meth:`apply`.

    Arrays indexed by batch follow ``batches``; per-feature arrays follow the data's rows.
    """

    batches: tuple[Hashable, ...]
    reference_batch: Hashable | None
    covariates: CovariateSpec
    batch_sizes: NDArray[np.int64]  # (n_batches,)
    batch_coefficients: FloatArray  # alpha: (n_batches, n_features) batch intercepts of the location model
    covariate_coefficients: FloatArray  # beta: (n_covariate_columns, n_features)
    standardisation_mean: FloatArray  # (n_features,) grand mean (size-weighted alpha, or the reference's)
    pooled_variance: FloatArray  # (n_features,)
    gamma_hat: FloatArray  # (n_batches, n_features) in standardised units
    delta_hat: FloatArray  # (n_batches, n_features)
    gamma_star: FloatArray  # (n_batches, n_features)
    delta_star: FloatArray  # (n_batches, n_features)
    gamma_bar: FloatArray  # (n_batches,) prior mean of gamma (NaN without empirical Bayes)
    tau2: FloatArray  # (n_batches,) prior variance of gamma
    a_prior: FloatArray  # (n_batches,) inverse-gamma prior of delta (NaN when mean_only)
    b_prior: FloatArray  # (n_batches,)
    unadjusted_features: NDArray[np.bool_]  # (n_features,) zero-variance features passed through unchanged
    iterations: NDArray[np.int64]  # (n_batches,) parametric EB iterations (0 when not iterated)
    parametric: bool
    mean_only: bool
    empirical_bayes: bool

    @property
    def n_features(self) -> int:
        return int(self.pooled_variance.shape[0])

    def apply(
        self,
        data: ArrayLike,
        batch: ArrayLike,
        covariates: Mapping[str, ArrayLike] | ArrayLike | None = None,
    ) -> FloatArray:
        """Harmonise new subjects (features × subjects) from batches seen when the estimates were made.

        Covariates are encoded with the recorded spec, so their effect is kept per subject (neuroCombat's
        ``neuroCombatFromTraining`` uses the training subjects' average covariate effect instead).
        """
        values = _as_feature_matrix(data)
        if values.shape[0] != self.n_features:
            raise ValueError(f"data has {values.shape[0]} features; the estimates have {self.n_features}")
        labels = np.asarray(batch, dtype=object).ravel()
        if labels.shape[0] != values.shape[1]:
            raise ValueError(f"batch has {labels.shape[0]} labels for {values.shape[1]} subjects")
        index = {label: position for position, label in enumerate(self.batches)}
        unknown = sorted({str(label) for label in labels if label not in index})
        if unknown:
            raise ValueError(f"batches {unknown} were not part of the estimation ({list(self.batches)})")
        codes = np.fromiter((index[label] for label in labels), dtype=np.intp, count=labels.shape[0])
        covariate_matrix = self.covariates.encode(covariates, values.shape[1])

        keep = self.covariate_coefficients.T @ covariate_matrix.T + self.standardisation_mean[:, None]
        sd = np.sqrt(np.where(self.unadjusted_features, 1.0, self.pooled_variance))[:, None]
        standardised = (values - keep) / sd
        adjusted = (standardised - self.gamma_star.T[:, codes]) / np.sqrt(self.delta_star.T[:, codes])
        out = adjusted * sd + keep
        out[self.unadjusted_features] = values[self.unadjusted_features]
        if self.reference_batch is not None:
            reference_columns = codes == index[self.reference_batch]
            out[:, reference_columns] = values[:, reference_columns]
        return out


@dataclass(frozen=True, eq=False)
class CombatResult:
    data: FloatArray  # harmonised, features × subjects
    estimates: CombatEstimates


# --------------------------------------------------------------------------------------------------------
# Pooled ComBat
# --------------------------------------------------------------------------------------------------------


def combat(
    data: ArrayLike,
    batch: ArrayLike,
    covariates: Mapping[str, ArrayLike] | ArrayLike | None = None,
    *,
    categorical: Iterable[str] = (),
    covariates_spec: CovariateSpec | None = None,
    parametric: bool = True,
    mean_only: bool = False,
    empirical_bayes: bool = True,
    ref_batch: Hashable | None = None,
    tol: float = DEFAULT_TOLERANCE,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> CombatResult:
    """Harmonise ``data`` (features × subjects) across the batches in ``batch`` (one label per subject).

    ``covariates`` to preserve: a mapping name → per-subject values (names listed in ``categorical`` are
    one-hot coded, others numeric; or pass ``covariates_spec`` to fix the encoding), or a numeric
    subjects × columns matrix without an intercept column. ``ref_batch`` names a batch that is left unchanged
    and whose mean and variance the others are mapped to. ``parametric=False`` uses the non-parametric
    prior (cost ~ n_batches × n_features², chunked to ``chunk_bytes``). ``empirical_bayes=False`` uses the
    per-batch least-squares estimates without shrinkage.

    Raises ValueError for non-finite values, a batch with fewer than two subjects (allowed with
    ``mean_only``, except for the reference batch), a design whose columns are linearly dependent (e.g. a
    covariate constant within the study, or identical to a batch), or fewer than two adjustable features
    when empirical Bayes needs priors.
    """
    values = _as_feature_matrix(data)
    n_subjects = values.shape[1]
    batches, codes = _encode_batches(batch, n_subjects)
    spec, covariate_matrix = _encode_covariates(covariates, categorical, covariates_spec, n_subjects)
    reference_index = _reference_index(batches, ref_batch)
    sizes = np.bincount(codes, minlength=len(batches))
    _check_batch_sizes(batches, sizes, mean_only=mean_only, reference_index=reference_index)

    cross_product, design_times_data = design_cross_products(values, codes, len(batches), covariate_matrix)
    coefficients = solve_location_model(cross_product, design_times_data, batch_names=batches, spec=spec)
    _require_finite_sums(coefficients, values)
    batch_coefficients = coefficients[: len(batches)]
    covariate_coefficients = coefficients[len(batches) :]
    grand_mean = standardisation_mean(batch_coefficients, sizes, reference_index)

    moments = residual_moments(values, codes, batch_coefficients, covariate_matrix, covariate_coefficients)
    pooled_variance = pooled_residual_variance(moments.squared_sums, sizes, reference_index)
    return harmonise_with_location_model(
        values,
        codes,
        moments,
        covariate_matrix,
        batches=batches,
        reference_index=reference_index,
        spec=spec,
        batch_coefficients=batch_coefficients,
        covariate_coefficients=covariate_coefficients,
        grand_mean=grand_mean,
        pooled_variance=pooled_variance,
        options=EmpiricalBayesOptions(
            parametric=parametric,
            mean_only=mean_only,
            empirical_bayes=empirical_bayes,
            tol=tol,
            max_iterations=max_iterations,
            chunk_bytes=chunk_bytes,
        ),
    )


# --------------------------------------------------------------------------------------------------------
# Building blocks, shared with the distributed protocol so that both compute the same numbers the same way
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmpiricalBayesOptions:
    parametric: bool = True
    mean_only: bool = False
    empirical_bayes: bool = True
    tol: float = DEFAULT_TOLERANCE
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    chunk_bytes: int = DEFAULT_CHUNK_BYTES


@dataclass(frozen=True, eq=False)
class ResidualMoments:
    """Residuals of the location model and their per-batch first and second moments."""

    residuals: FloatArray  # features × subjects
    sums: FloatArray  # features × batches
    squared_sums: FloatArray  # features × batches


def batch_indicators(codes: NDArray[np.intp], n_batches: int) -> FloatArray:
    """Subjects × batches 0/1 matrix."""
    one_hot = np.zeros((codes.shape[0], n_batches))
    one_hot[np.arange(codes.shape[0]), codes] = 1.0
    return one_hot


def solve_location_model(
    cross_product: FloatArray,
    design_times_data: FloatArray,
    *,
    batch_names: Sequence[Hashable] = (),
    spec: CovariateSpec | None = None,
) -> FloatArray:
    """Least-squares coefficients (design columns × features) from XᵀX and XᵀY, refusing a singular design.

    The rank is judged on XᵀX scaled to unit diagonal, so that covariates in large units (age in days) are
    not mistaken for collinearity.
    """
    diagonal = np.diag(cross_product).copy()
    names = [*(f"batch={name}" for name in batch_names), *(spec.column_names if spec else ())]
    empty = np.flatnonzero(diagonal <= 0)
    if empty.size:
        labels = [names[i] if i < len(names) else f"column {i}" for i in empty]
        raise ValueError(f"singular design: columns {labels} are all zero")
    scale = 1.0 / np.sqrt(diagonal)
    scaled = cross_product * scale[:, None] * scale[None, :]
    eigenvalues = np.linalg.eigvalsh(scaled)
    # Exactly dependent columns leave an eigenvalue of rounding size (~ p · eps · largest). The margin above
    # that stays far below what legitimate but nearly collinear covariates give: a calendar year of
    # 2020 ± 2 beside the batch indicators (which sum to an intercept) gives ~1e-7.
    if eigenvalues[0] <= eigenvalues[-1] * scaled.shape[0] * 1e3 * np.finfo(np.float64).eps:
        raise ValueError(
            "singular design: the batch indicators and covariates are linearly dependent (a covariate that is "
            f"constant, or determined by batch, or duplicated); design columns: {names or scaled.shape[0]}"
        )
    return np.linalg.solve(scaled, design_times_data * scale[:, None]) * scale[:, None]


def standardisation_mean(
    batch_coefficients: FloatArray, sizes: NDArray[np.int64], reference_index: int | None
) -> FloatArray:
    """Grand mean per feature: batch intercepts weighted by batch size, or the reference batch's intercept."""
    if reference_index is not None:
        return batch_coefficients[reference_index].copy()
    return (sizes / sizes.sum()) @ batch_coefficients


def design_cross_products(
    values: FloatArray, codes: NDArray[np.intp], n_batches: int, covariate_matrix: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """XᵀX and XᵀY for the design X = [batch indicators | covariates] and Y = ``values``ᵀ.

    ``codes`` index the batch columns; batches without subjects get zero rows, as their indicators would.
    """
    design = np.hstack([batch_indicators(codes, n_batches), covariate_matrix])
    design_times_data = np.empty((design.shape[1], values.shape[0]))
    segments = _BatchSegments(codes, n_batches)
    scratch = np.empty((_chunk_rows(values.shape), values.shape[1]))
    # inf × 0 makes NaN here; callers check the result for non-finite values and name the features.
    with np.errstate(invalid="ignore"):
        for rows in _row_chunks(values.shape):
            design_times_data[:n_batches, rows] = segments.sums(values[rows], scratch).T
        if covariate_matrix.shape[1]:
            # (values @ C)ᵀ rather than Cᵀ @ valuesᵀ: the same product, but BLAS runs this layout ~10× faster.
            design_times_data[n_batches:] = (values @ covariate_matrix).T
    # einsum's own loop rather than BLAS for this tiny product: see _BatchSegments.
    return np.einsum("ij,ik->jk", design, design), design_times_data


class _BatchSegments:
    """Per-batch sums along the subject axis, as segment sums over subjects gathered into batch order.

    Plain NumPy reductions, where a product with the batch indicator matrix would be multithreaded BLAS
    calls that stall whenever another process holds a core (several times slower on a busy node).
    """

    def __init__(self, codes: NDArray[np.intp], n_batches: int) -> None:
        self.n_batches = n_batches
        self.order = np.argsort(codes, kind="stable")
        self.present = np.bincount(codes, minlength=n_batches) > 0
        self.starts = np.searchsorted(codes[self.order], np.flatnonzero(self.present))

    def gather(self, chunk: FloatArray, scratch: FloatArray) -> FloatArray:
        """``chunk``'s columns in batch order, written into ``scratch``."""
        # mode="clip" only because the default mode buffers ``out`` to check indices, which are valid here.
        return np.take(chunk, self.order, axis=1, out=scratch[: chunk.shape[0]], mode="clip")

    def reduce(self, grouped: FloatArray) -> FloatArray:
        """Rows × batches sums of a chunk already in batch order."""
        sums = np.zeros((grouped.shape[0], self.n_batches))
        sums[:, self.present] = np.add.reduceat(grouped, self.starts, axis=1)
        return sums

    def sums(self, chunk: FloatArray, scratch: FloatArray) -> FloatArray:
        return self.reduce(self.gather(chunk, scratch))


def residual_moments(
    values: FloatArray,
    codes: NDArray[np.intp],
    batch_coefficients: FloatArray,
    covariate_matrix: FloatArray,
    covariate_coefficients: FloatArray,
) -> ResidualMoments:
    """Residuals of ``values`` (features × subjects) under the location model, with per-batch sums.

    ``codes`` index rows of ``batch_coefficients``.
    """
    n_batches = batch_coefficients.shape[0]
    residuals = np.empty_like(values)
    sums = np.empty((values.shape[0], n_batches))
    squared_sums = np.empty_like(sums)
    batch_table = batch_coefficients.T
    covariate_columns = covariate_matrix.T
    covariate_table = covariate_coefficients.T
    segments = _BatchSegments(codes, n_batches)
    scratch = np.empty((_chunk_rows(values.shape), values.shape[1]))
    for rows in _row_chunks(values.shape):
        chunk = residuals[rows]
        np.take(batch_table[rows], codes, axis=1, out=chunk, mode="clip")
        np.subtract(values[rows], chunk, out=chunk)
        if covariate_columns.shape[0]:
            chunk -= np.matmul(covariate_table[rows], covariate_columns, out=scratch[: chunk.shape[0]])
        grouped = segments.gather(chunk, scratch)
        sums[rows] = segments.reduce(grouped)
        squared_sums[rows] = segments.reduce(np.square(grouped, out=grouped))
    return ResidualMoments(residuals, sums, squared_sums)


def _chunk_rows(shape: tuple[int, ...]) -> int:
    # Whole-matrix temporaries of this size would be fresh mmap allocations, paying page faults on every
    # use; a few-MiB chunk of feature rows stays in cache between the steps applied to it.
    return max(1, min(shape[0], _CHUNK_ELEMENTS // max(1, shape[1])))


def _row_chunks(shape: tuple[int, ...]) -> Iterator[slice]:
    step = _chunk_rows(shape)
    for start in range(0, shape[0], step):
        yield slice(start, min(start + step, shape[0]))


def pooled_residual_variance(
    squared_sums: FloatArray, sizes: NDArray[np.int64], reference_index: int | None
) -> FloatArray:
    """Mean squared residual per feature over all subjects, or over the reference batch only (divisor n,
    as in the reference implementations)."""
    if reference_index is not None:
        return squared_sums[:, reference_index] / sizes[reference_index]
    return squared_sums.sum(axis=1) / sizes.sum()


def zero_variance_features(pooled_variance: FloatArray, batch_coefficients: FloatArray) -> NDArray[np.bool_]:
    scale = np.abs(batch_coefficients).max(axis=0)
    return pooled_variance <= (ZERO_VARIANCE_RTOL * scale) ** 2


def harmonise_with_location_model(
    values: FloatArray,
    codes: NDArray[np.intp],
    moments: ResidualMoments,
    covariate_matrix: FloatArray,
    *,
    batches: tuple[Hashable, ...],
    reference_index: int | None,
    spec: CovariateSpec,
    batch_coefficients: FloatArray,
    covariate_coefficients: FloatArray,
    grand_mean: FloatArray,
    pooled_variance: FloatArray,
    options: EmpiricalBayesOptions,
    unadjusted: NDArray[np.bool_] | None = None,
) -> CombatResult:
    """Estimate the batch effects of ``batches`` from data standardised with a given location model and
    pooled variance, shrink them and remove them.

    The location model (``batch_coefficients``, ``covariate_coefficients``, ``grand_mean``,
    ``pooled_variance``) may have been fitted on more subjects than ``values`` holds (distributed ComBat);
    ``batches`` and ``codes`` cover only the subjects given. ``unadjusted`` marks zero-variance features;
    by default judged from the given batches' coefficients, but the distributed protocol passes the hub's
    verdict over all batches so every site leaves the same features alone.
    """
    n_batches = len(batches)
    sizes = np.bincount(codes, minlength=n_batches)
    if unadjusted is None:
        unadjusted = zero_variance_features(pooled_variance, batch_coefficients)
    adjustable = ~unadjusted
    if options.empirical_bayes and adjustable.sum() < 2:
        raise ValueError(
            "empirical Bayes priors are estimated across features and need at least two features with "
            f"non-zero variance; {int(adjustable.sum())} given (use empirical_bayes=False)"
        )
    variance = np.where(unadjusted, 1.0, pooled_variance)
    sd = np.sqrt(variance)

    # Residuals have zero mean within each batch in exact arithmetic; adding their computed mean keeps
    # gamma_hat equal to the batch mean of the standardised data even when the solve lost a few digits.
    residual_means = moments.sums / sizes
    gamma_hat = ((batch_coefficients - grand_mean).T + residual_means).T / sd
    centred_squares = np.maximum(moments.squared_sums - moments.sums * residual_means, 0.0).T / variance
    if options.mean_only:
        delta_hat = np.ones_like(gamma_hat)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            delta_hat = centred_squares / (sizes - 1)[:, None]
        # An exactly constant batch would give a zero delta and an infinite prior; the reference uses 1.
        delta_hat[delta_hat == 0] = 1.0

    shrinkage = _shrink(gamma_hat, delta_hat, centred_squares, sizes, adjustable, reference_index, options)
    gamma_star, delta_star = shrinkage.gamma_star, shrinkage.delta_star
    gamma_star[:, unadjusted] = 0.0
    delta_star[:, unadjusted] = 1.0
    if reference_index is not None:
        gamma_star[reference_index] = 0.0
        delta_star[reference_index] = 1.0

    # harmonised = (s - gamma*) / sqrt(delta*) * sd + grand_mean + covariate effect, with the standardised
    # data s = (residual + alpha_b - grand_mean) / sd, i.e. residual * scale_b + offset_b + covariate effect:
    # two gathers from batches × features tables, no per-subject arithmetic beyond one multiply-add.
    scale_table = (1.0 / np.sqrt(delta_star)).T
    offset_table = (batch_coefficients - grand_mean - gamma_star * sd).T * scale_table + grand_mean[:, None]
    harmonised = moments.residuals  # reused as the output buffer: the residuals are not needed afterwards
    covariate_columns = covariate_matrix.T
    covariate_table = covariate_coefficients.T
    scratch = np.empty((_chunk_rows(values.shape), values.shape[1]))
    for rows in _row_chunks(values.shape):
        chunk = harmonised[rows]
        work = scratch[: chunk.shape[0]]
        chunk *= np.take(scale_table[rows], codes, axis=1, out=work, mode="clip")
        chunk += np.take(offset_table[rows], codes, axis=1, out=work, mode="clip")
        if covariate_columns.shape[0]:
            chunk += np.matmul(covariate_table[rows], covariate_columns, out=work)
    harmonised[unadjusted] = values[unadjusted]
    if reference_index is not None:
        reference_columns = codes == reference_index
        harmonised[:, reference_columns] = values[:, reference_columns]

    estimates = CombatEstimates(
        batches=batches,
        reference_batch=None if reference_index is None else batches[reference_index],
        covariates=spec,
        batch_sizes=sizes.astype(np.int64),
        batch_coefficients=batch_coefficients,
        covariate_coefficients=covariate_coefficients,
        standardisation_mean=grand_mean,
        pooled_variance=pooled_variance,
        gamma_hat=gamma_hat,
        delta_hat=delta_hat,
        gamma_star=gamma_star,
        delta_star=delta_star,
        gamma_bar=shrinkage.gamma_bar,
        tau2=shrinkage.tau2,
        a_prior=shrinkage.a_prior,
        b_prior=shrinkage.b_prior,
        unadjusted_features=unadjusted,
        iterations=shrinkage.iterations,
        parametric=options.parametric,
        mean_only=options.mean_only,
        empirical_bayes=options.empirical_bayes,
    )
    return CombatResult(data=harmonised, estimates=estimates)


# --------------------------------------------------------------------------------------------------------
# Empirical Bayes
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Shrinkage:
    gamma_star: FloatArray
    delta_star: FloatArray
    gamma_bar: FloatArray
    tau2: FloatArray
    a_prior: FloatArray
    b_prior: FloatArray
    iterations: NDArray[np.int64]


def _shrink(
    gamma_hat: FloatArray,
    delta_hat: FloatArray,
    centred_squares: FloatArray,
    sizes: NDArray[np.int64],
    adjustable: NDArray[np.bool_],
    reference_index: int | None,
    options: EmpiricalBayesOptions,
) -> _Shrinkage:
    n_batches = gamma_hat.shape[0]
    nan = np.full(n_batches, np.nan)
    gamma_star = gamma_hat.copy()
    delta_star = delta_hat.copy()
    iterations = np.zeros(n_batches, dtype=np.int64)
    if not options.empirical_bayes:
        return _Shrinkage(gamma_star, delta_star, nan, nan.copy(), nan.copy(), nan.copy(), iterations)

    # The reference batch is reset to (0, 1) afterwards, so its shrinkage is not computed at all.
    rows = np.array([b for b in range(n_batches) if b != reference_index], dtype=np.intp)
    g_hat = gamma_hat[np.ix_(rows, adjustable)]
    d_hat = delta_hat[np.ix_(rows, adjustable)]
    squares = centred_squares[np.ix_(rows, adjustable)]
    n = sizes[rows].astype(np.float64)[:, None]

    gamma_bar = g_hat.mean(axis=1)
    tau2 = g_hat.var(axis=1, ddof=1)
    a_prior, b_prior = _inverse_gamma_prior(d_hat) if not options.mean_only else (nan[rows], nan[rows])

    if not options.parametric:
        g_new, d_new = _nonparametric_posterior(g_hat, d_hat, squares, n[:, 0], options.chunk_bytes)
    elif options.mean_only:
        # The reference treats the batch mean as a single observation of unit variance here.
        g_new = (tau2[:, None] * g_hat + gamma_bar[:, None]) / (tau2[:, None] + 1.0)
        d_new = np.ones_like(d_hat)
    else:
        g_new, d_new, iterations[rows] = _parametric_posterior(
            g_hat, d_hat, squares, n, gamma_bar, tau2, a_prior, b_prior, options.tol, options.max_iterations
        )
    gamma_star[np.ix_(rows, adjustable)] = g_new
    delta_star[np.ix_(rows, adjustable)] = d_new

    def per_batch(values: FloatArray) -> FloatArray:
        full = np.full(n_batches, np.nan)
        full[rows] = values
        return full

    return _Shrinkage(
        gamma_star,
        delta_star,
        per_batch(gamma_bar),
        per_batch(tau2),
        per_batch(a_prior),
        per_batch(b_prior),
        iterations,
    )


def _inverse_gamma_prior(delta_hat: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Method-of-moments hyperparameters of the inverse-gamma prior on delta, per batch (row)."""
    mean = delta_hat.mean(axis=1)
    variance = delta_hat.var(axis=1, ddof=1)
    a_prior = (2.0 * variance + mean**2) / variance
    b_prior = (mean * variance + mean**3) / variance
    return a_prior, b_prior


def _parametric_posterior(
    gamma_hat: FloatArray,
    delta_hat: FloatArray,
    centred_squares: FloatArray,
    n: FloatArray,
    gamma_bar: FloatArray,
    tau2: FloatArray,
    a_prior: FloatArray,
    b_prior: FloatArray,
    tol: float,
    max_iterations: int,
) -> tuple[FloatArray, FloatArray, NDArray[np.int64]]:
    """Iterate the conditional posterior means of gamma and delta for all batches × features at once.

    Each batch stops when every one of its features has converged (the reference's per-batch criterion);
    finished batches are no longer updated. The sum of squares around gamma is taken from the batch's
    sufficient statistics, sum((s - g)²) = centred squares + n (gamma_hat - g)², so an iteration costs
    O(batches × features) whatever the number of subjects.
    """
    gamma = gamma_hat.copy()
    delta = delta_hat.copy()
    iterations = np.zeros(gamma.shape[0], dtype=np.int64)
    active = np.arange(gamma.shape[0])
    tau2_n = tau2[:, None] * n
    shape_term = n / 2.0 + a_prior[:, None] - 1.0
    while active.size:
        if iterations[active[0]] >= max_iterations:
            raise RuntimeError(
                f"parametric empirical Bayes did not converge within {max_iterations} iterations "
                f"for batch rows {active.tolist()}"
            )
        g_old, d_old = gamma[active], delta[active]
        g_new = (tau2_n[active] * gamma_hat[active] + d_old * gamma_bar[active, None]) / (tau2_n[active] + d_old)
        sum_squares = centred_squares[active] + n[active] * (gamma_hat[active] - g_new) ** 2
        d_new = (0.5 * sum_squares + b_prior[active, None]) / shape_term[active]
        with np.errstate(invalid="ignore", divide="ignore"):
            relative_change = np.concatenate([np.abs(g_new - g_old) / g_old, np.abs(d_new - d_old) / d_old], axis=1)
        # fmax skips the NaN of a gamma that stays exactly 0 (0/0); the reference's max() would let that one
        # feature end the whole batch's iteration.
        change = np.fmax.reduce(relative_change, axis=1)
        gamma[active], delta[active] = g_new, d_new
        iterations[active] += 1
        active = active[change > tol]
    return gamma, delta, iterations


def _nonparametric_posterior(
    gamma_hat: FloatArray,
    delta_hat: FloatArray,
    centred_squares: FloatArray,
    n: FloatArray,
    chunk_bytes: int,
) -> tuple[FloatArray, FloatArray]:
    """Posterior means of gamma and delta under the empirical distribution of the other features' estimates.

    For feature i of a batch with n subjects, feature j (j ≠ i) is a support point with likelihood
    L_ij = (2π d_j)^(-n/2) exp(-sum_k (s_ik - g_j)² / (2 d_j)), and sum_k (s_ik - g_j)² equals
    centred_squares_i + n (gamma_hat_i - g_j)², so no subject-level data is needed. Weights are normalised
    in log space. Rows are processed in chunks to bound the features × features working memory.
    """
    n_batches, n_features = gamma_hat.shape
    gamma_star = np.empty_like(gamma_hat)
    delta_star = np.empty_like(delta_hat)
    # One chunk × features float64 matrix is alive at a time.
    chunk = max(1, min(n_features, chunk_bytes // (8 * n_features)))
    for b in range(n_batches):
        g, d, squares, size = gamma_hat[b], delta_hat[b], centred_squares[b], n[b]
        h = 0.5 / d
        # log L_ij = -(squares_i + n g_i²) h_j + g_i (2 n h_j g_j) + (log normaliser_j - n h_j g_j²) is a
        # rank-3 product, so one matrix multiplication writes each chunk instead of six elementwise passes.
        # Standardised data keep the expanded terms small, so the cancellation costs ~1e-12 in the weights.
        row_terms = np.column_stack([-(squares + size * g**2), g, np.ones_like(g)])
        column_terms = np.vstack([h, 2.0 * size * h * g, -0.5 * size * np.log(2.0 * math.pi * d) - size * h * g**2])
        support = np.column_stack([g, d, np.ones_like(g)])
        for start in range(0, n_features, chunk):
            stop = min(start + chunk, n_features)
            log_likelihood = row_terms[start:stop] @ column_terms
            rows = np.arange(stop - start)
            log_likelihood[rows, rows + start] = -np.inf  # leave the feature itself out of its own prior
            log_likelihood -= log_likelihood.max(axis=1, keepdims=True)
            weighted = np.exp(log_likelihood, out=log_likelihood) @ support
            gamma_star[b, start:stop] = weighted[:, 0] / weighted[:, 2]
            delta_star[b, start:stop] = weighted[:, 1] / weighted[:, 2]
    return gamma_star, delta_star


# --------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------


def _as_feature_matrix(data: ArrayLike) -> FloatArray:
    # Row-contiguous, because the passes over the data stream through chunks of feature rows.
    values = np.ascontiguousarray(data, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"data must be a 2-D features × subjects array, got shape {values.shape}")
    return values


def _require_finite(values: np.ndarray, what: str) -> None:
    if not np.isfinite(values).all():
        raise ValueError(f"{what} contain NaN or infinite values; impute or drop them before ComBat")


def _require_finite_sums(coefficients: FloatArray, values: FloatArray) -> None:
    # NaN and inf propagate into XᵀY, so checking the small coefficient matrix avoids a full pass over the
    # data in the common case; the full pass only runs to name the culprits.
    if np.isfinite(coefficients).all():
        return
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    raise ValueError(
        f"data contain NaN or infinite values in features {bad[:20].tolist()}"
        f"{' ...' if bad.size > 20 else ''}; impute or drop them before ComBat"
    )


def _encode_batches(batch: ArrayLike, n_subjects: int) -> tuple[tuple[Hashable, ...], NDArray[np.intp]]:
    labels = np.asarray(batch).ravel()
    if labels.shape[0] != n_subjects:
        raise ValueError(f"batch has {labels.shape[0]} labels for {n_subjects} subjects")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise ValueError("batch labels contain NaN")
    try:
        levels, codes = np.unique(labels, return_inverse=True)
    except TypeError as exc:
        raise ValueError("batch labels must be of one sortable type (all strings or all integers)") from exc
    return tuple(levels.tolist()), codes.astype(np.intp).ravel()


def _encode_covariates(
    covariates: Mapping[str, ArrayLike] | ArrayLike | None,
    categorical: Iterable[str],
    spec: CovariateSpec | None,
    n_subjects: int,
) -> tuple[CovariateSpec, FloatArray]:
    categorical_names = list(categorical)
    if spec is None:
        if covariates is None:
            spec = CovariateSpec()
        elif isinstance(covariates, Mapping):
            spec = covariate_spec(covariates, categorical_names)
        else:
            if categorical_names:
                raise ValueError("categorical names need covariates given as a mapping, not a matrix")
            matrix = np.asarray(covariates, dtype=np.float64)
            n_columns = 1 if matrix.ndim == 1 else matrix.shape[1]
            spec = CovariateSpec(numeric=tuple(f"covariate_{i}" for i in range(n_columns)))
    return spec, spec.encode(covariates, n_subjects)


def _reference_index(batches: tuple[Hashable, ...], ref_batch: Hashable | None) -> int | None:
    if ref_batch is None:
        return None
    for position, label in enumerate(batches):
        if label == ref_batch:
            return position
    raise ValueError(f"reference batch {ref_batch!r} is not among the batches {list(batches)}")


def _check_batch_sizes(
    batches: Sequence[Hashable], sizes: NDArray[np.int64], *, mean_only: bool, reference_index: int | None
) -> None:
    singletons = [batches[i] for i in np.flatnonzero(sizes < 2)]
    if reference_index is not None and sizes[reference_index] < 2:
        raise ValueError(
            f"reference batch {batches[reference_index]!r} has {sizes[reference_index]} subject(s); "
            "its variance defines the pooled variance and needs at least two"
        )
    if singletons and not mean_only:
        raise ValueError(
            f"batches {singletons} have a single subject, so their scale (delta) cannot be estimated; "
            "merge them with a similar batch, drop them, or use mean_only=True"
        )


# --------------------------------------------------------------------------------------------------------
# Command line: python -m gateway.compute.combat --data X.npy --batch batch.txt --out Y.npy
# --------------------------------------------------------------------------------------------------------


def _read_labels(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    with open(path, encoding="utf-8") as handle:
        return np.array([line.strip() for line in handle if line.strip()])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.compute.combat",
        description="ComBat-harmonise a features × subjects matrix stored as .npy.",
    )
    parser.add_argument("--data", required=True, help="features × subjects float array (.npy)")
    parser.add_argument("--batch", required=True, help="batch label per subject (.npy, or text one per line)")
    parser.add_argument("--covariates", help="subjects × columns numeric covariate matrix (.npy) to preserve")
    parser.add_argument("--out", required=True, help="where to write the harmonised array (.npy)")
    parser.add_argument("--non-parametric", action="store_true", help="non-parametric empirical Bayes prior")
    parser.add_argument("--mean-only", action="store_true", help="adjust batch means only, not scales")
    parser.add_argument("--no-eb", action="store_true", help="no empirical Bayes shrinkage")
    parser.add_argument("--ref-batch", help="batch left unchanged (compared as text with the labels)")
    parser.add_argument("--summary", action="store_true", help="print a JSON summary of the estimates")
    args = parser.parse_args(argv)

    data = np.load(args.data, allow_pickle=False)
    labels = _read_labels(args.batch)
    covariates = np.load(args.covariates, allow_pickle=False) if args.covariates else None
    ref_batch: Hashable | None = None
    if args.ref_batch is not None:
        matches = [label for label in np.unique(labels).tolist() if str(label) == args.ref_batch]
        if not matches:
            parser.error(f"--ref-batch {args.ref_batch!r} is not among the batch labels")
        ref_batch = matches[0]
    try:
        result = combat(
            data,
            labels,
            covariates,
            parametric=not args.non_parametric,
            mean_only=args.mean_only,
            empirical_bayes=not args.no_eb,
            ref_batch=ref_batch,
        )
    except ValueError as exc:
        print(f"combat: {exc}", file=sys.stderr)
        return 2
    np.save(args.out, result.data)
    if args.summary:
        estimates = result.estimates
        summary = {
            "features": estimates.n_features,
            "subjects": int(estimates.batch_sizes.sum()),
            "batches": [str(label) for label in estimates.batches],
            "iterations": estimates.iterations.tolist(),
            "unadjusted_features": np.flatnonzero(estimates.unadjusted_features).tolist(),
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
