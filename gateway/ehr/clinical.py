"""Clinical resources shared by the HL7 v2 and the CSV mappings: Condition, Observation, Procedure.

Pure functions of already-parsed values (translations, FHIR dates, references), so that one diagnosis reads
the same whether it came in a DG1 segment or a row of a registry extract.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.ehr.resources import (
    AJCC,
    CONDITION_CATEGORY,
    CONDITION_CLINICAL,
    CONDITION_VERIFICATION,
    HISTOLOGY_EXTENSION,
    INTERPRETATION,
    LATERALITY,
    LATERALITY_EXTENSION,
    LOINC,
    OBSERVATION_CATEGORY,
    SNOMED,
    TNM_LOINC,
    UCUM_SYSTEM,
    clean,
    concept,
    identifier,
    reference,
)
from gateway.ehr.terminology import Coding, Terminology, Translation

DIAGNOSIS_SYSTEMS = ("icd-10", "snomed")
TOPOGRAPHY = "icd-o-3-topography"
MORPHOLOGY = "icd-o-3-morphology"
OBSERVATION_SYSTEMS = ("loinc", "snomed")
PROCEDURE_SYSTEMS = ("snomed",)
# HL7 table 0078 flags that have the same code in v3 ObservationInterpretation.
INTERPRETATION_CODES = {"L": "Low", "H": "High", "LL": "Critical low", "HH": "Critical high", "N": "Normal",
                        "A": "Abnormal", "AA": "Critical abnormal", "POS": "Positive", "NEG": "Negative"}


def _codings(translations: list[Translation]) -> list[Coding]:
    out: list[Coding] = []
    for translation in translations:
        for coding in (translation.source, *translation.targets):
            if coding not in out:
                out.append(coding)
    return out


def _icdo3_axis(coding: Coding) -> Coding:
    """ICD-O-3 topography (C34.1) and morphology (8140/3) share one code system; the code's shape says which."""
    if coding.system in (TOPOGRAPHY, MORPHOLOGY):
        shaped_as = TOPOGRAPHY if coding.code[:1].upper() == "C" else MORPHOLOGY
        if shaped_as != coding.system:
            return Coding(shaped_as, coding.code, coding.display)
    return coding


def condition(term: Terminology, patient_url: str, diagnosis: list[Translation], identifier_system: str,
              identifier_value: str, *, recorded: str | None = None, onset: str | None = None,
              verification: str = "confirmed", clinical_status: str = "active", laterality: str | None = None,
              encounter_url: str | None = None, category: str = "encounter-diagnosis") -> dict[str, Any]:
    """A cancer (or other) diagnosis: ICD-10/SNOMED in ``code`` with the local coding kept, the ICD-O-3
    topography as ``bodySite`` and the ICD-O-3 morphology in mCODE's histology extension."""
    codings = [_icdo3_axis(coding) for coding in _codings(diagnosis)]
    for coding in list(codings):
        if coding.system == "icd-10":
            for target in term.translate("icd-10", coding.code).targets_in(TOPOGRAPHY, MORPHOLOGY):
                if target not in codings:
                    codings.append(_icdo3_axis(target))
    # Standard codes first (what most readers take), the sender's local coding kept after them.
    main = [c for c in codings if c.system in DIAGNOSIS_SYSTEMS] + \
        [c for c in codings if not term.system(c.system).standard]
    topography = [c for c in codings if c.system == TOPOGRAPHY]
    morphology = [c for c in codings if c.system == MORPHOLOGY]
    first = diagnosis[0].source
    text = first.display or next((c.display for c in main if c.display), "") or first.code
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "identifier": [identifier(identifier_system, identifier_value)],
        "clinicalStatus": concept(CONDITION_CLINICAL, clinical_status),
        "verificationStatus": concept(CONDITION_VERIFICATION, verification),
        "category": [concept(CONDITION_CATEGORY, category)],
        "code": {"coding": [term.fhir_coding(c) for c in main], "text": text},
        "subject": reference(patient_url),
        "encounter": reference(encounter_url) if encounter_url else None,
        "onsetDateTime": onset,
        "recordedDate": recorded,
    }
    if topography or laterality:
        site: dict[str, Any] = {"coding": [term.fhir_coding(c) for c in topography]}
        if topography:
            site["text"] = topography[0].display or topography[0].code
        if laterality:
            code, display = LATERALITY[laterality]
            site["extension"] = [{"url": LATERALITY_EXTENSION, "valueCodeableConcept": concept(SNOMED, code, display)}]
        resource["bodySite"] = [site]
    if morphology:
        resource["extension"] = [{"url": HISTOLOGY_EXTENSION, "valueCodeableConcept": {
            "coding": [term.fhir_coding(c) for c in morphology],
            "text": morphology[0].display or morphology[0].code}}]
    return clean(resource)


