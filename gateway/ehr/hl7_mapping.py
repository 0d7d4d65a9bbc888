"""HL7 v2 messages to FHIR R4 transaction Bundles: ADT (patients, visits, diagnoses, procedures, merges) and
ORU^R01 (results, TNM staging).

Pure functions: a parsed message, the terminology tables and the configuration in, a ``MappedMessage`` out.
Anything that cannot be mapped raises ``MappingError`` naming the segment and field, so the sender gets an
AE acknowledgement that says what to fix and nothing of the message is stored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gateway.ehr.clinical import (
    condition,
    condition_key,
    decimal_value,
    observation,
    procedure,
    quantity,
    staging_observation,
)
from gateway.ehr.hl7v2 import Message, Repetition, Segment
from gateway.ehr.resources import (
    ACT_CODE,
    TNM_CODES,
    EhrConfig,
    MappingError,
    TransactionBuilder,
    clean,
    hl7_date,
    hl7_datetime,
    identifier,
    reference,
)
from gateway.ehr.terminology import Coding, Terminology, Translation, ajcc_category

ADT_EVENTS = ("A01", "A03", "A04", "A05", "A08", "A28", "A31")
MERGE_EVENTS = ("A40",)
SUPPORTED: dict[str, tuple[str, ...]] = {"ADT": ADT_EVENTS + MERGE_EVENTS, "ORU": ("R01",)}

GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "N": "other", "U": "unknown"}
NAME_USE = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "A": "anonymous"}
# HL7 table 0004 patient class to v3 ActCode encounter class.
PATIENT_CLASS = {"E": ("EMER", "emergency"), "I": ("IMP", "inpatient encounter"), "O": ("AMB", "ambulatory"),
                 "P": ("PRENC", "pre-admission"), "R": ("AMB", "ambulatory"), "B": ("IMP", "inpatient encounter")}
ENCOUNTER_STATUS = {"A01": "in-progress", "A03": "finished", "A04": "in-progress", "A05": "planned"}
# DG1-6 diagnosis type (HL7 table 0052) to Condition.verificationStatus.
VERIFICATION = {"A": "provisional", "W": "provisional", "F": "confirmed", "P": "provisional"}
RESULT_STATUS = {"F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary", "I": "registered",
                 "X": "cancelled", "D": "entered-in-error", "W": "entered-in-error", "U": "final", "S": "preliminary",
                 "A": "preliminary"}
REPORT_STATUS = {"F": "final", "C": "corrected", "P": "preliminary", "X": "cancelled", "I": "registered",
                 "R": "partial", "S": "partial", "A": "partial", "O": "registered"}
NUMERIC_TYPES = ("NM", "SN")
TEXT_TYPES = ("ST", "TX", "FT")
CODED_TYPES = ("CE", "CWE", "CNE")
DATE_TYPES = ("DT", "TS", "DTM")


@dataclass
class MappedMessage:
    """What a message asks for: one transaction, then merges (source MRN, target MRN) for A40."""

    bundle: dict[str, Any] | None
    # (system, MRN) of the patient that goes away, and of the one that stays.
    merges: list[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=list)
    patients: list[tuple[str, str]] = field(default_factory=list)
    unmapped: list[Coding] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Resources written by type (a Patient created only if missing, as ORU does, is not counted)."""
        entries = (self.bundle or {}).get("entry", [])
        return dict(Counter(entry["resource"]["resourceType"] for entry in entries
                            if "ifNoneExist" not in entry["request"]))


