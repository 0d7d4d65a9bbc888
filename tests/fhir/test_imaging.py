"""ImagingStudy from the image store: in sync right after STOW-RS and DELETE, linked to the EHR's Patient."""

from __future__ import annotations

import requests

from gateway.fhir.service import DEFAULT_MRN_SYSTEM, FhirConfig
from tests.conftest import ADMIN_TOKEN
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
