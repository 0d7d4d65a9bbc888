"""The DICOM JSON model (PS3.18 F.2) with BulkDataURIs that point back into the gateway.

BulkDataURIs are stored relative to the instance (``bulkdata/7FE00010``) and made absolute when a response
is written, because the base URL depends on how the client reached the gateway.

Converting every element through pydicom (``DataElement`` construction, value classes such as ``DSfloat``,
``PersonName`` and ``UID``, then ``DataElement.to_json_dict``) dominates ingest CPU, so `dataset_to_json`
decodes pydicom's still-raw elements itself for the common value representations and hands every other
element to pydicom exactly as `_dataset_to_json_reference` does. The fast decoders reproduce pydicom 3.0's
reading rules (``pydicom.values``, ``pydicom.valuerep``, ``DataElement.to_json_dict``) and decline (return
``None``) whenever pydicom would warn about, coerce, repair or reject a value, so that the result is the
same dict either way; ``tests/test_json_model.py`` holds the two implementations to that.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from struct import Struct, unpack
from typing import Any

import pydicom
from pydicom import config as pydicom_config
from pydicom import filewriter as pydicom_filewriter
from pydicom import hooks as pydicom_hooks
from pydicom import tag as pydicom_tag
from pydicom import valuerep
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from gateway.dicom.tags import tag_hex

log = logging.getLogger(__name__)

# The fast conversion mirrors pydicom 3.0's reading rules, down to a few of its private tables (looked up so
# that their absence cannot break an import). Under any other version everything goes through pydicom until
# tests/test_json_model.py has confirmed the mirror there.
_MIRRORS_THIS_PYDICOM = pydicom.__version__.startswith("3.0.")
# How pydicom's raw_element_vr hook finds a private tag's VR from the block's private creator.
_private_vr_for_tag: Callable[[Dataset, BaseTag], str] | None = getattr(pydicom_hooks, "_private_vr_for_tag", None)

PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULKDATA_PREFIX = "bulkdata/"

# Why elements were handed to pydicom instead of being decoded directly, counted by VR (or by a reason such
# as "converted" or "deferred"); tests and benchmarks read it to see that the common attributes stay fast.
fallback_counts: Counter[str] = Counter()


def bulkdata_path(path: Iterable[int | str]) -> str:
    return BULKDATA_PREFIX + "/".join(p if isinstance(p, str) else tag_hex(p) for p in path)


# --- the reference conversion: pydicom element by element ------------------------------------------------

def _element_json(element: DataElement, bulk_threshold: int, path: tuple[int | str, ...]) -> dict[str, Any]:
    def bulk_handler(_element: DataElement) -> str:
        return bulkdata_path(path)

    return element.to_json_dict(bulk_handler, bulk_threshold)


_ItemConverter = Callable[..., dict[str, Any]]


def _pydicom_element_json(dataset: Dataset, tag: int, bulk_threshold: int, element_path: tuple[int | str, ...],
                          convert_item: _ItemConverter) -> dict[str, Any]:
    """One element converted by pydicom; sequence items go to `convert_item` (fast or reference)."""
    element = dataset[tag]
    if element.VR == "SQ":
        items = [convert_item(item, bulk_threshold, path=(*element_path, str(index)))
                 for index, item in enumerate(element.value)]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    return _element_json(element, bulk_threshold, element_path)


def _pixel_data_vr_reference(dataset: Dataset, tag: int) -> str:
    raw = dataset.get_item(tag)
    return raw.VR if raw is not None and raw.VR in BINARY_VRS else "OW"


def _dataset_to_json_reference(dataset: Dataset, bulk_threshold: int = 1024, *, tags: frozenset[int] | None = None,
                               path: tuple[int | str, ...] = ()) -> dict[str, Any]:
    """`dataset_to_json` done entirely by pydicom: the specification the fast conversion is tested against."""
    out: dict[str, Any] = {}
    for tag in sorted(dataset.keys()):
        tag = int(tag)
        if tags is not None and tag not in tags:
            continue
        if tag >> 16 == 0x0002 and not path:
            continue  # File Meta Information is not part of the dataset (PS3.18 F.2)
        element_path = (*path, tag)
        try:
            if tag in PIXEL_DATA_TAGS and not path:
                # Pixel data is never inlined: it can be gigabytes.
                out[tag_hex(tag)] = {"vr": _pixel_data_vr_reference(dataset, tag),
                                     "BulkDataURI": bulkdata_path(element_path)}
                continue
            out[tag_hex(tag)] = _pydicom_element_json(dataset, tag, bulk_threshold, element_path,
                                                      _dataset_to_json_reference)
        except Exception as exc:
            log.warning("attribute %s left out of DICOM JSON: %s", tag_hex(tag), exc)
    return out


# --- the fast conversion -----------------------------------------------------------------------------------

# A decoder turns a raw little-endian value (never empty) into the JSON "Value" list, [] for a value pydicom
# sees as empty (no "Value" key), or None to leave the element to pydicom. The second argument is the Python
# codec for the dataset's character set, None where it is one the fast path does not handle.
_Decoder = Callable[[bytes, str | None], list[Any] | None]

# pydicom's Python names for the single-byte default repertoire, ISO_IR 100 and ISO_IR 192, mapped to
# the codec names that bytes.decode handles without a registry lookup. 'iso8859' is pydicom's name for the
# default repertoire and decodes every byte exactly as latin-1 does.
_FAST_CODECS = {"iso8859": "latin-1", "latin_1": "latin-1", "UTF8": "utf-8"}
_ESC = b"\x1b"  # starts an ISO 2022 code extension, which pydicom decodes fragment by fragment

_DS_ITEM = r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *"
_DS_VALUE = re.compile(rf"{_DS_ITEM}(?:\\{_DS_ITEM})*")
_IS_ITEM = r" *[+-]?[0-9]+ *"
_IS_VALUE = re.compile(rf"{_IS_ITEM}(?:\\{_IS_ITEM})*")
_UID_ITEM = r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*"
_UI_VALUE = re.compile(rf"(?:{_UID_ITEM})?(?:\\(?:{_UID_ITEM})?)*")

_DS_MAX_LENGTH = 16
_IS_MAX_LENGTH = 12
_UI_MAX_LENGTH = 64
_PN_MAX_GROUP_LENGTH = 64
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _split_values(items: list[str]) -> list[str]:
    # A single empty string is pydicom's empty value; several keep their empty components.
    return [] if len(items) == 1 and not items[0] else items


def _decode_default_text(value: bytes, _codec: str | None) -> list[Any] | None:
    """AS, CS, DA, DT, TM: only trailing padding of the whole value is insignificant."""
    return _split_values(value.decode("latin-1").rstrip(" \x00").split("\\"))


def _decode_ae(value: bytes, _codec: str | None) -> list[Any] | None:
    """AE: leading and trailing spaces of every component are insignificant."""
    return _split_values([item.strip() for item in value.decode("latin-1").split("\\")])


def _decode_ds(value: bytes, _codec: str | None) -> list[Any] | None:
    text = value.decode("latin-1").strip().rstrip(" \x00")
    if not text:
        return []
    # pydicom's float() would also take "nan", "1_0", tabs or an empty component (which then fails the JSON
    # conversion), and it rejects values longer than 16 characters in RAISE mode: all left to pydicom.
    if not _DS_VALUE.fullmatch(text):
        return None
    items = text.split("\\")
    for item in items:
        if len(item) > _DS_MAX_LENGTH and len(item.strip()) > _DS_MAX_LENGTH:  # RAISE mode measures it stripped
            return None
    return [float(item) for item in items]


def _decode_is(value: bytes, _codec: str | None) -> list[Any] | None:
    text = value.decode("latin-1").rstrip(" \x00")
    if not text:
        return []
    # Anything else (such as "1.0") pydicom accepts with a warning, or rejects in RAISE mode.
    if not _IS_VALUE.fullmatch(text):
        return None
    items = text.split("\\")
    numbers = []
    for item in items:
        number = int(item)
        if len(item) > _IS_MAX_LENGTH or not _INT32_MIN <= number <= _INT32_MAX:
            return None
        numbers.append(number)
    return numbers


def _decode_ui(value: bytes, _codec: str | None) -> list[Any] | None:
    text = value.decode("latin-1").rstrip("\x00 ")
    if not text:
        return []
    # pydicom warns about malformed UIDs and would strip whitespace inside a multi-value.
    if not _UI_VALUE.fullmatch(text):
        return None
    items = text.split("\\")
    if len(items) == 1:
        return items if len(text) <= _UI_MAX_LENGTH else None
    return items if max(map(len, items)) <= _UI_MAX_LENGTH else None


def _decode_ur(value: bytes, _codec: str | None) -> list[Any] | None:
    text = value.decode("latin-1").rstrip()
    return [text] if text else []


def _multi_text_decoder(max_length: int | None) -> _Decoder:
    """SH, LO, UC: split on backslash, then trailing padding of each component is insignificant."""

    def decode(value: bytes, codec: str | None) -> list[Any] | None:
        if codec is None or _ESC in value:
            return None
        items = value.decode(codec).split("\\")
        # pydicom checks the length before stripping, and warns (or raises) when it is too long.
        if max_length is not None and max(map(len, items)) > max_length:
            return None
        return _split_values([item.rstrip("\x00 ") for item in items])

    return decode


def _single_text_decoder(max_length: int | None) -> _Decoder:
    """ST, LT, UT: one value that may contain backslashes."""

    def decode(value: bytes, codec: str | None) -> list[Any] | None:
        if codec is None or _ESC in value:
            return None
        text = value.decode(codec)
        if max_length is not None and len(text) > max_length:
            return None
        text = text.rstrip("\x00 ")
        return [text] if text else []

    return decode


def _decode_pn(value: bytes, codec: str | None) -> list[Any] | None:
    if codec is None or _ESC in value:
        return None
    names = value.rstrip(b"\x00 ").decode(codec).split("\\")
    out = []
    for name in names:
        groups = name.split("=")
        # pydicom warns about more than three component groups or an over-long group.
        if len(groups) > 3 or max(map(len, groups)) > _PN_MAX_GROUP_LENGTH:
            return None
        while groups and not groups[-1]:
            groups.pop()  # PersonName drops trailing empty groups
        if not groups:
            if len(names) > 1:
                return None  # pydicom's to_json_dict fails on an empty name inside a multi-value
            return []
        entry = {"Alphabetic": groups[0]}
        if len(groups) > 1:
            entry["Ideographic"] = groups[1]
        if len(groups) > 2:
            entry["Phonetic"] = groups[2]
        out.append(entry)
    return out


def _decode_at(value: bytes, _codec: str | None) -> list[Any] | None:
    if len(value) % 4:
        return None  # pydicom warns and drops the incomplete tag
    halves = unpack(f"<{len(value) // 2}H", value)
    return [f"{group << 16 | element:08X}" for group, element in zip(halves[::2], halves[1::2], strict=True)]


def _number_decoder(struct_format: str, size: int) -> _Decoder:
    def decode(value: bytes, _codec: str | None) -> list[Any] | None:
        if len(value) % size:
            return None  # pydicom raises BytesLengthException (or converts to UN)
        return list(unpack(f"<{len(value) // size}{struct_format}", value))

    return decode


_DECODERS: dict[str, _Decoder] = {
    "AE": _decode_ae,
    "AS": _decode_default_text,
    "AT": _decode_at,
    "CS": _decode_default_text,
    "DA": _decode_default_text,
    "DS": _decode_ds,
    "DT": _decode_default_text,
    "FD": _number_decoder("d", 8),
    "FL": _number_decoder("f", 4),
    "IS": _decode_is,
    "LO": _multi_text_decoder(64),
    "LT": _single_text_decoder(10240),
    "PN": _decode_pn,
    "SH": _multi_text_decoder(16),
    "SL": _number_decoder("l", 4),
    "SS": _number_decoder("h", 2),
    "ST": _single_text_decoder(1024),
    "SV": _number_decoder("q", 8),
    "TM": _decode_default_text,
    "UC": _multi_text_decoder(None),
    "UI": _decode_ui,
    "UL": _number_decoder("L", 4),
    "UR": _decode_ur,
    "US": _number_decoder("H", 2),
    "UT": _single_text_decoder(None),
    "UV": _number_decoder("Q", 8),
}
# The VRs decoded here as read. UN is not one: pydicom first looks for the VR it stands for (`_raw_element_vr`).
_FAST_VRS = frozenset(_DECODERS) | (BINARY_VRS - {"UN"})
# VRs whose converted single value is a plain str that to_json_dict passes through unchanged.
_PLAIN_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_UNDEFINED_LENGTH = 0xFFFFFFFF
# The LUT descriptors, whose first value pydicom reinterprets; it keeps them as a tuple of BaseTags, whose
# Python-level __eq__ would make every lookup slow.
_LUT_DESCRIPTORS = frozenset(int(tag) for tag in getattr(pydicom_tag, "_LUT_DESCRIPTOR_TAGS", ()))
# The 'US or SS' attributes pydicom resolves by Pixel Representation, less the LUT descriptors.
_PIXEL_VALUE_TAGS = frozenset(
    int(tag) for tag in getattr(pydicom_filewriter, "_AMBIGUOUS_US_SS_TAGS", ())) - _LUT_DESCRIPTORS


def _fast_path_applies() -> bool:
    """The fast decoders mirror pydicom's default reading configuration; any customisation disables them."""
    return (_MIRRORS_THIS_PYDICOM
            and pydicom_config.data_element_callback is None
            and pydicom_hooks.hooks.raw_element_vr is pydicom_hooks.raw_element_vr
            and pydicom_hooks.hooks.raw_element_value is pydicom_hooks.raw_element_value
            and not pydicom_config.use_DS_numpy
            and not pydicom_config.use_IS_numpy
            and valuerep.DSclass is valuerep.DSfloat
            and not pydicom_config.datetime_conversion
            and not pydicom_config.use_none_as_empty_text_VR_value)


