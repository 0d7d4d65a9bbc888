"""dataset_to_json's fast conversion gives exactly what pydicom's own conversion (the reference) gives.

Both sides always read their own copy of the file, as the ingest service does (``dcmread`` with a 64 KiB
defer size): the reference converts elements in place, which would otherwise send the fast conversion down
its fallback path and make the comparison vacuous.
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
import struct
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from gateway.demo.synth import iter_demo_instances, plan_demo
from gateway.dicom import json_model
from gateway.dicom.json_model import dataset_to_json, dumps

DEFER_SIZE = 64 * 1024  # as gateway.services.ingest reads
THRESHOLDS = (0, 1024, 10**9)


# --- comparing the two conversions ------------------------------------------------------------------------

def _read(source: bytes | Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(source) if isinstance(source, bytes) else source, defer_size=DEFER_SIZE)


def _typed(value: Any) -> Any:
    """The value with every leaf tagged by its JSON type: == on the result also compares types.

    str subclasses count as str (the reference keeps pydicom's UID and VR objects, which serialise as the
    plain strings), and floats compare by repr so that NaN and -0.0 are told apart too.
    """
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    if isinstance(value, str):
        return "str", str.__str__(value)
    if isinstance(value, float):
        return "float", repr(value)
    return type(value).__name__, repr(value)


def _has_nan(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_nan(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_nan(item) for item in value)
    return isinstance(value, float) and math.isnan(value)


def _assert_same(fast: dict[str, Any], reference: dict[str, Any]) -> None:
    assert list(fast) == list(reference)
    assert _typed(fast) == _typed(reference)
    assert dumps(fast) == dumps(reference)
    if not _has_nan(reference):
        assert fast == reference


def _both(source: bytes | Path, threshold: int = 1024, tags: frozenset[int] | None = None
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    fast_dataset, reference_dataset = _read(source), _read(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's complaints about the odder corpus files
        fast = dataset_to_json(fast_dataset, threshold, tags=tags)
        reference = json_model._dataset_to_json_reference(reference_dataset, threshold, tags=tags)
    return fast, reference


def _assert_matches_reference(source: bytes | Path, thresholds: tuple[int, ...] = THRESHOLDS) -> dict[str, Any]:
    """Compare at every threshold; return the fast result at 1024 bytes, the ingest service's default."""
    assert 1024 in thresholds
    fast_at_default: dict[str, Any] = {}
    for threshold in thresholds:
        fast, reference = _both(source, threshold)
        _assert_same(fast, reference)
        if threshold == 1024:
            fast_at_default = fast
    return fast_at_default


@pytest.fixture(autouse=True)
def _fresh_fallback_counts() -> None:
    json_model.fallback_counts.clear()


# --- (1) pydicom's test corpus ------------------------------------------------------------------------------

_CORPUS_ROOT = Path(pydicom.data.__file__).parent


def _readable_corpus() -> list[Path]:
    readable = []
    for path in sorted(_CORPUS_ROOT.rglob("*")):
        if not path.is_file():
            continue
        try:
            _read(path)
        except Exception:  # not DICOM, or not without force=True
            continue
        readable.append(path)
    return readable


CORPUS = _readable_corpus()


def test_corpus_is_there() -> None:
    assert len(CORPUS) > 50
    assert any(path.name == "CT_small.dcm" for path in CORPUS)


@pytest.mark.parametrize("path", CORPUS, ids=[str(p.relative_to(_CORPUS_ROOT)) for p in CORPUS])
def test_corpus_file_matches_reference(path: Path) -> None:
    _assert_matches_reference(path)
    present = sorted(map(int, _read(path).keys()))
    subsets = [
        frozenset(present[::2]),
        frozenset(present[1::3]),
        # pixel data, a sequence, a name, an absent tag and a File Meta tag (never reported at the top)
        frozenset({0x7FE00010, 0x00081140, 0x00100010, 0x12345678, 0x00020010}),
        frozenset(),
    ]
    for tags in subsets:
        fast, reference = _both(path, 1024, tags)
        _assert_same(fast, reference)
        assert {int(key, 16) for key in fast} <= tags


