"""Code systems and the translation of local codes to standard ones, driven by the tables in ``mappings/``.

``mappings/code_systems.toml`` names every code system (a short key, its FHIR URI, what HL7 v2 senders call it,
whether it is a standard terminology or a hospital's local one); ``mappings/codes/*.csv`` hold the translations
(``source_system,source_code,target_system,target_code,target_display``, systems by key; one source code may
have several targets, such as an ICD-10 code and the ICD-O-3 morphology of a local diagnosis code);
``mappings/units.csv`` turns the units senders write into UCUM. A hospital adds its codes by editing these
files. A local code with no translation is kept as it came, its display as the concept's text, and shows up in
``gateway mappings coverage``.
"""

from __future__ import annotations

import csv
import re
import tomllib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UCUM = "http://unitsofmeasure.org"

# Where, in the resources this plug-in writes, coded values sit (for the coverage report).
CODED_PATHS: dict[str, tuple[str, ...]] = {
    "Condition": ("code", "bodySite"),
    "Observation": ("code", "valueCodeableConcept"),
    "Procedure": ("code", "category"),
    "DiagnosticReport": ("code",),
}


class MappingTableError(ValueError):
    """A mapping table cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class CodeSystem:
    key: str
    uri: str
    title: str
    standard: bool
    hl7v2_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Coding:
    system: str   # key in the registry
    code: str
    display: str = ""


@dataclass(frozen=True)
class Translation:
    """A source code and the standard codes it stands for (none when it is unmapped and local)."""

    source: Coding
    source_standard: bool
    targets: tuple[Coding, ...]

    @property
    def mapped(self) -> bool:
        return self.source_standard or bool(self.targets)

    def targets_in(self, *systems: str) -> list[Coding]:
        return [target for target in self.targets if target.system in systems]


@dataclass
class Terminology:
    systems: dict[str, CodeSystem]
    # Which local system a code belongs to when its sender names none (or only "L"/"99zzz"), by use.
    contexts: dict[str, str]
    tables: dict[tuple[str, str], tuple[Coding, ...]]
    units: dict[str, str]  # as written (case-folded) -> UCUM code
    source: Path | None = None
    by_uri: dict[str, CodeSystem] = field(default_factory=dict)
    by_hl7_name: dict[str, CodeSystem] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_uri = {}
        for system in self.systems.values():
            self.by_uri.setdefault(system.uri, system)  # ICD-O-3 topography and morphology share a URI
        self.by_hl7_name = {name.upper(): system for system in self.systems.values() for name in system.hl7v2_names}

    def system(self, key: str) -> CodeSystem:
        try:
            return self.systems[key]
        except KeyError:
            raise MappingTableError(f"unknown code system {key!r} (known: {', '.join(sorted(self.systems))})") \
                from None

    def context_system(self, context: str) -> str:
        try:
            return self.contexts[context]
        except KeyError:
            raise MappingTableError(f"code_systems.toml [contexts] has no {context!r} entry") from None

    def system_for_hl7_name(self, name: str, context: str) -> str:
        """The key of the system an HL7 v2 coding-system name stands for; local names fall to the context's."""
        found = self.by_hl7_name.get(name.strip().upper())
        if found is not None:
            return found.key
        return self.context_system(context)

    def translate(self, system: str, code: str, display: str = "") -> Translation:
        code_system = self.system(system)
        code = code.strip()
        targets = self.tables.get((system, _fold(code_system, code)), ())
        return Translation(Coding(system, code, display.strip()), code_system.standard, targets)

    def fhir_coding(self, coding: Coding) -> dict[str, Any]:
        out: dict[str, Any] = {"system": self.system(coding.system).uri, "code": coding.code}
        if coding.display:
            out["display"] = coding.display
        return out

    def concept(self, translation: Translation, *target_systems: str) -> dict[str, Any]:
        """A CodeableConcept: the standard codes (of ``target_systems`` when given) first, the source's own
        coding kept beside them, the text from the source display (or the first target's)."""
        targets = translation.targets_in(*target_systems) if target_systems else list(translation.targets)
        codings = [self.fhir_coding(target) for target in targets]
        source = self.fhir_coding(translation.source)
        if source not in codings:
            codings.append(source)
        text = translation.source.display or next((t.display for t in targets if t.display), "") \
            or translation.source.code
        return {"coding": codings, "text": text}

    def ucum(self, unit: str) -> str | None:
        """The UCUM code of a unit as written, or None when the table does not know it."""
        return self.units.get(unit.strip().casefold())

    def is_local_uri(self, uri: str) -> bool:
        system = self.by_uri.get(uri)
        return system is not None and not system.standard


