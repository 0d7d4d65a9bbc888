"""transaction/batch Bundles over HTTP and the FhirService API the EHR ingest calls (transaction, merge)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.fhir.errors import FhirError
from gateway.fhir.service import FhirService
from tests.fhir.conftest import FhirClient

MRN = "urn:oid:1.2.840.99999.1"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


def _patient_entry(uuid: str, mrn: str, conditional: bool = True) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "POST", "url": "Patient"}
    if conditional:
        request["ifNoneExist"] = f"identifier={MRN}|{mrn}"
    return {"fullUrl": f"urn:uuid:{uuid}", "request": request,
            "resource": {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}]}}


def _condition_entry(subject: str, code: str = "C34.1") -> dict[str, Any]:
    return {"request": {"method": "POST", "url": "Condition"},
            "resource": {"resourceType": "Condition", "subject": {"reference": subject},
                         "code": {"coding": [{"system": ICD10, "code": code}]}}}


PATIENT_UUID = "6f1c1e4e-4b1a-4f38-9d5e-0a3b8a3e7c11"


def test_transaction_resolves_urn_uuid_and_if_none_exist(fhir: FhirClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [_condition_entry(f"urn:uuid:{PATIENT_UUID}"), _patient_entry(PATIENT_UUID, "T1")]}
    response = fhir.post("", json=bundle)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    condition, patient = (entry["resource"] for entry in result["entry"])
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created", "201 Created"]
    assert condition["subject"]["reference"] == f"Patient/{patient['id']}"
    # The same bundle again: the patient exists (ifNoneExist), a second Condition points at it.
    again = fhir.post("", json=bundle).json()
    assert again["entry"][1]["response"]["status"] == "200 OK"
    assert again["entry"][1]["resource"]["id"] == patient["id"]
    assert len(fhir.ids(f"Condition?subject:Patient.identifier={MRN}|T1")) == 2


def test_transaction_is_atomic(fhir: FhirClient) -> None:
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        _patient_entry(PATIENT_UUID, "ATOMIC"),
        _condition_entry(f"urn:uuid:{PATIENT_UUID}"),
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "valueQuantity": {"value": "not a number"}}}]}
    response = fhir.post("", json=bad)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    assert fhir.ids(f"Patient?identifier={MRN}|ATOMIC") == []
    dangling = {"resourceType": "Bundle", "type": "transaction", "entry": [
        _patient_entry(PATIENT_UUID, "ATOMIC"), _condition_entry("Patient/nobody")]}
    assert fhir.post("", json=dangling).status_code == 422
    assert fhir.ids(f"Patient?identifier={MRN}|ATOMIC") == []


def test_transaction_conditional_update_delete_and_read(fhir: FhirClient) -> None:
    existing = fhir.create({"resourceType": "Patient", "identifier": [{"system": MRN, "value": "U1"}]})
    doomed = fhir.create({"resourceType": "Patient", "identifier": [{"system": MRN, "value": "D1"}]})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PUT", "url": f"Patient?identifier={MRN}|U1"},
         "resource": {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "U1"}], "gender": "male"}},
        {"request": {"method": "DELETE", "url": f"Patient/{doomed['id']}"}},
        {"request": {"method": "POST", "url": "Condition"},
         "resource": {"resourceType": "Condition", "subject": {"reference": f"Patient?identifier={MRN}|U1"},
                      "code": {"coding": [{"system": ICD10, "code": "C50.9"}]}}},
        {"request": {"method": "GET", "url": f"Patient/{existing['id']}"}}]}
    result = fhir.post("", json=bundle).json()
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["200 OK", "204 No Content", "201 Created", "200 OK"]
    assert result["entry"][0]["resource"]["id"] == existing["id"]
    assert result["entry"][2]["resource"]["subject"]["reference"] == f"Patient/{existing['id']}"
    assert result["entry"][3]["resource"]["gender"] == "male"  # reads run after the writes
    assert fhir.get(f"Patient/{doomed['id']}").status_code == 410


def test_batch_entries_succeed_or_fail_alone(fhir: FhirClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        _patient_entry(PATIENT_UUID, "B1", conditional=False),
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient", "gender": "x"}}]}
    result = fhir.post("", json=bundle).json()
    assert result["type"] == "batch-response"
    assert [e["response"]["status"][:3] for e in result["entry"]] == ["201", "404", "400"]
    assert result["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert len(fhir.ids(f"Patient?identifier={MRN}|B1")) == 1


def test_service_api_for_other_plugins(fhir: FhirClient) -> None:
    service: FhirService = fhir.server.node.extensions["fhir"]
    created = service.create({"resourceType": "Patient", "identifier": [{"system": MRN, "value": "S1"}]})
    assert service.read("Patient", created["id"])["id"] == created["id"]
    updated = service.update({**created, "gender": "female"})
    assert updated["meta"]["versionId"] == "2"
    found = service.search("Patient", [("identifier", f"{MRN}|S1")])
    assert found["type"] == "searchset" and found["total"] == 1
    with pytest.raises(FhirError) as failure:
        service.transaction({"resourceType": "Bundle", "type": "transaction",
                             "entry": [_condition_entry("Patient/nobody")]})
    assert failure.value.status == 422 and failure.value.outcome["resourceType"] == "OperationOutcome"
    assert [p["id"] for p in service.iter_resources("Patient")] == [created["id"]]
    fhir.seen += [created, updated, found, failure.value.outcome]


def test_merge_patients_repoints_references(fhir: FhirClient) -> None:
    service: FhirService = fhir.server.node.extensions["fhir"]
    source = fhir.create({"resourceType": "Patient", "identifier": [{"system": MRN, "value": "OLD"}]})
    target = fhir.create({"resourceType": "Patient", "identifier": [{"system": MRN, "value": "NEW"}]})
    condition = fhir.create(_condition_entry(f"Patient/{source['id']}")["resource"])
    service.merge_patients(source["id"], target["id"])
    assert fhir.get(f"Condition/{condition['id']}").json()["subject"]["reference"] == f"Patient/{target['id']}"
    retired = fhir.get(f"Patient/{source['id']}").json()
    assert retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{target['id']}"}, "type": "replaced-by"}]
    assert fhir.ids(f"Condition?patient={target['id']}") == [condition["id"]]
    assert fhir.ids(f"Condition?patient={source['id']}") == []


def _wait_export(fhir: FhirClient, status_url: str) -> dict[str, Any]:
    for _ in range(200):
        response = fhir.get(status_url)
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 202 and "X-Progress" in response.headers
        time.sleep(0.05)
    raise AssertionError("the export did not finish")


def test_bulk_export(fhir: FhirClient) -> None:
    patient = fhir.create({"resourceType": "Patient", "identifier": [{"system": MRN, "value": "E1"}]})
    fhir.create(_condition_entry(f"Patient/{patient['id']}")["resource"])
    assert fhir.get("$export").status_code == 400  # kick-off needs Prefer: respond-async
    kick = fhir.get("$export?_type=Patient,Condition", headers={"Prefer": "respond-async"})
    assert kick.status_code == 202
    manifest = _wait_export(fhir, kick.headers["Content-Location"])
    assert {item["type"]: item["count"] for item in manifest["output"]} == {"Patient": 1, "Condition": 1}
    lines = fhir.session.get(manifest["output"][0]["url"], timeout=30)
    assert lines.status_code == 200 and lines.headers["Content-Type"].startswith("application/fhir+ndjson")
    import json

    exported = [json.loads(line) for line in lines.text.splitlines()]
    fhir.seen += exported
    assert exported[0]["resourceType"] == manifest["output"][0]["type"]
    later = fhir.get("Patient/$export?_since=2999-01-01", headers={"Prefer": "respond-async"})
    assert _wait_export(fhir, later.headers["Content-Location"])["output"] == []
    assert fhir.delete(kick.headers["Content-Location"]).status_code == 202
    assert fhir.get("$export?_type=Nothing", headers={"Prefer": "respond-async"}).status_code == 400
    jobs = fhir.session.get(fhir.server.url + "/api/jobs?kind=fhir-export",
                            headers={"Authorization": "Bearer test-admin-token"}, timeout=30).json()
    assert len(jobs) == 2 and all(job["state"] == "completed" for job in jobs)
