"""Naming attributes the way QIDO-RS does: by keyword (PatientName) or by tag (00100010), with sequence paths."""

from __future__ import annotations

import re

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import BaseTag, Tag

_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


class UnknownAttribute(ValueError):
    pass


def parse_tag(token: str) -> BaseTag:
    """One attribute: a DICOM keyword or an eight-digit hexadecimal tag."""
    token = token.strip()
    if _HEX_TAG.match(token):
        return Tag(int(token, 16))
    tag = tag_for_keyword(token)
    if tag is None:
        raise UnknownAttribute(f"{token!r} is neither a DICOM keyword nor an 8-digit hexadecimal tag")
    return Tag(tag)


def parse_attribute_path(text: str) -> tuple[BaseTag, ...]:
    """A dotted attribute path such as RequestAttributesSequence.ScheduledProcedureStepID."""
    return tuple(parse_tag(part) for part in text.split("."))


def tag_hex(tag: int) -> str:
    return f"{int(tag):08X}"


def describe(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    group, element = divmod(int(tag), 0x10000)
    label = f"({group:04X},{element:04X})"
    return f"{keyword} {label}" if keyword else label


def vr_of(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None
