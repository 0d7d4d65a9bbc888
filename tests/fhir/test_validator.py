"""The external validators are really applied: a broken resource is rejected by both, a valid one by neither."""

from __future__ import annotations

from tests.fhir.conftest import ExternalValidator, contained_resources, validation_failures


def test_both_validators_reject_a_broken_resource(external_validator: ExternalValidator) -> None:
    broken = {"resourceType": "Patient", "id": "broken", "gender": "not-a-gender", "birthDate": "1990-13-45",
              "unknownElement": 1}
    verdict = external_validator.validate([broken])[0]
    assert verdict["medplum"], "@medplum/core accepted a broken Patient"
    assert verdict["fhirjs"], "FHIR.js accepted a broken Patient"
    assert len(validation_failures(external_validator, [broken])) == 2


def test_a_valid_resource_passes_both(external_validator: ExternalValidator) -> None:
    valid = {"resourceType": "Patient", "id": "ok", "gender": "female", "birthDate": "1990-12-31",
             "identifier": [{"system": "urn:oid:1.2.3", "value": "1"}]}
    assert validation_failures(external_validator, [valid]) == []


def test_bundle_entries_are_collected() -> None:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "Patient", "id": "a"}},
        {"response": {"status": "400", "outcome": {"resourceType": "OperationOutcome", "issue": []}}}]}
    assert [r["resourceType"] for r in contained_resources(bundle)] == ["Bundle", "Patient", "OperationOutcome"]
