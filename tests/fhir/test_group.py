"""Group resources (CRUD, search) and Bulk Data export at the Group level (the members' Patient compartments)."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.fhir.conftest import FhirClient

MRN = "urn:oid:1.2.840.99999.1"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
COHORT_SYSTEM = "urn:oid:1.2.840.99999.7"


def _patients(fhir: FhirClient, *mrns: str) -> list[str]:
    return [fhir.create({"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}]})["id"]
            for mrn in mrns]


def _cohort(members: list[str], inactive: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Group", "identifier": [{"system": COHORT_SYSTEM, "value": "LUNG-2024"}],
            "actual": True, "type": "person", "name": "Lung cancer cohort",
            "code": {"coding": [{"system": SNOMED, "code": "363358000", "display": "Malignant tumor of lung"}]},
            "characteristic": [{"code": {"coding": [{"system": SNOMED, "code": "263495000", "display": "Gender"}]},
                                "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "248152002",
                                                                     "display": "Female"}]},
                                "exclude": False}],
            "quantity": len(members),
            "member": [{"entity": {"reference": f"Patient/{pid}"}, **({"inactive": True} if pid in inactive else {})}
                       for pid in members], **extra}


def _condition(pid: str, code: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": ICD10, "code": code}]}}


def _observation(pid: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": LOINC, "code": "2857-1"}]}, "effectiveDateTime": "2024-02-03",
            "valueQuantity": {"value": 4.2, "unit": "ng/mL", "system": "http://unitsofmeasure.org", "code": "ng/mL"}}


def test_group_crud_and_search(fhir: FhirClient) -> None:
    a, b, c = _patients(fhir, "G-A", "G-B", "G-C")
    response = fhir.post("Group", json=_cohort([a, b]))
    assert response.status_code == 201, response.text
    group = response.json()
    gid = group["id"]
    assert fhir.get(f"Group/{gid}").json()["member"][1]["entity"]["reference"] == f"Patient/{b}"

    assert fhir.ids(f"Group?member={a}") == [gid]
    assert fhir.ids(f"Group?member=Patient/{c}") == []
    assert fhir.ids("Group?actual=true&type=person") == [gid]
    assert fhir.ids("Group?actual=false") == []
    assert fhir.ids(f"Group?code={SNOMED}|363358000") == [gid]
    assert fhir.ids(f"Group?identifier={COHORT_SYSTEM}|LUNG-2024") == [gid]
    assert fhir.ids(f"Group?characteristic={SNOMED}|263495000&value={SNOMED}|248152002") == [gid]
    assert fhir.ids("Group?exclude=false") == [gid]
    assert fhir.ids(f"Group?member:Patient.identifier={MRN}|G-B") == [gid]
    assert fhir.ids("Patient?_has:Group:member:code=363358000") == sorted([a, b])
    bundle = fhir.search(f"Group?_id={gid}&_include=Group:member")
    assert sorted(e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include") == sorted([a, b])

    # Update: c joins, a leaves; the member index follows.
    changed = {**fhir.get(f"Group/{gid}").json(), "member": [{"entity": {"reference": f"Patient/{b}"}},
                                                             {"entity": {"reference": f"Patient/{c}"}}]}
    assert fhir.put(f"Group/{gid}", json=changed).json()["meta"]["versionId"] == "2"
    assert fhir.ids(f"Group?member={a}") == []
    assert fhir.ids(f"Group?member={c}") == [gid]

    # References are enforced both ways: unknown members are refused, members cannot be deleted from under it.
    assert fhir.post("Group", json=_cohort(["nobody"])).status_code == 422
    assert fhir.delete(f"Patient/{b}").status_code == 409
    invalid = fhir.post("Group", json={**_cohort([a]), "type": "cohort"})
    assert invalid.status_code == 400 and "Group.type" in invalid.text
    assert fhir.delete(f"Group/{gid}").status_code == 204
    assert fhir.get(f"Group/{gid}").status_code == 410
    assert fhir.delete(f"Patient/{b}").status_code == 204


def _wait_export(fhir: FhirClient, status_url: str) -> dict[str, Any]:
    for _ in range(400):
        response = fhir.get(status_url)
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 202, response.text
        time.sleep(0.05)
    raise AssertionError("the export did not finish")


def _exported(fhir: FhirClient, manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    files: dict[str, list[dict[str, Any]]] = {}
    for item in manifest["output"]:
        response = fhir.session.get(item["url"], timeout=30)
        assert response.status_code == 200
        resources = [json.loads(line) for line in response.text.splitlines()]
        assert len(resources) == item["count"]
        fhir.seen += resources  # the external validators check the exported resources too
        files[item["type"]] = resources
    return files


def _kick_off(fhir: FhirClient, path: str) -> str:
    response = fhir.get(path, headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    return response.headers["Content-Location"]


def test_group_export_holds_the_members_compartments_only(fhir: FhirClient) -> None:
    a, b, c, d = _patients(fhir, "X-A", "X-B", "X-C", "X-D")
    for pid in (a, b, c, d):
        fhir.create(_condition(pid, "C34.1"))
        fhir.create(_observation(pid))
    fhir.create(_condition(a, "C50.9"))
    # A Condition about two patients' shared record would not exist; an Encounter of another patient does.
    fhir.create({"resourceType": "Encounter", "status": "finished", "subject": {"reference": f"Patient/{c}"},
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}})
    group = fhir.create(_cohort([a, b, d], inactive=(d,)))  # d is no longer a member
    gid = group["id"]

    manifest = _wait_export(fhir, _kick_off(fhir, f"Group/{gid}/$export"))
    assert manifest["request"].endswith(f"/Group/{gid}/$export")
    files = _exported(fhir, manifest)
    assert sorted(p["id"] for p in files["Patient"]) == sorted([a, b])
    subjects = {kind: sorted(r["subject"]["reference"] for r in files[kind]) for kind in ("Condition", "Observation")}
    assert subjects == {"Condition": sorted([f"Patient/{a}", f"Patient/{a}", f"Patient/{b}"]),
                        "Observation": sorted([f"Patient/{a}", f"Patient/{b}"])}
    assert "Encounter" not in files and "Group" not in files

    only = _wait_export(fhir, _kick_off(fhir, f"Group/{gid}/$export?_type=Condition"))
    assert [(item["type"], item["count"]) for item in only["output"]] == [("Condition", 3)]

    # _since: only what changed after the instant (the Group was written after everything above).
    moment = group["meta"]["lastUpdated"]
    time.sleep(0.01)
    later = fhir.create(_observation(b))
    since = _wait_export(fhir, _kick_off(fhir, f"Group/{gid}/$export?_since={moment}"))
    assert [r["id"] for r in _exported(fhir, since).get("Observation", [])] == [later["id"]]
    assert "Condition" not in {item["type"] for item in since["output"]}

    assert fhir.get("Group/unknown/$export", headers={"Prefer": "respond-async"}).status_code == 404
    assert fhir.get(f"Group/{gid}/$export?_type=Group", headers={"Prefer": "respond-async"}).status_code == 400
    assert fhir.get(f"Group/{gid}/$export").status_code == 400  # kick-off needs Prefer: respond-async
    definitional = fhir.create({"resourceType": "Group", "actual": False, "type": "person",
                                "characteristic": [{"code": {"text": "smoker"}, "valueBoolean": True,
                                                    "exclude": False}]})
    refused = fhir.get(f"Group/{definitional['id']}/$export", headers={"Prefer": "respond-async"})
    assert refused.status_code == 400 and "not actual" in refused.text


def test_capability_statement_offers_group_export(fhir: FhirClient) -> None:
    statement = fhir.search("metadata")
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert resources["Group"]["operation"] == [
        {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}]
    names = {p["name"] for p in resources["Group"]["searchParam"]}
    assert names == {"_id", "_lastUpdated", "identifier", "actual", "type", "code", "characteristic", "value",
                     "exclude", "member", "managing-entity"}
    assert "Group:member" in resources["Patient"]["searchRevInclude"]