def _text_codec(dataset: Dataset) -> str | None:
    # The same character set pydicom's Dataset.__getitem__ decodes this dataset's elements with.
    encodings = dataset.original_character_set or dataset._character_set
    if not isinstance(encodings, str):
        if len(encodings) != 1:
            return None  # code extensions: pydicom switches encodings at escape sequences
        encodings = encodings[0]
    return _FAST_CODECS.get(encodings)


def _pixel_data_vr(dataset: Dataset, tag: int) -> str:
    """The VR `_pixel_data_vr_reference` reports, without reading deferred pixel data to find it."""
    element = dataset._dict[tag]
    if not isinstance(element, RawDataElement) or element.value is not None:
        # Dataset.get_item returns these as they are.
        return element.VR if element.VR in BINARY_VRS else "OW"
    # A deferred (or empty implicit VR) value would be read and converted by Dataset.get_item.
    if element.VR in ("OB", "OW"):
        return element.VR  # conversion keeps an explicit OB or OW
    if element.VR is None and tag == 0x7FE00010 and dataset.original_encoding[0]:
        # The dictionary says 'OB or OW', which pydicom resolves for implicit VR by PS3.5 A.1 and A.4.
        return "OB" if element.length == _UNDEFINED_LENGTH else "OW"
    fallback_counts["pixel-data"] += 1
    return _pixel_data_vr_reference(dataset, tag)


