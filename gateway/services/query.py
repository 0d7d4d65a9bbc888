"""Attribute matching over the index (PS3.4 C.2.2.2): one matcher for QIDO-RS and C-FIND.

A query is parsed into typed match conditions first (so malformed values are refused before the database
is touched), then compiled to one SQL statement over the denormalised index. Results are built from the
precomputed attribute JSON of each level, so the cost of an answer does not grow with what it computes.

Searches run at the study, series and instance levels (QIDO-RS and C-FIND) and at the patient level, which
only C-FIND's Patient Root model asks for: it matches the ``patient`` table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import ColumnElement, Engine, and_, exists, func, or_, select
from sqlalchemy.sql import Select

from gateway.dicom import levels
from gateway.dicom.normalise import (
    fuzzy_query_words,
    normalise_date,
    normalise_time,
    person_name_match_key,
)
from gateway.dicom.tags import UnknownAttribute, describe, parse_attribute_path, tag_hex
from gateway.dicom.uids import is_valid_uid
from gateway.store.models import Instance, Patient, Series, Study, StudyModality

# The levels of the information model a search can run at; QIDO-RS uses the last three.
SearchLevel = Literal["patient", "study", "series", "instance"]
MatchKind = Literal["uid", "string", "pn", "date", "time", "int", "modalities"]


class InvalidQuery(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class MatchKey:
    level: SearchLevel
    column: Any
    kind: MatchKind
    fuzzy_column: Any = None


def _kw(keyword: str) -> int:
    return int(parse_attribute_path(keyword)[0])


MATCH_KEYS: dict[int, MatchKey] = {
    _kw("StudyInstanceUID"): MatchKey("study", Study.study_instance_uid, "uid"),
    _kw("PatientID"): MatchKey("study", Study.patient_id, "string"),
    _kw("IssuerOfPatientID"): MatchKey("study", Study.issuer, "string"),
    _kw("PatientName"): MatchKey("study", Study.patient_name_match, "pn", Study.patient_name_fuzzy),
    _kw("PatientBirthDate"): MatchKey("study", Study.patient_birth_date, "date"),
    _kw("PatientSex"): MatchKey("study", Study.patient_sex, "string"),
    _kw("StudyDate"): MatchKey("study", Study.study_date, "date"),
    _kw("StudyTime"): MatchKey("study", Study.study_time, "time"),
    _kw("AccessionNumber"): MatchKey("study", Study.accession_number, "string"),
    _kw("StudyID"): MatchKey("study", Study.study_id, "string"),
    _kw("StudyDescription"): MatchKey("study", Study.study_description, "string"),
    _kw("ReferringPhysicianName"): MatchKey("study", Study.referring_physician_match, "pn"),
    _kw("ModalitiesInStudy"): MatchKey("study", None, "modalities"),
    _kw("SeriesInstanceUID"): MatchKey("series", Series.series_instance_uid, "uid"),
    _kw("Modality"): MatchKey("series", Series.modality, "string"),
    _kw("SeriesNumber"): MatchKey("series", Series.series_number, "int"),
    _kw("SeriesDescription"): MatchKey("series", Series.series_description, "string"),
    _kw("BodyPartExamined"): MatchKey("series", Series.body_part_examined, "string"),
    _kw("SeriesDate"): MatchKey("series", Series.series_date, "date"),
    _kw("PerformedProcedureStepStartDate"): MatchKey("series", Series.pps_start_date, "date"),
    _kw("PerformedProcedureStepStartTime"): MatchKey("series", Series.pps_start_time, "time"),
    _kw("SOPInstanceUID"): MatchKey("instance", Instance.sop_instance_uid, "uid"),
    _kw("SOPClassUID"): MatchKey("instance", Instance.sop_class_uid, "uid"),
    _kw("InstanceNumber"): MatchKey("instance", Instance.instance_number, "int"),
}

# At the patient level the same attributes are matched against the patient table (one row per patient).
PATIENT_MATCH_KEYS: dict[int, MatchKey] = {
    _kw("PatientID"): MatchKey("patient", Patient.patient_id, "string"),
    _kw("IssuerOfPatientID"): MatchKey("patient", Patient.issuer, "string"),
    _kw("PatientName"): MatchKey("patient", Patient.patient_name_match, "pn"),
    _kw("PatientBirthDate"): MatchKey("patient", Patient.patient_birth_date, "date"),
    _kw("PatientSex"): MatchKey("patient", Patient.patient_sex, "string"),
}

STUDY_DATE = _kw("StudyDate")
LEVEL_ORDER: dict[SearchLevel, int] = {"patient": -1, "study": 0, "series": 1, "instance": 2}

NUMBER_OF_PATIENT_RELATED_STUDIES = _kw("NumberOfPatientRelatedStudies")
NUMBER_OF_PATIENT_RELATED_SERIES = _kw("NumberOfPatientRelatedSeries")
NUMBER_OF_PATIENT_RELATED_INSTANCES = _kw("NumberOfPatientRelatedInstances")

# What a patient-level answer may carry, read from the patient's first study (the one its row was made from).
PATIENT_LEVEL = levels.PATIENT_LEVEL | levels.COMMON
PATIENT_DEFAULTS = frozenset({
    levels.SPECIFIC_CHARACTER_SET, _kw("PatientName"), _kw("PatientID"), _kw("IssuerOfPatientID"),
    _kw("PatientBirthDate"), _kw("PatientSex"), NUMBER_OF_PATIENT_RELATED_STUDIES,
    NUMBER_OF_PATIENT_RELATED_SERIES, NUMBER_OF_PATIENT_RELATED_INSTANCES,
})


@dataclass
class Query:
    level: SearchLevel
    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    # Attributes the answer must carry: defaults, matching keys, includefield; None means "all".
    return_tags: set[int] | None = field(default_factory=set)
    limit: int | None = None
    offset: int = 0
    warnings: list[str] = field(default_factory=list)
    # A study search restricted by StudyDate is answered in date order: the date index then yields the
    # matches already sorted, so a page costs the same however many studies the range holds.
    by_study_date: bool = False


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.replace(",", "\\").split("\\") if v.strip()]


def _range_condition(column: Any, value: str, normalise: Any, name: str) -> ColumnElement[bool]:
    if "-" in value:
        low_text, _, high_text = value.partition("-")
        low = normalise(low_text) if low_text else ""
        high = normalise(high_text, upper=True) if high_text else ""
        if (low_text and not low) or (high_text and not high) or not (low_text or high_text):
            raise InvalidQuery(f"{name}: {value!r} is not a valid range")
        parts = []
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= high)
        return and_(column != "", *parts)
    if normalise is normalise_time:
        low, high = normalise_time(value), normalise_time(value, upper=True)
        if not low:
            raise InvalidQuery(f"{name}: {value!r} is not a valid time (HHMMSS.FFFFFF)")
        return and_(column >= low, column <= high)
    normalised = normalise(value)
    if not normalised:
        raise InvalidQuery(f"{name}: {value!r} is not a valid date (YYYYMMDD or a range YYYYMMDD-YYYYMMDD)")
    return column == normalised


def match_condition(tag: int, value: str, fuzzy: bool = False,
                    keys: Mapping[int, MatchKey] = MATCH_KEYS) -> ColumnElement[bool] | None:
    """SQL condition for one matching key; None for universal matching (empty value or '*')."""
    key = keys[tag]
    name = describe(tag)
    value = value.strip()
    if value in ("", "*"):
        return None
    column = key.column
    if key.kind == "uid":
        uids = _split_list(value)
        bad = [u for u in uids if not is_valid_uid(u)]
        if bad:
            raise InvalidQuery(f"{name}: {bad[0]!r} is not a valid UID (UID matching takes no wildcards)")
        return column.in_(uids) if len(uids) > 1 else column == uids[0]
    if key.kind == "string":
        if _has_wildcard(value):
            return column.like(_like_pattern(value), escape="\\")
        return column == value
    if key.kind == "pn":
        if fuzzy and key.fuzzy_column is not None:
            words = fuzzy_query_words(value)
            if not words:
                return None
            return and_(*(key.fuzzy_column.like("% " + _like_pattern(w) + "%", escape="\\") for w in words))
        value = person_name_match_key(value)
        if _has_wildcard(value):
            return column.like(_like_pattern(value), escape="\\")
        return column == value
    if key.kind == "date":
        return _range_condition(column, value, normalise_date, name)
    if key.kind == "time":
        return _range_condition(column, value, normalise_time, name)
    if key.kind == "int":
        try:
            return column == int(value)
        except ValueError as exc:
            raise InvalidQuery(f"{name}: {value!r} is not an integer") from exc
    if key.kind == "modalities":
        modalities = _split_list(value)
        conditions = [StudyModality.modality.like(_like_pattern(m), escape="\\") if _has_wildcard(m)
                      else StudyModality.modality == m for m in modalities]
        return exists().where(StudyModality.study_pk == Study.pk, or_(*conditions))
    raise AssertionError(key.kind)


CONTROL_PARAMETERS = {"includefield", "fuzzymatching", "limit", "offset"}


def parse_query(level: SearchLevel, params: Iterable[tuple[str, str]], *, max_results: int) -> Query:
    """Parse QIDO-RS query parameters (already percent-decoded) for a search at ``level``.

    C-FIND identifiers arrive in the same form (attribute=value pairs, return keys as includefield), so both
    protocols share this parser and the matcher behind it.
    """
    query = Query(level=level, limit=max_results)
    pairs = list(params)
    fuzzy = False
    for name, value in pairs:
        if name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise InvalidQuery(f"fuzzymatching: {value!r} must be true or false")
            fuzzy = value.lower() == "true"
    defaults = {"patient": PATIENT_DEFAULTS, "study": levels.STUDY_DEFAULTS, "series": levels.SERIES_DEFAULTS,
                "instance": levels.INSTANCE_DEFAULTS}
    match_keys = PATIENT_MATCH_KEYS if level == "patient" else MATCH_KEYS
    return_tags: set[int] = set(defaults[level])
    include_all = False
    for name, value in pairs:
        if name == "includefield":
            for token in value.split(","):
                token = token.strip()
                if token == "all":
                    include_all = True
                elif token:
                    try:
                        path = parse_attribute_path(token)
                    except UnknownAttribute as exc:
                        raise InvalidQuery(f"includefield: {exc}") from exc
                    return_tags.add(int(path[0]))
        elif name in ("limit", "offset"):
            try:
                number = int(value)
            except ValueError as exc:
                raise InvalidQuery(f"{name}: {value!r} is not a whole number") from exc
            if number < 0 or (name == "limit" and number == 0):
                raise InvalidQuery(f"{name}: must be {'positive' if name == 'limit' else 'zero or more'}")
            if name == "limit":
                query.limit = min(number, max_results)
            else:
                query.offset = number
        elif name == "fuzzymatching":
            continue
        else:
            try:
                path = parse_attribute_path(name)
            except UnknownAttribute as exc:
                raise InvalidQuery(f"unknown query parameter {name!r}: {exc}") from exc
            tag = int(path[0])
            return_tags.add(tag)
            key = match_keys.get(tag) if len(path) == 1 else None
            if key is None or LEVEL_ORDER[key.level] > LEVEL_ORDER[level]:
                query.warnings.append(f"matching on {describe(tag)} is not supported at the {level} level; "
                                      "the key was returned but not matched")
                continue
            condition = match_condition(tag, value, fuzzy, match_keys)
            if condition is not None:
                query.conditions.append(condition)
                query.by_study_date = query.by_study_date or tag == STUDY_DATE
    query.return_tags = None if include_all else return_tags
    return query


# -- running a query -------------------------------------------------------------------------------------

def _patient_statement() -> Select[Any]:
    related = select(Study.attributes_json).where(Study.patient_pk == Patient.pk)
    first_study_json = related.order_by(Study.pk).limit(1).correlate(Patient).scalar_subquery()
    num_series = (select(func.coalesce(func.sum(Study.num_series), 0)).where(Study.patient_pk == Patient.pk)
                  .correlate(Patient).scalar_subquery())
    num_instances = (select(func.coalesce(func.sum(Study.num_instances), 0)).where(Study.patient_pk == Patient.pk)
                     .correlate(Patient).scalar_subquery())
    return (select(Patient.pk, Patient.num_studies, first_study_json.label("study_json"),
                   num_series.label("num_series"), num_instances.label("num_instances"))
            .where(Patient.num_studies > 0).order_by(Patient.pk))


def _statement(query: Query, study_uid: str | None, series_uid: str | None) -> Select[Any]:
    if query.level == "patient":
        statement = _patient_statement()
    elif query.level == "study":
        statement = select(Study.pk, Study.study_instance_uid, Study.attributes_json, Study.modalities,
                           Study.num_series, Study.num_instances, Study.qido_json)
        statement = statement.order_by(Study.study_date, Study.study_time, Study.pk) if query.by_study_date \
            else statement.order_by(Study.pk)
    elif query.level == "series":
        statement = (select(Series.pk, Series.series_instance_uid, Series.attributes_json, Series.num_instances,
                            Study.study_instance_uid, Study.attributes_json.label("study_json"),
                            Study.modalities, Study.num_series, Study.num_instances.label("study_instances"),
                            Series.qido_json, Study.qido_json.label("study_qido_json"))
                     .join(Study, Study.pk == Series.study_pk).order_by(Series.study_pk, Series.series_number,
                                                                        Series.pk))
    else:
        statement = (select(Instance.pk, Instance.sop_instance_uid, Instance.sop_class_uid,
                            Instance.instance_number, Instance.rows, Instance.columns, Instance.bits_allocated,
                            Instance.number_of_frames, Series.series_instance_uid,
                            Series.attributes_json, Series.num_instances, Study.study_instance_uid,
                            Study.attributes_json.label("study_json"), Study.modalities, Study.num_series,
                            Study.num_instances.label("study_instances"))
                     .join(Series, Series.pk == Instance.series_pk).join(Study, Study.pk == Instance.study_pk)
                     .order_by(Instance.series_pk, Instance.instance_number, Instance.pk))
    if study_uid is not None:
        statement = statement.where(Study.study_instance_uid == study_uid)
    if series_uid is not None:
        statement = statement.where(Series.series_instance_uid == series_uid)
    for condition in query.conditions:
        statement = statement.where(condition)
    return statement


def _element(vr: str, values: list[Any]) -> dict[str, Any]:
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _pick(source: Mapping[str, Any], wanted: set[int] | None, out: dict[str, Any]) -> None:
    if wanted is None:
        out.update(source)
        return
    for tag in wanted:
        key = tag_hex(tag)
        if key in source:
            out[key] = source[key]


def _study_computed(row: Any, wanted: set[int] | None, num_instances: int, out: dict[str, Any]) -> None:
    if wanted is None or levels.MODALITIES_IN_STUDY in wanted:
        out[tag_hex(levels.MODALITIES_IN_STUDY)] = _element("CS", [m for m in row.modalities.split("\\") if m])
    if wanted is None or levels.NUMBER_OF_STUDY_RELATED_SERIES in wanted:
        out[tag_hex(levels.NUMBER_OF_STUDY_RELATED_SERIES)] = _element("IS", [row.num_series])
    if wanted is None or levels.NUMBER_OF_STUDY_RELATED_INSTANCES in wanted:
        out[tag_hex(levels.NUMBER_OF_STUDY_RELATED_INSTANCES)] = _element("IS", [num_instances])


@dataclass
class QueryResult:
    matches: list[dict[str, Any]]
    truncated: bool
    warnings: list[str]


_SPLICEABLE: dict[str, frozenset[int]] = {
    "study": levels.STUDY_DEFAULTS,
    "series": levels.SERIES_DEFAULTS | levels.STUDY_DEFAULTS,
}


def _member(tag: str, vr: str, values: list[Any]) -> str:
    return f'"{tag}":' + json.dumps({"vr": vr, "Value": values} if values else {"vr": vr}, ensure_ascii=False,
                                    separators=(",", ":"))


def _study_computed_members(modalities: str, num_series: int, num_instances: int) -> list[str]:
    return [_member("00080061", "CS", [m for m in modalities.split("\\") if m]),
            f'"00201206":{{"vr":"IS","Value":[{num_series}]}}',
            f'"00201208":{{"vr":"IS","Value":[{num_instances}]}}']


_ONLINE = '"00080056":{"vr":"CS","Value":["ONLINE"]}'


@dataclass
class QueryText:
    """A QIDO-RS answer as DICOM JSON text."""

    text: str
    truncated: bool
    warnings: list[str]


class QueryService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _rows(self, query: Query, study_uid: str | None, series_uid: str | None) -> tuple[list[Any], bool]:
        statement = _statement(query, study_uid, series_uid).offset(query.offset)
        if query.limit is not None:
            statement = statement.limit(query.limit + 1)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        truncated = query.limit is not None and len(rows) > query.limit
        return (rows[: query.limit] if query.limit is not None else rows), truncated

    def search_json(self, query: Query, *, base_url: str, study_uid: str | None = None,
                    series_uid: str | None = None) -> QueryText:
        """Like search, as JSON text; answers that need only the default attributes are spliced from the
        fragments precomputed at ingest, so their cost does not grow with the attributes each match holds."""
        spliceable = _SPLICEABLE.get(query.level)
        if spliceable is None or query.return_tags is None or not query.return_tags <= spliceable:
            result = self.search(query, base_url=base_url, study_uid=study_uid, series_uid=series_uid)
            return QueryText(dumps_matches(result.matches), result.truncated, result.warnings)
        rows, truncated = self._rows(query, study_uid, series_uid)
        texts = []
        for row in rows:
            if query.level == "study":
                members = [row.qido_json, *_study_computed_members(row.modalities, row.num_series,
                                                                   row.num_instances)]
                url = f"{base_url}/studies/{row.study_instance_uid}"
            else:
                if study_uid is None:
                    members = [row.study_qido_json, *_study_computed_members(row.modalities, row.num_series,
                                                                             row.study_instances)]
                else:
                    members = [_member("0020000D", "UI", [row.study_instance_uid])]
                members += [row.qido_json, f'"00201209":{{"vr":"IS","Value":[{row.num_instances}]}}']
                url = f"{base_url}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"
            members += [_ONLINE, _member("00081190", "UR", [url])]
            texts.append("{" + ",".join(m for m in members if m) + "}")
        return QueryText("[" + ",".join(texts) + "]", truncated, query.warnings)

    def search(self, query: Query, *, base_url: str, study_uid: str | None = None,
               series_uid: str | None = None) -> QueryResult:
        rows, truncated = self._rows(query, study_uid, series_uid)
        builder = {"patient": self._patient_match, "study": self._study_match, "series": self._series_match,
                   "instance": self._instance_match}[query.level]
        # Parent-level attributes are added when the search spans parents (all series, all instances).
        include_study = query.level != "study" and study_uid is None
        include_series = query.level == "instance" and series_uid is None
        matches = [builder(row, query.return_tags, base_url, include_study, include_series) for row in rows]
        return QueryResult(matches, truncated, query.warnings)

    def _patient_match(self, row: Any, wanted: set[int] | None, _base_url: str, *_: bool) -> dict[str, Any]:
        # No RetrieveURL: DICOMweb has no patient resource to point at.
        out: dict[str, Any] = {}
        _pick(json.loads(row.study_json or "{}"), PATIENT_LEVEL if wanted is None else wanted & PATIENT_LEVEL, out)
        for tag, count in ((NUMBER_OF_PATIENT_RELATED_STUDIES, row.num_studies),
                           (NUMBER_OF_PATIENT_RELATED_SERIES, row.num_series),
                           (NUMBER_OF_PATIENT_RELATED_INSTANCES, row.num_instances)):
            if wanted is None or tag in wanted:
                out[tag_hex(tag)] = _element("IS", [int(count)])
        return dict(sorted(out.items()))

    def _study_match(self, row: Any, wanted: set[int] | None, base_url: str, *_: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _pick(json.loads(row.attributes_json), wanted, out)
        _study_computed(row, wanted, row.num_instances, out)
        out[tag_hex(levels.INSTANCE_AVAILABILITY)] = _element("CS", ["ONLINE"])
        out[tag_hex(levels.RETRIEVE_URL)] = _element("UR", [f"{base_url}/studies/{row.study_instance_uid}"])
        return dict(sorted(out.items()))

    def _parent_study(self, row: Any, wanted: set[int] | None, out: dict[str, Any]) -> None:
        study_wanted = None if wanted is None else (wanted | levels.STUDY_DEFAULTS)
        _pick(json.loads(row.study_json), study_wanted, out)
        _study_computed(row, study_wanted, row.study_instances, out)

    def _series_match(self, row: Any, wanted: set[int] | None, base_url: str, include_study: bool,
                      _include_series: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if include_study:
            self._parent_study(row, wanted, out)
        else:
            # StudyInstanceUID always identifies the parent of a series (PS3.18 Table 10.6.3-4 note).
            out[tag_hex(0x0020000D)] = _element("UI", [row.study_instance_uid])
        _pick(json.loads(row.attributes_json), wanted, out)
        if wanted is None or levels.NUMBER_OF_SERIES_RELATED_INSTANCES in wanted:
            out[tag_hex(levels.NUMBER_OF_SERIES_RELATED_INSTANCES)] = _element("IS", [row.num_instances])
        out[tag_hex(levels.INSTANCE_AVAILABILITY)] = _element("CS", ["ONLINE"])
        out[tag_hex(levels.RETRIEVE_URL)] = _element(
            "UR", [f"{base_url}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"])
        return dict(sorted(out.items()))

    def _instance_match(self, row: Any, wanted: set[int] | None, base_url: str, include_study: bool,
                        include_series: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if include_study:
            self._parent_study(row, wanted, out)
        else:
            out[tag_hex(0x0020000D)] = _element("UI", [row.study_instance_uid])
        series_attributes = json.loads(row.attributes_json)
        if include_series:
            series_wanted = None if wanted is None else (wanted | levels.SERIES_DEFAULTS)
            _pick(series_attributes, series_wanted, out)
            if series_wanted is None or levels.NUMBER_OF_SERIES_RELATED_INSTANCES in series_wanted:
                out[tag_hex(levels.NUMBER_OF_SERIES_RELATED_INSTANCES)] = _element("IS", [row.num_instances])
        else:
            out[tag_hex(0x0020000E)] = _element("UI", [row.series_instance_uid])
            _pick(series_attributes, levels.COMMON, out)
        out[tag_hex(0x00080016)] = _element("UI", [row.sop_class_uid])
        out[tag_hex(0x00080018)] = _element("UI", [row.sop_instance_uid])
        for tag, vr, value in ((0x00200013, "IS", row.instance_number), (0x00280010, "US", row.rows),
                               (0x00280011, "US", row.columns), (0x00280100, "US", row.bits_allocated),
                               (0x00280008, "IS", row.number_of_frames)):
            if value is not None:
                out[tag_hex(tag)] = _element(vr, [value])
        instance_level_wanted = (None if wanted is None else
                                 {t for t in wanted if levels.level_of(t) == "instance"} - levels.INSTANCE_DEFAULTS)
        if instance_level_wanted is None or instance_level_wanted:
            # Instance-level attributes beyond the defaults live only in the stored metadata.
            metadata = self._instance_metadata(row.pk)
            if instance_level_wanted is None:
                for key, value in metadata.items():
                    if "BulkDataURI" not in value and "InlineBinary" not in value:
                        out.setdefault(key, value)
            else:
                _pick(metadata, instance_level_wanted, out)
        out[tag_hex(levels.INSTANCE_AVAILABILITY)] = _element("CS", ["ONLINE"])
        out[tag_hex(levels.RETRIEVE_URL)] = _element(
            "UR", [f"{base_url}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"
                   f"/instances/{row.sop_instance_uid}"])
        return dict(sorted(out.items()))

    def _instance_metadata(self, instance_pk: int) -> dict[str, Any]:
        with self.engine.connect() as connection:
            text = connection.execute(select(Instance.metadata_json).where(Instance.pk == instance_pk)).scalar()
        return json.loads(text or "{}")


def dumps_matches(matches: list[dict[str, Any]]) -> str:
    return json.dumps(matches, ensure_ascii=False, separators=(",", ":"))
