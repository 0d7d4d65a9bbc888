"""Distributed ComBat: three simulated sites, every message through JSON, against pooled ComBat."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from gateway.compute import combat_distributed as dcombat
from gateway.compute.combat import CombatResult, CovariateSpec, combat, covariate_spec

N_FEATURES = 40
SITE_BATCHES = {
    "hospital-lisbon": {"lis-ge": 34, "lis-siemens": 27},
    "hospital-turin": {"tur-philips": 45},
    "hospital-vienna": {"vie-ge": 22, "vie-siemens": 38, "vie-canon": 29},
}


@dataclass
class Site:
    data: np.ndarray  # features × subjects
    batch: np.ndarray
    covariates: dict[str, np.ndarray]

    def args(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        return self.data, self.batch, self.covariates


def make_sites(seed: int = 0, site_batches: dict[str, dict[str, int]] = SITE_BATCHES) -> dict[str, Site]:
    rng = np.random.default_rng(seed)
    baseline = rng.normal(20, 3, (N_FEATURES, 1))
    sites = {}
    for site_id, sizes in site_batches.items():
        parts = []
        for _label, size in sizes.items():
            shift = rng.normal(0, 1.5, (N_FEATURES, 1))
            scale = rng.uniform(0.5, 2.0, (N_FEATURES, 1))
            parts.append(baseline + shift + scale * rng.normal(size=(N_FEATURES, size)))
        data = np.hstack(parts)
        batch = np.concatenate([[label] * size for label, size in sizes.items()])
        n_subjects = batch.size
        # Half of each batch is male, so every batch × sex cell passes the guard of 10 subjects.
        sex = np.concatenate([rng.permutation(np.arange(size) % 2) for size in sizes.values()])
        sex = np.where(sex == 1, "M", "F")
        age = rng.uniform(30, 85, n_subjects)
        data = data + 0.05 * age + 1.2 * (sex == "M")
        sites[site_id] = Site(data=data, batch=batch, covariates={"age": age, "sex": sex})
    return sites


def through_json(message: dict[str, Any]) -> dict[str, Any]:
    """What the other side receives: the message serialised and parsed, as on the wire."""
    return json.loads(json.dumps(message, allow_nan=False))


def run_protocol(
    sites: dict[str, Site],
    spec: CovariateSpec | None,
    *,
    ref_batch: str | None = None,
    transcript: list[dict[str, Any]] | None = None,
    **round3_options: Any,
) -> dict[str, CombatResult]:
    log = transcript if transcript is not None else []

    def send(message: dict[str, Any]) -> dict[str, Any]:
        received = through_json(message)
        log.append(received)
        return received

    registrations = [
        send(dcombat.site_registration(site_id, site.batch, N_FEATURES)) for site_id, site in sites.items()
    ]
    plan = send(dcombat.hub_plan(registrations, covariates=spec, ref_batch=ref_batch))
    covariates = {site_id: site.covariates if spec else None for site_id, site in sites.items()}
    round1 = [
        send(dcombat.site_round1(plan, site_id, site.data, site.batch, covariates[site_id]))
        for site_id, site in sites.items()
    ]
    location = send(dcombat.hub_round1(plan, round1))
    round2 = [
        send(dcombat.site_round2(plan, location, site_id, site.data, site.batch, covariates[site_id]))
        for site_id, site in sites.items()
    ]
    standardisation = send(dcombat.hub_round2(plan, location, round2))
    return {
        site_id: dcombat.site_round3(
            plan, standardisation, site_id, site.data, site.batch, covariates[site_id], **round3_options
        )
        for site_id, site in sites.items()
    }


def pooled(sites: dict[str, Site]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    data = np.hstack([site.data for site in sites.values()])
    batch = np.concatenate([site.batch for site in sites.values()])
    covariates = {name: np.concatenate([site.covariates[name] for site in sites.values()]) for name in ("age", "sex")}
    return data, batch, covariates


@pytest.mark.parametrize("with_covariates", [True, False], ids=["covariates", "no-covariates"])
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="parametric"),
        pytest.param({"parametric": False}, id="non-parametric"),
        pytest.param({"mean_only": True}, id="mean-only"),
        pytest.param({"parametric": False, "mean_only": True}, id="non-parametric-mean-only"),
        pytest.param({"ref_batch": "tur-philips"}, id="ref-batch"),
        pytest.param({"ref_batch": "vie-canon", "parametric": False}, id="non-parametric-ref-batch"),
        pytest.param({"empirical_bayes": False}, id="no-empirical-bayes"),
    ],
)
def test_distributed_equals_pooled(options: dict[str, Any], with_covariates: bool) -> None:
    sites = make_sites(seed=1)
    data, batch, covariates = pooled(sites)
    spec = covariate_spec(covariates, categorical=["sex"]) if with_covariates else None
    ref_batch = options.pop("ref_batch", None)

    distributed = run_protocol(sites, spec, ref_batch=ref_batch, **options)
    expected = combat(
        data, batch, covariates if with_covariates else None, covariates_spec=spec, ref_batch=ref_batch, **options
    )

    harmonised = np.hstack([distributed[site_id].data for site_id in sites])
    scale = np.abs(expected.data).max()
    np.testing.assert_allclose(harmonised, expected.data, rtol=1e-8, atol=1e-8 * scale)
    for result in distributed.values():
        for position, label in enumerate(result.estimates.batches):
            pooled_position = expected.estimates.batches.index(label)
            np.testing.assert_allclose(
                result.estimates.gamma_star[position],
                expected.estimates.gamma_star[pooled_position],
                rtol=1e-8,
                atol=1e-10,
            )
            np.testing.assert_allclose(
                result.estimates.delta_star[position], expected.estimates.delta_star[pooled_position], rtol=1e-8
            )
        np.testing.assert_allclose(result.estimates.pooled_variance, expected.estimates.pooled_variance, rtol=1e-10)


def test_site_estimates_harmonise_later_subjects() -> None:
    sites = make_sites(seed=2)
    spec = covariate_spec(pooled(sites)[2], categorical=["sex"])
    results = run_protocol(sites, spec)
    vienna, estimates = sites["hospital-vienna"], results["hospital-vienna"].estimates
    later = np.arange(0, vienna.batch.size, 5)
    harmonised = estimates.apply(
        vienna.data[:, later], vienna.batch[later], {name: values[later] for name, values in vienna.covariates.items()}
    )
    np.testing.assert_allclose(harmonised, results["hospital-vienna"].data[:, later], rtol=1e-12, atol=1e-12)


def test_messages_carry_schema_and_no_subject_values() -> None:
    sites = make_sites(seed=3)
    spec = covariate_spec(pooled(sites)[2], categorical=["sex"])
    transcript: list[dict[str, Any]] = []
    run_protocol(sites, spec, transcript=transcript)

    assert {message["schema"] for message in transcript} == {dcombat.SCHEMA}
    assert {message["version"] for message in transcript} == {dcombat.SCHEMA_VERSION}
    kinds = [message["kind"] for message in transcript]
    assert kinds == ["registration"] * 3 + ["plan"] + ["round1"] * 3 + ["location"] + ["round2"] * 3 + [
        "standardisation"
    ]

    subject_values = set()
    for site in sites.values():
        subject_values.update(site.data.ravel().tolist())
        subject_values.update(site.covariates["age"].tolist())

    def numbers(node: Any) -> list[float]:
        if isinstance(node, dict):
            return [number for value in node.values() for number in numbers(value)]
        if isinstance(node, list):
            return [number for value in node for number in numbers(value)]
        return [node] if isinstance(node, float) else []

    sent_by_sites = [message for message in transcript if "site" in message]
    assert not subject_values.intersection(number for message in sent_by_sites for number in numbers(message))
    # Summary sizes depend on features and design columns only, never on the number of subjects.
    round1 = next(message for message in transcript if message["kind"] == "round1")
    n_design_columns = sum(len(sizes) for sizes in SITE_BATCHES.values()) + 2  # batches, age, sex=M
    assert np.shape(round1["xty"]) == (n_design_columns, N_FEATURES)
    assert np.shape(round1["xtx"]) == (len(round1["xty"]), len(round1["xty"]))


def test_min_rows_guard_refuses_small_batches() -> None:
    sites = make_sites(seed=4, site_batches={**SITE_BATCHES, "hospital-small": {"small-ct": 6}})
    small = sites["hospital-small"]
    with pytest.raises(dcombat.DisclosureRefused, match="fewer than 10 subjects"):
        dcombat.site_registration("hospital-small", small.batch, N_FEATURES)
    assert dcombat.site_registration("hospital-small", small.batch, N_FEATURES, min_rows=5)["kind"] == "registration"

    registrations = [
        dcombat.site_registration(site_id, site.batch, N_FEATURES, min_rows=5) for site_id, site in sites.items()
    ]
    plan = dcombat.hub_plan(registrations)
    with pytest.raises(dcombat.DisclosureRefused, match="refuses to summarise"):
        dcombat.site_round1(plan, "hospital-small", small.data, small.batch)
    location = dcombat.hub_round1(
        plan, [dcombat.site_round1(plan, site_id, *site.args()[:2], min_rows=5) for site_id, site in sites.items()]
    )
    with pytest.raises(dcombat.DisclosureRefused):
        dcombat.site_round2(plan, location, "hospital-small", small.data, small.batch)


def test_min_rows_guard_refuses_small_covariate_cells() -> None:
    sites = make_sites(seed=5)
    turin = sites["hospital-turin"]
    # Only 3 men in Turin: the site-wide sum over men would be a sum over 3 subjects.
    turin.covariates["sex"] = np.array(["F"] * (turin.batch.size - 3) + ["M"] * 3)
    spec = covariate_spec(pooled(sites)[2], categorical=["sex"])
    registrations = [dcombat.site_registration(site_id, site.batch, N_FEATURES) for site_id, site in sites.items()]
    plan = dcombat.hub_plan(registrations, covariates=spec)
    with pytest.raises(dcombat.DisclosureRefused, match=r"cell\(s\).*'tur-philips' with sex=M"):
        dcombat.site_round1(plan, "hospital-turin", *turin.args())
    assert dcombat.site_round1(plan, "hospital-turin", *turin.args(), min_rows=3)["kind"] == "round1"


def test_plan_refuses_a_batch_split_across_sites() -> None:
    sites = make_sites(seed=6)
    registrations = [dcombat.site_registration(site_id, site.batch, N_FEATURES) for site_id, site in sites.items()]
    registrations[1]["batches"].append("lis-ge")
    with pytest.raises(ValueError, match="held by sites"):
        dcombat.hub_plan(registrations)


def test_plan_refuses_inconsistent_registrations() -> None:
    sites = make_sites(seed=7)
    registrations = [dcombat.site_registration(site_id, site.batch, N_FEATURES) for site_id, site in sites.items()]
    with pytest.raises(ValueError, match="registered twice"):
        dcombat.hub_plan([*registrations, registrations[0]])
    with pytest.raises(ValueError, match="different numbers of features"):
        dcombat.hub_plan([*registrations[:2], {**registrations[2], "n_features": N_FEATURES + 1}])
    with pytest.raises(ValueError, match="reference batch"):
        dcombat.hub_plan(registrations, ref_batch="nowhere")
    with pytest.raises(ValueError, match="no site"):
        dcombat.hub_plan([])


def test_messages_of_wrong_schema_version_or_kind_are_refused() -> None:
    sites = make_sites(seed=8)
    registrations = [dcombat.site_registration(site_id, site.batch, N_FEATURES) for site_id, site in sites.items()]
    plan = dcombat.hub_plan(registrations)
    lisbon = sites["hospital-lisbon"]
    with pytest.raises(ValueError, match="version"):
        dcombat.site_round1({**plan, "version": 99}, "hospital-lisbon", lisbon.data, lisbon.batch)
    with pytest.raises(ValueError, match="schema"):
        dcombat.site_round1({**plan, "schema": "other"}, "hospital-lisbon", lisbon.data, lisbon.batch)
    with pytest.raises(ValueError, match="expected a 'plan' message"):
        dcombat.site_round1(registrations[0], "hospital-lisbon", lisbon.data, lisbon.batch)


def test_hub_requires_one_summary_from_every_site() -> None:
    sites = make_sites(seed=9)
    registrations = [dcombat.site_registration(site_id, site.batch, N_FEATURES) for site_id, site in sites.items()]
    plan = dcombat.hub_plan(registrations)
    summaries = [dcombat.site_round1(plan, site_id, *site.args()[:2]) for site_id, site in sites.items()]
    with pytest.raises(ValueError, match="missing from sites"):
        dcombat.hub_round1(plan, summaries[:2])
    with pytest.raises(ValueError, match="two round1 summaries"):
        dcombat.hub_round1(plan, [*summaries, summaries[0]])


def test_site_refuses_data_that_does_not_match_the_plan() -> None:
    sites = make_sites(seed=10)
    registrations = [dcombat.site_registration(site_id, site.batch, N_FEATURES) for site_id, site in sites.items()]
    plan = dcombat.hub_plan(registrations)
    lisbon = sites["hospital-lisbon"]
    with pytest.raises(ValueError, match="not in the plan"):
        dcombat.site_round1(plan, "hospital-nowhere", lisbon.data, lisbon.batch)
    with pytest.raises(ValueError, match="registered"):
        dcombat.site_round1(plan, "hospital-turin", lisbon.data, lisbon.batch)
    with pytest.raises(ValueError, match="features"):
        dcombat.site_round1(plan, "hospital-lisbon", lisbon.data[:-1], lisbon.batch)
    bad = lisbon.data.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dcombat.site_round1(plan, "hospital-lisbon", bad, lisbon.batch)


def test_hub_refuses_a_singular_pooled_design() -> None:
    sites = make_sites(seed=11)
    for site in sites.values():
        site.covariates["age"] = np.full(site.batch.size, 50.0)  # constant across the federation
    spec = CovariateSpec(numeric=("age",))
    registrations = [dcombat.site_registration(site_id, site.batch, N_FEATURES) for site_id, site in sites.items()]
    plan = dcombat.hub_plan(registrations, covariates=spec)
    summaries = [dcombat.site_round1(plan, site_id, *site.args()) for site_id, site in sites.items()]
    with pytest.raises(ValueError, match="singular design"):
        dcombat.hub_round1(plan, summaries)
