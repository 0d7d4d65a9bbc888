"""FHIR errors: an HTTP status with an OperationOutcome, raised by the service and rendered by the blueprint."""

from __future__ import annotations

from typing import Any


def operation_outcome(diagnostics: str, code: str = "processing", severity: str = "error",
                      expression: list[str] | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class FhirError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, ``outcome`` the OperationOutcome (dict)."""

    def __init__(self, status: int, outcome: dict[str, Any] | str, code: str = "processing") -> None:
        if isinstance(outcome, str):
            outcome = operation_outcome(outcome, code)
        diagnostics = "; ".join(str(issue.get("diagnostics", "")) for issue in outcome.get("issue", []))
        super().__init__(f"{status}: {diagnostics}")
        self.status = status
        self.outcome = outcome


def bad_request(message: str, code: str = "invalid") -> FhirError:
    return FhirError(400, operation_outcome(message, code))


def not_found(message: str) -> FhirError:
    return FhirError(404, operation_outcome(message, "not-found"))


def gone(message: str) -> FhirError:
    return FhirError(410, operation_outcome(message, "deleted"))


def conflict(message: str) -> FhirError:
    return FhirError(409, operation_outcome(message, "conflict"))


def precondition_failed(message: str) -> FhirError:
    return FhirError(412, operation_outcome(message, "conflict"))


def unprocessable(message: str, code: str = "business-rule") -> FhirError:
    return FhirError(422, operation_outcome(message, code))
