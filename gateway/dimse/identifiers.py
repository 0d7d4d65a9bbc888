"""Translating Query/Retrieve identifiers to the query service's terms and its answers back to identifiers.

A C-FIND identifier becomes the same (attribute, value) pairs a QIDO-RS URL gives ``parse_query``: an element
with a value is a matching key, an empty one a return key (``includefield``). Sequence matching is not
supported, so a sequence is only a return key. Answers, DICOM JSON from the query service, are turned back
into datasets carrying the requested keys, the Query/Retrieve Level and the level's unique key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from gateway.dicom.tags import tag_hex
from gateway.services.query import SearchLevel

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
PATIENT_ID = 0x00100020
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018

LEVELS: dict[str, SearchLevel] = {"PATIENT": "patient", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
UNIQUE_KEYS: dict[SearchLevel, int] = {"patient": PATIENT_ID, "study": STUDY_INSTANCE_UID,
                                       "series": SERIES_INSTANCE_UID, "instance": SOP_INSTANCE_UID}
# The unique keys a C-MOVE or C-GET identifier may hold at each level (PS3.4 C.4.2.1.4 and C.4.3.1.3).
_RETRIEVE_KEYS: dict[SearchLevel, tuple[int, ...]] = {
    "patient": (PATIENT_ID,),
    "study": (PATIENT_ID, STUDY_INSTANCE_UID),
    "series": (PATIENT_ID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID),
    "instance": (PATIENT_ID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_INSTANCE_UID),
}
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900


class IdentifierError(ValueError):
    """The identifier cannot be used; ``status`` is the DIMSE failure status to answer with."""

    def __init__(self, message: str, status: int = IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def status_dataset(self) -> Dataset:
        status = Dataset()
        status.Status = self.status
        status.ErrorComment = self.message[:64]  # LO: at most 64 characters
        return status


@dataclass(frozen=True)
class QueryKeys:
    level_name: str
    level: SearchLevel
    pairs: list[tuple[str, str]]

    def describe(self, limit: int = 2000) -> str:
        """What was asked, for the audit line: ``PatientID=X StudyDate=2020* +StudyDescription``.

        Cut at ``limit`` characters: a retrieve may list thousands of SOP Instance UIDs.
        """
        text = " ".join(f"+{_keyword(value)}" if key == "includefield" else f"{_keyword(key)}={value}"
                        for key, value in self.pairs)
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _keyword(tag_text: str) -> str:
    return keyword_for_tag(int(tag_text, 16)) or tag_text


def level_name(identifier: Dataset) -> str:
    return str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()


def _level(identifier: Dataset, study_root: bool) -> tuple[str, SearchLevel]:
    name = level_name(identifier)
    level = LEVELS.get(name)
    if level is None:
        raise IdentifierError("QueryRetrieveLevel must be PATIENT, STUDY, SERIES or IMAGE")
    if study_root and level == "patient":
        raise IdentifierError("the Study Root model has no PATIENT level")
    return name, level


def _text(value: Any) -> str:
    """An element value as DICOM writes it in a string (multiple values joined by backslash)."""
    if value is None or isinstance(value, bytes | bytearray | memoryview):
        return ""  # binary values cannot be matched
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(item) for item in value)
    return str(value).strip()


def _attribute_tags(identifier: Dataset) -> Iterable[BaseTag]:
    for tag in identifier.keys():  # noqa: SIM118 - iterating a Dataset would convert every element
        if tag.group in (0x0000, 0x0002) or tag.element == 0 or tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET):
            continue
        yield tag


def query_keys(identifier: Dataset, study_root: bool) -> QueryKeys:
    """A C-FIND identifier as the (name, value) pairs ``parse_query`` takes."""
    name, level = _level(identifier, study_root)
    pairs: list[tuple[str, str]] = []
    for tag in _attribute_tags(identifier):
        element = identifier[tag]
        text = "" if element.VR == "SQ" else _text(element.value)
        pairs.append((tag_hex(tag), text) if text else ("includefield", tag_hex(tag)))
    return QueryKeys(name, level, pairs)


def retrieve_keys(identifier: Dataset, study_root: bool) -> QueryKeys:
    """The unique keys of a C-MOVE/C-GET identifier as matching pairs; the level's own key is required."""
    name, level = _level(identifier, study_root)
    pairs: list[tuple[str, str]] = []
    for tag in _RETRIEVE_KEYS[level]:
        text = _text(identifier[tag].value) if tag in identifier else ""
        if text:
            pairs.append((tag_hex(tag), text))
        elif tag == UNIQUE_KEYS[level]:
            raise IdentifierError(f"a {name} level retrieve needs {_keyword(tag_hex(tag))}")
    return QueryKeys(name, level, pairs)


def _empty_like(element: DataElement) -> DataElement:
    return DataElement(element.tag, element.VR, Sequence() if element.VR == "SQ" else None)


def _has_non_ascii(dataset: Dataset) -> bool:
    return any(element.VR != "SQ" and not _text(element.value).isascii() for element in dataset.iterall())


def match_identifier(match: dict[str, Any], request: Dataset, keys: QueryKeys, retrieve_ae_title: str) -> Dataset:
    """One C-FIND answer: the requested keys (empty where the match has no value), level and unique key."""
    response = Dataset()
    for tag in _attribute_tags(request):
        response.add(_empty_like(request[tag]))
    wanted = {int(tag) for tag in response.keys()} | {UNIQUE_KEYS[keys.level]}  # noqa: SIM118
    # Bulk data is never a query answer; its element stays an empty return key.
    selected = {key: value for key, value in match.items()
                if int(key, 16) in wanted and "BulkDataURI" not in value}
    for element in Dataset.from_json(selected):
        response.add(element)
    response.QueryRetrieveLevel = keys.level_name
    if RETRIEVE_AE_TITLE in response:
        response.RetrieveAETitle = retrieve_ae_title
    if _has_non_ascii(response):
        # Values come decoded from the index; UTF-8 can carry whatever character set they were stored in.
        response.SpecificCharacterSet = "ISO_IR 192"
    return response