def _value_json(vr: str, value: bytes, tag: int, codec: str | None, inline_limit: int,
                path: tuple[int | str, ...]) -> dict[str, Any] | None:
    """The JSON of a defined-length little-endian value of one of the `_FAST_VRS` or UN, None for pydicom."""
    if not value:
        return {"vr": vr}
    decoder = _DECODERS.get(vr)
    if decoder is None:  # OB, OD, OF, OL, OV, OW, UN
        if len(value) > inline_limit:
            return {"vr": vr, "BulkDataURI": bulkdata_path((*path, tag))}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if tag in _LUT_DESCRIPTORS:
        return None  # pydicom reinterprets a negative first value
    try:
        values = decoder(value, codec)
    except Exception:
        # Typically a UnicodeDecodeError, for which pydicom substitutes replacement characters and warns;
        # whatever it is, pydicom's own conversion decides what becomes of the element.
        return None
    if values is None:
        return None
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _raw_element_vr(dataset: Dataset, element: RawDataElement, tag: BaseTag,
                    pixel_value_vr: str | None) -> str | None:
    """The VR pydicom's conversion gives a raw element, or None where only pydicom can tell.

    pydicom takes an implicit VR from the dictionary, or for a private tag from its private dictionaries
    through the block's private creator; an explicit UN it replaces the same way.
    """
    vr = element.VR
    if vr is None:
        entry = DicomDictionary.get(int(tag))  # a plain int key spares BaseTag's Python-level __eq__
        if entry is not None:
            vr = entry[0]
            if vr == "US or SS" and pixel_value_vr is not None and tag in _PIXEL_VALUE_TAGS:
                return pixel_value_vr
            return vr
        if tag.is_private and _private_vr_for_tag is not None:
            return str(_private_vr_for_tag(dataset, tag))
        return None  # repeating groups, group lengths and unknown tags
    if vr == "UN" and pydicom_config.replace_un_with_known_vr:
        if tag.is_private:
            return str(_private_vr_for_tag(dataset, tag)) if _private_vr_for_tag is not None else None
        if element.value is not None and len(element.value) >= 0xFFFF:
            return vr  # too long for the 16-bit length of most VRs, so it is kept
        entry = DicomDictionary.get(int(tag))
        return entry[0] if entry is not None else None
    return vr


