"""CSV extracts (patients, diagnoses, labs, treatments, staging) to FHIR, driven by a column mapping.

A mapping is a TOML file in ``mappings/csv/NAME.toml``::

    kind = "labs"                  # patients | diagnoses | labs | treatments | staging
    delimiter = ";"                # default ","
    encoding = "utf-8"             # default "utf-8-sig" (a BOM is skipped)
    date_format = "%d/%m/%Y"       # strptime formats of the file's dates and times
    datetime_format = "%d/%m/%Y %H:%M"

    [fields]
    mrn = "NHC"                                     # a field from one column
    code = { column = "PRUEBA", system = "local-lab", display_column = "DESCRIPCION" }
    sex = { column = "SEXO", values = { H = "male", M = "female" } }   # the file's values -> FHIR's
    status = { constant = "final" }                 # the same value for every row

The fields each kind knows are listed in ``KINDS``. A row that cannot be mapped (a required value missing, a
date in another format, a value outside ``values``) is reported with its line number and reason and stored
nowhere; the other rows are. Codes go through the terminology tables like those of HL7 v2 messages.
"""

from __future__ import annotations

import csv
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gateway.ehr.clinical import (
    PROCEDURE_STATUS,
    condition,
    condition_key,
    decimal_value,
    observation,
    procedure,
    quantity,
    staging_observation,
)
from gateway.ehr.resources import (
    LATERALITY,
    EhrConfig,
    TransactionBuilder,
    clean,
    identifier,
    parse_local_date,
    patient_stub,
)
from gateway.ehr.terminology import Coding, MappingTableError, Terminology, Translation, ajcc_category

GENDERS = ("male", "female", "other", "unknown")
VERIFICATION = ("confirmed", "provisional", "differential", "unconfirmed", "refuted", "entered-in-error")
OBSERVATION_STATUS = ("registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error",
                      "unknown")


@dataclass(frozen=True)
class FieldKind:
    required: bool = False
    type: str = "text"      # text | date | datetime | code | enum
    context: str = ""       # code fields: where local codes are looked up
    choices: tuple[str, ...] = ()


KINDS: dict[str, dict[str, FieldKind]] = {
    "patients": {
        "mrn": FieldKind(True), "family": FieldKind(), "given": FieldKind(), "birth_date": FieldKind(type="date"),
        "sex": FieldKind(type="enum", choices=GENDERS), "deceased_date": FieldKind(type="date"),
    },
    "diagnoses": {
        "mrn": FieldKind(True), "code": FieldKind(True, "code", "diagnosis"), "date": FieldKind(type="date"),
        "morphology": FieldKind(type="code", context="diagnosis"),
        "topography": FieldKind(type="code", context="diagnosis"),
        "laterality": FieldKind(type="enum", choices=tuple(LATERALITY)),
        "verification": FieldKind(type="enum", choices=VERIFICATION), "id": FieldKind(),
    },
    "labs": {
        "mrn": FieldKind(True), "code": FieldKind(True, "code", "observation"), "value": FieldKind(True),
        "unit": FieldKind(), "date": FieldKind(True, "datetime"), "reference_range": FieldKind(),
        "flag": FieldKind(), "status": FieldKind(type="enum", choices=OBSERVATION_STATUS), "id": FieldKind(),
    },
    "treatments": {
        "mrn": FieldKind(True), "code": FieldKind(True, "code", "procedure"),
        "type": FieldKind(type="code", context="procedure-category"), "start": FieldKind(True, "datetime"),
        "end": FieldKind(type="datetime"), "status": FieldKind(type="enum", choices=PROCEDURE_STATUS),
        "laterality": FieldKind(type="enum", choices=tuple(LATERALITY)), "note": FieldKind(), "id": FieldKind(),
    },
    "staging": {
        "mrn": FieldKind(True), "date": FieldKind(True, "date"), "t": FieldKind(), "n": FieldKind(),
        "m": FieldKind(), "stage_group": FieldKind(type="code", context="staging"),
        "type": FieldKind(type="enum", choices=("clinical", "pathological")), "id": FieldKind(),
    },
}


