"""Structural validation of incoming resources against FHIR R4 with fhir.resources' R4B models.

R4B is structurally R4 for every resource this server supports; the package's default models are R5 and would
reject valid R4 content (ImagingStudy.modality, for one, changed type).
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ValidationError

from gateway.fhir.errors import FhirError, operation_outcome

REQUIRED_CODES = Path(__file__).with_name("required_codes.toml")


def validate(resource: dict[str, Any]) -> None:
    """Raise FhirError 400 with the validator's messages when ``resource`` is not a valid R4 resource."""
    res_type = resource.get("resourceType")
    try:
        model = get_fhir_model_class(str(res_type))
    except KeyError:
        raise FhirError(400, operation_outcome(f"unknown resourceType {res_type!r}", "invalid")) from None
    try:
        instance = model.model_validate(resource)
    except ValidationError as exc:
        issues = []
        for error in exc.errors():
            location = ".".join(str(part) for part in error.get("loc", ()))
            issues.append({"severity": "error", "code": "structure",
                           "diagnostics": f"{res_type}.{location}: {error.get('msg')}" if location
                           else f"{res_type}: {error.get('msg')}",
                           **({"expression": [f"{res_type}.{location}"]} if location else {})})
        raise FhirError(400, {"resourceType": "OperationOutcome", "issue": issues}) from None
    except (ValueError, TypeError) as exc:
        raise FhirError(400, operation_outcome(f"{res_type}: {exc}", "structure")) from None
    issues = [{"severity": "error", "code": "code-invalid", "diagnostics": message, "expression": [path]}
              for path, message in _code_errors(instance, str(res_type))]
    if issues:
        raise FhirError(400, {"resourceType": "OperationOutcome", "issue": issues})


@cache
def _complete_code_lists() -> dict[str, list[str]]:
    return tomllib.loads(REQUIRED_CODES.read_text(encoding="utf-8"))


def _code_errors(node: Any, path: str) -> list[tuple[str, str]]:
    """Codes outside their required value set (the models carry the codes but do not enforce them)."""
    errors: list[tuple[str, str]] = []
    for name, info in type(node).model_fields.items():
        value = getattr(node, name, None)
        if value is None:
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        allowed = extra.get("enum_values")
        if isinstance(allowed, list) and "+" in allowed:
            # The model's list is cut short: the full one from our table, or no check.
            allowed = _complete_code_lists().get(f"{type(node).__name__}.{name}")
        items = value if isinstance(value, list) else [value]
        if isinstance(allowed, list):
            for item in items:
                if isinstance(item, str) and item not in allowed:
                    errors.append((f"{path}.{name}", f"{path}.{name}: code {item!r} is not one of {allowed}"))
        for item in items:
            if isinstance(item, BaseModel):
                errors.extend(_code_errors(item, f"{path}.{name}"))
    return errors