def _fast_element_json(dataset: Dataset, element: RawDataElement | DataElement, tag: BaseTag, codec: str | None,
                       inline_limit: int, path: tuple[int | str, ...],
                       pixel_value_vr: str | None) -> dict[str, Any] | None:
    """The JSON of a still-raw element, or None where pydicom has to convert it.

    `pixel_value_vr` is what pydicom resolves an implicit VR 'US or SS' pixel value attribute to, None where
    that is not known here.
    """
    if not isinstance(element, RawDataElement):
        vr = element.VR
        value = element.value
        if vr in _PLAIN_STRING_VRS and type(value) is str:
            # Such as the Specific Character Set, which dcmread converts while reading: to_json_dict's
            # result is the one string, or nothing for an empty one.
            return {"vr": vr, "Value": [value]} if value else {"vr": vr}
        if vr in BINARY_VRS and type(value) is bytes:
            # Such as a deferred value that has been read in the meantime: to_json_dict looks at its length.
            return _value_json(vr, value, tag, codec, inline_limit, path)
        if vr != "SQ":  # undefined length sequences arrive parsed; that is no fallback
            fallback_counts["converted"] += 1
        return None
    vr = _raw_element_vr(dataset, element, tag, pixel_value_vr)
    if vr is None:
        fallback_counts["unknown-vr"] += 1
        return None
    value = element.value
    if vr == "SQ":
        if element.length == 0:
            return {"vr": "SQ"}
        if value is None or not element.is_little_endian:
            fallback_counts["SQ"] += 1
            return None
        try:
            parser = _SequenceParser(value, element.is_implicit_VR, codec, inline_limit)
            items = parser.sequence(0, len(value), len(value), (*path, tag))[0]
        except _NotFast:
            fallback_counts["SQ"] += 1
            return None
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    if vr not in _FAST_VRS and vr != "UN":  # a UN that pydicom keeps is bytes like OB
        fallback_counts[vr] += 1
        return None
    if element.length == 0:
        return {"vr": vr}
    if value is None:
        fallback_counts["deferred"] += 1
        return None
    if element.length == _UNDEFINED_LENGTH or not element.is_little_endian:
        fallback_counts[vr] += 1
        return None
    result = _value_json(vr, value, tag, codec, inline_limit, path)
    if result is None:
        fallback_counts[vr] += 1
    return result


