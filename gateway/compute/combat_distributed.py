"""Distributed ComBat: the site and hub steps of d-ComBat (Chen et al. 2022, "Privacy-preserving
harmonization via distributed ComBat", NeuroImage 248:118822).

Every step is a pure function. Sites never send subject-level values: only sums over at least ``min_rows``
subjects, as JSON-ready dicts (lists and floats; no pickle) that carry ``schema``, ``version`` and
``kind`` so that either side can refuse a message it does not understand. Data are features × subjects, as in
:mod:`gateway.compute.combat`; batch labels travel as strings.

The protocol (one message per site per round, hub answers broadcast to all sites)::

    site_registration ─► hub_plan                      batch list, who holds which batch, covariate coding
    site_round1       ─► hub_round1                    XᵀX, XᵀY over the site's rows ─► pooled β, grand mean
    site_round2       ─► hub_round2                    per-batch residual sums of squares ─► pooled variance
    site_round3                                        local: standardise, empirical Bayes, adjust

Round 1's design holds the indicators of *all* batches in the federation plus the covariates, which is why
the hub must publish the batch list first. Round 3 estimates each batch's gamma/delta priors at the site
that holds the batch, so every batch must lie within one site (the hub refuses a plan otherwise); with that,
the result equals pooled :func:`~gateway.compute.combat.combat` on all subjects up to rounding.

Disclosure guard: a site refuses (:class:`DisclosureRefused`) to produce a summary unless every batch it
holds has at least ``min_rows`` subjects, and every cell of batch × categorical-covariate levels that
occurs has at least ``min_rows`` subjects. Cells matter because sums over two overlapping sets differ by
the sum over their difference: with batch sums and site-wide level sums, any combination the hub can form is
a sum over whole cells. Numeric covariates enter as subject-weighted sums; keep their number small relative
to ``min_rows``. This is a minimum guard, not a full statistical disclosure control.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.compute.combat import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_TOLERANCE,
    CombatResult,
    CovariateSpec,
    EmpiricalBayesOptions,
    FloatArray,
    ResidualMoments,
    design_cross_products,
    harmonise_with_location_model,
    pooled_residual_variance,
    residual_moments,
    solve_location_model,
    standardisation_mean,
    zero_variance_features,
)

SCHEMA = "eucaim.gateway.d-combat"
SCHEMA_VERSION = 1
DEFAULT_MIN_ROWS = 10

Message = dict[str, Any]
Covariates = Mapping[str, ArrayLike] | ArrayLike | None


class DisclosureRefused(ValueError):
    """A site declined to summarise its data because a summary would cover too few subjects."""


# --------------------------------------------------------------------------------------------------------
# Round 0: registration and plan
# --------------------------------------------------------------------------------------------------------


def site_registration(site_id: str, batch: ArrayLike, n_features: int, *, min_rows: int = DEFAULT_MIN_ROWS) -> Message:
    """Tell the hub which batches this site holds (labels only, no counts) and how many features it has."""
    labels = _labels(batch)
    batches = sorted(set(labels.tolist()))
    _refuse_small_batches(site_id, labels, min_rows)
    return _message("registration", site=str(site_id), batches=batches, n_features=int(n_features))


def hub_plan(
    registrations: Sequence[Message],
    *,
    covariates: CovariateSpec | None = None,
    ref_batch: str | None = None,
) -> Message:
    """Fix the federation's batch order, the covariate coding and the reference batch for all rounds."""
    spec = covariates or CovariateSpec()
    sites: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    feature_counts: set[int] = set()
    for registration in registrations:
        _expect(registration, "registration")
        site = registration["site"]
        if site in sites:
            raise ValueError(f"site {site!r} registered twice")
        sites[site] = [str(label) for label in registration["batches"]]
        feature_counts.add(int(registration["n_features"]))
        for label in sites[site]:
            if label in owner:
                raise ValueError(
                    f"batch {label!r} is held by sites {owner[label]!r} and {site!r}; d-ComBat estimates each "
                    "batch's effect at the site holding it, so give each site's scanner its own batch label"
                )
            owner[label] = site
    if not sites:
        raise ValueError("no site registered")
    if len(feature_counts) != 1:
        raise ValueError(f"sites report different numbers of features: {sorted(feature_counts)}")
    batches = sorted(owner)
    if ref_batch is not None and str(ref_batch) not in owner:
        raise ValueError(f"reference batch {ref_batch!r} is not held by any site ({batches})")
    return _message(
        "plan",
        batches=batches,
        sites=sites,
        n_features=feature_counts.pop(),
        covariates=spec.to_json(),
        design_columns=[*(f"batch={label}" for label in batches), *spec.column_names],
        ref_batch=None if ref_batch is None else str(ref_batch),
    )


