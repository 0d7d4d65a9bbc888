"""Building FHIR R4 resources and transaction Bundles from EHR data: identity, dates, references.

Patients are identified by their MRN (``Patient.identifier`` in the configured system); every other resource
carries an identifier derived from its source (a visit number, a filler order number, or the patient and the
code), written with a conditional update (``PUT Type?identifier=system|value``) so that a message or a file
sent twice updates what it wrote the first time instead of duplicating it.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.config import ConfigError, Settings

# The FHIR plug-in's default too: DICOM PatientIDs and EHR MRNs meet in one Patient.
DEFAULT_MRN_SYSTEM = "urn:gateway:mrn"
DEFAULT_IDENTIFIER_BASE = "urn:eucaim-gateway:ehr"
_NAMESPACE = uuid.UUID("6f0f3f4e-5a43-4d4a-9f1e-0e8b9a3c2d11")

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
HISTOLOGY_EXTENSION = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
LATERALITY_EXTENSION = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-laterality-qualifier"
LATERALITY = {"left": ("7771000", "Left"), "right": ("24028007", "Right"), "bilateral": ("51440002", "Bilateral")}
AJCC = "http://cancerstaging.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"

# TNM staging Observations (LOINC): (clinical, pathological) code per axis.
TNM_LOINC = {
    "T": (("21905-5", "Primary tumor.clinical Cancer"), ("21899-0", "Primary tumor.pathology Cancer")),
    "N": (("21906-3", "Regional lymph nodes.clinical Cancer"), ("21900-6", "Regional lymph nodes.pathology Cancer")),
    "M": (("21907-1", "Distant metastases.clinical Cancer"), ("21901-4", "Distant metastases.pathology Cancer")),
    "stage": (("21908-9", "Stage group.clinical Cancer"), ("21902-2", "Stage group.pathology Cancer")),
}
TNM_CODES = {code: axis for axis, pair in TNM_LOINC.items() for code, _ in pair}


class MappingError(ValueError):
    """Source data that cannot be turned into FHIR; where it is and an HL7 error code (table 0357)."""

    def __init__(self, message: str, segment: str = "", sequence: int = 1, field_number: int | None = None,
                 component: int | None = None, code: str = "207") -> None:
        super().__init__(message)
        self.segment = segment
        self.sequence = sequence
        self.field_number = field_number
        self.component = component
        self.code = code

    @property
    def location(self) -> str:
        if not self.segment:
            return ""
        parts = [self.segment]
        if self.field_number is not None:
            parts.append(str(self.field_number))
            if self.component is not None:
                parts.append(str(self.component))
        return "-".join(parts)


@dataclass(frozen=True)
class EhrConfig:
    mrn_system: str = DEFAULT_MRN_SYSTEM
    identifier_base: str = DEFAULT_IDENTIFIER_BASE
    # HL7 v2 and CSV times without an offset are local times of the hospital; FHIR needs the offset.
    timezone: str = ""
    default_charset: str = "utf-8"
    # Assigning authority -> identifier system, shared with the FHIR plug-in's [fhir] issuers (DICOM
    # IssuerOfPatientID), so that PID-3 "12345^^^HULA^MR" and a study of PatientID 12345, issuer HULA, agree.
    issuers: tuple[tuple[str, str], ...] = ()

    def patient_system(self, *authorities: str) -> str:
        """The identifier system of an MRN assigned by one of ``authorities`` (namespace, universal id)."""
        table = dict(self.issuers)
        for authority in authorities:
            if authority.strip() in table:
                return table[authority.strip()]
        for authority in authorities:
            if re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))+", authority.strip()):
                return f"urn:oid:{authority.strip()}"
        return self.mrn_system

    def identifier_system(self, kind: str) -> str:
        return f"{self.identifier_base}:{kind}"

    @property
    def zone(self) -> dt.tzinfo | None:
        """The configured zone; None: this machine's (with its summer time rules, via ``astimezone``)."""
        return ZoneInfo(self.timezone) if self.timezone else None

    @classmethod
    def from_settings(cls, settings: Settings) -> EhrConfig:
        ehr = settings.section("ehr")
        fhir = settings.section("fhir")
        known = {"mrn_system", "identifier_base", "timezone", "default_charset", "mappings_dir", "batch_size"}
        unknown = set(ehr) - known
        if unknown:
            raise ConfigError(f"[ehr]: unknown keys {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        issuers = fhir.get("issuers") or {}
        if not isinstance(issuers, dict):
            raise ConfigError("[fhir] issuers must be a table of issuer = \"system\"")
        config = cls(mrn_system=str(ehr.get("mrn_system") or fhir.get("mrn_system") or DEFAULT_MRN_SYSTEM),
                     issuers=tuple(sorted((str(k), str(v)) for k, v in issuers.items())),
                     identifier_base=str(ehr.get("identifier_base") or DEFAULT_IDENTIFIER_BASE),
                     timezone=str(ehr.get("timezone") or ""), default_charset=str(ehr.get("default_charset")
                                                                                   or "utf-8"))
        if config.timezone:
            try:
                ZoneInfo(config.timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ConfigError(f"[ehr] timezone {config.timezone!r} is not an IANA time zone") from exc
        return config


def search_token(system: str, value: str) -> str:
    """``system|value`` for a token search, with FHIR's search escapes for the value."""
    escaped = value.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")
    return f"{system}|{escaped}"


def conditional_url(resource_type: str, system: str, value: str) -> str:
    return f"{resource_type}?identifier={quote(search_token(system, value), safe=':/|')}"


def full_url(resource_type: str, system: str, value: str) -> str:
    # Derived from the identity, so one Bundle names one resource once and a rerun builds the same Bundle.
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{resource_type}|{system}|{value}')}"


@dataclass
class TransactionBuilder:
    """Entries of one transaction Bundle; a resource with the same identity is added once (the last wins)."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def put(self, resource: dict[str, Any], system: str, value: str) -> str:
        """Conditional update: create it, or replace the one with this identifier."""
        url = full_url(resource["resourceType"], system, value)
        self.entries[url] = {"fullUrl": url, "resource": resource,
                             "request": {"method": "PUT",
                                         "url": conditional_url(resource["resourceType"], system, value)}}
        return url

    def ensure(self, resource: dict[str, Any], system: str, value: str) -> str:
        """Conditional create: create it unless one with this identifier exists (then refer to that one)."""
        url = full_url(resource["resourceType"], system, value)
        if url not in self.entries:
            self.entries[url] = {"fullUrl": url, "resource": resource,
                                 "request": {"method": "POST", "url": resource["resourceType"],
                                             "ifNoneExist": f"identifier={search_token(system, value)}"}}
        return url

    def __len__(self) -> int:
        return len(self.entries)

    def written_types(self) -> list[str]:
        """Resource types this Bundle writes: conditional creates of a patient known only by MRN not counted."""
        return [entry["resource"]["resourceType"] for entry in self.entries.values()
                if "ifNoneExist" not in entry["request"]]

    def bundle(self) -> dict[str, Any]:
        # Patients first: a server that resolves conditional creates in order finds them before their users.
        entries = sorted(self.entries.values(), key=lambda e: e["resource"]["resourceType"] != "Patient")
        return {"resourceType": "Bundle", "type": "transaction",
                "entry": [{**entry, "resource": clean(entry["resource"])} for entry in entries]}


def identifier(system: str, value: str) -> dict[str, str]:
    return {"system": system, "value": value}


def reference(url: str, display: str = "") -> dict[str, str]:
    out = {"reference": url}
    if display:
        out["display"] = display
    return out


def patient_stub(config: EhrConfig, mrn: str) -> dict[str, Any]:
    """The smallest Patient for a conditional create: what a lab file knows of a patient is the MRN."""
    return {"resourceType": "Patient", "identifier": [identifier(config.mrn_system, mrn)]}


def concept(system: str, code: str, display: str = "") -> dict[str, Any]:
    coding: dict[str, str] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding], **({"text": display} if display else {})}


def clean(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without empty values (FHIR forbids empty strings, arrays and objects)."""

    def prune(value: Any) -> Any:
        if isinstance(value, dict):
            pruned = {k: prune(v) for k, v in value.items()}
            return {k: v for k, v in pruned.items() if v not in (None, "", [], {})}
        if isinstance(value, list):
            items = [prune(v) for v in value]
            return [v for v in items if v not in (None, "", [], {})]
        return value

    return prune(resource)


# --- Dates ---------------------------------------------------------------------------------------------

_HL7_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")


def hl7_date(text: str) -> str | None:
    """An HL7 DT/DTM/TS as a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD); None when empty; ValueError if invalid."""
    text = text.strip()
    if not text:
        return None
    match = _HL7_DTM.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an HL7 date (YYYY[MM[DD]]...)")
    year, month, day = match.group(1), match.group(2), match.group(3)
    _check_date(year, month, day, text)
    return "-".join(part for part in (year, month, day) if part)


def hl7_datetime(text: str, zone: dt.tzinfo | None) -> str | None:
    """An HL7 DTM/TS as a FHIR dateTime; a time without an offset is read in ``zone``."""
    text = text.strip()
    if not text:
        return None
    match = _HL7_DTM.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an HL7 date/time (YYYY[MM[DD[HH[MM[SS]]]]][+/-ZZZZ])")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    _check_date(year, month, day, text)
    if hour is None:
        return "-".join(part for part in (year, month, day) if part)
    if day is None:
        raise ValueError(f"{text!r}: a time needs a full date")
    moment = dt.datetime(int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0),
                         min(round(float(fraction) * 1_000_000), 999_999) if fraction else 0)
    if offset:
        sign = 1 if offset[0] == "+" else -1
        moment = moment.replace(tzinfo=dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]),
                                                                       minutes=int(offset[3:5]))))
    else:
        moment = _localize(moment, zone)
    return moment.isoformat(timespec="milliseconds" if fraction else "seconds")


def _localize(moment: dt.datetime, zone: dt.tzinfo | None) -> dt.datetime:
    return moment.replace(tzinfo=zone) if zone is not None else moment.astimezone()


def _check_date(year: str, month: str | None, day: str | None, text: str) -> None:
    try:
        dt.date(int(year), int(month or 1), int(day or 1))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date: {exc}") from None


def parse_local_date(text: str, fmt: str, zone: dt.tzinfo | None, with_time: bool) -> str:
    """A date (or date and time) written with a ``strptime`` format as a FHIR date (or dateTime)."""
    try:
        moment = dt.datetime.strptime(text.strip(), fmt)
    except ValueError as exc:
        raise ValueError(f"{text!r} does not match the date format {fmt!r}") from exc
    if not with_time:
        return moment.date().isoformat()
    if moment.tzinfo is None:
        moment = _localize(moment, zone)
    return moment.isoformat(timespec="seconds")