class _NotFast(Exception):
    """A sequence value the fast parser cannot vouch for; pydicom parses it instead."""


_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_SPECIFIC_CHARACTER_SET = 0x00080005
_TAG_AND_LENGTH = Struct("<HHL")  # an item or delimiter header, and an implicit VR element header
_EXPLICIT_HEADER = Struct("<HH2sH")
_LONG_LENGTH = Struct("<L")
_ITEM_VR_NAMES = _FAST_VRS | {"SQ"}
# The explicit VRs the parser accepts, by their encoding; any other (UN, or bytes that are no VR, after which
# pydicom would switch to implicit VR) hands the whole sequence to pydicom.
_ITEM_VRS = {vr.encode("ascii"): vr for vr in _ITEM_VR_NAMES}
_LONG_LENGTH_VRS = frozenset(str(vr.value) for vr in EXPLICIT_VR_LENGTH_32)


class _SequenceParser:
    """Sequence values straight to JSON, for the little endian encodings pydicom's filereader reads the same.

    pydicom parses a sequence value into item Datasets of raw elements, which are then converted one by one;
    here the items' elements go straight to `_value_json`. Only well-formed encodings are accepted: any
    element that is not one of the fast VRs (or SQ), an item's own Specific Character Set, a stray delimiter
    or a length that does not add up raises _NotFast, and pydicom parses the whole sequence instead.
    """

    def __init__(self, data: bytes, implicit_vr: bool, codec: str | None, inline_limit: int) -> None:
        self.data = data
        self.implicit_vr = implicit_vr
        self.codec = codec
        self.inline_limit = inline_limit

    def sequence(self, position: int, end: int | None, limit: int,
                 path: tuple[int | str, ...]) -> tuple[list[dict[str, Any]], int]:
        """The items of a value that starts at `position` and ends at `end`, or at its Sequence Delimitation
        Item where `end` is None (undefined length); returns them and the position after the value."""
        if end is not None:
            limit = end
        items: list[dict[str, Any]] = []
        while end is None or position < end:
            if position + 8 > limit:
                raise _NotFast
            group, element, length = _TAG_AND_LENGTH.unpack_from(self.data, position)
            position += 8
            tag = group << 16 | element
            if tag == _SEQUENCE_DELIMITER and end is None and length == 0:
                return items, position
            if tag != _ITEM:
                raise _NotFast
            item_path = (*path, str(len(items)))
            if length == _UNDEFINED_LENGTH:
                item, position = self.item(position, None, limit, item_path)
            else:
                item, position = self.item(position, position + length, limit, item_path)
            items.append(item)
        if position != end:
            raise _NotFast
        return items, position

    def item(self, position: int, end: int | None, limit: int,
             path: tuple[int | str, ...]) -> tuple[dict[str, Any], int]:
        """One item, up to `end` or, where that is None, to its Item Delimitation Item."""
        data = self.data
        if end is not None:
            if end > limit:
                raise _NotFast
            limit = end
        elements: dict[int, dict[str, Any]] = {}
        while end is None or position < end:
            if position + 8 > limit:
                raise _NotFast
            if self.implicit_vr:
                group, element, length = _TAG_AND_LENGTH.unpack_from(data, position)
                position += 8
                tag = group << 16 | element
                if tag == _ITEM_DELIMITER and end is None and length == 0:
                    break
                entry = DicomDictionary.get(tag)  # private tags are not in it
                vr = entry[0] if entry is not None and entry[0] in _ITEM_VR_NAMES else None
            else:
                group, element, vr_bytes, length = _EXPLICIT_HEADER.unpack_from(data, position)
                position += 8
                tag = group << 16 | element
                if tag == _ITEM_DELIMITER and end is None and vr_bytes == b"\x00\x00" and length == 0:
                    break
                vr = _ITEM_VRS.get(vr_bytes)
                if vr in _LONG_LENGTH_VRS:
                    if position + 4 > limit:
                        raise _NotFast
                    length = _LONG_LENGTH.unpack_from(data, position)[0]
                    position += 4
            # An item's own Specific Character Set would change how its text decodes.
            if vr is None or group == 0xFFFE or tag == _SPECIFIC_CHARACTER_SET:
                raise _NotFast
            if vr == "SQ":
                value_end = None if length == _UNDEFINED_LENGTH else position + length
                items, position = self.sequence(position, value_end, limit, (*path, tag))
                elements[tag] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                continue
            if length == _UNDEFINED_LENGTH or position + length > limit:
                raise _NotFast
            result = _value_json(vr, data[position:position + length], tag, self.codec, self.inline_limit, path)
            if result is None:
                raise _NotFast
            elements[tag] = result
            position += length
        else:
            if position != end:
                raise _NotFast
        return {f"{tag:08X}": elements[tag] for tag in sorted(elements)}, position