def _fold(system: CodeSystem, code: str) -> str:
    # Local codes are compared without case (exports differ in it); standard codes are case-sensitive.
    return code if system.standard else code.casefold()


def load_terminology(mappings_dir: Path) -> Terminology:
    """Read code_systems.toml, codes/*.csv and units.csv; MappingTableError says what is wrong where."""
    path = mappings_dir / "code_systems.toml"
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MappingTableError(f"{path} does not exist (set [ehr] mappings_dir)") from exc
    except tomllib.TOMLDecodeError as exc:
        raise MappingTableError(f"{path}: not valid TOML: {exc}") from exc
    systems: dict[str, CodeSystem] = {}
    for key, spec in (doc.get("systems") or {}).items():
        if not isinstance(spec, dict) or not isinstance(spec.get("uri"), str) or not spec["uri"]:
            raise MappingTableError(f"{path}: [systems.{key}] needs a uri")
        names = spec.get("hl7v2", [])
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise MappingTableError(f"{path}: [systems.{key}] hl7v2 must be a list of names")
        systems[key] = CodeSystem(key, spec["uri"], str(spec.get("title", key)), bool(spec.get("standard", False)),
                                  tuple(names))
    contexts = {str(k): str(v) for k, v in (doc.get("contexts") or {}).items()}
    for use, key in contexts.items():
        if key not in systems:
            raise MappingTableError(f"{path}: [contexts] {use} = {key!r} is not a system defined in [systems]")
    seen_names: dict[str, str] = {}
    for system in systems.values():
        for name in system.hl7v2_names:
            other = seen_names.setdefault(name.upper(), system.key)
            if other != system.key:
                raise MappingTableError(f"{path}: HL7 v2 name {name!r} is given to both {other!r} and {system.key!r}")
    tables: dict[tuple[str, str], list[Coding]] = {}
    for table in sorted((mappings_dir / "codes").glob("*.csv")):
        for line, row in _csv_rows(table, ("source_system", "source_code", "target_system", "target_code")):
            for column in ("source_system", "target_system"):
                if row[column] not in systems:
                    raise MappingTableError(f"{table}:{line}: {column} {row[column]!r} is not defined in "
                                            "code_systems.toml")
            if not row["source_code"] or not row["target_code"]:
                raise MappingTableError(f"{table}:{line}: source_code and target_code must not be empty")
            source_system = systems[row["source_system"]]
            target = Coding(row["target_system"], row["target_code"], row.get("target_display") or "")
            targets = tables.setdefault((source_system.key, _fold(source_system, row["source_code"])), [])
            if target not in targets:
                targets.append(target)
    units: dict[str, str] = {}
    units_path = mappings_dir / "units.csv"
    if units_path.exists():
        for line, row in _csv_rows(units_path, ("unit", "ucum")):
            if not row["ucum"]:
                raise MappingTableError(f"{units_path}:{line}: ucum must not be empty")
            units[row["unit"].casefold()] = row["ucum"]
            units.setdefault(row["ucum"].casefold(), row["ucum"])
    return Terminology(systems, contexts, {key: tuple(value) for key, value in tables.items()}, units, mappings_dir)


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        lines = (line for line in handle if line.strip() and not line.lstrip().startswith("#"))
        reader = csv.DictReader(lines)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise MappingTableError(f"{path}: header lacks {', '.join(missing)} (has {reader.fieldnames})")
        for number, row in enumerate(reader, start=2):
            yield number, {key: (value or "").strip() for key, value in row.items() if key is not None}