class RowError(ValueError):
    """One row that cannot be mapped; the message says which field and why."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    column: str | None
    constant: str | None
    values: dict[str, str]
    system: str | None
    display_column: str | None
    format: str | None


@dataclass(frozen=True)
class ColumnMapping:
    name: str
    kind: str
    fields: dict[str, FieldSpec]
    delimiter: str = ","
    encoding: str = "utf-8-sig"
    date_format: str = "%Y-%m-%d"
    datetime_format: str = "%Y-%m-%d %H:%M"
    source: Path | None = None

    @property
    def columns(self) -> set[str]:
        return {c for spec in self.fields.values() for c in (spec.column, spec.display_column) if c}


def mapping_names(mappings_dir: Path) -> list[str]:
    return sorted(path.stem for path in (mappings_dir / "csv").glob("*.toml"))


def load_mapping(mappings_dir: Path, name: str, term: Terminology) -> ColumnMapping:
    path = mappings_dir / "csv" / f"{name}.toml"
    if not path.exists():
        known = ", ".join(mapping_names(mappings_dir)) or "none"
        raise MappingTableError(f"there is no CSV mapping {name!r} ({path}; known: {known})")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise MappingTableError(f"{path}: not valid TOML: {exc}") from exc
    kind = doc.get("kind")
    if kind not in KINDS:
        raise MappingTableError(f"{path}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    known_fields = KINDS[kind]
    raw_fields = doc.get("fields")
    if not isinstance(raw_fields, dict):
        raise MappingTableError(f"{path}: a [fields] table is required")
    fields: dict[str, FieldSpec] = {}
    for name_, value in raw_fields.items():
        if name_ not in known_fields:
            raise MappingTableError(f"{path}: {kind} has no field {name_!r} (fields: {', '.join(known_fields)})")
        spec = {"column": value} if isinstance(value, str) else value
        if not isinstance(spec, dict) or not (spec.get("column") or spec.get("constant") is not None):
            raise MappingTableError(f"{path}: field {name_!r} needs a column or a constant")
        unknown = set(spec) - {"column", "constant", "values", "system", "display_column", "format"}
        if unknown:
            raise MappingTableError(f"{path}: field {name_!r} has unknown keys {', '.join(sorted(unknown))}")
        values = {str(k): str(v) for k, v in (spec.get("values") or {}).items()}
        kind_of_field = known_fields[name_]
        if kind_of_field.type == "enum":
            wrong = sorted(v for v in values.values() if v not in kind_of_field.choices)
            if wrong:
                raise MappingTableError(f"{path}: field {name_!r} maps to {wrong}, not one of "
                                        f"{', '.join(kind_of_field.choices)}")
        system = spec.get("system")
        if system is not None:
            term.system(str(system))  # raises for an unknown key
        fields[name_] = FieldSpec(name_, spec.get("column"), None if spec.get("constant") is None
                                  else str(spec["constant"]), values, system, spec.get("display_column"),
                                  spec.get("format"))
    missing = [n for n, f in known_fields.items() if f.required and n not in fields]
    if missing:
        raise MappingTableError(f"{path}: {kind} needs the fields {', '.join(missing)}")
    return ColumnMapping(name, kind, fields, str(doc.get("delimiter", ",")), str(doc.get("encoding", "utf-8-sig")),
                         str(doc.get("date_format", "%Y-%m-%d")), str(doc.get("datetime_format", "%Y-%m-%d %H:%M")),
                         path)


@dataclass
class MappedRow:
    line: int
    builder: TransactionBuilder
    unmapped: list[Coding] = field(default_factory=list)


class RowMapper:
    """Turns the rows of one file into resources; one instance per file."""

    def __init__(self, mapping: ColumnMapping, term: Terminology, config: EhrConfig) -> None:
        self.mapping = mapping
        self.term = term
        self.config = config

    def open(self, handle: TextIO) -> Iterator[tuple[int, dict[str, str]]]:
        """The rows of a file with their line numbers; a header lacking a mapped column is an error."""
        reader = csv.DictReader(handle, delimiter=self.mapping.delimiter)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        missing = sorted(self.mapping.columns - set(header))
        if missing:
            raise MappingTableError(f"the file lacks the columns {', '.join(missing)} that mapping "
                                    f"{self.mapping.name!r} reads (its columns: {', '.join(header)})")
        for row in reader:
            yield reader.line_num, {key: (value or "").strip() for key, value in row.items() if key is not None}

    # --- field values ---

    def _raw(self, row: dict[str, str], name: str) -> str:
        spec = self.mapping.fields.get(name)
        if spec is None:
            return ""
        value = row.get(spec.column, "") if spec.column else ""
        if not value and spec.constant is not None:
            value = spec.constant
        return value

    def text(self, row: dict[str, str], name: str) -> str:
        spec = self.mapping.fields.get(name)
        value = self._raw(row, name)
        kind = KINDS[self.mapping.kind][name]
        if kind.required and not value:
            raise RowError(f"{name} ({_where(spec)}) is empty")
        if spec is not None and spec.values and value:
            if value in spec.values:
                value = spec.values[value]
            elif kind.type == "enum" and value not in kind.choices:
                raise RowError(f"{name} ({_where(spec)}): {value!r} is not one of {', '.join(spec.values)}")
        if kind.type == "enum" and value and value not in kind.choices:
            raise RowError(f"{name} ({_where(spec)}): {value!r} is not one of {', '.join(kind.choices)}")
        return value

    def date(self, row: dict[str, str], name: str, with_time: bool = False) -> str | None:
        value = self.text(row, name)
        if not value:
            return None
        spec = self.mapping.fields[name]
        formats = [spec.format] if spec.format else [self.mapping.datetime_format, self.mapping.date_format] \
            if with_time else [self.mapping.date_format]
        for fmt in formats:
            try:
                return parse_local_date(value, fmt, self.config.zone, with_time and fmt != self.mapping.date_format)
            except ValueError:
                continue
        raise RowError(f"{name} ({_where(spec)}): {value!r} does not match the date format "
                       f"{' or '.join(repr(f) for f in formats)}")

    def code(self, row: dict[str, str], name: str, unmapped: list[Coding], default_system: str | None = None
             ) -> Translation | None:
        value = self.text(row, name)
        if not value:
            return None
        spec = self.mapping.fields[name]
        system = spec.system or default_system or self.term.context_system(KINDS[self.mapping.kind][name].context)
        display = row.get(spec.display_column, "") if spec.display_column else ""
        translation = self.term.translate(system, value, display)
        if not translation.mapped:
            unmapped.append(translation.source)
        return translation

    # --- rows ---

    def map_row(self, line: int, row: dict[str, str]) -> MappedRow:
        mapped = MappedRow(line, TransactionBuilder())
        mrn = self.text(row, "mrn")
        patient_url = self._patient(mapped.builder, row, mrn)
        handler = getattr(self, f"_{self.mapping.kind}")
        handler(mapped, row, mrn, patient_url)
        return mapped

    def _patient(self, builder: TransactionBuilder, row: dict[str, str], mrn: str) -> str:
        if self.mapping.kind != "patients":
            return builder.ensure(patient_stub(self.config, mrn), self.config.mrn_system, mrn)
        given = self.text(row, "given")
        resource = clean({
            "resourceType": "Patient",
            "identifier": [identifier(self.config.mrn_system, mrn)],
            "name": [{"use": "official", "family": self.text(row, "family"), "given": given.split() if given
                      else []}],
            "gender": self.text(row, "sex") or None,
            "birthDate": self.date(row, "birth_date"),
            "deceasedDateTime": self.date(row, "deceased_date"),
        })
        return builder.put(resource, self.config.mrn_system, mrn)

    def _patients(self, mapped: MappedRow, row: dict[str, str], mrn: str, patient_url: str) -> None:
        return None  # the Patient is the row

    def _diagnoses(self, mapped: MappedRow, row: dict[str, str], mrn: str, patient_url: str) -> None:
        code = self.code(row, "code", mapped.unmapped)
        assert code is not None
        diagnosis = [code]
        for name, system in (("morphology", "icd-o-3-morphology"), ("topography", "icd-o-3-topography")):
            extra = self.code(row, name, mapped.unmapped, default_system=system)
            if extra is not None:
                diagnosis.append(extra)
        key = self.text(row, "id") or condition_key(mrn, diagnosis)
        date = self.date(row, "date")
        system = self.config.identifier_system("condition")
        resource = condition(self.term, patient_url, diagnosis, system, key, recorded=date, onset=date,
                             verification=self.text(row, "verification") or "confirmed",
                             laterality=self.text(row, "laterality") or None, category="problem-list-item")
        mapped.builder.put(resource, system, key)

    def _labs(self, mapped: MappedRow, row: dict[str, str], mrn: str, patient_url: str) -> None:
        code = self.code(row, "code", mapped.unmapped)
        assert code is not None
        when = self.date(row, "date", with_time=True)
        raw_value = self.text(row, "value")
        unit = self.text(row, "unit")
        comparator = next((c for c in ("<=", ">=", "<", ">") if raw_value.startswith(c)), None)
        try:
            number = decimal_value(raw_value[len(comparator or ""):])
            value: dict[str, Any] = {"valueQuantity": quantity(self.term, number, unit, comparator)}
        except ValueError:
            value = {"valueString": raw_value}
        reference_range = None
        range_text = self.text(row, "reference_range")
        if range_text:
            low, dash, high = range_text.partition("-")
            try:
                reference_range = {"low": quantity(self.term, decimal_value(low), unit),
                                   "high": quantity(self.term, decimal_value(high), unit), "text": range_text} \
                    if dash else {"text": range_text}
            except ValueError:
                reference_range = {"text": range_text}
        key = self.text(row, "id") or f"{mrn}:{code.source.system}:{code.source.code}:{when}"
        system = self.config.identifier_system("observation")
        resource = observation(self.term, patient_url, code, system, key, value=value, effective=when,
                               status=self.text(row, "status") or "final", reference_range=reference_range,
                               interpretation=self.text(row, "flag"))
        mapped.builder.put(resource, system, key)

    def _treatments(self, mapped: MappedRow, row: dict[str, str], mrn: str, patient_url: str) -> None:
        code = self.code(row, "code", mapped.unmapped)
        assert code is not None
        category = self.code(row, "type", mapped.unmapped)
        start = self.date(row, "start", with_time=True)
        key = self.text(row, "id") or f"{mrn}:{code.source.system}:{code.source.code}:{start}"
        system = self.config.identifier_system("procedure")
        resource = procedure(self.term, patient_url, code, system, key, start=start,
                             end=self.date(row, "end", with_time=True), status=self.text(row, "status") or "completed",
                             category=category, laterality=self.text(row, "laterality") or None,
                             note=self.text(row, "note") or None)
        mapped.builder.put(resource, system, key)

    def _staging(self, mapped: MappedRow, row: dict[str, str], mrn: str, patient_url: str) -> None:
        date = self.date(row, "date")
        pathological = self.text(row, "type") == "pathological"
        prefix = "p" if pathological else "c"
        base = self.text(row, "id") or f"{mrn}:{date}:{'pathological' if pathological else 'clinical'}"
        system = self.config.identifier_system("observation")
        members = []
        for axis in ("T", "N", "M"):
            value = self.text(row, axis.lower())
            if not value:
                continue
            category = ajcc_category(value, axis, prefix)
            if category is None:
                raise RowError(f"{axis.lower()} ({_where(self.mapping.fields[axis.lower()])}): {value!r} is not an "
                               f"AJCC {axis} category")
            key = f"{base}:{axis}"
            members.append(mapped.builder.put(staging_observation(patient_url, axis, category, system, key,
                                                                  effective=date, pathological=pathological),
                                              system, key))
        group = self.code(row, "stage_group", mapped.unmapped)
        if group is not None:
            ajcc = ([group.source] if group.source.system == "ajcc" else []) + group.targets_in("ajcc")
            value_concept = None if ajcc else self.term.concept(group)
            key = f"{base}:stage"
            mapped.builder.put(staging_observation(patient_url, "stage", ajcc[0].code if ajcc else group.source.code,
                                                   system, key, effective=date, pathological=pathological,
                                                   members=members, value_concept=value_concept), system, key)
        elif not members:
            raise RowError("the row has no T, N, M or stage group value")


def _where(spec: FieldSpec | None) -> str:
    if spec is None:
        return "not mapped"
    return f"column {spec.column!r}" if spec.column else "constant"
