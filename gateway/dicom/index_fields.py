"""The attributes the index keeps in columns, read from an instance's DICOM JSON.

Working from the JSON model (not a pydicom Dataset) lets every producer of instances — STOW-RS, C-STORE,
pulls, and bulk loads of index rows — go through one function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.dicom import levels
from gateway.dicom.json_model import dumps
from gateway.dicom.normalise import (
    normalise_date,
    normalise_time,
    person_name_fuzzy_key,
    person_name_match_key,
)
from gateway.dicom.tags import tag_hex


def json_text(metadata: dict[str, Any], tag: str, limit: int | None = None) -> str:
    """A string attribute's value as DICOM would write it (multiple values joined by backslash)."""
    values = metadata.get(tag, {}).get("Value")
    if not values:
        return ""
    parts = []
    for value in values:
        if isinstance(value, dict):  # PN: the alphabetic group is what is matched and shown
            value = value.get("Alphabetic", "")
        parts.append("" if value is None else str(value))
    text = "\\".join(parts).strip("\x00 ")
    return text[:limit] if limit else text


def json_integer(metadata: dict[str, Any], tag: str) -> int | None:
    values = metadata.get(tag, {}).get("Value")
    if not values:
        return None
    try:
        return int(values[0])
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class IndexFields:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    issuer: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    series_date: str
    pps_start_date: str
    pps_start_time: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    number_of_frames: int | None

    @property
    def patient_name_match(self) -> str:
        return person_name_match_key(self.patient_name)

    @property
    def patient_name_fuzzy(self) -> str:
        return person_name_fuzzy_key(self.patient_name)


def index_fields(metadata: dict[str, Any]) -> IndexFields:
    return IndexFields(
        sop_class_uid=json_text(metadata, "00080016", 64),
        sop_instance_uid=json_text(metadata, "00080018", 64),
        study_instance_uid=json_text(metadata, "0020000D", 64),
        series_instance_uid=json_text(metadata, "0020000E", 64),
        patient_id=json_text(metadata, "00100020", 64),
        issuer=json_text(metadata, "00100021", 64),
        patient_name=json_text(metadata, "00100010"),
        patient_birth_date=normalise_date(json_text(metadata, "00100030")),
        patient_sex=json_text(metadata, "00100040", 16),
        study_date=normalise_date(json_text(metadata, "00080020")),
        study_time=normalise_time(json_text(metadata, "00080030")),
        accession_number=json_text(metadata, "00080050", 64),
        study_id=json_text(metadata, "00200010", 64),
        study_description=json_text(metadata, "00081030"),
        referring_physician_name=json_text(metadata, "00080090"),
        modality=json_text(metadata, "00080060", 16),
        series_number=json_integer(metadata, "00200011"),
        series_description=json_text(metadata, "0008103E"),
        body_part_examined=json_text(metadata, "00180015", 64),
        series_date=normalise_date(json_text(metadata, "00080021")),
        pps_start_date=normalise_date(json_text(metadata, "00400244")),
        pps_start_time=normalise_time(json_text(metadata, "00400245")),
        instance_number=json_integer(metadata, "00200013"),
        rows=json_integer(metadata, "00280010"),
        columns=json_integer(metadata, "00280011"),
        bits_allocated=json_integer(metadata, "00280100"),
        number_of_frames=json_integer(metadata, "00280008"),
    )


_STUDY_KEYS = frozenset(tag_hex(t) for t in levels.STUDY_LEVEL | levels.COMMON)
_SERIES_KEYS = frozenset(tag_hex(t) for t in levels.SERIES_LEVEL | levels.COMMON)


def study_attributes(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metadata.items() if k in _STUDY_KEYS}


def series_attributes(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metadata.items() if k in _SERIES_KEYS}


_STUDY_DEFAULT_KEYS = frozenset(tag_hex(t) for t in levels.STUDY_DEFAULTS)
_SERIES_DEFAULT_KEYS = frozenset(tag_hex(t) for t in levels.SERIES_DEFAULTS)


def json_members(attributes: dict[str, Any], keys: frozenset[str]) -> str:
    """The chosen attributes as JSON object members without the braces, ready to splice into an answer."""
    return ",".join(f'"{key}":{dumps(value)}' for key, value in sorted(attributes.items()) if key in keys)


def study_qido_members(study_attributes_: dict[str, Any]) -> str:
    return json_members(study_attributes_, _STUDY_DEFAULT_KEYS)


def series_qido_members(series_attributes_: dict[str, Any]) -> str:
    return json_members(series_attributes_, _SERIES_DEFAULT_KEYS)