class UnsupportedMessage(Exception):
    """A message type or trigger event this gateway does not take (AR with ``code``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def check_supported(message: Message) -> None:
    code, event = message.message_code, message.trigger_event
    if code not in SUPPORTED:
        raise UnsupportedMessage(f"message type {code} is not supported (supported: "
                                 f"{', '.join(f'{c}^{e}' for c in SUPPORTED for e in SUPPORTED[c])})", "200")
    if event not in SUPPORTED[code]:
        raise UnsupportedMessage(f"trigger event {code}^{event} is not supported (supported for {code}: "
                                 f"{', '.join(SUPPORTED[code])})", "201")


def map_message(message: Message, term: Terminology, config: EhrConfig) -> MappedMessage:
    check_supported(message)
    mapper = _Mapper(message, term, config)
    if message.message_code == "ORU":
        return mapper.oru()
    if message.trigger_event in MERGE_EVENTS:
        return mapper.merge()
    return mapper.adt()


class _Mapper:
    def __init__(self, message: Message, term: Terminology, config: EhrConfig) -> None:
        self.message = message
        self.term = term
        self.config = config
        self.builder = TransactionBuilder()
        self.unmapped: list[Coding] = []
        self.patients: list[tuple[str, str]] = []
        self.counters: Counter[str] = Counter()

    def _sequence(self, segment: Segment) -> int:
        self.counters[segment.name] += 1
        return self.counters[segment.name]

    def _result(self, merges: list[tuple[tuple[str, str], tuple[str, str]]] | None = None) -> MappedMessage:
        bundle = self.builder.bundle() if len(self.builder) else None
        return MappedMessage(bundle, merges or [], self.patients, self.unmapped)

    # --- values with their locations ---

    def _date(self, segment: Segment, number: int, sequence: int, what: str) -> str | None:
        try:
            return hl7_date(segment.get(number))
        except ValueError as exc:
            raise MappingError(f"{segment.name}-{number} ({what}): {exc}", segment.name, sequence, number,
                               code="102") from None

    def _datetime(self, segment: Segment, number: int, sequence: int, what: str) -> str | None:
        try:
            return hl7_datetime(segment.get(number), self.config.zone)
        except ValueError as exc:
            raise MappingError(f"{segment.name}-{number} ({what}): {exc}", segment.name, sequence, number,
                               code="102") from None

    def _translate(self, repetition: Repetition, context: str, alternate: bool = False) -> Translation | None:
        first = 4 if alternate else 1
        code = repetition.get(first).strip()
        if not code:
            return None
        system = self.term.system_for_hl7_name(repetition.get(first + 2), context)
        translation = self.term.translate(system, code, repetition.get(first + 1))
        if not translation.mapped:
            self.unmapped.append(translation.source)
        return translation

    def _coded(self, segment: Segment, number: int, sequence: int, context: str, what: str,
               required: bool = True) -> list[Translation]:
        repetitions = segment.repetitions(number)
        if not repetitions or repetitions[0].empty:
            if required:
                raise MappingError(f"{segment.name}-{number} ({what}) is required", segment.name, sequence, number,
                                   code="101")
            return []
        out = []
        for alternate in (False, True):
            translation = self._translate(repetitions[0], context, alternate)
            if translation is not None:
                out.append(translation)
        if not out and required:
            raise MappingError(f"{segment.name}-{number} ({what}) has no code in component 1", segment.name,
                               sequence, number, 1, code="101")
        return out

    # --- patients and visits ---

    def _mrn(self, segment: Segment, number: int, sequence: int) -> tuple[str, str]:
        """The identifier system and the MRN of a patient identifier list (CX)."""
        repetitions = [r for r in segment.repetitions(number) if r.get(1).strip()]
        chosen = next((r for r in repetitions if r.get(5).upper() == "MR"), None) \
            or next((r for r in repetitions if r.get(5).upper() in ("PI", "PT")), None) \
            or (repetitions[0] if repetitions else None)
        if chosen is None and segment.name == "PID":
            # v2.3 senders sometimes put the hospital number in PID-2 (external patient ID) only.
            chosen = next((r for r in segment.repetitions(2) if r.get(1).strip()), None)
        if chosen is None:
            raise MappingError(f"{segment.name}-{number} (patient identifier list) holds no identifier",
                               segment.name, sequence, number, code="101")
        return self.config.patient_system(chosen.get(4, 1), chosen.get(4, 2)), chosen.get(1).strip()

    def _patient(self, pid: Segment, sequence: int) -> dict[str, Any]:
        system, mrn = self._mrn(pid, 3, sequence)
        names = []
        for repetition in pid.repetitions(5):
            family = repetition.get(1, 1)
            given = [part for part in (repetition.get(2), repetition.get(3)) if part and part != '""']
            if not family and not given:
                continue
            names.append({"use": NAME_USE.get(repetition.get(7).upper()), "family": family, "given": given,
                          "prefix": [repetition.get(5)] if repetition.get(5) else [],
                          "suffix": [repetition.get(4)] if repetition.get(4) else []})
        gender = pid.get(8).upper()
        if gender and gender not in GENDER:
            raise MappingError(f"PID-8 (administrative sex) {gender!r} is not in HL7 table 0001 "
                               f"({', '.join(GENDER)})", "PID", sequence, 8, code="103")
        addresses = []
        for repetition in pid.repetitions(11):
            if repetition.empty:
                continue
            kind = repetition.get(7).upper()
            addresses.append({"use": {"H": "home", "B": "work", "C": "temp"}.get(kind),
                              "line": [line for line in (repetition.get(1, 1), repetition.get(2)) if line],
                              "city": repetition.get(3), "state": repetition.get(4),
                              "postalCode": repetition.get(5), "country": repetition.get(6)})
        telecom = []
        for number, use in ((13, "home"), (14, "work")):
            for repetition in pid.repetitions(number):
                value = repetition.get(12) or repetition.get(1)
                if repetition.get(4) and repetition.get(3).upper() in ("INTERNET", "X.400", "NET"):
                    telecom.append({"system": "email", "value": repetition.get(4), "use": use})
                elif value:
                    telecom.append({"system": "phone", "value": value, "use": use})
        resource: dict[str, Any] = {
            "resourceType": "Patient",
            "identifier": [identifier(system, mrn)],
            "name": names, "gender": GENDER.get(gender),
            "birthDate": self._date(pid, 7, sequence, "date of birth"),
            "address": addresses, "telecom": telecom,
        }
        deceased_at = self._datetime(pid, 29, sequence, "patient death date and time")
        if deceased_at:
            resource["deceasedDateTime"] = deceased_at
        elif pid.get(30).upper() in ("Y", "N"):
            resource["deceasedBoolean"] = pid.get(30).upper() == "Y"
        if (system, mrn) not in self.patients:
            self.patients.append((system, mrn))
        return clean(resource)

    def _put_patient(self, pid: Segment, sequence: int) -> tuple[str, str]:
        """The MRN and the fullUrl of a Patient written from PID (created or replaced)."""
        patient = self._patient(pid, sequence)
        system, mrn = patient["identifier"][0]["system"], patient["identifier"][0]["value"]
        return mrn, self.builder.put(patient, system, mrn)

    def _ensure_patient(self, pid: Segment, sequence: int) -> tuple[str, str]:
        """The MRN and the fullUrl of a Patient created from PID unless it exists (results do not rewrite
        demographics: ADT messages own them)."""
        patient = self._patient(pid, sequence)
        system, mrn = patient["identifier"][0]["system"], patient["identifier"][0]["value"]
        return mrn, self.builder.ensure(patient, system, mrn)

    def _encounter(self, pv1: Segment, sequence: int, mrn: str, patient_url: str) -> str | None:
        patient_class = pv1.get(2).upper()
        if not patient_class or patient_class == "N":  # "not applicable": a person update, no visit
            return None
        admitted = self._datetime(pv1, 44, sequence, "admit date/time")
        discharged = self._datetime(pv1, 45, sequence, "discharge date/time")
        visit = pv1.get(19).strip()
        if not visit:
            if not admitted:
                return None  # nothing to tell this visit from the next one by; no Encounter rather than duplicates
            visit = f"{mrn}:{pv1.get(44).strip()}"
        event = self.message.trigger_event
        status = ENCOUNTER_STATUS.get(event) or ("finished" if discharged else "in-progress")
        code, display = PATIENT_CLASS.get(patient_class, (patient_class, ""))
        system = ACT_CODE if patient_class in PATIENT_CLASS else "http://terminology.hl7.org/CodeSystem/v2-0004"
        location = pv1.repetitions(3)
        where = "/".join(part for part in (location[0].get(c) for c in (4, 1, 2, 3)) if part) if location else ""
        attending = pv1.repetitions(7)
        doctor = " ".join(p for p in (attending[0].get(6), attending[0].get(3), attending[0].get(2, 1)) if p) \
            if attending else ""
        resource = clean({
            "resourceType": "Encounter",
            "identifier": [identifier(self.config.identifier_system("encounter"), visit)],
            "status": status,
            "class": {"system": system, "code": code, **({"display": display} if display else {})},
            "subject": reference(patient_url),
            "period": {"start": admitted, "end": discharged},
            "location": [{"location": {"display": where}}] if where else [],
            "participant": [{"individual": {"display": doctor}}] if doctor else [],
        })
        return self.builder.put(resource, self.config.identifier_system("encounter"), visit)

    def _conditions(self, segments: list[Segment], mrn: str, patient_url: str, encounter_url: str | None) -> None:
        for dg1 in segments:
            sequence = self._sequence(dg1)
            diagnosis = self._coded(dg1, 3, sequence, "diagnosis", "diagnosis code")
            key = dg1.get(20).strip() or condition_key(mrn, diagnosis)
            kind = dg1.get(6).upper()
            recorded = self._datetime(dg1, 5, sequence, "diagnosis date/time")
            resource = condition(self.term, patient_url, diagnosis, self.config.identifier_system("condition"), key,
                                 recorded=recorded, onset=recorded, verification=VERIFICATION.get(kind, "confirmed"),
                                 encounter_url=encounter_url)
            self.builder.put(resource, self.config.identifier_system("condition"), key)

    def _procedures(self, segments: list[Segment], mrn: str, patient_url: str) -> None:
        for pr1 in segments:
            sequence = self._sequence(pr1)
            codes = self._coded(pr1, 3, sequence, "procedure", "procedure code")
            start = self._datetime(pr1, 5, sequence, "procedure date/time")
            key = pr1.get(19).strip() or f"{mrn}:{codes[0].source.system}:{codes[0].source.code}:{pr1.get(5)}"
            resource = procedure(self.term, patient_url, codes[0], self.config.identifier_system("procedure"), key,
                                 start=start)
            self.builder.put(resource, self.config.identifier_system("procedure"), key)

    # --- message kinds ---

    def adt(self) -> MappedMessage:
        pid = self.message.first("PID")
        if pid is None:
            raise MappingError("ADT message without a PID segment", "PID", code="100")
        sequence = self._sequence(pid)
        mrn, patient_url = self._put_patient(pid, sequence)
        pv1 = self.message.first("PV1")
        encounter_url = self._encounter(pv1, self._sequence(pv1), mrn, patient_url) if pv1 is not None else None
        self._conditions(self.message.all("DG1"), mrn, patient_url, encounter_url)
        self._procedures(self.message.all("PR1"), mrn, patient_url)
        return self._result()

    def merge(self) -> MappedMessage:
        merges: list[tuple[tuple[str, str], tuple[str, str]]] = []
        pid: Segment | None = None
        pid_sequence = 0
        for segment in self.message.segments[1:]:
            if segment.name == "PID":
                pid, pid_sequence = segment, self._sequence(segment)
            elif segment.name == "MRG":
                sequence = self._sequence(segment)
                if pid is None:
                    raise MappingError("MRG segment without the PID of the surviving patient before it", "MRG",
                                       sequence, code="100")
                self._put_patient(pid, pid_sequence)
                target = self.patients[-1]
                source = self._mrn(segment, 1, sequence)
                if source == target:
                    raise MappingError(f"MRG-1 names the surviving patient {target[1]} itself", "MRG", sequence, 1,
                                       code="205")
                merges.append((source, target))
                pid = None
        if not merges:
            raise MappingError("A40 message without a PID/MRG pair", "MRG", code="100")
        return self._result(merges)

    def oru(self) -> MappedMessage:
        patient_url: str | None = None
        mrn = ""
        encounter_url: str | None = None
        report: dict[str, Any] | None = None
        last_observation: dict[str, Any] | None = None
        for segment in self.message.segments[1:]:
            name = segment.name
            if name == "PID":
                sequence = self._sequence(segment)
                mrn, patient_url = self._ensure_patient(segment, sequence)
                encounter_url, report, last_observation = None, None, None
            elif name == "PV1" and patient_url is not None:
                encounter_url = self._encounter(segment, self._sequence(segment), mrn, patient_url)
            elif name == "OBR":
                sequence = self._sequence(segment)
                if patient_url is None:
                    raise MappingError("OBR before any PID segment", "OBR", sequence, code="100")
                report = self._report(segment, sequence, patient_url, encounter_url)
                last_observation = None
            elif name == "OBX":
                sequence = self._sequence(segment)
                if patient_url is None or report is None:
                    raise MappingError("OBX outside an OBR group", "OBX", sequence, code="100")
                last_observation = self._observation(segment, sequence, patient_url, encounter_url, report)
            elif name == "NTE":
                comment = "\n".join(r.component_text(1) for r in segment.repetitions(3) if not r.empty)
                if comment and last_observation is not None:
                    last_observation.setdefault("note", []).append({"text": comment})
                elif comment and report is not None:
                    resource = report["resource"]
                    resource["conclusion"] = "\n".join(filter(None, [resource.get("conclusion"), comment]))
        if not self.patients:
            raise MappingError("ORU message without a PID segment", "PID", code="100")
        return self._result()

    def _report(self, obr: Segment, sequence: int, patient_url: str, encounter_url: str | None) -> dict[str, Any]:
        order = obr.get(3) or obr.get(2)
        if not order:
            raise MappingError("OBR-3 (filler order number) or OBR-2 (placer order number) is required", "OBR",
                               sequence, 3, code="101")
        codes = self._coded(obr, 4, sequence, "observation", "universal service identifier")
        effective = self._datetime(obr, 7, sequence, "observation date/time")
        issued_text = obr.get(22)
        issued = self._datetime(obr, 22, sequence, "results report date/time") if len(issued_text) >= 12 else None
        status_flag = obr.get(25).upper()
        if status_flag and status_flag not in REPORT_STATUS:
            raise MappingError(f"OBR-25 (result status) {status_flag!r} is not in HL7 table 0123", "OBR", sequence, 25,
                               code="103")
        system = self.config.identifier_system("report")
        resource: dict[str, Any] = {
            "resourceType": "DiagnosticReport",
            "identifier": [identifier(system, order)],
            "status": REPORT_STATUS.get(status_flag, "final"),
            "code": self.term.concept(codes[0], "loinc", "snomed"),
            "subject": reference(patient_url),
            "encounter": reference(encounter_url) if encounter_url else None,
            "effectiveDateTime": effective,
            "issued": issued,
            "result": [],
        }
        url = self.builder.put(resource, system, order)
        return {"url": url, "order": order, "resource": resource, "effective": effective}

    def _observation(self, obx: Segment, sequence: int, patient_url: str, encounter_url: str | None,
                     report: dict[str, Any]) -> dict[str, Any]:
        value_type = obx.get(2).upper()
        codes = self._coded(obx, 3, sequence, "observation", "observation identifier")
        code = codes[0]
        status_flag = obx.get(11).upper()
        if status_flag and status_flag not in RESULT_STATUS:
            raise MappingError(f"OBX-11 (observation result status) {status_flag!r} is not in HL7 table 0085", "OBX",
                               sequence, 11, code="103")
        status = RESULT_STATUS.get(status_flag, "final")
        effective = self._datetime(obx, 14, sequence, "date/time of the observation") or report["effective"]
        key = f"{report['order']}:{code.source.system}:{code.source.code}"
        if obx.get(4):
            key += f":{obx.get(4)}"
        system = self.config.identifier_system("observation")
        loinc = {target.code for target in code.targets if target.system == "loinc"}
        if code.source.system == "loinc":
            loinc.add(code.source.code)
        staging_axis = next((TNM_CODES[c] for c in loinc if c in TNM_CODES), None)
        if staging_axis is not None:
            pathological = any(c in loinc for c in ("21899-0", "21900-6", "21901-4", "21902-2"))
            value_concept, value_code = self._staging_value(obx, sequence, value_type, staging_axis, pathological)
            resource = staging_observation(patient_url, staging_axis, value_code, system, key, effective=effective,
                                           pathological=pathological, value_concept=value_concept, status=status)
        else:
            resource = observation(self.term, patient_url, code, system, key,
                                   value=self._value(obx, sequence, value_type), effective=effective, status=status,
                                   reference_range=self._range(obx), interpretation=obx.get(8),
                                   encounter_url=encounter_url)
        url = self.builder.put(resource, system, key)
        report["resource"]["result"].append(reference(url))
        return resource

    def _staging_value(self, obx: Segment, sequence: int, value_type: str, axis: str,
                       pathological: bool) -> tuple[dict[str, Any] | None, str]:
        """The AJCC code of a staging result, or a concept when it came coded in another standard."""
        value = obx.repetitions(5)
        if not value or value[0].empty:
            raise MappingError("OBX-5 (observation value) is empty", "OBX", sequence, 5, code="101")
        first = value[0]
        raw = first.get(1).strip()
        if value_type in CODED_TYPES:
            system = self.term.system_for_hl7_name(first.get(3), "staging")
            translation = self.term.translate(system, raw, first.get(2))
            ajcc = ([translation.source] if system == "ajcc" else []) + translation.targets_in("ajcc")
            if ajcc:
                return None, ajcc[0].code
            if translation.source_standard:  # coded in another standard (SNOMED CT): kept as it came
                return self.term.concept(translation), raw
        # A category written as AJCC writes it needs no table ("T2a" in a clinical T result is cT2a).
        normalized = ajcc_category(raw, axis, "p" if pathological else "c") if axis in "TNM" else None
        if normalized is None:
            raise MappingError(f"OBX-5 {raw!r} is not an AJCC {axis} category and the staging tables have no "
                               "translation for it", "OBX", sequence, 5, code="103")
        return None, normalized

    def _value(self, obx: Segment, sequence: int, value_type: str) -> dict[str, Any] | None:
        repetitions = obx.repetitions(5)
        if not repetitions or repetitions[0].empty:
            if obx.get(11).upper() in ("X", "D", "W", "I"):
                return None  # cancelled or not yet done: no value is expected
            raise MappingError("OBX-5 (observation value) is empty", "OBX", sequence, 5, code="101")
        first = repetitions[0]
        units = obx.repetitions(6)
        unit = (units[0].get(1) or units[0].get(2)) if units else ""
        try:
            if value_type == "NM":
                return {"valueQuantity": quantity(self.term, decimal_value(first.get(1)), unit)}
            if value_type == "SN":
                return self._structured_numeric(first, unit)
            if value_type in TEXT_TYPES:
                return {"valueString": "\n".join(r.component_text(1) for r in repetitions)}
            if value_type in CODED_TYPES:
                translation = self._translate(first, "observation-value")
                assert translation is not None
                return {"valueCodeableConcept": self.term.concept(translation)}
            if value_type in DATE_TYPES:
                return {"valueDateTime": hl7_datetime(first.get(1), self.config.zone)}
        except ValueError as exc:
            raise MappingError(f"OBX-5 (observation value, type {value_type}): {exc}", "OBX", sequence, 5,
                               code="102") from None
        raise MappingError(f"OBX-2 value type {value_type or '(empty)'} is not supported (supported: "
                           f"{', '.join(NUMERIC_TYPES + TEXT_TYPES + CODED_TYPES + DATE_TYPES)})", "OBX", sequence, 2,
                           code="102")

    def _structured_numeric(self, value: Repetition, unit: str) -> dict[str, Any]:
        # SN: comparator ^ number ^ separator/suffix ^ number: "<^5", "^10^-^20" (a range), "^1^:^128" (a ratio).
        comparator, first, separator, second = (value.get(i).strip() for i in (1, 2, 3, 4))
        if separator in ("-", ":", "/") and second:
            if separator == "-":
                low, high = quantity(self.term, decimal_value(first), unit), quantity(self.term,
                                                                                      decimal_value(second), unit)
                return {"valueRange": {"low": low, "high": high}}
            return {"valueRatio": {"numerator": {"value": decimal_value(first)},
                                   "denominator": {"value": decimal_value(second)}}}
        if comparator and comparator not in ("<", "<=", ">", ">=", "="):
            raise ValueError(f"SN comparator {comparator!r} is not one of <, <=, >, >=, =")
        return {"valueQuantity": quantity(self.term, decimal_value(first), unit,
                                          comparator if comparator not in ("", "=") else None)}

    def _range(self, obx: Segment) -> dict[str, Any] | None:
        text = obx.get(7).strip()
        if not text:
            return None
        units = obx.repetitions(6)
        unit = (units[0].get(1) or units[0].get(2)) if units else ""
        low, dash, high = text.partition("-")
        try:
            if dash and low.strip() and high.strip():
                return {"low": quantity(self.term, decimal_value(low), unit),
                        "high": quantity(self.term, decimal_value(high), unit), "text": text}
            if text[:1] in "<>":
                bound = quantity(self.term, decimal_value(text.lstrip("<>=")), unit)
                return {"high" if text[0] == "<" else "low": bound, "text": text}
        except ValueError:
            pass
        return {"text": text}