def _pixel_value_vr(elements: dict[Any, Any]) -> str | None:
    """US or SS, as pydicom's ambiguous VR correction picks it from a top-level Pixel Representation."""
    element = elements.get(0x00280103)
    if isinstance(element, RawDataElement):
        if element.VR not in (None, "US") or element.length != 2 or not element.is_little_endian:
            return None
        representation = int.from_bytes(element.value or b"", "little")
    elif isinstance(element, DataElement) and type(element.value) is int:
        representation = element.value
    else:
        return None
    return "US" if representation == 0 else "SS"


def _dataset_to_json_fast(dataset: Dataset, bulk_threshold: int, tags: frozenset[int] | None,
                          path: tuple[int | str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    elements = dataset._dict
    codec = _text_codec(dataset)
    # Items are left to pydicom: it takes their Pixel Representation from the enclosing datasets.
    pixel_value_vr = None if path else _pixel_value_vr(elements)
    # DataElement.to_json_dict compares the byte length with the base64 length limit, rounded like this.
    inline_limit = (bulk_threshold // 4) * 3
    top_level = not path
    for tag in sorted(elements, key=int):  # BaseTag's own comparisons are Python code, and slow
        if tags is not None and tag not in tags:
            continue
        key = f"{tag:08X}"
        if top_level:
            if tag >> 16 == 0x0002:
                continue  # File Meta Information is not part of the dataset (PS3.18 F.2)
            if tag in PIXEL_DATA_TAGS:
                try:
                    # Pixel data is never inlined and never read here: it can be gigabytes.
                    out[key] = {"vr": _pixel_data_vr(dataset, tag), "BulkDataURI": bulkdata_path((*path, tag))}
                except Exception as exc:
                    log.warning("attribute %s left out of DICOM JSON: %s", key, exc)
                continue
        result = _fast_element_json(dataset, elements[tag], tag, codec, inline_limit, path, pixel_value_vr)
        if result is not None:
            out[key] = result
            continue
        try:
            out[key] = _pydicom_element_json(dataset, tag, bulk_threshold, (*path, tag), _dataset_to_json_items)
        except Exception as exc:
            log.warning("attribute %s left out of DICOM JSON: %s", key, exc)
    return out


def _dataset_to_json_items(item: Dataset, bulk_threshold: int, *, path: tuple[int | str, ...]) -> dict[str, Any]:
    return _dataset_to_json_fast(item, bulk_threshold, None, path)


def dataset_to_json(dataset: Dataset, bulk_threshold: int = 1024, *, tags: frozenset[int] | None = None,
                    path: tuple[int | str, ...] = ()) -> dict[str, Any]:
    """Convert a dataset to a DICOM JSON object; ``tags`` keeps only those top-level attributes.

    Elements that cannot be decoded are left out and logged rather than failing the whole instance, since
    archives hold objects with slightly malformed values that are still clinically useful.
    """
    if not _fast_path_applies():
        return _dataset_to_json_reference(dataset, bulk_threshold, tags=tags, path=path)
    return _dataset_to_json_fast(dataset, bulk_threshold, tags, path)


def absolutise_bulkdata(json_text: str, instance_url: str) -> str:
    """Turn stored relative BulkDataURIs into absolute ones under ``instance_url``.

    The key-and-quote sequence can only occur as a key: inside a JSON string value a quote is escaped.
    """
    return json_text.replace('"BulkDataURI": "', f'"BulkDataURI": "{instance_url}/').replace(
        '"BulkDataURI":"', f'"BulkDataURI":"{instance_url}/')


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
