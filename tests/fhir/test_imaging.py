"""ImagingStudy from the image store: in sync right after STOW-RS and DELETE, linked to the EHR's Patient."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import update

from gateway.fhir.errors import FhirError
from gateway.fhir.service import DEFAULT_MRN_SYSTEM, FhirConfig, FhirService
from gateway.node import Node
from gateway.store.models import Study
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.dicom_factory import make_instance, multipart_body, new_uid, stow_headers
from tests.fhir.conftest import FhirClient

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _stow(fhir: FhirClient, parts: list[bytes]) -> None:
    response = requests.post(f"{fhir.server.dicomweb}/studies", data=multipart_body(parts), headers=stow_headers(),
                             timeout=60)
    assert response.status_code == 200, response.text


def test_study_appears_as_imaging_study_right_after_stow(fhir: FhirClient) -> None:
    study, ct_series, mr_series = new_uid(), new_uid(), new_uid()
    _stow(fhir, [make_instance(study_uid=study, series_uid=ct_series, instance_number=1, seed=1),
                 make_instance(study_uid=study, series_uid=ct_series, instance_number=2, seed=2),
                 make_instance(study_uid=study, series_uid=mr_series, modality="MR", series_number=2,
                               BodyPartExamined="HEAD", seed=3)])
    imaging = fhir.get(f"ImagingStudy/{study}").json()
    assert imaging["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}
    assert imaging["status"] == "available"
    assert {c["code"] for c in imaging["modality"]} == {"CT", "MR"}
    assert all(c["system"] == "http://dicom.nema.org/resources/ontology/DCM" for c in imaging["modality"])
    assert imaging["numberOfSeries"] == 2 and imaging["numberOfInstances"] == 3
    assert imaging["started"].startswith("2020-01-15T10:15:00")
    series = {s["uid"]: s for s in imaging["series"]}
    assert series[ct_series]["bodySite"] == {"system": "http://snomed.info/sct", "code": "816094009",
                                             "display": "Chest"}
    assert series[mr_series]["bodySite"]["code"] == "69536005"
    assert series[ct_series]["numberOfInstances"] == 2
    instance = series[ct_series]["instance"][0]
    assert instance["sopClass"] == {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{CT_IMAGE_STORAGE}"}

    endpoint = fhir.get(imaging["endpoint"][0]["reference"]).json()
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["connectionType"]["system"] == "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
    assert endpoint["address"].endswith("/dicomweb")

    patient = fhir.get(imaging["subject"]["reference"]).json()
    assert patient["identifier"][0]["system"] == DEFAULT_MRN_SYSTEM and patient["identifier"][0]["value"] == "PAT001"
    assert patient["name"][0]["family"] == "Doe" and patient["name"][0]["given"] == ["Jane"]
    assert patient["gender"] == "female" and patient["birthDate"] == "1960-01-01"

    assert fhir.ids("ImagingStudy?modality=MR") == [study]
    assert fhir.ids(f"ImagingStudy?subject:Patient.identifier={DEFAULT_MRN_SYSTEM}|PAT001") == [study]
    assert fhir.ids(f"ImagingStudy?series={mr_series}") == [study]
    assert fhir.ids("ImagingStudy?bodysite=http://snomed.info/sct|69536005") == [study]

    # One more instance later: the same ImagingStudy, updated.
    _stow(fhir, [make_instance(study_uid=study, series_uid=ct_series, instance_number=3, seed=4)])
    again = fhir.get(f"ImagingStudy/{study}").json()
    assert again["numberOfInstances"] == 4 and again["meta"]["versionId"] == "2"


def test_ehr_and_dicom_patient_are_one(fhir: FhirClient) -> None:
    # DICOM first: the Patient is created from the patient module ...
    study = new_uid()
    _stow(fhir, [make_instance(study_uid=study, patient_id="MRN-7", patient_name="Rossi^Mario", PatientSex="M")])
    subject = fhir.get(f"ImagingStudy/{study}").json()["subject"]["reference"]
    # ... and the EHR's conditional update on the same MRN updates that Patient rather than adding one.
    ehr_patient = {"resourceType": "Patient", "identifier": [{"system": DEFAULT_MRN_SYSTEM, "value": "MRN-7"}],
                   "name": [{"family": "Rossi", "given": ["Mario", "Luigi"]}], "gender": "male",
                   "birthDate": "1960-01-01"}
    response = fhir.put(f"Patient?identifier={DEFAULT_MRN_SYSTEM}|MRN-7", json=ehr_patient)
    assert response.status_code == 200 and f"Patient/{response.json()['id']}" == subject
    assert len(fhir.ids(f"Patient?identifier={DEFAULT_MRN_SYSTEM}|MRN-7")) == 1

    # EHR first: the study links to the existing Patient.
    ehr_first = fhir.create({**ehr_patient, "identifier": [{"system": DEFAULT_MRN_SYSTEM, "value": "MRN-8"}]})
    second = new_uid()
    _stow(fhir, [make_instance(study_uid=second, patient_id="MRN-8")])
    assert fhir.get(f"ImagingStudy/{second}").json()["subject"]["reference"] == f"Patient/{ehr_first['id']}"
    assert len(fhir.ids(f"Patient?identifier={DEFAULT_MRN_SYSTEM}|MRN-8")) == 1
    assert fhir.ids(f"Patient?_has:ImagingStudy:patient:identifier=urn:oid:{second}") == [ehr_first["id"]]


def test_deleted_study_disappears(fhir: FhirClient) -> None:
    study = new_uid()
    _stow(fhir, [make_instance(study_uid=study)])
    assert fhir.get(f"ImagingStudy/{study}").status_code == 200
    response = requests.delete(f"{fhir.server.dicomweb}/studies/{study}",
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
    assert response.status_code in (200, 204), response.text
    assert fhir.get(f"ImagingStudy/{study}").status_code == 410
    assert fhir.ids(f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{study}") == []


def test_issuer_of_patient_id_chooses_the_identifier_system() -> None:
    config = FhirConfig.from_section({"mrn_system": "urn:oid:1.2.3.4", "issuers": {"HOSP_B": "urn:oid:9.8.7"}})
    assert config.identifier_system("") == "urn:oid:1.2.3.4"
    assert config.identifier_system("HOSP_B") == "urn:oid:9.8.7"
    assert config.identifier_system("2.16.840.1.113883.3.1") == "urn:oid:2.16.840.1.113883.3.1"
    assert config.identifier_system("UNKNOWN") == "urn:oid:1.2.3.4"


def _backdated_studies(node: Node, count: int, prefix: str) -> list[str]:
    """Studies as a hospital's existing store holds them: last changed an hour ago, a minute apart."""
    uids = [new_uid() for _ in range(count)]
    for number, uid in enumerate(uids):
        result = node.ingest.store_bytes(make_instance(study_uid=uid, patient_id=f"{prefix}{number}"))
        assert result.status == "stored", result
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with node.engine.begin() as connection:
        for number, uid in enumerate(uids):
            connection.execute(update(Study).where(Study.study_instance_uid == uid)
                               .values(updated_at=hour_ago + timedelta(minutes=number)))
    return uids


