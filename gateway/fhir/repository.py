"""Reading and writing resource rows, their versions and their search-index rows inside one SQL session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from gateway.fhir.models import (
    FhirDate,
    FhirQuantity,
    FhirReference,
    FhirResource,
    FhirResourceVersion,
    FhirString,
    FhirToken,
    FhirTokenDate,
    FhirTypeCount,
)
from gateway.fhir.params import (
    extract,
    index_time,
    instant_text,
    split_reference,
    token_date_name,
    token_date_pairs,
)

INDEX_TABLES = (FhirToken, FhirString, FhirDate, FhirReference, FhirQuantity, FhirTokenDate)

# Every literal reference of a resource is also indexed under this name, whatever element holds it: deleting a
# referenced resource (409) and merging patients must see all of them, not only the searchable ones.
ANY_REFERENCE = "_reference"


@dataclass
class Stored:
    """A resource row as the service hands it around: its JSON (with meta) and version facts."""

    pk: int
    res_type: str
    res_id: str
    version_id: int
    last_updated: str
    deleted: bool
    resource: dict[str, Any] | None


def _stored(row: Any) -> Stored:
    return Stored(row.pk, row.res_type, row.res_id, row.version_id, row.last_updated, row.deleted,
                  json.loads(row.content) if row.content and not row.deleted else None)


def get(session: Session, res_type: str, res_id: str) -> Stored | None:
    table = FhirResource.__table__  # type: ignore[attr-defined]
    row = session.execute(select(table).where(table.c.res_type == res_type, table.c.res_id == res_id)).first()
    return _stored(row) if row is not None else None


def get_many(session: Session, pks: list[int]) -> dict[int, Stored]:
    table = FhirResource.__table__  # type: ignore[attr-defined]
    found: dict[int, Stored] = {}
    for start in range(0, len(pks), 500):
        chunk = pks[start:start + 500]
        for row in session.execute(select(table).where(table.c.pk.in_(chunk))):
            found[row.pk] = _stored(row)
    return found


def version(session: Session, pk: int, version_id: int) -> tuple[str, bool, dict[str, Any] | None] | None:
    table = FhirResourceVersion.__table__  # type: ignore[attr-defined]
    row = session.execute(select(table).where(table.c.res_pk == pk, table.c.version_id == version_id)).first()
    if row is None:
        return None
    return row.last_updated, row.deleted, (json.loads(row.content) if row.content else None)


def versions(session: Session, pk: int) -> list[tuple[int, str, str, bool, dict[str, Any] | None]]:
    table = FhirResourceVersion.__table__  # type: ignore[attr-defined]
    rows = session.execute(select(table).where(table.c.res_pk == pk).order_by(table.c.version_id.desc())).all()
    return [(r.version_id, r.last_updated, r.method, r.deleted, json.loads(r.content) if r.content else None)
            for r in rows]


def with_meta(resource: dict[str, Any], res_id: str, version_id: int, moment: datetime) -> dict[str, Any]:
    """The stored form: resourceType, id and meta (versionId, lastUpdated) first, then the rest."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = instant_text(moment)
    ordered: dict[str, Any] = {"resourceType": resource["resourceType"], "id": res_id, "meta": meta}
    ordered.update((key, value) for key, value in resource.items() if key not in ("resourceType", "id", "meta"))
    return ordered


def write(session: Session, resource: dict[str, Any], existing: Stored | None, res_id: str,
          method: str) -> Stored:
    """Store a new current version (create when ``existing`` is None) and reindex it."""
    moment = datetime.now(UTC)
    stamp = index_time(moment)
    version_id = existing.version_id + 1 if existing is not None else 1
    document = with_meta(resource, res_id, version_id, moment)
    content = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    table = FhirResource.__table__  # type: ignore[attr-defined]
    if existing is None:
        pk = session.execute(insert(table).values(res_type=document["resourceType"], res_id=res_id,
                                                  version_id=version_id, last_updated=stamp, deleted=False,
                                                  content=content)).inserted_primary_key[0]
    else:
        pk = existing.pk
        session.execute(update(table).where(table.c.pk == pk).values(version_id=version_id, last_updated=stamp,
                                                                     deleted=False, content=content))
    session.execute(insert(FhirResourceVersion.__table__).values(  # type: ignore[attr-defined]
        res_pk=pk, version_id=version_id, last_updated=stamp, method=method, deleted=False, content=content))
    reindex(session, pk, document)
    if existing is None or existing.deleted:
        count_current(session, document["resourceType"], 1)
    return Stored(pk, document["resourceType"], res_id, version_id, stamp, False, document)


def mark_deleted(session: Session, existing: Stored) -> Stored:
    moment = datetime.now(UTC)
    stamp = index_time(moment)
    version_id = existing.version_id + 1
    table = FhirResource.__table__  # type: ignore[attr-defined]
    session.execute(update(table).where(table.c.pk == existing.pk).values(
        version_id=version_id, last_updated=stamp, deleted=True))
    session.execute(insert(FhirResourceVersion.__table__).values(  # type: ignore[attr-defined]
        res_pk=existing.pk, version_id=version_id, last_updated=stamp, method="DELETE", deleted=True, content=""))
    _drop_index(session, [existing.pk])
    count_current(session, existing.res_type, -1)
    return Stored(existing.pk, existing.res_type, existing.res_id, version_id, stamp, True, None)


