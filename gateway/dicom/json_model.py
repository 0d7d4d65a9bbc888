"""The DICOM JSON model (PS3.18 F.2) with BulkDataURIs that point back into the gateway.

BulkDataURIs are stored relative to the instance (``bulkdata/7FE00010``) and made absolute when a response
is written, because the base URL depends on how the client reached the gateway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from gateway.dicom.tags import tag_hex

log = logging.getLogger(__name__)

PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULKDATA_PREFIX = "bulkdata/"


def bulkdata_path(path: Iterable[int | str]) -> str:
    return BULKDATA_PREFIX + "/".join(p if isinstance(p, str) else tag_hex(p) for p in path)


def _element_json(element: DataElement, bulk_threshold: int, path: tuple[int | str, ...]) -> dict[str, Any]:
    def bulk_handler(_element: DataElement) -> str:
        return bulkdata_path(path)

    return element.to_json_dict(bulk_handler, bulk_threshold)


def dataset_to_json(dataset: Dataset, bulk_threshold: int = 1024, *, tags: frozenset[int] | None = None,
                    path: tuple[int | str, ...] = ()) -> dict[str, Any]:
    """Convert a dataset to a DICOM JSON object; ``tags`` keeps only those top-level attributes.

    Elements that cannot be decoded are left out and logged rather than failing the whole instance, since
    archives hold objects with slightly malformed values that are still clinically useful.
    """
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
                raw = dataset.get_item(tag)
                vr = raw.VR if raw is not None and raw.VR in BINARY_VRS else "OW"
                # Pixel data is never inlined and never loaded here: it can be gigabytes.
                out[tag_hex(tag)] = {"vr": vr, "BulkDataURI": bulkdata_path(element_path)}
                continue
            element = dataset[tag]
            if element.VR == "SQ":
                items = [dataset_to_json(item, bulk_threshold, path=(*element_path, str(index)))
                         for index, item in enumerate(element.value)]
                out[tag_hex(tag)] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            else:
                out[tag_hex(tag)] = _element_json(element, bulk_threshold, element_path)
        except Exception as exc:  # noqa: BLE001 - one bad element must not lose the instance
            log.warning("attribute %s left out of DICOM JSON: %s", tag_hex(tag), exc)
    return out


def absolutise_bulkdata(json_text: str, instance_url: str) -> str:
    """Turn stored relative BulkDataURIs into absolute ones under ``instance_url``.

    The key-and-quote sequence can only occur as a key: inside a JSON string value a quote is escaped.
    """
    return json_text.replace('"BulkDataURI": "', f'"BulkDataURI": "{instance_url}/').replace(
        '"BulkDataURI":"', f'"BulkDataURI":"{instance_url}/')


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
