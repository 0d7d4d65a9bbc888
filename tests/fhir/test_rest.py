"""The REST interactions of FHIR R4 (read, vread, history, create, update, delete, conditional forms, errors)."""

from __future__ import annotations

from typing import Any

from tests.fhir.conftest import FhirClient

MRN = "urn:oid:1.2.840.99999.1"


def patient(mrn: str = "MRN1", family: str = "Müller", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}],
            "name": [{"family": family, "given": ["Anna"]}], "gender": "female", "birthDate": "1960-05-01", **extra}


def test_metadata_lists_exactly_the_supported_resources(fhir: FhirClient) -> None:
    statement = fhir.search("metadata")
    assert statement["resourceType"] == "CapabilityStatement" and statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(resources) == {"Patient", "ImagingStudy", "Endpoint", "Condition", "Observation", "Procedure",
                              "DiagnosticReport", "Encounter", "AuditEvent", "Group"}
    observation = {p["name"]: p["type"] for p in resources["Observation"]["searchParam"]}
    assert observation["value-quantity"] == "quantity" and observation["subject"] == "reference"
    assert "Observation:patient" in resources["Patient"]["searchRevInclude"]
    # Every listed parameter is accepted in strict mode, so the statement promises nothing unsupported.
    for res_type, resource in resources.items():
        for param in resource["searchParam"]:
            value = {"token": "x", "string": "x", "date": "2020", "reference": "Patient/x",
                     "quantity": "1"}[param["type"]]
            response = fhir.get(f"{res_type}?{param['name']}={value}", headers={"Prefer": "handling=strict"})
            assert response.status_code == 200, (res_type, param["name"], response.text)


def test_create_read_update_vread_history_delete(fhir: FhirClient) -> None:
    response = fhir.post("Patient", json=patient())
    assert response.status_code == 201
    created = response.json()
    pid = created["id"]
    assert response.headers["Location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    assert response.headers["ETag"] == 'W/"1"'
    assert created["meta"]["versionId"] == "1"

    read = fhir.get(f"Patient/{pid}")
    assert read.status_code == 200 and read.json()["name"][0]["family"] == "Müller"

    changed = {**read.json(), "gender": "other"}
    response = fhir.put(f"Patient/{pid}", json=changed)
    assert response.status_code == 200 and response.json()["meta"]["versionId"] == "2"
    assert fhir.get(f"Patient/{pid}/_history/1").json()["gender"] == "female"
    assert fhir.get(f"Patient/{pid}/_history/2").json()["gender"] == "other"

    stale = fhir.put(f"Patient/{pid}", json=changed, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"

    assert fhir.delete(f"Patient/{pid}").status_code == 204
    assert fhir.get(f"Patient/{pid}").status_code == 410
    history = fhir.search(f"Patient/{pid}/_history")
    assert history["type"] == "history" and history["total"] == 3
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    assert fhir.get(f"Patient/{pid}/_history/2").status_code == 200


def test_errors_are_operation_outcomes_with_the_right_status(fhir: FhirClient) -> None:
    assert fhir.get("Patient/does-not-exist").status_code == 404
    assert fhir.get("Medication/x").status_code == 404
    invalid = fhir.post("Patient", json={"resourceType": "Patient", "gender": "sometimes"})
    assert invalid.status_code == 400
    outcome = invalid.json()
    assert outcome["resourceType"] == "OperationOutcome" and "gender" in outcome["issue"][0]["diagnostics"]
    bad_status = fhir.post("Observation", json={"resourceType": "Observation", "status": "done", "code": {"text": "x"}})
    assert bad_status.status_code == 400 and "Observation.status" in bad_status.text
    unknown_element = fhir.post("Patient", json={"resourceType": "Patient", "colour": "blue"})
    assert unknown_element.status_code == 400 and "colour" in unknown_element.text
    wrong_type = fhir.post("Patient", json={"resourceType": "Observation"})
    assert wrong_type.status_code == 400
    not_json = fhir.post("Patient", data="{", headers={"Content-Type": "application/fhir+json"})
    assert not_json.status_code == 400
    dangling = fhir.post("Observation", json={"resourceType": "Observation", "status": "final",
                                              "code": {"text": "x"}, "subject": {"reference": "Patient/nobody"}})
    assert dangling.status_code == 422
    assert fhir.get("Patient?birthdate=notadate").status_code == 400


def test_delete_of_a_referenced_resource_is_a_conflict(fhir: FhirClient) -> None:
    pid = fhir.create(patient())["id"]
    fhir.create({"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                 "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "C34.1"}]}})
    response = fhir.delete(f"Patient/{pid}")
    assert response.status_code == 409 and response.json()["issue"][0]["code"] == "conflict"


def test_conditional_create_and_update_on_identifier(fhir: FhirClient) -> None:
    first = fhir.post("Patient", json=patient(), headers={"If-None-Exist": f"identifier={MRN}|MRN1"})
    assert first.status_code == 201
    again = fhir.post("Patient", json=patient(), headers={"If-None-Exist": f"identifier={MRN}|MRN1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]

    updated = fhir.put(f"Patient?identifier={MRN}|MRN1", json=patient(family="Meier"))
    assert updated.status_code == 200 and updated.json()["id"] == first.json()["id"]
    assert fhir.get(f"Patient/{first.json()['id']}").json()["name"][0]["family"] == "Meier"

    created = fhir.put(f"Patient?identifier={MRN}|MRN2", json=patient("MRN2"))
    assert created.status_code == 201 and created.json()["id"] != first.json()["id"]

    fhir.create(patient("DUP"))
    fhir.create(patient("DUP"))
    assert fhir.put(f"Patient?identifier={MRN}|DUP", json=patient("DUP")).status_code == 412
    assert fhir.post("Patient", json=patient("DUP"),
                     headers={"If-None-Exist": f"identifier={MRN}|DUP"}).status_code == 412


def test_update_as_create_with_a_client_id(fhir: FhirClient) -> None:
    response = fhir.put("Patient/chosen-id", json={**patient("C1"), "id": "chosen-id"})
    assert response.status_code == 201 and response.json()["id"] == "chosen-id"
    mismatch = fhir.put("Patient/chosen-id", json={**patient("C1"), "id": "other"})
    assert mismatch.status_code == 400


def test_prefer_return_minimal(fhir: FhirClient) -> None:
    response = fhir.post("Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert response.status_code == 201 and not response.content and "Location" in response.headers


def test_unfiltered_totals_follow_creates_deletes_and_recreates(fhir: FhirClient) -> None:
    def total(query: str) -> int:
        return fhir.search(query)["total"]

    assert total("Patient?_summary=count") == 0
    ids = [fhir.create(patient(f"CNT{n}"))["id"] for n in range(3)]
    assert total("Patient?_summary=count") == 3 and total("Patient") == 3
    assert fhir.delete(f"Patient/{ids[0]}").status_code == 204
    assert fhir.delete(f"Patient/{ids[0]}").status_code == 204  # deleting again changes nothing
    assert total("Patient?_summary=count") == 2
    fhir.put(f"Patient/{ids[1]}", json={**patient("CNT1"), "id": ids[1], "gender": "other"})  # an update: no change
    assert total("Patient?_count=0") == 2
    assert fhir.put(f"Patient/{ids[0]}", json={**patient("CNT0"), "id": ids[0]}).status_code == 201  # back again
    assert total("Patient?_summary=count") == 3 == total(f"Patient?identifier={MRN}|")
