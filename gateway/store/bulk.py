"""Loading index rows without instance files: for index migrations and for measuring search at scale.

Rows go through the same writer as instances stored over STOW-RS or C-STORE, so what QIDO-RS and C-FIND
see (counts, modalities, attribute JSON) is exactly what real ingest would have produced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from gateway.dicom.index_fields import index_fields
from gateway.dicom.json_model import dumps
from gateway.dicom.tags import tag_hex
from gateway.store.db import create_db_engine, upgrade_database, write_session
from gateway.store.files import FileStore
from gateway.store.index_writer import GroupIndexWriter, IndexRecord

NUMERIC_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "UV", "SV"})
FLOAT_VRS = frozenset({"DS", "FL", "FD"})


def keyword_row_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A {keyword: value} mapping as a DICOM JSON dataset (file meta keywords are left out)."""
    metadata: dict[str, Any] = {}
    for keyword, value in row.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"unknown DICOM keyword {keyword!r}")
        if tag >> 16 == 0x0002:
            continue
        vr = dictionary_VR(tag)
        if value is None or value == "":
            metadata[tag_hex(tag)] = {"vr": vr}
        elif vr == "PN":
            metadata[tag_hex(tag)] = {"vr": vr, "Value": [{"Alphabetic": str(value)}]}
        elif vr in NUMERIC_VRS:
            metadata[tag_hex(tag)] = {"vr": vr, "Value": [int(value)]}
        elif vr in FLOAT_VRS:
            metadata[tag_hex(tag)] = {"vr": vr, "Value": [float(value)]}
        else:
            metadata[tag_hex(tag)] = {"vr": vr, "Value": [str(value)]}
    return dict(sorted(metadata.items()))


def bulk_insert_index_rows(database_url: str, rows: Iterable[Mapping[str, Any]], batch_size: int = 5000) -> int:
    """Index one instance per row ({DICOM keyword: value}); returns the number of rows indexed.

    Meant for an index nobody else writes to at the same time. The rows' instance files do not exist: WADO
    of them answers as for a lost file, which is what they are.
    """
    upgrade_database(database_url)
    engine = create_db_engine(database_url)
    total = 0
    iterator = iter(rows)
    try:
        while batch := list(islice(iterator, batch_size)):
            records = []
            for row in batch:
                metadata = keyword_row_to_json(row)
                fields = index_fields(metadata)
                records.append(IndexRecord(
                    fields, metadata, dumps(metadata), str(row.get("TransferSyntaxUID", "1.2.840.10008.1.2.1")),
                    FileStore.relative_path(fields.study_instance_uid, fields.series_instance_uid,
                                            fields.sop_instance_uid), 0, "0" * 64))
            with write_session(engine) as session:
                writer = GroupIndexWriter(session, (r.fields for r in records), isolate=False)
                for record in records:
                    writer.add(record)
                writer.finish()
            total += len(records)
    finally:
        engine.dispose()
    return total