def _imaging_count(service: FhirService) -> int:
    return service.search("ImagingStudy", [("_summary", "count")])["total"]


def test_another_process_syncs_only_what_changed_since_the_shared_watermark(node: Node,
                                                                            database_url: str) -> None:
    first: FhirService = node.extensions["fhir"]
    first.imaging.batch_size = 5
    old = _backdated_studies(node, 12, "OLD")
    assert _imaging_count(first) == 12
    assert first.imaging.examined == 12  # the first sync ever reads the whole store, in batches of 5

    fresh = [new_uid(), new_uid()]
    for uid in fresh:
        assert node.ingest.store_bytes(make_instance(study_uid=uid, patient_id="NEW")).status == "stored"
    # Another process (an HTTP worker, or one started after the DIMSE listener stored these): it reads from the
    # watermark the first one recorded, so only the studies changed since then (and the newest old one, which is
    # within the few seconds re-read behind the watermark), not the 12 before.
    other = Node.open(make_settings(node.settings.data_dir, database_url), migrate=False)
    try:
        service: FhirService = other.extensions["fhir"]
        assert _imaging_count(service) == 14
        assert service.imaging.examined == len(fresh) + 1
        assert service.read("ImagingStudy", fresh[0])["subject"]["reference"].startswith("Patient/")

        # A study deleted whole by the first process leaves no row to scan: the other one still sees it go.
        before = service.imaging.examined
        assert node.ingest.delete(old[0]) == 1
        with pytest.raises(FhirError) as gone:
            service.read("ImagingStudy", old[0])
        assert gone.value.status == 410
        assert service.imaging.examined - before <= len(fresh)  # only the margin behind the watermark again
        assert _imaging_count(service) == 13
        assert _imaging_count(first) == 13
    finally:
        other.close()


def test_an_interrupted_first_sync_continues_where_it_stopped(node: Node, database_url: str) -> None:
    old = _backdated_studies(node, 12, "RES")
    settings = make_settings(node.settings.data_dir, database_url)
    crashing = Node.open(settings, migrate=False)
    try:
        imaging = crashing.extensions["fhir"].imaging
        imaging.batch_size = 5
        real_rebuild = imaging._rebuild
        calls = []

        def rebuild_until_the_seventh(session: Any, uid: str) -> None:
            calls.append(uid)
            if len(calls) == 7:
                raise RuntimeError("the process stops here")
            real_rebuild(session, uid)

        imaging._rebuild = rebuild_until_the_seventh  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            imaging.sync()
    finally:
        crashing.close()
    resumed = Node.open(settings, migrate=False)
    try:
        service: FhirService = resumed.extensions["fhir"]
        assert _imaging_count(service) == 12
        # The first batch (5 studies) was committed with its watermark; the next process starts after it, less
        # the margin that re-reads the 5th (a minute apart here, so only that one).
        assert service.imaging.examined == 12 - 4
        assert {service.read("ImagingStudy", uid)["id"] for uid in old} == set(old)
    finally:
        resumed.close()