def test_corpus_ct_takes_the_fast_path() -> None:
    fast = _assert_matches_reference(Path(pydicom.data.get_testdata_file("CT_small.dcm")))
    assert not json_model.fallback_counts
    assert fast["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert fast["00280030"] == {"vr": "DS", "Value": [0.661468, 0.661468]}
    assert fast["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}


# --- (2) the synthetic demo data set -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_instances() -> list[tuple[str, bytes]]:
    """The first two images of every series of one PET/CT and one MR study, as Part 10 bytes."""
    plan = plan_demo(seed=0, patients=8)
    chosen = []
    for modality in ("PT", "MR"):
        patient, study = next((patient, study) for patient in plan for study in patient.studies
                               if any(series.modality == modality for series in study.series))
        chosen.append(dataclasses.replace(patient, studies=(study,)))
    taken: Counter[str] = Counter()
    instances = []
    for dataset in iter_demo_instances(chosen):
        if taken[dataset.SeriesInstanceUID] == 2:
            continue
        taken[dataset.SeriesInstanceUID] += 1
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        instances.append((str(dataset.Modality), buffer.getvalue()))
    assert {modality for modality, _ in instances} == {"CT", "MR", "PT", "SEG"}
    return instances


def _as_implicit_vr(data: bytes) -> bytes:
    dataset = _read(data)
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


def test_demo_instances_match_reference_on_the_fast_path(demo_instances: list[tuple[str, bytes]]) -> None:
    for modality, data in demo_instances:
        json_model.fallback_counts.clear()
        fast = _assert_matches_reference(data)
        assert not json_model.fallback_counts, f"{modality}: {json_model.fallback_counts}"
        assert fast["00080060"] == {"vr": "CS", "Value": [modality]}
        assert fast["7FE00010"]["BulkDataURI"] == "bulkdata/7FE00010"
        assert "Alphabetic" in fast["00100010"]["Value"][0]


def test_demo_pet_sequences_are_parsed_fast(demo_instances: list[tuple[str, bytes]]) -> None:
    data = next(data for modality, data in demo_instances if modality == "PT")
    fast = _assert_matches_reference(data)
    assert not json_model.fallback_counts
    radiopharmaceutical = fast["00540016"]["Value"][0]
    assert radiopharmaceutical["00540300"]["Value"][0]["00080102"] == {"vr": "SH", "Value": ["SCT"]}


def test_demo_instances_in_implicit_vr(demo_instances: list[tuple[str, bytes]]) -> None:
    for modality, data in demo_instances:
        json_model.fallback_counts.clear()
        implicit = _as_implicit_vr(data)
        assert _read(implicit).original_encoding[0]
        _assert_matches_reference(implicit)
        assert not json_model.fallback_counts, f"{modality}: {json_model.fallback_counts}"


def test_demo_tag_subsets(demo_instances: list[tuple[str, bytes]]) -> None:
    for _, data in demo_instances[:3]:
        present = sorted(map(int, _read(data).keys()))
        for tags in (frozenset(present[::2]), frozenset({0x00100010, 0x00540016, 0x7FE00010})):
            fast, reference = _both(data, 1024, tags)
            _assert_same(fast, reference)


# --- (3) hand-made edge cases ---------------------------------------------------------------------------------

_LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_UNDEFINED = 0xFFFFFFFF


def _explicit(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    length = len(value) if length is None else length
    if vr in _LONG_LENGTH_VRS:
        return struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr.encode(), length) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length) + value


def _implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value) if length is None else length) + value


def _item(*elements: bytes, undefined_length: bool = False) -> bytes:
    body = b"".join(elements)
    if undefined_length:
        return struct.pack("<HHL", 0xFFFE, 0xE000, _UNDEFINED) + body + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body


def _sequence(tag: int, *items: bytes, undefined_length: bool = False, implicit: bool = False) -> bytes:
    body = b"".join(items)
    if undefined_length:
        body += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    length = _UNDEFINED if undefined_length else len(body)
    return _implicit(tag, body, length) if implicit else _explicit(tag, "SQ", body, length)