def count_current(session: Session, res_type: str, delta: int) -> None:
    """Move a type's count of current resources (callers hold the FHIR write lock, so no update is lost)."""
    table = FhirTypeCount.__table__  # type: ignore[attr-defined]
    changed = session.execute(update(table).where(table.c.res_type == res_type)
                              .values(current=table.c.current + delta)).rowcount
    if not changed:
        session.execute(insert(table).values(res_type=res_type, current=max(delta, 0)))


def current_count(session: Session, res_type: str) -> int:
    table = FhirTypeCount.__table__  # type: ignore[attr-defined]
    return int(session.execute(select(table.c.current).where(table.c.res_type == res_type)).scalar() or 0)


def _drop_index(session: Session, pks: list[int]) -> None:
    for model in INDEX_TABLES:
        table = model.__table__  # type: ignore[attr-defined]
        session.execute(delete(table).where(table.c.res_pk.in_(pks)))


def current_batch(session: Session, res_types: list[str], after_pk: int, limit: int) -> list[tuple[int, str]]:
    """(pk, JSON text) of current resources of these types with pk above ``after_pk``, in pk order."""
    table = FhirResource.__table__  # type: ignore[attr-defined]
    return [(row.pk, row.content) for row in session.execute(
        select(table.c.pk, table.c.content).where(table.c.res_type.in_(res_types), table.c.deleted.is_(False),
                                                  table.c.pk > after_pk).order_by(table.c.pk).limit(limit))]


def reindex(session: Session, pk: int, resource: dict[str, Any]) -> None:
    reindex_many(session, [(pk, resource)])


def reindex_many(session: Session, resources: list[tuple[int, dict[str, Any]]]) -> None:
    """Replace the search-index rows of stored resources (pk, JSON): one delete and one insert per table."""
    if not resources:
        return
    _drop_index(session, [pk for pk, _ in resources])
    rows: dict[type, list[dict[str, Any]]] = {}
    for pk, resource in resources:
        for model, values in index_rows(resource):
            rows.setdefault(model, []).extend({"res_pk": pk, **value} for value in values)
    for model, values in rows.items():
        session.execute(insert(model.__table__), values)  # type: ignore[attr-defined]


def index_rows(resource: dict[str, Any]) -> list[tuple[type, list[dict[str, Any]]]]:
    """The search-index rows of a resource per index model (without ``res_pk``): what a write stores.

    Bulk loaders (the FHIR benchmark) insert these themselves, so they index exactly as the service does.
    """
    rows = extract(resource)
    res_type = resource["resourceType"]
    references = list(rows.references)
    for reference in iter_references(resource):
        target_type, target_id = split_reference(reference)
        if target_id:
            references.append({"param": ANY_REFERENCE, "target_type": target_type, "target_id": target_id,
                               "url": None})
    token_dates = [{"param": token_date_name(token_name, date_name), "system": token["system"],
                    "code": token["code"], "low": date["low"], "high": date["high"], "wide": date["wide"]}
                   for token_name, date_name in token_date_pairs().get(res_type, ())
                   for token in rows.tokens if token["param"] == token_name
                   for date in rows.dates if date["param"] == date_name]
    found = []
    for model, values in ((FhirToken, rows.tokens), (FhirString, rows.strings), (FhirDate, rows.dates),
                          (FhirReference, references), (FhirQuantity, rows.quantities),
                          (FhirTokenDate, token_dates)):
        if values:
            found.append((model, [{"res_type": res_type, **value} for value in values]))
    return found


def iter_references(node: Any) -> Iterator[str]:
    """Every Reference.reference string in a resource, contained resources included."""
    if isinstance(node, dict):
        reference = node.get("reference")
        if isinstance(reference, str):
            yield reference
        for key, value in node.items():
            if key != "reference":
                yield from iter_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_references(item)


def rewrite_references(node: Any, mapping: dict[str, str]) -> Any:
    """A copy of ``node`` with each Reference.reference found in ``mapping`` replaced."""
    if isinstance(node, dict):
        result = {key: rewrite_references(value, mapping) for key, value in node.items()}
        reference = node.get("reference")
        if isinstance(reference, str) and reference in mapping:
            result["reference"] = mapping[reference]
        return result
    if isinstance(node, list):
        return [rewrite_references(item, mapping) for item in node]
    return node


def referencing(session: Session, target_type: str, target_id: str) -> list[int]:
    """Primary keys of current resources holding a literal reference to Type/id."""
    table = FhirReference.__table__  # type: ignore[attr-defined]
    return list(session.execute(select(table.c.res_pk).where(
        table.c.target_type == target_type, table.c.target_id == target_id,
        table.c.param == ANY_REFERENCE).distinct()).scalars())


def existing_ids(session: Session, res_type: str, ids: list[str]) -> set[str]:
    table = FhirResource.__table__  # type: ignore[attr-defined]
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        found.update(session.execute(select(table.c.res_id).where(
            table.c.res_type == res_type, table.c.res_id.in_(ids[start:start + 500]),
            table.c.deleted.is_(False))).scalars())
    return found