# --- Coverage ------------------------------------------------------------------------------------------

@dataclass
class SystemCoverage:
    key: str
    uri: str
    mapped: int = 0
    unmapped: int = 0
    unmapped_codes: Counter[tuple[str, str]] = field(default_factory=Counter)


def _concepts(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path in CODED_PATHS.get(resource.get("resourceType", ""), ()):
        value = resource.get(path)
        for concept in value if isinstance(value, list) else [value]:
            if isinstance(concept, dict):
                yield concept


def coverage(terminology: Terminology, resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per local code system: how many coded values have a standard translation and which codes have none.

    A value counts as mapped when its concept holds a coding of a standard system beside the local one.
    Quantities whose unit has no UCUM code count under ``ucum``.
    """
    systems: dict[str, SystemCoverage] = {}
    units = SystemCoverage("ucum", UCUM)
    for resource in resources:
        for concept in _concepts(resource):
            codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
            has_standard = any(not terminology.is_local_uri(c.get("system", "")) and c.get("system") in
                               terminology.by_uri for c in codings)
            for coding in codings:
                system = terminology.by_uri.get(coding.get("system", ""))
                if system is None or system.standard:
                    continue
                entry = systems.setdefault(system.key, SystemCoverage(system.key, system.uri))
                if has_standard:
                    entry.mapped += 1
                else:
                    entry.unmapped += 1
                    entry.unmapped_codes[(str(coding.get("code", "")),
                                          str(coding.get("display") or concept.get("text") or ""))] += 1
        quantity = resource.get("valueQuantity")
        if isinstance(quantity, dict) and (quantity.get("unit") or quantity.get("code")):
            if quantity.get("system") == UCUM and quantity.get("code"):
                units.mapped += 1
            else:
                units.unmapped += 1
                units.unmapped_codes[(str(quantity.get("unit", "")), "")] += 1
    report = []
    for entry in [*sorted(systems.values(), key=lambda e: e.key), units]:
        if entry.key == "ucum" and not (entry.mapped or entry.unmapped):
            continue
        total = entry.mapped + entry.unmapped
        unmapped = []
        for (code, display), count in sorted(entry.unmapped_codes.items(), key=lambda item: (-item[1], item[0])):
            now = (terminology.ucum(code) is not None if entry.key == "ucum"
                   else terminology.translate(entry.key, code).mapped)
            unmapped.append({"code": code, "display": display, "count": count, "in_tables_now": now})
        report.append({"system": entry.key, "uri": entry.uri, "mapped": entry.mapped, "unmapped": entry.unmapped,
                       "coverage": round(entry.mapped / total, 4) if total else None, "unmapped_codes": unmapped})
    return {"systems": report}


_TNM = re.compile(r"^(?P<prefix>y?[cpra]|yc|yp)?(?P<axis>[TNM])(?P<category>.+)$", re.IGNORECASE)
# The categories of the AJCC 8th edition across sites: X, is (with its variants), 0-4 with a subdivision.
_CATEGORY = re.compile(r"^(x|is(\([a-z]+\))?|[0-4](a|b|c|d|e|mi|\(i[+-]\)|\(mol[+-]\))?[0-9]?)$")


def ajcc_category(value: str, axis: str, prefix: str = "c") -> str | None:
    """An AJCC TNM category as AJCC writes it ("cT2a", "pN1mi", "cM0") from a value with or without its
    prefix; None when the value is not one of the axis ``axis`` (T, N or M)."""
    match = _TNM.match(value.strip().replace(" ", ""))
    if not match or match["axis"].upper() != axis.upper():
        return None
    category = match["category"].lower()
    if not _CATEGORY.match(category):
        return None
    if category == "x":
        category = "X"
    return f"{(match['prefix'] or prefix).lower()}{axis.upper()}{category}"