# --------------------------------------------------------------------------------------------------------
# Round 1: cross products ─► pooled location model
# --------------------------------------------------------------------------------------------------------


def site_round1(
    plan: Message,
    site_id: str,
    data: ArrayLike,
    batch: ArrayLike,
    covariates: Covariates = None,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> Message:
    """XᵀX and XᵀY over this site's subjects, X = [indicators of all federation batches | covariates]."""
    site = _SiteData.load(plan, site_id, data, batch, covariates, min_rows)
    cross_product, design_times_data = design_cross_products(
        site.values, site.global_codes, len(plan["batches"]), site.covariate_matrix
    )
    if not np.isfinite(design_times_data).all():
        raise ValueError(f"site {site_id!r}: data contain NaN or infinite values; impute or drop them first")
    return _message("round1", site=str(site_id), xtx=cross_product.tolist(), xty=design_times_data.tolist())


def hub_round1(plan: Message, summaries: Sequence[Message]) -> Message:
    """Pool the cross products and solve for the location model (batch intercepts and covariate effects)."""
    _expect(plan, "plan")
    by_site = _one_per_site(plan, summaries, "round1")
    cross_product = sum(np.asarray(by_site[site]["xtx"], dtype=np.float64) for site in plan["sites"])
    design_times_data = sum(np.asarray(by_site[site]["xty"], dtype=np.float64) for site in plan["sites"])
    n_columns = len(plan["design_columns"])
    if cross_product.shape != (n_columns, n_columns) or design_times_data.shape != (n_columns, plan["n_features"]):
        raise ValueError("round-1 summaries do not match the plan's design columns and features")
    batches = plan["batches"]
    coefficients = solve_location_model(cross_product, design_times_data, batch_names=batches, spec=_spec(plan))
    sizes = np.rint(np.diag(cross_product)[: len(batches)]).astype(np.int64)
    grand_mean = standardisation_mean(coefficients[: len(batches)], sizes, _reference_index(plan))
    return _message(
        "location",
        coefficients=coefficients.tolist(),
        grand_mean=grand_mean.tolist(),
        batch_sizes=sizes.tolist(),
    )


# --------------------------------------------------------------------------------------------------------
# Round 2: residual sums of squares ─► pooled variance
# --------------------------------------------------------------------------------------------------------


def site_round2(
    plan: Message,
    location: Message,
    site_id: str,
    data: ArrayLike,
    batch: ArrayLike,
    covariates: Covariates = None,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> Message:
    """Per-feature sums of squared residuals under the pooled location model, one vector per local batch."""
    _expect(location, "location")
    site = _SiteData.load(plan, site_id, data, batch, covariates, min_rows)
    model = _LocationModel(plan, location)
    moments = site.residual_moments(model)
    return _message(
        "round2",
        site=str(site_id),
        squared_residuals={label: moments.squared_sums[:, b].tolist() for b, label in enumerate(site.batches)},
    )


def hub_round2(plan: Message, location: Message, summaries: Sequence[Message]) -> Message:
    """Pool the residual sums of squares into the pooled variance; publish everything sites need to adjust."""
    _expect(location, "location")
    by_site = _one_per_site(plan, summaries, "round2")
    squared_sums = np.zeros((plan["n_features"], len(plan["batches"])))
    for site, labels in plan["sites"].items():
        reported = by_site[site]["squared_residuals"]
        if sorted(reported) != sorted(labels):
            raise ValueError(f"site {site!r} reported batches {sorted(reported)}, the plan says {sorted(labels)}")
        for label in labels:
            squared_sums[:, plan["batches"].index(label)] = np.asarray(reported[label], dtype=np.float64)
    model = _LocationModel(plan, location)
    pooled_variance = pooled_residual_variance(squared_sums, model.sizes, _reference_index(plan))
    unadjusted = zero_variance_features(pooled_variance, model.batch_coefficients)
    return _message(
        "standardisation",
        coefficients=location["coefficients"],
        grand_mean=location["grand_mean"],
        batch_sizes=location["batch_sizes"],
        pooled_variance=pooled_variance.tolist(),
        unadjusted_features=np.flatnonzero(unadjusted).tolist(),
    )


# --------------------------------------------------------------------------------------------------------
# Round 3: local adjustment
# --------------------------------------------------------------------------------------------------------


def site_round3(
    plan: Message,
    standardisation: Message,
    site_id: str,
    data: ArrayLike,
    batch: ArrayLike,
    covariates: Covariates = None,
    *,
    parametric: bool = True,
    mean_only: bool = False,
    empirical_bayes: bool = True,
    tol: float = DEFAULT_TOLERANCE,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> CombatResult:
    """Standardise with the pooled model, estimate this site's batch effects and their empirical-Bayes priors,
    and adjust. The result stays at the site; its estimates harmonise later subjects of the same batches.
    """
    _expect(standardisation, "standardisation")
    # Nothing leaves the site in this round, so there is nothing to guard: min_rows 1.
    site = _SiteData.load(plan, site_id, data, batch, covariates, min_rows=1)
    model = _LocationModel(plan, standardisation)
    pooled_variance = _vector(standardisation, "pooled_variance", plan["n_features"])
    unadjusted = np.zeros(plan["n_features"], dtype=bool)
    unadjusted[np.asarray(standardisation["unadjusted_features"], dtype=np.intp)] = True
    ref_batch = plan["ref_batch"]
    return harmonise_with_location_model(
        site.values,
        site.local_codes,
        site.residual_moments(model),
        site.covariate_matrix,
        batches=site.batches,
        reference_index=site.batches.index(ref_batch) if ref_batch in site.batches else None,
        spec=_spec(plan),
        batch_coefficients=model.batch_coefficients[site.global_indices],
        covariate_coefficients=model.covariate_coefficients,
        grand_mean=model.grand_mean,
        pooled_variance=pooled_variance,
        options=EmpiricalBayesOptions(
            parametric=parametric,
            mean_only=mean_only,
            empirical_bayes=empirical_bayes,
            tol=tol,
            max_iterations=max_iterations,
            chunk_bytes=chunk_bytes,
        ),
        unadjusted=unadjusted,
    )


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


class _SiteData:
    """A site's data checked against the plan, with batch codes both global (plan order) and local."""

    def __init__(
        self,
        values: FloatArray,
        batches: tuple[str, ...],
        global_indices: NDArray[np.intp],
        local_codes: NDArray[np.intp],
        covariate_matrix: FloatArray,
    ) -> None:
        self.values = values
        self.batches = batches
        self.global_indices = global_indices
        self.local_codes = local_codes
        self.global_codes = global_indices[local_codes]
        self.covariate_matrix = covariate_matrix

    @classmethod
    def load(
        cls,
        plan: Message,
        site_id: str,
        data: ArrayLike,
        batch: ArrayLike,
        covariates: Covariates,
        min_rows: int,
    ) -> _SiteData:
        _expect(plan, "plan")
        site_id = str(site_id)
        if site_id not in plan["sites"]:
            raise ValueError(f"site {site_id!r} is not in the plan (sites: {sorted(plan['sites'])})")
        values = np.asarray(data, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] != plan["n_features"]:
            raise ValueError(
                f"site {site_id!r}: data must be features × subjects with {plan['n_features']} features, "
                f"got shape {values.shape}"
            )
        labels = _labels(batch)
        if labels.shape[0] != values.shape[1]:
            raise ValueError(f"site {site_id!r}: {labels.shape[0]} batch labels for {values.shape[1]} subjects")
        batches = tuple(sorted(set(labels.tolist())))
        if sorted(batches) != sorted(plan["sites"][site_id]):
            raise ValueError(f"site {site_id!r} holds batches {list(batches)} but registered {plan['sites'][site_id]}")
        local_codes = np.searchsorted(np.array(batches), labels).astype(np.intp)
        global_indices = np.array([plan["batches"].index(label) for label in batches], dtype=np.intp)
        spec = _spec(plan)
        covariate_matrix = spec.encode(covariates, values.shape[1])
        _refuse_small_batches(site_id, labels, min_rows)
        _refuse_small_cells(site_id, local_codes, batches, covariate_matrix, spec, min_rows)
        return cls(values, batches, global_indices, local_codes, covariate_matrix)

    def residual_moments(self, model: _LocationModel) -> ResidualMoments:
        return residual_moments(
            self.values,
            self.local_codes,
            model.batch_coefficients[self.global_indices],
            self.covariate_matrix,
            model.covariate_coefficients,
        )


class _LocationModel:
    def __init__(self, plan: Message, message: Message) -> None:
        n_batches = len(plan["batches"])
        coefficients = np.asarray(message["coefficients"], dtype=np.float64)
        if coefficients.shape != (len(plan["design_columns"]), plan["n_features"]):
            raise ValueError(f"coefficients have shape {coefficients.shape}; the plan does not match")
        self.batch_coefficients = coefficients[:n_batches]
        self.covariate_coefficients = coefficients[n_batches:]
        self.grand_mean = _vector(message, "grand_mean", plan["n_features"])
        self.sizes = np.asarray(message["batch_sizes"], dtype=np.int64)


def _message(kind: str, **payload: Any) -> Message:
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "kind": kind, **payload}


def _expect(message: Mapping[str, Any], kind: str) -> None:
    if not isinstance(message, Mapping) or message.get("schema") != SCHEMA:
        raise ValueError(f"not a d-ComBat message (expected schema {SCHEMA!r})")
    if message.get("version") != SCHEMA_VERSION:
        raise ValueError(
            f"d-ComBat message version {message.get('version')!r} is not supported (this node speaks {SCHEMA_VERSION})"
        )
    if message.get("kind") != kind:
        raise ValueError(f"expected a {kind!r} message, got {message.get('kind')!r}")


def _one_per_site(plan: Message, summaries: Sequence[Message], kind: str) -> dict[str, Message]:
    _expect(plan, "plan")
    by_site: dict[str, Message] = {}
    for summary in summaries:
        _expect(summary, kind)
        site = summary["site"]
        if site not in plan["sites"]:
            raise ValueError(f"{kind} summary from site {site!r}, which is not in the plan")
        if site in by_site:
            raise ValueError(f"two {kind} summaries from site {site!r}")
        by_site[site] = summary
    missing = sorted(set(plan["sites"]) - set(by_site))
    if missing:
        raise ValueError(f"{kind} summaries missing from sites {missing}")
    return by_site


def _spec(plan: Message) -> CovariateSpec:
    return CovariateSpec.from_json(plan["covariates"])


def _reference_index(plan: Message) -> int | None:
    ref_batch = plan["ref_batch"]
    return None if ref_batch is None else plan["batches"].index(ref_batch)


def _vector(message: Message, key: str, length: int) -> FloatArray:
    vector = np.asarray(message[key], dtype=np.float64)
    if vector.shape != (length,):
        raise ValueError(f"{key} has shape {vector.shape}, expected ({length},)")
    return vector


def _labels(batch: ArrayLike) -> NDArray[np.str_]:
    return np.asarray(batch).ravel().astype(str)


def _refuse_small_batches(site_id: str, labels: NDArray[np.str_], min_rows: int) -> None:
    names, counts = np.unique(labels, return_counts=True)
    small = [str(name) for name, count in zip(names, counts, strict=True) if count < min_rows]
    if labels.shape[0] < min_rows or small:
        raise DisclosureRefused(
            f"site {site_id!r} refuses to summarise: batches {small or list(names)} have fewer than "
            f"{min_rows} subjects, so a summary could disclose individual values"
        )


def _refuse_small_cells(
    site_id: str,
    local_codes: NDArray[np.intp],
    batches: tuple[str, ...],
    covariate_matrix: FloatArray,
    spec: CovariateSpec,
    min_rows: int,
) -> None:
    n_categorical_columns = sum(len(levels) - 1 for _, levels in spec.categorical)
    if n_categorical_columns == 0:
        return
    # Categorical indicator columns come after the numeric ones (CovariateSpec.column_names order).
    indicators = covariate_matrix[:, len(spec.numeric) :].astype(np.int64)
    cells, counts = np.unique(np.column_stack([local_codes, indicators]), axis=0, return_counts=True)
    small = counts < min_rows
    if small.any():
        indicator_names = spec.column_names[len(spec.numeric) :]

        def describe(cell: NDArray[np.int64]) -> str:
            levels = [name for name, value in zip(indicator_names, cell[1:], strict=True) if value]
            return f"batch {batches[int(cell[0])]!r} with {', '.join(levels) or 'reference levels'}"

        described = [describe(cell) for cell in cells[small]]
        raise DisclosureRefused(
            f"site {site_id!r} refuses to summarise: {int(small.sum())} batch × covariate-level cell(s) have "
            f"fewer than {min_rows} subjects ({'; '.join(described)}); merge rare levels or drop the covariate"
        )