def decimal_value(text: str) -> int | float:
    """A decimal as JSON number (12 stays an integer, "12,5" with a decimal comma reads as 12.5)."""
    cleaned = text.strip().replace(",", ".") if text.count(",") == 1 and "." not in text else text.strip()
    try:
        number = Decimal(cleaned)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    return int(number) if number == number.to_integral_value() and "." not in cleaned and "e" not in \
        cleaned.lower() else float(number)


def quantity(term: Terminology, value: int | float, unit: str, comparator: str | None = None) -> dict[str, Any]:
    """A Quantity with the unit as written and, when the units table knows it, its UCUM code."""
    out: dict[str, Any] = {"value": value}
    if comparator:
        out["comparator"] = comparator
    unit = unit.strip()
    if unit:
        out["unit"] = unit
        ucum = term.ucum(unit)
        if ucum is not None:
            out.update(system=UCUM_SYSTEM, code=ucum)
    return out


def observation(term: Terminology, patient_url: str, code: Translation, identifier_system: str,
                identifier_value: str, *, value: dict[str, Any] | None, effective: str | None,
                status: str = "final", category: str | None = "laboratory",
                reference_range: dict[str, Any] | None = None, interpretation: str | None = None,
                encounter_url: str | None = None, focus_url: str | None = None, note: str | None = None,
                issued: str | None = None) -> dict[str, Any]:
    """A result: ``value`` is a dict with one ``value[x]`` key (valueQuantity, valueString, ...)."""
    flag = (interpretation or "").strip().upper()
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [identifier(identifier_system, identifier_value)],
        "status": status,
        "category": [concept(OBSERVATION_CATEGORY, category)] if category else None,
        "code": term.concept(code, *OBSERVATION_SYSTEMS),
        "subject": reference(patient_url),
        "encounter": reference(encounter_url) if encounter_url else None,
        "focus": [reference(focus_url)] if focus_url else None,
        "effectiveDateTime": effective,
        "issued": issued,
        "referenceRange": [reference_range] if reference_range else None,
        "interpretation": [concept(INTERPRETATION, flag, INTERPRETATION_CODES[flag])]
        if flag in INTERPRETATION_CODES else None,
        "note": [{"text": note}] if note else None,
        **(value or {}),
    }
    return clean(resource)


def staging_observation(patient_url: str, axis: str, value: str, identifier_system: str, identifier_value: str, *,
                        effective: str | None, pathological: bool = False, focus_url: str | None = None,
                        members: list[str] | None = None, value_concept: dict[str, Any] | None = None,
                        status: str = "final") -> dict[str, Any]:
    """A TNM category (axis T, N or M) or stage group (axis "stage") as an Observation coded in LOINC, its
    value an AJCC code (or ``value_concept`` when the value came coded otherwise)."""
    code, display = TNM_LOINC[axis][1 if pathological else 0]
    resource = {
        "resourceType": "Observation",
        "identifier": [identifier(identifier_system, identifier_value)],
        "status": status,
        "category": [concept(OBSERVATION_CATEGORY, "exam")],
        "code": concept(LOINC, code, display),
        "subject": reference(patient_url),
        "focus": [reference(focus_url)] if focus_url else None,
        "effectiveDateTime": effective,
        "valueCodeableConcept": value_concept or concept(AJCC, value, value),
        "hasMember": [reference(url) for url in members or []],
    }
    return clean(resource)


PROCEDURE_STATUS = ("preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error",
                    "unknown")


def procedure(term: Terminology, patient_url: str, code: Translation, identifier_system: str,
              identifier_value: str, *, start: str | None, end: str | None = None, status: str = "completed",
              category: Translation | None = None, reason_url: str | None = None,
              laterality: str | None = None, note: str | None = None) -> dict[str, Any]:
    performed: dict[str, Any] = {}
    if start and end:
        performed["performedPeriod"] = {"start": start, "end": end}
    elif start:
        performed["performedDateTime"] = start
    body_site = None
    if laterality:
        code_value, display = LATERALITY[laterality]
        body_site = [{"extension": [{"url": LATERALITY_EXTENSION,
                                     "valueCodeableConcept": concept(SNOMED, code_value, display)}],
                      "text": display}]
    resource = {
        "resourceType": "Procedure",
        "identifier": [identifier(identifier_system, identifier_value)],
        "status": status,
        "category": term.concept(category, *PROCEDURE_SYSTEMS) if category else None,
        "code": term.concept(code, *PROCEDURE_SYSTEMS),
        "subject": reference(patient_url),
        "reasonReference": [reference(reason_url)] if reason_url else None,
        "bodySite": body_site,
        "note": [{"text": note}] if note else None,
        **performed,
    }
    return clean(resource)


def condition_key(mrn: str, diagnosis: list[Translation]) -> str:
    """The identity of a diagnosis: the patient and its ICD-10 code when it has one, so that a DG1 segment
    and a registry row for the same cancer (one coded in ICD-10, one locally) update one Condition."""
    for translation in diagnosis:
        for coding in (translation.source, *translation.targets):
            if coding.system == "icd-10":
                return f"{mrn}:icd-10:{coding.code}"
    source = diagnosis[0].source
    return f"{mrn}:{source.system}:{source.code}"
