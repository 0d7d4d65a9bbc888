"""Batch feature extraction: values, idempotency, interruption and resume, parallel runs, outputs, faces."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
import requests
from sqlalchemy import func, select

from gateway.compute.features.pipeline import extract_features
from gateway.compute.regions import load_segmentation_masks
from gateway.compute.volumes import load_series_volume
from gateway.features.models import ImageFeature, ImageFeatureRegion
from gateway.features.params import load_params, parameter_hash
from gateway.features.report import report_uids
from gateway.features.service import ALG_VERSION, FEATURES_JOB
from gateway.node import Node
from gateway.services.jobs import COMPLETED, INTERRUPTED, JobError
from gateway.store.models import Job, Series
from tests.conftest import ADMIN_TOKEN, RunningServer
from tests.features.cases import store_synthetic, synthetic_study

# Light settings: no resampling, so a region costs milliseconds; every family and two aggregations.
SETTINGS: dict[str, Any] = {"name": "test", "resegmentation": {"lower": -200, "upper": 400},
                            "discretisation": {"bin_width": 10}}


def _counts(node: Node) -> tuple[int, int]:
    with node.engine.connect() as connection:
        regions = connection.execute(select(func.count()).select_from(ImageFeatureRegion)).scalar()
        features = connection.execute(select(func.count()).select_from(ImageFeature)).scalar()
    return int(regions or 0), int(features or 0)


def _run(node: Node, params: dict[str, Any], on_progress: Any = None) -> dict[str, Any]:
    job = node.jobs.create(node, FEATURES_JOB, params)
    return node.jobs.run(node, job["id"], on_progress)


def _expected(node: Node, study_uid: str, series_uid: str, seg_uid: str) -> dict[str, dict[str, float]]:
    """extract_features called directly on the stored volume and masks, per segment label."""
    volume = load_series_volume(node, study_uid, series_uid)
    masks = load_segmentation_masks(node, study_uid, seg_uid, volume)
    return {label: {f.key if f.aggregation is None else f"{f.key} [{f.aggregation}]": f.value
                    for f in extract_features(volume.array, mask, volume.spacing, bin_width=10,
                                              resegment_range=(-200.0, 400.0))}
            for label, mask in masks.items()}


def _assert_same(stored: list[dict[str, Any]], expected: dict[str, float]) -> None:
    values = {feature["key"]: feature["value"] for feature in stored}
    assert set(values) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert values[key] is None, key
        else:
            assert values[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_values_equal_extract_features_and_a_rerun_does_nothing(node: Node) -> None:
    study = synthetic_study()
    store_synthetic(node, study)
    seen: list[tuple[int, int | None]] = []
    final = _run(node, {"cohort": f"StudyInstanceUID={study.study_uid}", "params": SETTINGS},
                 lambda done, total, message: seen.append((done, total)))
    assert final["state"] == COMPLETED, final["error"]
    result = final["result"]
    assert result["regions"] == 2 and result["computed"] == 2 and result["already_done"] == 0
    assert result["parameter_hash"] == parameter_hash(load_params(SETTINGS))
    assert result["skipped"] == [{"study": study.study_uid, "series": study.mr_uid, "modality": "MR",
                                  "reason": "no DICOM SEG or RTSTRUCT in the study references this series"}]
    assert final["progress"]["done"] == final["progress"]["total"] == 2 and (2, 2) in seen

    results = node.extensions["features"].results(series_uid=study.ct_uid)
    expected = _expected(node, study.study_uid, study.ct_uid, study.seg_uid)
    assert sorted(region["label"] for region in results) == ["node", "tumour"]
    for region in results:
        _assert_same(region["features"], expected[region["label"]])
        assert region["alg_system"].startswith(f"eucaim-gateway {ALG_VERSION} IBSI-1 ")
        assert region["segmentation"] == study.seg_uid
    tumour = next(region for region in results if region["label"] == "tumour")
    units = {feature["key"]: feature["unit"] for feature in tumour["features"]}
    assert units["morph_vol"] == "mm3" and units["stat_mean"] == "[hnsf'U]" and units["stat_var"] == "[hnsf'U]2"
    assert units["cm_joint_max [3D merged]"] == "1"
    assert tumour["anatomic_site"] == "SCT|39607008|Lung"
    with node.engine.connect() as connection:
        series_pk = connection.execute(select(Series.pk).where(Series.series_instance_uid == study.ct_uid)).scalar()
        row = connection.execute(select(ImageFeature).where(ImageFeature.image_feature_source_key == "morph_vol")
                                 .limit(1)).first()
    assert row is not None and row.image_occurrence_id == series_pk and row.image_feature_source_value == "RNU0"
    assert row.image_feature_concept_id == 0 and row.parameter_hash == result["parameter_hash"]

    before = _counts(node)
    again = _run(node, {"cohort": f"StudyInstanceUID={study.study_uid}", "params": SETTINGS})
    assert again["state"] == COMPLETED
    assert again["result"]["computed"] == 0 and again["result"]["already_done"] == 2
    assert _counts(node) == before


def test_an_interrupted_job_resumes_with_only_what_is_missing(node: Node) -> None:
    studies = [synthetic_study(seed=seed, patient_id=f"FEAT{seed}") for seed in range(3)]
    for study in studies:
        store_synthetic(node, study)
    job = node.jobs.create(node, FEATURES_JOB, {"cohort": "Modality=CT", "params": SETTINGS})

    def stop_after_the_first_series(done: int, total: int | None, message: str) -> None:
        if done >= 2:  # the first series' two regions are stored: the gateway "stops"
            node.jobs.stopping.set()

    first = node.jobs.run(node, job["id"], stop_after_the_first_series)
    assert first["state"] == INTERRUPTED and first["progress"]["done"] == 2
    assert _counts(node)[0] == 2
    node.jobs.stopping.clear()

    # Then its process dies while running it again: the job is found orphaned and resumed elsewhere.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    with node.engine.begin() as connection:
        connection.execute(Job.__table__.update().where(Job.__table__.c.id == job["id"])  # type: ignore[attr-defined]
                           .values(state="running", owner=f"{socket.gethostname()}:{dead}"))
    assert node.jobs.recover_orphans() == [job["id"]]
    resumed = node.jobs.run(node, job["id"])
    assert resumed["state"] == COMPLETED and resumed["attempts"] == 2
    assert resumed["result"]["already_done"] == 2 and resumed["result"]["computed"] == 4
    assert _counts(node)[0] == 6
    for study in studies:
        expected = _expected(node, study.study_uid, study.ct_uid, study.seg_uid)
        for region in node.extensions["features"].results(series_uid=study.ct_uid):
            _assert_same(region["features"], expected[region["label"]])


def test_a_killed_cli_run_is_resumed_by_gateway_jobs_resume(tmp_path: Path) -> None:
    """A real process killed mid-job (SIGKILL); `gateway jobs resume` then computes only the rest."""
    from gateway.cli import main
    from tests.conftest import make_settings

    data_dir = tmp_path / "data"
    node = Node.open(make_settings(data_dir))
    studies = [synthetic_study(seed=seed, patient_id=f"KILL{seed}") for seed in range(4)]
    for study in studies:
        store_synthetic(node, study)
    params = tmp_path / "light.toml"
    params.write_text('[resegmentation]\nlower = -200\nupper = 400\n[discretisation]\nbin_width = 10\n'
                      '[features]\nfamilies = "all"\naggregations = ["2D averaged", "2.5D merged", "3D merged"]\n')
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "features", "extract", "--data-dir",
                                str(data_dir), "--cohort", "Modality=CT", "--params", str(params)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _counts(node)[0] < 2:
            assert process.poll() is None, "the extraction ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.kill()
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    stored = _counts(node)[0]
    assert 2 <= stored < 8
    jobs = node.jobs.list(kind=FEATURES_JOB)
    assert len(jobs) == 1 and jobs[0]["state"] == "running"
    node.close()
    assert main(["jobs", "resume", jobs[0]["id"], "--data-dir", str(data_dir)]) == 0
    node = Node.open(make_settings(data_dir))
    try:
        final = node.jobs.get(jobs[0]["id"])
        assert final["state"] == COMPLETED
        assert final["result"]["already_done"] == stored and final["result"]["computed"] == 8 - stored
        assert _counts(node)[0] == 8
    finally:
        node.close()


def test_a_process_pool_and_a_dask_cluster_give_the_same_values(node: Node) -> None:
    distributed = pytest.importorskip("distributed")
    studies = [synthetic_study(seed=seed, patient_id=f"PAR{seed}") for seed in range(2)]
    for study in studies:
        store_synthetic(node, study)
    pooled = _run(node, {"cohort": f"PatientID={studies[0].images[0].PatientID}", "params": SETTINGS,
                         "workers": 2})
    assert pooled["state"] == COMPLETED and pooled["result"]["computed"] == 2, pooled
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        clustered = _run(node, {"cohort": "Modality=CT", "params": SETTINGS, "scheduler": cluster.scheduler_address})
    assert clustered["state"] == COMPLETED, clustered["error"]
    assert clustered["result"]["computed"] == 2 and clustered["result"]["already_done"] == 2
    for study in studies:
        expected = _expected(node, study.study_uid, study.ct_uid, study.seg_uid)
        for region in node.extensions["features"].results(series_uid=study.ct_uid):
            _assert_same(region["features"], expected[region["label"]])


def test_bad_settings_and_cohorts_are_refused_before_a_job_exists(node: Node, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[discretisation]\nbin_width = -5\n")
    cases = [
        ({"cohort": "Modality=CT", "params": str(bad)}, r"bad\.toml: discretisation\.bin_width must be positive"),
        ({"cohort": "Modality=CT", "params": "no_such_preset"}, "neither a settings file nor a preset"),
        ({"cohort": "Modality=CT", "params": {"features": {"families": ["glcm"]}}}, "need bin_width"),
        ({"cohort": "Modality=CT", "params": {"discretisation": {"bin_width": 1, "bin_number": 8}}}, "not both"),
        ({"cohort": "Modality=CT", "params": {"features": {"families": ["shape"]}}}, "unknown family shape"),
        ({"cohort": "Modality=CT", "params": {"resampling": {"spacing": [1, 1]}}}, r"resampling\.spacing"),
        ({"cohort": "Modality=CT", "params": {"resegmentation": {"lower": 5, "upper": 1}}}, "above upper"),
        ({"cohort": "Modality=CT", "params": {"colour": "red"}}, "unknown key.*colour"),
        ({"cohort": "StudyDate=2020", "params": "ct_default"}, "cohort"),
        ({"cohort": "SOPInstanceUID=1.2.3", "params": "ct_default"}, "not supported at the series level"),
        ({"cohort": "Modality=CT", "params": "ct_default", "workers": 0}, "workers"),
    ]
    for params, message in cases:
        with pytest.raises(JobError, match=message):
            node.jobs.create(node, FEATURES_JOB, params)
    assert node.jobs.list(kind=FEATURES_JOB) == []


def test_equivalent_settings_share_a_hash_and_presets_load(tmp_path: Path) -> None:
    toml = tmp_path / "a.toml"
    toml.write_text('name = "a"\n[discretisation]\nbin_width = 25\n[resampling]\nspacing = 2\n')
    yaml_file = tmp_path / "b.yaml"
    yaml_file.write_text("resampling:\n  spacing: [2.0, 2.0, 2.0]\n  interpolation: linear\n"
                         "discretisation:\n  bin_width: 25.0\nfeatures:\n  families: all\n")
    if pytest.importorskip("yaml"):
        assert parameter_hash(load_params(toml)) == parameter_hash(load_params(str(yaml_file)))
    assert parameter_hash(load_params(toml)) != parameter_hash(load_params({"discretisation": {"bin_width": 20}}))
    for name in ("ct_default", "mr_default", "pet_default", "ibsi_config_a", "ibsi_config_c", "ibsi_config_e"):
        settings = load_params(name)
        assert settings["name"] == name and settings["features"]["families"]
    assert load_params("ibsi_config_e")["resampling"]["interpolation"] == "cubic"


def test_fhir_observations_per_region_without_duplicates(node: Node) -> None:
    fhir = node.extensions["fhir"]
    study = synthetic_study(seed=5, patient_id="FHIR1")
    store_synthetic(node, study)
    params = {"cohort": f"StudyInstanceUID={study.study_uid}&Modality=CT", "params": SETTINGS}
    final = _run(node, params)
    assert final["result"]["fhir"] == {"written": 2, "errors": []}
    found = fhir.search("Observation", [("derived-from", f"ImagingStudy/{study.study_uid}")])
    observations = [entry["resource"] for entry in found["entry"]]
    assert len(observations) == 2
    imaging_study = fhir.read("ImagingStudy", study.study_uid)
    stored = {region["label"]: region for region in node.extensions["features"].results(series_uid=study.ct_uid)}
    for observation in observations:
        assert observation["status"] == "final" and observation["subject"] == imaging_study["subject"]
        assert observation["category"][0]["coding"][0]["code"] == "imaging"
        region = next(r for r in stored.values() if r["observation"] == f"Observation/{observation['id']}")
        volume = next(c for c in observation["component"] if c["code"]["coding"][0]["code"] == "RNU0")
        expected = next(f for f in region["features"] if f["key"] == "morph_vol")
        assert volume["valueQuantity"] == {"value": expected["value"], "unit": "mm3",
                                           "system": "http://unitsofmeasure.org", "code": "mm3"}
        assert len(observation["component"]) == len(region["features"])
        assert observation["code"]["coding"][0]["code"] == "radiomics-feature-set"
    tumour = next(o for o in observations if stored["tumour"]["observation"] == f"Observation/{o['id']}")
    assert tumour["bodySite"]["coding"][0] == {"system": "http://snomed.info/sct", "code": "39607008",
                                               "display": "Lung"}
    # Forgetting the links (as after a crash between the two writes) must not duplicate the resources.
    with node.engine.begin() as connection:
        connection.execute(ImageFeatureRegion.__table__.update().values(observation_id=None))  # type: ignore[attr-defined]
    again = _run(node, params)
    assert again["result"]["fhir"]["written"] == 2
    found = fhir.search("Observation", [("derived-from", f"ImagingStudy/{study.study_uid}")])
    assert sorted(entry["resource"]["id"] for entry in found["entry"]) == sorted(o["id"] for o in observations)


def test_measurement_report_is_valid_and_stored_once(node: Node) -> None:
    study = synthetic_study(seed=7, patient_id="SR1")
    store_synthetic(node, study)
    params = {"cohort": f"StudyInstanceUID={study.study_uid}", "params": SETTINGS, "sr": True}
    final = _run(node, params)
    assert final["state"] == COMPLETED
    digest = final["result"]["parameter_hash"]
    series_uid, sop_uid = report_uids(study.ct_uid, study.seg_uid, digest)
    assert final["result"]["sr"]["written"] == [sop_uid]
    instance = node.retrieve.instance(study.study_uid, series_uid, sop_uid)
    dataset = pydicom.dcmread(node.retrieve.path(instance))
    report = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    stored = {region["segment_number"]: region for region in node.extensions["features"].results(
        series_uid=study.ct_uid)}
    for group in groups:
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == str(study.segmentation.SOPInstanceUID)
        number = segment.referenced_segment_numbers[0]
        volume = next(m for m in group.get_measurements() if m.name.value == "RNU0")
        expected = next(f for f in stored[number]["features"] if f["key"] == "morph_vol")
        assert volume.value == pytest.approx(expected["value"], rel=1e-6)
        assert volume.unit.value == "mm3"
        assert len(group.get_measurements()) == sum(f["value"] is not None for f in stored[number]["features"])
    # Served like any instance: QIDO-RS finds it in the study.
    from gateway.services.query import parse_query

    query = parse_query("series", [("StudyInstanceUID", study.study_uid), ("Modality", "SR")], max_results=10)
    assert [m["0020000E"]["Value"][0] for m in node.query.search(query, base_url="").matches] == [series_uid]
    again = _run(node, params)
    assert again["result"]["sr"]["written"] == [] and again["result"]["sr"]["already_present"] == 1


def test_api_submits_a_job_and_lists_results(server: RunningServer) -> None:
    study = synthetic_study(seed=9, patient_id="API1")
    store_synthetic(server.node, study)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    bad = requests.post(f"{server.url}/api/features/extract", json={"cohort": "Modality=CT", "params": "nope"},
                        headers=headers, timeout=10)
    assert bad.status_code == 400 and "preset" in bad.json()["detail"]
    response = requests.post(f"{server.url}/api/features/extract", json={"cohort": f"StudyInstanceUID="
                             f"{study.study_uid}", "params": SETTINGS}, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        job = requests.get(f"{server.url}/api/jobs/{job_id}", headers=headers, timeout=10).json()
        if job["state"] not in ("queued", "running"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["state"] == COMPLETED and job["progress"]["total"] == 2, job
    listed = requests.get(f"{server.url}/api/features", params={"series": study.ct_uid}, headers=headers,
                          timeout=10).json()
    assert sorted(region["label"] for region in listed) == ["node", "tumour"]
    assert all(len(region["features"]) > 100 for region in listed)
    assert requests.get(f"{server.url}/api/features", timeout=10).status_code == 401


def test_migration_matches_the_models(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    from gateway.store.db import create_db_engine, upgrade_database

    if database_url.startswith("sqlite"):
        upgrade_database(database_url)
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    finally:
        engine.dispose()
    assert [d for d in differences if "image_feature" in str(d)] == []


def test_demo_data_through_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway features extract` on the demo data set, with two worker processes, then `features list`."""
    from gateway.cli import _ingest_demo, main
    from gateway.demo.synth import plan_demo
    from tests.conftest import make_settings

    data_dir = tmp_path / "demo"
    node = Node.open(make_settings(data_dir))
    _ingest_demo(node, plan_demo(seed=0, patients=1))
    node.close()
    settings = tmp_path / "demo.toml"
    settings.write_text("[resegmentation]\nlower = -200\nupper = 400\n[discretisation]\nbin_width = 10\n")
    assert main(["features", "extract", "--data-dir", str(data_dir), "--cohort",
                 "Modality=CT&StudyDate=20180101-20191231", "--params", str(settings), "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert "2 series, 2 region(s), 2 to compute, 0 series skipped" in planned
    assert main(["features", "extract", "--data-dir", str(data_dir), "--cohort", "Modality=CT",
                 "--params", str(settings), "--workers", "2"]) == 0
    capsys.readouterr()
    assert main(["features", "list", "--data-dir", str(data_dir), "--json"]) == 0
    listed = __import__("json").loads(capsys.readouterr().out)
    assert len(listed) == 2
    node = Node.open(make_settings(data_dir))
    try:
        for region in listed:
            volume = load_series_volume(node, region["study"], region["series"])
            masks = load_segmentation_masks(node, region["study"], region["segmentation"], volume)
            expected = {f.key if f.aggregation is None else f"{f.key} [{f.aggregation}]": f.value
                        for f in extract_features(volume.array, masks[region["label"]], volume.spacing, bin_width=10,
                                                  resegment_range=(-200.0, 400.0))}
            _assert_same(region["features"], expected)
            hounsfield = next(f for f in region["features"] if f["key"] == "stat_mean")
            assert -200 <= hounsfield["value"] <= 400 and hounsfield["unit"] == "[hnsf'U]"
    finally:
        node.close()
    assert main(["features", "extract", "--data-dir", str(data_dir), "--cohort", "Modality=CT",
                 "--params", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err


def test_rtstruct_rois_are_regions_and_a_broken_series_fails_alone(node: Node) -> None:
    from gateway.compute.regions import load_rtstruct_masks
    from tests.compute.test_volumes import circle, rtstruct
    from tests.features.cases import part10

    study = synthetic_study(seed=11, patient_id="RT1")
    image = study.images[0]
    structure_set = rtstruct(image, {"GTV": [circle((1.2, -2.4), 3.0, 2.0 * k) for k in range(2, 8)],
                                     "point": []})
    broken = synthetic_study(seed=12, patient_id="RT2")
    broken.images = [image for image in broken.images if not (image.Modality == "CT" and image.InstanceNumber == 6)]
    store_synthetic(node, study)
    store_synthetic(node, broken)
    assert node.ingest.store_bytes(part10(structure_set)).ok
    final = _run(node, {"cohort": "Modality=CT", "params": SETTINGS, "sr": True})
    assert final["state"] == COMPLETED, final["error"]
    result = final["result"]
    # The ROI without contours is no region; the SEG's two segments and the GTV are.
    assert result["regions"] == 5 and result["computed"] == 3 and result["failed_count"] == 2
    assert {failure["series"] for failure in result["failed"]} == {broken.ct_uid}
    assert all("not a regular grid" in failure["error"] and "missing" in failure["error"]
               for failure in result["failed"])
    gtv = next(region for region in node.extensions["features"].results(series_uid=study.ct_uid)
               if region["segmentation_modality"] == "RTSTRUCT")
    assert gtv["label"] == "GTV" and gtv["segment_number"] == 1
    volume = load_series_volume(node, study.study_uid, study.ct_uid)
    mask = load_rtstruct_masks(node, study.study_uid, str(structure_set.SeriesInstanceUID), volume,
                               names=["GTV"])["GTV"]
    _assert_same(gtv["features"], {f.key if f.aggregation is None else f"{f.key} [{f.aggregation}]": f.value
                                   for f in extract_features(volume.array, mask, volume.spacing, bin_width=10,
                                                             resegment_range=(-200.0, 400.0))})
    # Two reports for the intact series (its SEG and its RTSTRUCT); none for the broken one.
    assert len(result["sr"]["written"]) == 2
    assert result["sr"]["incomplete"] == [{"series": broken.ct_uid, "segmentation": broken.seg_uid, "missing": 2}]
    series_uid, sop_uid = report_uids(study.ct_uid, str(structure_set.SeriesInstanceUID), result["parameter_hash"])
    dataset = pydicom.dcmread(node.retrieve.path(node.retrieve.instance(study.study_uid, series_uid, sop_uid)))
    content = hd.sr.Comprehensive3DSR.from_dataset(dataset).content
    # An ROI has no segment to reference: its group is a TID 1501 group, not an ROI group.
    assert content.get_volumetric_roi_measurement_groups() == []
    (group,) = content.get_image_measurement_groups()
    assert group.tracking_identifier == "GTV"
    volume_measurement = next(m for m in group.get_measurements() if m.name.value == "RNU0")
    assert volume_measurement.value == pytest.approx(next(f["value"] for f in gtv["features"]
                                                          if f["key"] == "morph_vol"), rel=1e-6)
    again = _run(node, {"cohort": "Modality=CT", "params": SETTINGS, "sr": True})
    assert again["result"]["computed"] == 0 and again["result"]["failed_count"] == 2  # retried, still broken
    assert again["result"]["sr"]["already_present"] == 2


def test_pet_values_get_the_series_activity_unit(node: Node) -> None:
    study = synthetic_study(seed=13, patient_id="PET1", modality="PT", Units="BQML", RescaleIntercept=0)
    store_synthetic(node, study)
    final = _run(node, {"cohort": "Modality=PT", "params": {"discretisation": {"bin_number": 16}}})
    assert final["state"] == COMPLETED and final["result"]["computed"] == 2, final
    region = node.extensions["features"].results(series_uid=study.ct_uid)[0]
    units = {feature["key"]: feature["unit"] for feature in region["features"]}
    assert units["stat_max"] == "Bq/mL" and units["morph_integ_int"] == "Bq/mL.mm3" and units["ih_mean"] == "1"


def test_a_cancelled_job_stops_between_series_and_resumes_later(node: Node) -> None:
    for seed in range(3):
        store_synthetic(node, synthetic_study(seed=20 + seed, patient_id=f"CAN{seed}"))
    job = node.jobs.create(node, FEATURES_JOB, {"cohort": "Modality=CT", "params": SETTINGS})

    def cancel_after_the_first_series(done: int, total: int | None, message: str) -> None:
        if done == 2 and "stored" in message:
            node.jobs.request_cancel(job["id"])
            time.sleep(0.6)  # past the jobs service's interval between cancellation checks

    cancelled = node.jobs.run(node, job["id"], cancel_after_the_first_series)
    assert cancelled["state"] == "cancelled" and _counts(node)[0] == 2
    node.jobs.make_resumable(job["id"])
    final = node.jobs.run(node, job["id"])
    assert final["state"] == COMPLETED
    assert final["result"]["already_done"] == 2 and final["result"]["computed"] == 4 and _counts(node)[0] == 6