def _part10(*elements: bytes, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.2"
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue() + b"".join(elements)


def _check(data: bytes, fallbacks: set[str]) -> dict[str, Any]:
    """Both conversions agree at every threshold and the fast one fell back exactly for `fallbacks`."""
    json_model.fallback_counts.clear()
    fast = _assert_matches_reference(data)
    assert set(json_model.fallback_counts) == fallbacks
    return fast


def test_strings_numbers_and_binaries() -> None:
    fast = _check(_part10(
        _explicit(0x00080008, "CS", b"ORIGINAL\\PRIMARY \\ "),
        _explicit(0x00080018, "UI", b"1.2.3.4\x00"),
        _explicit(0x0008001A, "UI", b"1.2\\\\1.3 "),
        _explicit(0x00080020, "DA", b"20240102"),
        _explicit(0x0008002A, "DT", b"20240102101010.5\x00"),
        _explicit(0x00080030, "TM", b"101010.123 "),
        _explicit(0x00080050, "SH", b"  ACC1 "),
        _explicit(0x00080054, "AE", b" AE1 \\ AE2 "),
        _explicit(0x00080060, "CS", b"  "),
        _explicit(0x00080070, "LO", b""),
        _explicit(0x00080081, "ST", b"Line 1\\ with a backslash  \x00"),
        _explicit(0x00080119, "UC", b"long code value \\second "),
        _explicit(0x0008030E, "UT", b"a\\b\x00"),
        _explicit(0x00081090, "LO", b"A\\\\B"),
        _explicit(0x00081161, "UL", struct.pack("<2L", 1, 4000000000)),
        _explicit(0x00081163, "FD", struct.pack("<2d", 0.25, -1e300)),
        _explicit(0x00081190, "UR", b"http://example.com/a b  "),
        _explicit(0x00100021, "LO", b"\\"),
        _explicit(0x00101010, "AS", b"068Y"),
        _explicit(0x00180013, "FL", struct.pack("<f", 0.1)),
        _explicit(0x00180050, "DS", b"1.0 "),
        _explicit(0x00186020, "SL", struct.pack("<l", -2)),
        _explicit(0x00189219, "SS", struct.pack("<2h", -1, 7)),
        _explicit(0x00200012, "IS", b"1\\ -2 \\+3"),
        _explicit(0x00200013, "IS", b" 012 "),
        _explicit(0x00200032, "DS", b"-1.5\\1e3\\ 2 \\1E-2"),
        _explicit(0x00200037, "DS", b"1\\0\\0\\0\\1\\0 "),
        _explicit(0x00280009, "AT", struct.pack("<4H", 0x0018, 0x1063, 0x0018, 0x1065)),
        _explicit(0x00280010, "US", struct.pack("<H", 512)),
        _explicit(0x00280030, "DS", b" 0.5\\ 0.5 "),
        _explicit(0x00281050, "DS", b"+.5\\-0."),
        _explicit(0x00281201, "OW", b"\x01\x02\x03\x04"),
        _explicit(0x0040A160, "UT", b"text \r\n"),
        _explicit(0x00420011, "OB", b"%PDF" * 500),
        _explicit(0x00640009, "OF", struct.pack("<3f", 1, 2, 3)),
        _explicit(0x00660022, "OD", struct.pack("<d", 1.5)),
        _explicit(0x00660040, "OL", struct.pack("<L", 9)),
        _explicit(0x00720081, "OV", struct.pack("<Q", 9)),
        _explicit(0x00720082, "SV", struct.pack("<2q", -(2**40), 5)),
        _explicit(0x0008040C, "UV", struct.pack("<Q", 2**63 + 1)),
        _explicit(0x7FE00010, "OW", b"\x00\x01" * 8),
    ), set())
    expected = {
        "00080008": ["ORIGINAL", "PRIMARY ", ""],
        "00080018": ["1.2.3.4"],
        "0008001A": ["1.2", "", "1.3"],
        "0008002A": ["20240102101010.5"],
        "00080030": ["101010.123"],
        "00080050": ["  ACC1"],
        "00080054": ["AE1", "AE2"],
        "00080081": ["Line 1\\ with a backslash"],
        "00080119": ["long code value", "second"],
        "0008030E": ["a\\b"],
        "00081090": ["A", "", "B"],
        "00081161": [1, 4000000000],
        "00081163": [0.25, -1e300],
        "00081190": ["http://example.com/a b"],
        "00100021": ["", ""],
        "00180013": [struct.unpack("<f", struct.pack("<f", 0.1))[0]],
        "00180050": [1.0],
        "00186020": [-2],
        "00189219": [-1, 7],
        "00200012": [1, -2, 3],
        "00200013": [12],
        "00200032": [-1.5, 1000.0, 2.0, 0.01],
        "00200037": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "00280009": ["00181063", "00181065"],
        "00280010": [512],
        "00280030": [0.5, 0.5],
        "00281050": [0.5, -0.0],
        "0040A160": ["text \r\n"],
        "00720082": [-(2**40), 5],
        "0008040C": [2**63 + 1],
    }
    for key, value in expected.items():
        assert fast[key]["Value"] == value, key
    assert fast["00080060"] == {"vr": "CS"}
    assert fast["00080070"] == {"vr": "LO"}
    assert fast["00281201"] == {"vr": "OW", "InlineBinary": "AQIDBA=="}
    assert fast["00420011"] == {"vr": "OB", "BulkDataURI": "bulkdata/00420011"}
    assert fast["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}


def test_values_pydicom_warns_about_or_rejects_fall_back() -> None:
    fast = _check(_part10(
        _explicit(0x00080016, "UI", b"1.02.3 "),  # a malformed UID: pydicom warns
        _explicit(0x00080050, "SH", b"seventeen chars!!"),  # too long for SH
        _explicit(0x00080080, "UN", b"\xff\x01" * 32768),  # pydicom keeps a UN this long as it is
        _explicit(0x00081163, "FD", b"\x00" * 7),  # not a whole number of values: left out
        _explicit(0x00180050, "DS", b"nan"),
        _explicit(0x00180088, "DS", b"1.00000000000000001"),  # longer than 16 characters
        _explicit(0x00181030, "LO", b"esc \x1b(B"),  # an ISO 2022 escape sequence
        _explicit(0x00200012, "IS", b"1.0"),  # pydicom warns, then accepts it as 1
        _explicit(0x00200013, "IS", b"1\\\\2"),  # an empty IS component fails the JSON conversion
        _explicit(0x00200032, "DS", b"1\\\\2"),
        _explicit(0x00280009, "AT", b"\x18\x00\x63\x10\x18\x00"),  # a partial tag: pydicom drops it
    ), {"UI", "SH", "FD", "DS", "LO", "IS", "AT"})
    assert fast["00080080"] == {"vr": "UN", "BulkDataURI": "bulkdata/00080080"}
    assert fast["00200012"] == {"vr": "IS", "Value": [1]}
    assert "00200013" not in fast and "00200032" not in fast and "00081163" not in fast


def test_person_names() -> None:
    fast = _check(_part10(
        _explicit(0x00080005, "CS", b"ISO_IR 192"),
        _explicit(0x00080090, "PN", b"=Yamada^Tarou"),
        _explicit(0x00081050, "PN", b"A^B\\C^D "),
        _explicit(0x00081060, "PN", b"A\\\\B"),  # an empty name inside a multi-value: pydicom drops it
        _explicit(0x00081070, "PN", b"="),  # no groups at all: empty
        _explicit(0x00100010, "PN", "Wang^XiaoDong=王^小東=ワン^シャオドン".encode()),
        _explicit(0x00101001, "PN", b"A=B=C=D"),  # four groups: pydicom warns
        _explicit(0x00101060, "PN", b"Doe^Jane==\x00"),
    ), {"PN"})
    assert fast["00080090"]["Value"] == [{"Alphabetic": "", "Ideographic": "Yamada^Tarou"}]
    assert fast["00081050"]["Value"] == [{"Alphabetic": "A^B"}, {"Alphabetic": "C^D"}]
    assert "00081060" not in fast
    assert fast["00081070"] == {"vr": "PN"}
    assert fast["00100010"]["Value"] == [
        {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東", "Phonetic": "ワン^シャオドン"}]
    assert fast["00101060"]["Value"] == [{"Alphabetic": "Doe^Jane"}]


@pytest.mark.parametrize(("charset", "encoding"), [
    (b"ISO_IR 192", "utf-8"), (b"ISO_IR 100", "latin-1"), (None, "latin-1"), (b"ISO_IR 6", "latin-1"),
    (b"ISO 2022 IR 100", "latin-1"),
])
def test_character_sets_on_the_fast_path(charset: bytes | None, encoding: str) -> None:
    prefix = [] if charset is None else [_explicit(0x00080005, "CS", charset)]
    fast = _check(_part10(
        *prefix,
        _explicit(0x00080080, "LO", "Café Zürich ".encode(encoding)),
        _explicit(0x00100010, "PN", "Müller^Jürgen".encode(encoding)),
        _explicit(0x00104000, "LT", "Bemerkung: größer\r\n".encode(encoding)),
    ), set())
    assert fast["00080080"]["Value"] == ["Café Zürich"]
    assert fast["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]


def test_character_sets_left_to_pydicom() -> None:
    _check(_part10(
        _explicit(0x00080005, "CS", b"ISO_IR 192"),
        _explicit(0x00080080, "LO", b"bad \xff\xfe utf-8"),  # pydicom decodes with replacement characters
        _explicit(0x00100010, "PN", b"Doe^John"),
    ), {"LO"})
    _check(_part10(
        _explicit(0x00080005, "CS", b"\\ISO 2022 IR 100"),  # code extensions
        _explicit(0x00080060, "CS", b"CT"),
        _explicit(0x00080080, "LO", b"Caf\xe9"),
        _explicit(0x00100010, "PN", b"M\xfcller"),
    ), {"converted", "LO", "PN"})  # dcmread converts a multi-valued Specific Character Set while reading
    _check(_part10(
        _explicit(0x00080005, "CS", b"ISO_IR 144"),  # Cyrillic
        _explicit(0x00100010, "PN", "Иванов".encode("iso8859_5")),
        _explicit(0x00200013, "IS", b"4"),
    ), {"PN"})


def test_private_tags_in_explicit_vr() -> None:
    fast = _check(_part10(
        _explicit(0x00080070, "UN", b"Maker"),  # pydicom takes the dictionary's LO instead
        _explicit(0x00090010, "LO", b"ACME 1.0"),
        _explicit(0x00091001, "DS", b"3.5"),
        _explicit(0x00091002, "OB", b"\x00\x01\x02"),
        _explicit(0x00091003, "UN", b"\x01\x02"),  # an unknown private creator: stays UN
        _explicit(0x00091004, "SH", b"private "),
        _explicit(0x00190010, "LO", b"SIEMENS MR HEADER "),
        _explicit(0x0019100B, "UN", b"12.5"),  # the private dictionary says DS
        _explicit(0x0019100C, "UN", b"1000"),  # ... and IS
    ), set())
    assert fast["00080070"] == {"vr": "LO", "Value": ["Maker"]}
    assert fast["00090010"]["Value"] == ["ACME 1.0"]
    assert fast["00091001"]["Value"] == [3.5]
    assert fast["00091002"] == {"vr": "OB", "InlineBinary": "AAEC"}
    assert fast["00091003"] == {"vr": "UN", "InlineBinary": "AQI="}
    assert fast["0019100B"] == {"vr": "DS", "Value": [12.5]}
    assert fast["0019100C"] == {"vr": "IS", "Value": [1000]}


def test_private_tags_in_implicit_vr() -> None:
    fast = _check(_part10(
        _implicit(0x00090000, struct.pack("<L", 8)),  # a private group length: UN
        _implicit(0x00090005, b"odd"),  # neither a private creator nor in a block: UN
        _implicit(0x00090010, b"ACME 1.0"),
        _implicit(0x00091001, b"3.5 "),  # an unknown creator: UN
        _implicit(0x00290010, b"SIEMENS CSA HEADER"),
        _implicit(0x00291008, b"IMAGE NUM 4 "),
        _implicit(0x00291010, b"SV10" + b"\x00" * 2000),
        _implicit(0x00291110, b"SV10"),  # no creator for block 0x11: UN
        transfer_syntax=ImplicitVRLittleEndian,
    ), set())
    assert fast["00090000"] == {"vr": "UN", "InlineBinary": "CAAAAA=="}
    assert fast["00090010"] == {"vr": "LO", "Value": ["ACME 1.0"]}
    assert fast["00091001"] == {"vr": "UN", "InlineBinary": "My41IA=="}
    assert fast["00291008"] == {"vr": "CS", "Value": ["IMAGE NUM 4"]}
    assert fast["00291010"] == {"vr": "OB", "BulkDataURI": "bulkdata/00291010"}
    assert fast["00291110"]["vr"] == "UN"


def _code_item(value: bytes, *, undefined_length: bool = False, implicit: bool = False) -> bytes:
    element = _implicit if implicit else (lambda tag, text: _explicit(tag, "SH", text))
    return _item(element(0x00080100, value), element(0x00080102, b"SCT "), undefined_length=undefined_length)


def test_sequences() -> None:
    data = _part10(
        _explicit(0x00080005, "CS", b"ISO_IR 192"),
        _sequence(0x00081110),  # no items
        _sequence(0x00081140,
                  _item(_explicit(0x00081150, "UI", b"1.2.840.10008.5.1.4.1.1.2\x00"),
                        _explicit(0x00081155, "UI", b"1.2.3\x00")),
                  _item()),  # an empty item
        _sequence(0x00400275,
                  _item(_sequence(0x00400008, _item(undefined_length=True),
                                  _code_item(b"P1", undefined_length=True), undefined_length=True),
                        _explicit(0x00400009, "SH", "Żółw".encode()),
                        _explicit(0x00420011, "OB", b"\x00" * 2000),
                        undefined_length=True),
                  undefined_length=True),
        _sequence(0x00540016,
                  _item(_explicit(0x00181074, "DS", b"257500000.0"),
                        _sequence(0x00540300, _code_item(b"77004003")))),
    )
    fast = _check(data, set())
    assert fast["00081110"] == {"vr": "SQ"}
    assert fast["00081140"]["Value"][1] == {}
    assert fast["00081140"]["Value"][0]["00081155"] == {"vr": "UI", "Value": ["1.2.3"]}
    request = fast["00400275"]["Value"][0]
    assert request["00400008"]["Value"][0] == {}
    assert request["00400008"]["Value"][1]["00080100"] == {"vr": "SH", "Value": ["P1"]}
    assert request["00400009"] == {"vr": "SH", "Value": ["Żółw"]}
    assert request["00420011"] == {"vr": "OB", "BulkDataURI": "bulkdata/00400275/0/00420011"}
    radiopharmaceutical = fast["00540016"]["Value"][0]
    assert radiopharmaceutical["00181074"]["Value"] == [257500000.0]
    assert radiopharmaceutical["00540300"]["Value"][0]["00080100"]["Value"] == ["77004003"]

    # A sequence item converted on its own, with its path, as the recursion does.
    fast_item = _read(data)[0x00400275].value[0]
    reference_item = _read(data)[0x00400275].value[0]
    item_path = (0x00400275, "0")
    _assert_same(dataset_to_json(fast_item, 0, path=item_path),
                 json_model._dataset_to_json_reference(reference_item, 0, path=item_path))


def test_sequences_the_parser_leaves_to_pydicom() -> None:
    fast = _check(_part10(
        _explicit(0x00080005, "CS", b"ISO_IR 100"),
        # an item with its own character set, and one with a UN element
        _sequence(0x00081140, _item(_explicit(0x00080005, "CS", b"ISO_IR 192"),
                                    _explicit(0x00081150, "UI", b"1.2.3\x00"))),
        _sequence(0x00081250, _item(_explicit(0x0020000D, "UN", b"1.2.3\x00"))),
        _sequence(0x00540016, _item(_explicit(0x00181074, "DS", b"nan"))),
    ), {"SQ", "DS"})
    assert fast["00081140"]["Value"][0]["00081150"] == {"vr": "UI", "Value": ["1.2.3"]}


def test_implicit_vr() -> None:
    data = _part10(
        _implicit(0x00080008, b"ORIGINAL\\PRIMARY"),
        _implicit(0x00090010, b"ACME 1.0"),
        _implicit(0x00091001, b"3.5 "),  # a private tag of an unknown creator: UN
        _implicit(0x00100010, b"Doe^John"),
        _sequence(0x00081140, _item(_implicit(0x00081155, b"1.2.3\x00")), implicit=True),
        _sequence(0x00400275, _item(_sequence(0x00400008, _code_item(b"P1", implicit=True),
                                              undefined_length=True, implicit=True),
                                    undefined_length=True),
                  undefined_length=True, implicit=True),
        _implicit(0x00280103, struct.pack("<H", 1)),
        _implicit(0x00280106, struct.pack("<h", -5)),  # 'US or SS', resolved by Pixel Representation
        _implicit(0x00280107, struct.pack("<h", 300)),
        _implicit(0x00283002, struct.pack("<3h", -1, 0, 16)),  # a LUT descriptor: pydicom's special case
        _implicit(0x7FE00010, b"\x00" * (DEFER_SIZE + 2)),  # deferred
        transfer_syntax=ImplicitVRLittleEndian,
    )
    fast = _check(data, {"US or SS"})
    assert fast["00280106"] == {"vr": "SS", "Value": [-5]}
    assert fast["00400275"]["Value"][0]["00400008"]["Value"][0]["00080100"]["Value"] == ["P1"]
    assert fast["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}

    # Only the VR of the pixel data is wanted, so the fast conversion leaves the deferred value unread.
    dataset = _read(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset_to_json(dataset)
    pixel_data = dataset._dict[0x7FE00010]
    assert isinstance(pixel_data, RawDataElement) and pixel_data.value is None


def test_deferred_values() -> None:
    data = _part10(_explicit(0x00100010, "PN", b"Doe^John"), _explicit(0x00420011, "OB", b"%PDF" * 20000))
    _check(data, {"deferred"})  # pydicom reads the value to find its length

    # The ingest service's truncation check reads deferred values (Dataset.get_item), converting them.
    fast_dataset, reference_dataset = _read(data), _read(data)
    for dataset in (fast_dataset, reference_dataset):
        dataset.get_item(0x00420011)
    json_model.fallback_counts.clear()
    for threshold in THRESHOLDS:
        _assert_same(dataset_to_json(fast_dataset, threshold),
                     json_model._dataset_to_json_reference(reference_dataset, threshold))
    assert not json_model.fallback_counts


def test_pixel_value_attributes_without_pixel_representation() -> None:
    _check(_part10(_implicit(0x00280106, struct.pack("<H", 5)), transfer_syntax=ImplicitVRLittleEndian),
           {"US or SS"})


def test_encapsulated_pixel_data() -> None:
    fragments = (_item(b"") + _item(b"\xff\xd8" + b"\x00" * (DEFER_SIZE + 10) + b"\xff\xd9")
                 + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
    data = _part10(_explicit(0x00280010, "US", struct.pack("<H", 8)),
                   _explicit(0x7FE00010, "OB", fragments, _UNDEFINED), transfer_syntax=JPEGBaseline8Bit)
    fast = _check(data, set())
    assert fast["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulkdata/7FE00010"}


def test_customised_pydicom_reading_uses_the_reference() -> None:
    data = _part10(_explicit(0x00180050, "DS", b"1.25"), _explicit(0x00100010, "PN", b"Doe^John"))
    pydicom.config.DS_decimal(True)
    try:
        assert not json_model._fast_path_applies()
        fast = _check(data, set())
    finally:
        pydicom.config.DS_decimal(False)
    assert json_model._fast_path_applies()
    assert fast["00180050"] == {"vr": "DS", "Value": [1.25]}


# --- randomised values, for the corners nobody thought of ---------------------------------------------------

_ELEMENT_SIZES = {"AT": 4, "FD": 8, "FL": 4, "OB": 1, "OD": 8, "OF": 4, "OL": 4, "OV": 8, "OW": 2, "SL": 4,
                  "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}
_PIECES = [b" ", b"  ", b"\\", b"\x00", b"=", b"^", b"0", b"7", b".", b"+", b"-", b"e", b"E", b"\t", b"\r\n",
           b"Doe", b"x y", b"Caf\xe9", "Café".encode(), "王".encode(), b"\xff", b"\x1b(B", b"_", b"nan", b"20240102"]
_CHARACTER_SETS = [None, b"ISO_IR 100", b"ISO_IR 192", b"ISO_IR 6", b"\\ISO 2022 IR 100", b"ISO_IR 144"]


def _tags_by_vr() -> dict[str, list[int]]:
    tags: dict[str, list[int]] = {}
    for tag, entry in sorted(pydicom.datadict.DicomDictionary.items()):
        vr, retired = entry[0], entry[3]
        if vr in json_model._FAST_VRS and not retired and tag >> 16 not in (0x0002, 0x7FE0) and tag & 0xFFFF:
            tags.setdefault(vr, []).append(tag)
    return tags


def _random_number(rng: random.Random, vr: str) -> bytes:
    padding = rng.choice([b"", b"", b" ", b"  "])
    if vr == "IS":
        return padding + rng.choice([b"", b"+", b"-"]) + str(rng.randint(0, 10 ** rng.randint(1, 11))).encode()
    number = rng.uniform(-1e4, 1e4)
    text = rng.choice(["%d", "%.1f", "%.6g", "%e", "%.3E", ".%d", "%d.", "%.17g"])
    return padding + (text % (abs(int(number)) if "d" in text else number)).encode() + padding


def _random_value(rng: random.Random, vr: str) -> bytes:
    count = rng.choice([1, 1, 1, 2, 3])
    if rng.random() < 0.3:  # anything at all
        return b"".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 12)))
    if vr in _ELEMENT_SIZES:
        return bytes(rng.randrange(256) for _ in range(_ELEMENT_SIZES[vr] * count))
    if vr in ("DS", "IS"):
        value = b"\\".join(_random_number(rng, vr) for _ in range(count))
    elif vr == "UI":
        value = b"\\".join(b".".join(rng.choice([b"0", b"1", b"2", b"840", b"10008", b"123456789"])
                                     for _ in range(rng.randint(1, 8))) for _ in range(count))
    elif vr == "PN":
        def group() -> bytes:
            return b"^".join(rng.choice([b"Doe", "Jürgen".encode(), b"M\xfcller", b"", "王".encode()])
                             for _ in range(rng.randint(1, 3)))
        value = b"\\".join(b"=".join(group() for _ in range(rng.randint(1, 3))) for _ in range(count))
    else:
        value = b"\\".join(rng.choice([b"ABC", b"x y", b"Caf\xe9", "Café".encode(), b"", b" lead", b"trail "])
                           for _ in range(count))
    return value + rng.choice([b"", b" ", b"\x00"])


def _random_part10_files(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    tags_by_vr = _tags_by_vr()
    files = []
    for _ in range(count):
        implicit = rng.random() < 0.3
        chosen: dict[int, tuple[str, bytes]] = {}
        character_set = rng.choice(_CHARACTER_SETS)
        if character_set is not None:
            chosen[0x00080005] = ("CS", character_set)
        if rng.random() < 0.3:
            chosen[0x00280103] = ("US", struct.pack("<H", rng.choice([0, 1])))
        for _ in range(rng.randint(1, 8)):
            vr = rng.choice(sorted(tags_by_vr))
            chosen[rng.choice(tags_by_vr[vr])] = (vr, _random_value(rng, vr))

        def encode(tag: int, vr: str, value: bytes, *, implicit: bool = implicit) -> bytes:
            return _implicit(tag, value) if implicit else _explicit(tag, vr, value)

        elements = [encode(tag, *chosen[tag]) for tag in sorted(chosen)]
        item = _item(*(encode(tag, *chosen[tag]) for tag in sorted(chosen) if tag != 0x00080005),
                     undefined_length=rng.random() < 0.5)
        elements.append(_sequence(0x00400275, item, undefined_length=rng.random() < 0.5, implicit=implicit))
        files.append(_part10(*elements,
                             transfer_syntax=ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian))
    return files


@pytest.mark.parametrize("seed", range(12))
def test_random_values_match_reference(seed: int) -> None:
    for data in _random_part10_files(seed, 25):
        _assert_matches_reference(data, (0, 1024))


@pytest.mark.parametrize("mode", ["RAISE", "IGNORE"])
def test_other_validation_modes(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What pydicom warns about in the default WARN mode it drops in RAISE mode: the fast path never decides that."""
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", getattr(pydicom.config, mode))
    for data in _random_part10_files(100, 40):
        _assert_matches_reference(data, (1024,))
    names = {"CT_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm", "chrX2.dcm", "badVR.dcm"}
    for path in CORPUS:
        if path.name in names:
            _assert_matches_reference(path, (1024,))
