"""ComBat harmonisation: agreement with neuroCombat, the estimates' ``apply``, edge cases and bad input."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.compute.combat import (
    CombatResult,
    CovariateSpec,
    combat,
    covariate_design,
    covariate_spec,
    main,
)

N_FEATURES = 60
BATCH_SIZES = {"scannerA": 23, "scannerB": 41, "scannerC": 30, "scannerD": 17}


@dataclass
class Study:
    data: np.ndarray  # features × subjects
    batch: np.ndarray
    covariates: dict[str, np.ndarray]


def make_study(seed: int = 0, n_features: int = N_FEATURES, sizes: dict[str, int] = BATCH_SIZES) -> Study:
    rng = np.random.default_rng(seed)
    batch = np.concatenate([[name] * size for name, size in sizes.items()])
    rng.shuffle(batch)
    n_subjects = batch.size
    codes = np.unique(batch, return_inverse=True)[1]
    # neuroCombat casts numeric covariates to float32; float32-exact ages make both see the same design.
    age = rng.uniform(20, 80, n_subjects).astype(np.float32).astype(np.float64)
    sex = rng.choice(["F", "M"], n_subjects)
    stage = rng.choice(["I", "II", "III"], n_subjects)
    n_batches = len(sizes)
    location = rng.normal(0, 1.0, (n_features, n_batches))[:, codes]
    scale = rng.uniform(0.5, 2.0, (n_features, n_batches))[:, codes]
    biology = 0.04 * age + 0.8 * (sex == "M") + 0.5 * (stage == "III")
    data = (
        10 + rng.normal(0, 2, (n_features, 1)) + biology + location + scale * rng.normal(size=(n_features, n_subjects))
    )
    return Study(data=data, batch=batch, covariates={"age": age, "sex": sex, "stage": stage})


def run_neurocombat(study: Study, *, with_covariates: bool, **options: Any) -> dict[str, Any]:
    neuro_combat_module = pytest.importorskip("neuroCombat")
    pd = pytest.importorskip("pandas")
    columns: dict[str, Any] = {"batch": study.batch}
    if with_covariates:
        columns.update(study.covariates)
    with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat narrates each step on stdout
        return neuro_combat_module.neuroCombat(
            study.data.copy(),
            pd.DataFrame(columns),
            "batch",
            categorical_cols=["sex", "stage"] if with_covariates else None,
            continuous_cols=["age"] if with_covariates else None,
            **options,
        )


@pytest.fixture
def neurocombat_ref_batch_compatible(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # neuroCombat 0.2.12 still calls np.int (removed in NumPy 1.24) on its ref_batch path only.
    if not hasattr(np, "int"):
        monkeypatch.setattr(np, "int", int, raising=False)
    yield


NEUROCOMBAT_CASES = [
    pytest.param({"parametric": True}, id="parametric"),
    pytest.param({"parametric": False}, id="non-parametric"),
    pytest.param({"parametric": True, "mean_only": True}, id="parametric-mean-only"),
    pytest.param({"parametric": False, "mean_only": True}, id="non-parametric-mean-only"),
    pytest.param({"parametric": True, "ref_batch": "scannerB"}, id="parametric-ref-batch"),
    pytest.param({"parametric": False, "ref_batch": "scannerB"}, id="non-parametric-ref-batch"),
    pytest.param({"parametric": True, "mean_only": True, "ref_batch": "scannerC"}, id="mean-only-ref-batch"),
    pytest.param({"eb": False}, id="no-empirical-bayes"),
]


@pytest.mark.usefixtures("neurocombat_ref_batch_compatible")
@pytest.mark.parametrize("with_covariates", [True, False], ids=["covariates", "no-covariates"])
@pytest.mark.parametrize("options", NEUROCOMBAT_CASES)
def test_matches_neurocombat(options: dict[str, Any], with_covariates: bool) -> None:
    study = make_study(seed=1)
    reference = run_neurocombat(study, with_covariates=with_covariates, **options)
    ours = combat(
        study.data,
        study.batch,
        study.covariates if with_covariates else None,
        categorical=["sex", "stage"] if with_covariates else (),
        parametric=options.get("parametric", True),
        mean_only=options.get("mean_only", False),
        empirical_bayes=options.get("eb", True),
        ref_batch=options.get("ref_batch"),
    )
    scale = np.abs(reference["data"]).max()
    np.testing.assert_allclose(ours.data, reference["data"], rtol=1e-6, atol=1e-6 * scale)
    estimates = reference["estimates"]
    np.testing.assert_allclose(ours.estimates.gamma_star, estimates["gamma.star"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.estimates.delta_star, estimates["delta.star"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.estimates.pooled_variance, estimates["var.pooled"][:, 0], rtol=1e-6)
    np.testing.assert_allclose(ours.estimates.standardisation_mean, estimates["stand.mean"][:, 0], rtol=1e-6)
    assert ours.estimates.batches == tuple(sorted(BATCH_SIZES))


def test_removes_batch_effects_and_keeps_covariate_effects() -> None:
    study = make_study(seed=2, n_features=200)
    result = combat(study.data, study.batch, study.covariates, categorical=["sex", "stage"])
    male = study.covariates["sex"] == "M"

    def batch_mean_spread(values: np.ndarray) -> float:
        means = np.stack([values[:, study.batch == name].mean(axis=1) for name in BATCH_SIZES])
        return float(means.std(axis=0).mean())

    assert batch_mean_spread(result.data) < 0.3 * batch_mean_spread(study.data)
    sex_effect = result.data[:, male].mean() - result.data[:, ~male].mean()
    assert sex_effect == pytest.approx(0.8, abs=0.15)


def test_reference_batch_is_left_unchanged() -> None:
    study = make_study(seed=3)
    result = combat(study.data, study.batch, study.covariates, categorical=["sex", "stage"], ref_batch="scannerC")
    in_reference = study.batch == "scannerC"
    np.testing.assert_array_equal(result.data[:, in_reference], study.data[:, in_reference])
    assert not np.allclose(result.data[:, ~in_reference], study.data[:, ~in_reference])
    index = result.estimates.batches.index("scannerC")
    assert (result.estimates.gamma_star[index] == 0).all() and (result.estimates.delta_star[index] == 1).all()


@pytest.mark.parametrize(
    "options",
    [{}, {"parametric": False}, {"mean_only": True}, {"ref_batch": "scannerA"}],
    ids=["parametric", "non-parametric", "mean-only", "ref-batch"],
)
def test_apply_reproduces_training_data_and_handles_new_subjects(options: dict[str, Any]) -> None:
    study = make_study(seed=4)
    result = combat(study.data, study.batch, study.covariates, categorical=["sex", "stage"], **options)
    reapplied = result.estimates.apply(study.data, study.batch, study.covariates)
    np.testing.assert_allclose(reapplied, result.data, rtol=1e-12, atol=1e-12)

    # The adjustment is per subject, so any subset (e.g. new subjects from known scanners) maps the same way.
    subset = np.arange(0, study.batch.size, 7)
    partial = result.estimates.apply(
        study.data[:, subset], study.batch[subset], {name: values[subset] for name, values in study.covariates.items()}
    )
    np.testing.assert_allclose(partial, result.data[:, subset], rtol=1e-12, atol=1e-12)


def test_apply_refuses_unknown_batch_and_wrong_shape() -> None:
    study = make_study(seed=5)
    estimates = combat(study.data, study.batch).estimates
    with pytest.raises(ValueError, match="not part of the estimation"):
        estimates.apply(study.data[:, :3], ["scannerA", "scannerZ", "scannerA"])
    with pytest.raises(ValueError, match="features"):
        estimates.apply(study.data[:5], study.batch)


def test_covariate_matrix_equals_covariate_mapping() -> None:
    study = make_study(seed=6)
    design, spec = covariate_design(study.covariates, categorical=["sex", "stage"])
    assert spec.column_names == ("age", "sex=M", "stage=II", "stage=III")
    from_mapping = combat(study.data, study.batch, study.covariates, categorical=["sex", "stage"])
    from_matrix = combat(study.data, study.batch, design)
    np.testing.assert_allclose(from_matrix.data, from_mapping.data, rtol=1e-12, atol=1e-12)


def test_covariate_spec_encodes_new_subjects_and_round_trips_json() -> None:
    spec = covariate_spec({"age": [50.0, 60.0], "grade": [3, 10]}, categorical=["grade"])
    assert spec.categorical == (("grade", ("3", "10")),)
    assert CovariateSpec.from_json(spec.to_json()) == spec
    np.testing.assert_array_equal(spec.encode({"age": [1.0], "grade": [10]}, 1), [[1.0, 1.0]])
    with pytest.raises(ValueError, match="not in"):
        spec.encode({"age": [1.0], "grade": [7]}, 1)
    with pytest.raises(ValueError, match="missing"):
        spec.encode({"age": [1.0]}, 1)


def test_non_parametric_does_not_depend_on_chunking() -> None:
    study = make_study(seed=7)
    whole = combat(study.data, study.batch, parametric=False)
    chunked = combat(study.data, study.batch, parametric=False, chunk_bytes=1)
    np.testing.assert_allclose(chunked.data, whole.data, rtol=1e-13, atol=1e-13)


def test_non_parametric_survives_large_batches() -> None:
    # (2π δ)^(-n/2) underflows for n in the hundreds; the likelihoods are combined in log space.
    study = make_study(seed=8, n_features=30, sizes={"big": 1500, "small": 40})
    result = combat(study.data, study.batch, parametric=False)
    assert np.isfinite(result.data).all()
    assert np.isfinite(result.estimates.gamma_star).all()


def test_parametric_iteration_reports_iterations_and_its_limit() -> None:
    study = make_study(seed=9)
    result = combat(study.data, study.batch)
    assert (result.estimates.iterations >= 1).all()
    with pytest.raises(RuntimeError, match="did not converge"):
        combat(study.data, study.batch, max_iterations=1, tol=0.0)


def test_constant_feature_is_returned_unchanged_and_does_not_affect_the_others() -> None:
    study = make_study(seed=10)
    with_constant = study.data.copy()
    with_constant[5] = 3.25
    with_constant[9] = 0.0
    result = combat(with_constant, study.batch, study.covariates, categorical=["sex", "stage"])
    np.testing.assert_array_equal(result.data[[5, 9]], with_constant[[5, 9]])
    assert result.estimates.unadjusted_features.tolist() == [i in (5, 9) for i in range(N_FEATURES)]

    others = np.setdiff1d(np.arange(N_FEATURES), [5, 9])
    without = combat(with_constant[others], study.batch, study.covariates, categorical=["sex", "stage"])
    np.testing.assert_allclose(result.data[others], without.data, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        result.estimates.apply(with_constant, study.batch, study.covariates), result.data, rtol=1e-12, atol=1e-12
    )


def test_single_subject_batch_is_refused_unless_mean_only() -> None:
    study = make_study(seed=11, sizes={"a": 20, "b": 25, "lonely": 1})
    with pytest.raises(ValueError, match="single subject"):
        combat(study.data, study.batch)
    result = combat(study.data, study.batch, mean_only=True)
    assert np.isfinite(result.data).all()
    with pytest.raises(ValueError, match="reference batch"):
        combat(study.data, study.batch, mean_only=True, ref_batch="lonely")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_data_is_refused(bad_value: float) -> None:
    study = make_study(seed=12)
    study.data[7, 3] = bad_value
    with pytest.raises(ValueError, match=r"NaN or infinite values in features \[7\]"):
        combat(study.data, study.batch)


def test_non_finite_covariate_is_refused() -> None:
    study = make_study(seed=13)
    study.covariates["age"][0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        combat(study.data, study.batch, study.covariates, categorical=["sex", "stage"])


@pytest.mark.parametrize(
    "covariates",
    [
        pytest.param({"constant": np.full(111, 4.0)}, id="constant-covariate"),
        pytest.param("batch-indicator", id="covariate-equals-batch"),
        pytest.param("duplicate", id="duplicated-covariate"),
    ],
)
def test_singular_design_is_refused(covariates: Any) -> None:
    study = make_study(seed=14)
    if covariates == "batch-indicator":
        covariates = {"is_a": (study.batch == "scannerA").astype(float)}
    elif covariates == "duplicate":
        covariates = {"age": study.covariates["age"], "age_again": study.covariates["age"] * 2}
    with pytest.raises(ValueError, match="singular design"):
        combat(study.data, study.batch, covariates)


def test_covariate_far_from_zero_is_not_mistaken_for_a_singular_design() -> None:
    study = make_study(seed=19)
    rng = np.random.default_rng(19)
    year = 2020 + rng.uniform(-2, 2, study.batch.size)
    offset = combat(study.data, study.batch, {"year": year})
    centred = combat(study.data, study.batch, {"year": year - 2020})
    np.testing.assert_allclose(offset.data, centred.data, rtol=1e-9)


def test_other_bad_input_is_refused() -> None:
    study = make_study(seed=15)
    with pytest.raises(ValueError, match="2-D"):
        combat(study.data[0], study.batch)
    with pytest.raises(ValueError, match="labels for"):
        combat(study.data, study.batch[:-1])
    with pytest.raises(ValueError, match="not among the batches"):
        combat(study.data, study.batch, ref_batch="scannerZ")
    with pytest.raises(ValueError, match="at least two features"):
        combat(study.data[:1], study.batch)
    single_feature = combat(study.data[:1], study.batch, empirical_bayes=False)
    assert single_feature.data.shape == (1, study.batch.size)


def test_float32_input_is_harmonised_in_float64() -> None:
    study = make_study(seed=16)
    result = combat(study.data.astype(np.float32), study.batch)
    assert result.data.dtype == np.float64


def _write_inputs(tmp_path: Path, study: Study) -> tuple[Path, Path]:
    data_path, batch_path = tmp_path / "data.npy", tmp_path / "batch.txt"
    np.save(data_path, study.data)
    batch_path.write_text("\n".join(study.batch) + "\n", encoding="utf-8")
    return data_path, batch_path


def test_command_line_matches_library(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = make_study(seed=17)
    data_path, batch_path = _write_inputs(tmp_path, study)
    out_path = tmp_path / "out.npy"
    argv = ["--data", str(data_path), "--batch", str(batch_path), "--out", str(out_path)]
    assert main([*argv, "--ref-batch", "scannerA", "--summary"]) == 0
    expected: CombatResult = combat(study.data, study.batch, ref_batch="scannerA")
    np.testing.assert_array_equal(np.load(out_path), expected.data)
    assert '"unadjusted_features": []' in capsys.readouterr().out


def test_command_line_runs_as_a_module(tmp_path: Path) -> None:
    study = make_study(seed=18)
    data_path, batch_path = _write_inputs(tmp_path, study)
    out_path = tmp_path / "out.npy"
    command = [sys.executable, "-m", "gateway.compute.combat", "--data", str(data_path), "--batch", str(batch_path)]
    command += ["--out", str(out_path)]
    completed = subprocess.run(
        [*command, "--non-parametric"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    np.testing.assert_allclose(np.load(out_path), combat(study.data, study.batch, parametric=False).data)

    study.data[0, 0] = np.nan
    np.save(data_path, study.data)
    failed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert failed.returncode == 2 and "NaN" in failed.stderr
