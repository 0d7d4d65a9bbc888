"""The FHIR service: create/read/update/delete, search, history, transaction/batch and patient merge.

Providers are data (``search_parameters.toml``), so one code path serves every resource type; the Flask
blueprint and the other plug-ins (EHR ingest, mapping reports) call this class, never the tables. All writes
take one lock (SQLite's write lock; a PostgreSQL advisory lock) so conditional creates on an identifier are
race-free across processes.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.fhir import repository, search
from gateway.fhir.errors import (
    FhirError,
    bad_request,
    conflict,
    gone,
    not_found,
    operation_outcome,
    precondition_failed,
    unprocessable,
)
from gateway.fhir.models import FhirImagingLink, FhirReference, FhirResource
from gateway.fhir.params import definitions, instant_text, split_reference
from gateway.fhir.repository import Stored
from gateway.fhir.validation import validate
from gateway.store.db import read_session, write_session

if TYPE_CHECKING:
    from gateway.node import Node

WRITE_LOCK = "fhir-resources"
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
DEFAULT_MRN_SYSTEM = "urn:gateway:mrn"


@dataclass(frozen=True)
class FhirConfig:
    """The ``[fhir]`` table of the configuration file."""

    # Identifier system of the hospital's medical record number: DICOM PatientIDs without a configured issuer
    # are matched against Patient.identifier with this system.
    mrn_system: str = DEFAULT_MRN_SYSTEM
    # IssuerOfPatientID -> identifier system, for sites where several assigning authorities feed the PACS.
    issuers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> FhirConfig:
        from gateway.config import ConfigError

        unknown = set(section) - {"mrn_system", "issuers"}
        if unknown:
            raise ConfigError(f"configuration [fhir]: unknown keys {sorted(unknown)}")
        issuers = section.get("issuers", {})
        if not isinstance(issuers, dict) or not all(isinstance(v, str) for v in issuers.values()):
            raise ConfigError("configuration [fhir].issuers must be a table of issuer = \"system\"")
        return cls(str(section.get("mrn_system", DEFAULT_MRN_SYSTEM)), tuple(sorted(issuers.items())))

    def identifier_system(self, issuer: str) -> str:
        """The Patient.identifier system for a DICOM IssuerOfPatientID."""
        issuer = issuer.strip()
        mapped = dict(self.issuers).get(issuer)
        if mapped:
            return mapped
        if issuer and re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))+", issuer):
            return f"urn:oid:{issuer}"
        return self.mrn_system


@dataclass
class Outcome:
    status: int
    stored: Stored

    def response(self, base: str) -> dict[str, Any]:
        status_text = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}.get(self.status, str(self.status))
        result: dict[str, Any] = {"status": status_text}
        if not self.stored.deleted:
            result["location"] = f"{self.stored.res_type}/{self.stored.res_id}/_history/{self.stored.version_id}"
        result["etag"] = f'W/"{self.stored.version_id}"'
        result["lastModified"] = _instant(self.stored.last_updated)
        return result


def _instant(stamp: str) -> str:
    return instant_text(datetime.fromisoformat(stamp).replace(tzinfo=UTC))


def _now() -> str:
    return instant_text(datetime.now(UTC))


def _version_from_etag(value: str) -> int:
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise bad_request(f"If-Match {value!r} is not a version ETag (W/\"n\")")
    return int(text)


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    full_url: str | None
    resource: dict[str, Any] | None
    if_none_exist: str | None
    if_match: str | None
    res_type: str = ""
    res_id: str | None = None
    query: list[tuple[str, str]] | None = None
    existing: Stored | None = None  # conditional create matched an existing resource


class FhirService:
    def __init__(self, node: Node, config: FhirConfig | None = None) -> None:
        self.node = node
        self.engine = node.engine
        self.config = config or FhirConfig.from_section(node.settings.section("fhir"))
        from gateway.fhir.imaging import ImagingSync

        self.imaging = ImagingSync(self)

    # -- addresses -----------------------------------------------------------------------------------------

    @property
    def site_root(self) -> str:
        settings = self.node.settings
        if settings.public_base_url:
            return settings.public_base_url.rstrip("/")
        host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{settings.port}"

    @property
    def base_url(self) -> str:
        return self.site_root + "/fhir"

    # -- sessions ------------------------------------------------------------------------------------------

    def writing(self) -> Any:
        return write_session(self.engine, lock_keys=(WRITE_LOCK,))

    def reading(self) -> Any:
        return read_session(self.engine)

    # -- read ----------------------------------------------------------------------------------------------

    @staticmethod
    def check_type(res_type: str) -> None:
        if res_type not in definitions():
            raise not_found(f"resource type {res_type!r} is not supported here "
                            f"(supported: {', '.join(definitions())})")

    def read(self, res_type: str, res_id: str) -> dict[str, Any]:
        return self.read_stored(res_type, res_id).resource  # type: ignore[return-value]

    def read_stored(self, res_type: str, res_id: str) -> Stored:
        self.check_type(res_type)
        self.imaging.sync()
        with self.reading() as session:
            return self._current(session, res_type, res_id)

    @staticmethod
    def _current(session: Session, res_type: str, res_id: str) -> Stored:
        stored = repository.get(session, res_type, res_id)
        if stored is None:
            raise not_found(f"{res_type}/{res_id} is not known")
        if stored.deleted:
            raise gone(f"{res_type}/{res_id} was deleted")
        return stored

    def vread(self, res_type: str, res_id: str, version_id: str) -> dict[str, Any]:
        self.check_type(res_type)
        self.imaging.sync()
        with self.reading() as session:
            stored = repository.get(session, res_type, res_id)
            found = repository.version(session, stored.pk, int(version_id)) \
                if stored is not None and version_id.isdigit() else None
        if found is None:
            raise not_found(f"{res_type}/{res_id}/_history/{version_id} is not known")
        if found[1]:
            raise gone(f"{res_type}/{res_id} version {version_id} is a deletion")
        return found[2]  # type: ignore[return-value]

    def history(self, res_type: str, res_id: str, base: str | None = None) -> dict[str, Any]:
        self.check_type(res_type)
        self.imaging.sync()
        base = base or self.base_url
        with self.reading() as session:
            stored = repository.get(session, res_type, res_id)
            if stored is None:
                raise not_found(f"{res_type}/{res_id} is not known")
            versions = repository.versions(session, stored.pk)
        entries = []
        for version_id, stamp, method, deleted, content in versions:
            entry: dict[str, Any] = {"fullUrl": f"{base}/{res_type}/{res_id}"}
            if content is not None:
                entry["resource"] = content
            url = f"{res_type}/{res_id}" if method != "POST" else res_type
            entry["request"] = {"method": method, "url": url}
            entry["response"] = {"status": "204 No Content" if deleted else ("201 Created" if method == "POST"
                                                                              else "200 OK"),
                                 "etag": f'W/"{version_id}"', "lastModified": _instant(stamp)}
            entries.append(entry)
        return {"resourceType": "Bundle", "type": "history", "timestamp": _now(), "total": len(entries),
                "link": [{"relation": "self", "url": f"{base}/{res_type}/{res_id}/_history"}], "entry": entries}

    def search(self, res_type: str, params: list[tuple[str, str]], strict: bool = False,
               base: str | None = None) -> dict[str, Any]:
        self.check_type(res_type)
        self.imaging.sync()
        request = search.parse_request(res_type, params, strict)
        with self.reading() as session:
            result = search.execute(session, request)
            resources = repository.get_many(session, result.matches + result.includes)
        return search.bundle(base or self.base_url, request, result, resources, _now())

    def _search_pks(self, session: Session, res_type: str, params: list[tuple[str, str]]) -> list[int]:
        """Matches of a conditional interaction's criteria (strict: an unknown parameter must not match all)."""
        request = search.parse_request(res_type, params, strict=True)
        request.count, request.total = 3, "none"
        if not request.filters:
            raise precondition_failed(f"conditional criteria for {res_type} match everything: give parameters")
        return search.execute(session, request).matches

    def iter_resources(self, res_type: str, since: str | None = None) -> Iterator[dict[str, Any]]:
        """Every current resource of a type, in storage order, read in pages (memory stays flat)."""
        self.check_type(res_type)
        self.imaging.sync()
        table = FhirResource.__table__  # type: ignore[attr-defined]
        last_pk = 0
        while True:
            query = select(table.c.pk, table.c.content).where(
                table.c.res_type == res_type, table.c.deleted.is_(False), table.c.pk > last_pk) \
                .order_by(table.c.pk).limit(500)
            if since:
                query = query.where(table.c.last_updated >= since)
            with self.reading() as session:
                rows = session.execute(query).all()
            if not rows:
                return
            for row in rows:
                yield json.loads(row.content)
            last_pk = rows[-1].pk

    def iter_patient_compartment(self, res_type: str, patient_ids: list[str],
                                 since: str | None = None) -> Iterator[dict[str, Any]]:
        """Current resources of a type in the compartments of these Patients, in storage order.

        A resource is in a Patient's compartment when its ``patient`` search parameter names that Patient (the
        Patients themselves for type Patient); found through the reference index, read in pages.
        """
        self.check_type(res_type)
        self.imaging.sync()
        table = FhirResource.__table__  # type: ignore[attr-defined]
        ref = FhirReference.__table__  # type: ignore[attr-defined]
        ids = sorted(set(patient_ids))
        pks: set[int] = set()
        with self.reading() as session:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                if res_type == "Patient":
                    query = select(table.c.pk).where(table.c.res_type == "Patient", table.c.res_id.in_(chunk))
                else:
                    query = select(ref.c.res_pk).where(ref.c.res_type == res_type, ref.c.param == "patient",
                                                       ref.c.target_type == "Patient", ref.c.target_id.in_(chunk))
                pks.update(session.execute(query).scalars())
        ordered = sorted(pks)
        for start in range(0, len(ordered), 500):
            query = select(table.c.content).where(table.c.pk.in_(ordered[start:start + 500]),
                                                  table.c.deleted.is_(False)).order_by(table.c.pk)
            if since:
                query = query.where(table.c.last_updated >= since)
            with self.reading() as session:
                rows = session.execute(query).scalars().all()
            for content in rows:
                yield json.loads(content)

    # -- write ---------------------------------------------------------------------------------------------

    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> dict[str, Any]:
        return self.create_outcome(resource, if_none_exist).stored.resource  # type: ignore[return-value]

    def create_outcome(self, resource: dict[str, Any], if_none_exist: str | None = None) -> Outcome:
        self.imaging.sync()
        res_type = self._checked_resource(resource)
        with self.writing() as session:
            if if_none_exist:
                matches = self._search_pks(session, res_type, _query(if_none_exist))
                if len(matches) > 1:
                    raise precondition_failed(f"If-None-Exist {if_none_exist!r} matches {len(matches)} resources")
                if matches:
                    return Outcome(200, repository.get_many(session, matches)[matches[0]])
            outcome = self._create(session, resource, new_id())
            self._check_references(session, [outcome.stored])
            return outcome

    def update(self, resource: dict[str, Any], if_match: str | None = None) -> dict[str, Any]:
        res_id = resource.get("id")
        if not isinstance(res_id, str):
            raise bad_request("an update needs the resource's id")
        return self.update_outcome(resource, res_id, if_match=if_match).stored.resource  # type: ignore[return-value]

    def update_outcome(self, resource: dict[str, Any], res_id: str | None,
                       conditional: list[tuple[str, str]] | None = None, if_match: str | None = None) -> Outcome:
        self.imaging.sync()
        res_type = self._checked_resource(resource)
        with self.writing() as session:
            if conditional is not None:
                res_id = self._conditional_target(session, res_type, conditional, resource)
            assert res_id is not None
            outcome = self._update(session, resource, res_id, if_match)
            self._check_references(session, [outcome.stored])
            return outcome

    def delete(self, res_type: str, res_id: str) -> None:
        self.delete_outcome(res_type, res_id)

    def delete_outcome(self, res_type: str, res_id: str) -> Outcome | None:
        self.check_type(res_type)
        self.imaging.sync()
        with self.writing() as session:
            return self._delete(session, res_type, res_id)

    def conditional_delete(self, res_type: str, params: list[tuple[str, str]]) -> Outcome | None:
        self.check_type(res_type)
        self.imaging.sync()
        with self.writing() as session:
            matches = self._search_pks(session, res_type, params)
            if len(matches) > 1:
                raise precondition_failed(f"the criteria match {len(matches)} resources; delete them one by one")
            if not matches:
                return None
            stored = repository.get_many(session, matches)[matches[0]]
            return self._delete(session, res_type, stored.res_id)

    def _checked_resource(self, resource: Any) -> str:
        if not isinstance(resource, dict):
            raise bad_request("the body must be a FHIR resource (a JSON object)")
        res_type = resource.get("resourceType")
        if not isinstance(res_type, str):
            raise bad_request("the resource has no resourceType")
        if res_type not in definitions():
            raise unprocessable(f"resource type {res_type!r} is not supported here", "not-supported")
        validate(resource)
        return res_type

    def _conditional_target(self, session: Session, res_type: str, params: list[tuple[str, str]],
                            resource: dict[str, Any]) -> str:
        matches = self._search_pks(session, res_type, params)
        if len(matches) > 1:
            raise precondition_failed(f"the criteria match {len(matches)} {res_type} resources")
        if matches:
            found = repository.get_many(session, matches)[matches[0]].res_id
            if resource.get("id") not in (None, found):
                raise bad_request(f"the resource's id {resource['id']!r} differs from the match {found!r}")
            return found
        given = resource.get("id")
        return given if isinstance(given, str) else new_id()

    def _create(self, session: Session, resource: dict[str, Any], res_id: str) -> Outcome:
        # A create assigns the id; one sent in the body is ignored (R4 3.1.0.5).
        stored = repository.write(session, {**resource, "id": res_id}, None, res_id, "POST")
        return Outcome(201, stored)

    def _update(self, session: Session, resource: dict[str, Any], res_id: str, if_match: str | None) -> Outcome:
        res_type = resource["resourceType"]
        if not ID_PATTERN.match(res_id):
            raise bad_request(f"{res_id!r} is not a FHIR id")
        if resource.get("id") not in (None, res_id):
            raise bad_request(f"the resource's id {resource.get('id')!r} differs from the id in the URL {res_id!r}")
        existing = repository.get(session, res_type, res_id)
        if if_match is not None:
            expected = _version_from_etag(if_match)
            if existing is None or existing.version_id != expected:
                current = "none" if existing is None else existing.version_id
                raise precondition_failed(f"If-Match {if_match} does not match the current version ({current})")
        stored = repository.write(session, {**resource, "id": res_id}, existing, res_id, "PUT")
        return Outcome(201 if existing is None or existing.deleted else 200, stored)

    def _delete(self, session: Session, res_type: str, res_id: str) -> Outcome | None:
        existing = repository.get(session, res_type, res_id)
        if existing is None:
            raise not_found(f"{res_type}/{res_id} is not known")
        if existing.deleted:
            return None
        holders = [pk for pk in repository.referencing(session, res_type, res_id) if pk != existing.pk]
        if holders:
            names = [f"{s.res_type}/{s.res_id}" for s in repository.get_many(session, holders[:5]).values()]
            raise conflict(f"{res_type}/{res_id} is referenced by {len(holders)} resource(s) "
                           f"({', '.join(names)}); delete or change those first")
        return Outcome(204, repository.mark_deleted(session, existing))

    def _check_references(self, session: Session, written: list[Stored]) -> None:
        """Literal references to supported types must name current resources (R4 business rule: 422)."""
        wanted: dict[str, set[str]] = {}
        for stored in written:
            for reference in repository.iter_references(stored.resource):
                if reference.startswith("urn:uuid:") or reference.startswith("urn:oid:"):
                    raise unprocessable(f"{stored.res_type}/{stored.res_id}: reference {reference!r} "
                                        "resolves to no entry of the transaction", "not-found")
                target_type, target_id = split_reference(reference)
                if target_type in definitions() and target_id and (
                        not reference.startswith("http") or reference.startswith(self.base_url + "/")):
                    wanted.setdefault(target_type, set()).add(target_id)
        for target_type, ids in wanted.items():
            missing = ids - repository.existing_ids(session, target_type, sorted(ids))
            if missing:
                raise unprocessable(f"references to unknown resources: "
                                    f"{', '.join(f'{target_type}/{i}' for i in sorted(missing))}", "not-found")

    # -- transaction and batch -----------------------------------------------------------------------------

    def transaction(self, bundle: dict[str, Any], base: str | None = None) -> dict[str, Any]:
        """Process a transaction (atomic) or batch Bundle; returns the response Bundle.

        A failed transaction raises FhirError with the failing entry's status and OperationOutcome and leaves
        the database as it was.
        """
        self.imaging.sync()
        base = base or self.base_url
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise bad_request("the body must be a Bundle")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise bad_request(f"Bundle.type must be transaction or batch, not {kind!r}")
        raw_entries = bundle.get("entry") or []
        if not isinstance(raw_entries, list):
            raise bad_request("Bundle.entry must be a list")
        if kind == "batch":
            return self._batch(raw_entries, base)
        entries = [self._parse_entry(index, raw) for index, raw in enumerate(raw_entries)]
        try:
            with self.writing() as session:
                responses = self._transaction(session, entries, base)
        except FhirError as exc:
            raise FhirError(exc.status, _locate(exc.outcome, exc.index)
                            if isinstance(getattr(exc, "index", None), int) else exc.outcome) from None
        return {"resourceType": "Bundle", "type": "transaction-response", "timestamp": _now(), "entry": responses}

    def _batch(self, raw_entries: list[Any], base: str) -> dict[str, Any]:
        responses = []
        for index, raw in enumerate(raw_entries):
            try:
                entry = self._parse_entry(index, raw)
                with self.writing() as session:
                    responses.append(self._transaction(session, [entry], base)[0])
            except FhirError as exc:
                responses.append({"response": {"status": str(exc.status), "outcome": exc.outcome}})
        return {"resourceType": "Bundle", "type": "batch-response", "timestamp": _now(), "entry": responses}

    def _parse_entry(self, index: int, raw: Any) -> _Entry:
        def fail(message: str) -> FhirError:
            error = bad_request(f"Bundle.entry[{index}]: {message}")
            error.index = index  # type: ignore[attr-defined]
            return error

        if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
            raise fail("each entry needs a request")
        request = raw["request"]
        method = str(request.get("method", "")).upper()
        url = request.get("url")
        if method not in ("GET", "HEAD", "POST", "PUT", "DELETE") or not isinstance(url, str) or not url:
            raise fail("request.method must be GET, POST, PUT or DELETE with a request.url")
        resource = raw.get("resource")
        if method in ("POST", "PUT"):
            if not isinstance(resource, dict):
                raise fail(f"a {method} entry needs a resource")
            try:
                validate(resource)
            except FhirError as exc:
                exc.index = index  # type: ignore[attr-defined]
                raise
        entry = _Entry(index, method, url.lstrip("/"), raw.get("fullUrl"), resource, request.get("ifNoneExist"),
                       request.get("ifMatch"))
        path, _, query = entry.url.partition("?")
        parts = path.split("/")
        entry.res_type = parts[0]
        if entry.res_type not in definitions():
            error = unprocessable(f"Bundle.entry[{index}]: resource type {entry.res_type!r} is not supported",
                                  "not-supported")
            error.index = index  # type: ignore[attr-defined]
            raise error
        if method in ("POST", "PUT") and resource.get("resourceType") != entry.res_type:  # type: ignore[union-attr]
            raise fail(f"the resource is a {resource.get('resourceType')}, the url names {entry.res_type}")  # type: ignore[union-attr]
        if query:
            entry.query = _query(query)
        if len(parts) >= 2:
            entry.res_id = parts[1]
        if method == "POST" and len(parts) != 1:
            raise fail("a POST url is the resource type alone")
        if method in ("PUT", "DELETE") and entry.res_id is None and entry.query is None:
            raise fail(f"a {method} url needs an id or search criteria")
        return entry

    def _transaction(self, session: Session, entries: list[_Entry], base: str) -> list[dict[str, Any]]:
        mapping: dict[str, str] = {}
        order = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3, "HEAD": 3}
        planned = sorted(entries, key=lambda e: (order[e.method], e.index))
        responses: dict[int, dict[str, Any]] = {}
        identities: set[str] = set()
        try:
            # Ids first, so that every urn:uuid reference can be rewritten before anything is stored.
            for entry in planned:
                if entry.method == "POST":
                    if entry.if_none_exist:
                        matches = self._search_pks(session, entry.res_type, _query(entry.if_none_exist))
                        if len(matches) > 1:
                            raise precondition_failed(f"ifNoneExist {entry.if_none_exist!r} matches "
                                                      f"{len(matches)} resources")
                        if matches:
                            entry.existing = repository.get_many(session, matches)[matches[0]]
                            entry.res_id = entry.existing.res_id
                    if entry.res_id is None:
                        entry.res_id = new_id()
                elif entry.method == "PUT" and entry.res_id is None:
                    entry.res_id = self._conditional_target(session, entry.res_type, entry.query or [],
                                                            entry.resource or {})
                if entry.method in ("POST", "PUT"):
                    identity = f"{entry.res_type}/{entry.res_id}"
                    if identity in identities:
                        raise bad_request(f"{identity} appears twice in the transaction")
                    identities.add(identity)
                    if entry.full_url:
                        mapping[entry.full_url] = identity
            written: list[Stored] = []
            for entry in planned:
                if entry.resource is not None:
                    entry.resource = self._resolve(session, repository.rewrite_references(entry.resource, mapping))
                responses[entry.index] = self._run_entry(session, entry, base, written)
            self._check_references(session, written)
        except FhirError as exc:
            if not hasattr(exc, "index"):
                exc.index = entry.index  # type: ignore[attr-defined,possibly-undefined]
            raise
        return [responses[entry.index] for entry in entries]

    def _resolve(self, session: Session, resource: dict[str, Any]) -> dict[str, Any]:
        """Conditional references (Patient?identifier=...) inside a transaction resolved to one resource."""
        mapping: dict[str, str] = {}
        for reference in repository.iter_references(resource):
            head, question, query = reference.partition("?")
            if question and head in definitions() and "/" not in head:
                matches = self._search_pks(session, head, _query(query))
                if len(matches) != 1:
                    raise precondition_failed(f"conditional reference {reference!r} matches {len(matches)} resources")
                mapping[reference] = f"{head}/{repository.get_many(session, matches)[matches[0]].res_id}"
        return repository.rewrite_references(resource, mapping) if mapping else resource

    def _run_entry(self, session: Session, entry: _Entry, base: str, written: list[Stored]) -> dict[str, Any]:
        if entry.method == "POST":
            assert entry.resource is not None and entry.res_id is not None
            outcome = Outcome(200, entry.existing) if entry.existing is not None else \
                self._create(session, entry.resource, entry.res_id)
        elif entry.method == "PUT":
            assert entry.resource is not None and entry.res_id is not None
            outcome = self._update(session, entry.resource, entry.res_id, entry.if_match)
        elif entry.method == "DELETE":
            if entry.res_id is None:
                matches = self._search_pks(session, entry.res_type, entry.query or [])
                if len(matches) > 1:
                    raise precondition_failed(f"{entry.url} matches {len(matches)} resources")
                deleted = self._delete(session, entry.res_type,
                                       repository.get_many(session, matches)[matches[0]].res_id) if matches else None
            else:
                deleted = self._delete(session, entry.res_type, entry.res_id)
            return {"response": {"status": "204 No Content"} if deleted is None else Outcome(204, deleted.stored)
                    .response(base)}
        else:
            if entry.res_id is not None:
                stored = self._current(session, entry.res_type, entry.res_id)
                # No fullUrl: a write of the same resource in this Bundle already carries it (bdl-7).
                return {"resource": stored.resource,
                        "response": {"status": "200 OK", "etag": f'W/"{stored.version_id}"'}}
            request = search.parse_request(entry.res_type, entry.query or [])
            result = search.execute(session, request)
            resources = repository.get_many(session, result.matches + result.includes)
            return {"resource": search.bundle(base, request, result, resources, _now()),
                    "response": {"status": "200 OK"}}
        if outcome.status != 200 or entry.existing is None:
            written.append(outcome.stored)
        return {"fullUrl": f"{base}/{outcome.stored.res_type}/{outcome.stored.res_id}",
                "resource": outcome.stored.resource, "response": outcome.response(base)}

    # -- patients ------------------------------------------------------------------------------------------

    def merge_patients(self, source_id: str, target_id: str) -> None:
        """HL7 ADT^A40: every reference to the source Patient now names the target; the source is retired."""
        if source_id == target_id:
            raise bad_request("a patient cannot be merged into itself")
        self.imaging.sync()
        with self.writing() as session:
            source = self._current(session, "Patient", source_id)
            target = self._current(session, "Patient", target_id)
            mapping = {f"Patient/{source_id}": f"Patient/{target_id}",
                       f"{self.base_url}/Patient/{source_id}": f"Patient/{target_id}"}
            for pk, holder in repository.get_many(session, repository.referencing(session, "Patient",
                                                                                  source_id)).items():
                if pk in (source.pk, target.pk) or holder.resource is None:
                    continue
                repository.write(session, repository.rewrite_references(holder.resource, mapping), holder,
                                 holder.res_id, "PUT")
            retired = dict(source.resource or {})
            retired["active"] = False
            retired["link"] = [link for link in retired.get("link", [])
                               if (link.get("other") or {}).get("reference") != f"Patient/{target_id}"]
            retired["link"].append({"other": {"reference": f"Patient/{target_id}"}, "type": "replaced-by"})
            repository.write(session, retired, source, source_id, "PUT")
            survivor = dict(target.resource or {})
            links = list(survivor.get("link", []))
            if not any((link.get("other") or {}).get("reference") == f"Patient/{source_id}" for link in links):
                links.append({"other": {"reference": f"Patient/{source_id}"}, "type": "replaces"})
                survivor["link"] = links
                repository.write(session, survivor, target, target_id, "PUT")
            table = FhirImagingLink.__table__  # type: ignore[attr-defined]
            session.execute(update(table).where(table.c.patient_res_id == source_id).values(patient_res_id=target_id))


def new_id() -> str:
    return str(uuid.uuid4())


def _query(text: str) -> list[tuple[str, str]]:
    """Search criteria of a conditional interaction: "identifier=a|b" or a URL "Patient?identifier=a|b"."""
    if "?" in text:
        text = text.split("?", 1)[1]
    return parse_qsl(urlsplit("?" + text).query, keep_blank_values=True)


def _locate(outcome: dict[str, Any], index: int) -> dict[str, Any]:
    issues = []
    for issue in outcome.get("issue", []):
        located = dict(issue)
        located.setdefault("expression", [f"Bundle.entry[{index}]"])
        issues.append(located)
    return {**outcome, "issue": issues}


__all__ = ["FhirConfig", "FhirError", "FhirService", "Outcome", "operation_outcome"]
