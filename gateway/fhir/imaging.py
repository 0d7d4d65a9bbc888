"""Every DICOM study of the image store as an R4 ImagingStudy, linked to the EHR's Patient.

Ingest only marks studies dirty (the stored/deleted listeners add a UID to a set): storing thousands of
instances costs nothing here. Before any FHIR interaction ``sync()`` rebuilds what changed: the studies marked
in this process, studies deleted by any process (``fhir_imaging_pending``), and those whose ``study.updated_at``
is past the watermark (stores made by other processes: other gateway workers, the DIMSE listener,
``gateway import``). The watermark is shared (``fhir_sync_state``) and advanced with each batch of rebuilds, so
a process reads only what changed since the last sync any process completed, never the whole store again; only
the very first sync of a database reads every study, in batches. A read right after STOW-RS therefore already
sees the new instances. The ImagingStudy id is the StudyInstanceUID (a valid FHIR id), so two processes
rebuilding the same study write the same resource.

The Patient: DICOM PatientID (+ IssuerOfPatientID, mapped to an identifier system by ``[fhir]``) is looked up
in Patient.identifier; the EHR's Patient with that MRN is used when it exists, otherwise one is created from
the DICOM patient module, and the EHR's later conditional create/update on the same identifier finds it.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from gateway.fhir import repository
from gateway.fhir.models import FhirImagingLink, FhirImagingPending, FhirSyncState
from gateway.services.ingest import DeletedEvent, StoredEvent
from gateway.store.models import Instance, Series, Study

if TYPE_CHECKING:
    from gateway.fhir.service import FhirService

log = logging.getLogger(__name__)

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
ENDPOINT_ID = "dicomweb"
BODY_PART_TABLE = Path(__file__).resolve().parents[2] / "mappings" / "body_part_snomed.csv"
# Commits of concurrent writers can land out of updated_at order; re-examining this much before the
# watermark (cheaply: unchanged studies are skipped by comparing updated_at) catches the late ones.
WATERMARK_MARGIN = timedelta(seconds=5)
WATERMARK_KEY = "imaging-study-watermark"
# Studies examined (and at most rebuilt) per transaction: memory stays flat and the FHIR write lock is held only
# for one batch at a time, however large the store a first sync meets.
BATCH_SIZE = 200


def load_body_part_table(path: Path = BODY_PART_TABLE) -> dict[str, tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return {row["body_part_examined"].strip().upper(): (row["snomed_code"].strip(), row["display"].strip())
                for row in csv.DictReader(handle)}


def _fhir_date(value: str) -> str | None:
    value = value.strip()
    if len(value) != 8 or not value.isdigit():
        return None
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}"


def _fhir_datetime(date: str, time: str, offset: str) -> str | None:
    day = _fhir_date(date)
    if day is None:
        return None
    time = time.strip().split(".")[0]
    if len(time) < 4 or not time[:4].isdigit():
        return day
    seconds = time[4:6] if len(time) >= 6 else "00"
    moment = f"{day}T{time[:2]}:{time[2:4]}:{seconds}"
    # DICOM times are local; with no TimezoneOffsetFromUTC the gateway's own zone (it runs at the hospital).
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        return f"{moment}{offset[:3]}:{offset[3:]}"
    try:
        local = datetime.fromisoformat(moment).astimezone()
    except ValueError:
        return day
    return local.isoformat()


def _json_value(attributes: dict[str, Any], tag: str) -> str:
    values = attributes.get(tag, {}).get("Value") or []
    if not values:
        return ""
    value = values[0]
    if isinstance(value, dict):
        value = value.get("Alphabetic", "")
    return str(value).strip()


def patient_from_dicom(attributes: dict[str, Any], system: str, patient_id: str) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient"}
    if patient_id:
        resource["identifier"] = [{"use": "usual", "system": system, "value": patient_id}]
    name = _json_value(attributes, "00100010")
    if name:
        parts = name.split("^")
        human: dict[str, Any] = {"text": " ".join(p for p in (parts[1:2] + parts[:1]) if p) or name}
        if parts[0]:
            human["family"] = parts[0]
        given = [p for p in (parts[1:2] + (parts[2].split() if len(parts) > 2 else [])) if p]
        if given:
            human["given"] = given
        if len(parts) > 3 and parts[3]:
            human["prefix"] = [parts[3]]
        if len(parts) > 4 and parts[4]:
            human["suffix"] = [parts[4]]
        resource["name"] = [human]
    gender = {"M": "male", "F": "female", "O": "other"}.get(_json_value(attributes, "00100040").upper())
    if gender:
        resource["gender"] = gender
    birth = _fhir_date(_json_value(attributes, "00100030"))
    if birth:
        resource["birthDate"] = birth
    return resource


class ImagingSync:
    def __init__(self, service: FhirService) -> None:
        self.service = service
        self.engine = service.engine
        self.body_parts = load_body_part_table()
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._watermark: datetime | None = None
        self._endpoint_ready = False
        self.batch_size = BATCH_SIZE
        # Study rows read by the watermark scans since this process started: what a sync costs grows with this,
        # so it is what shows that a process does not rescan the store (tests read it).
        self.examined = 0

    # -- listeners (called on the ingest path: they must stay O(1)) ---------------------------------------

    def on_stored(self, event: StoredEvent) -> None:
        with self._dirty_lock:
            self._dirty.add(event.study_instance_uid)

    def on_deleted(self, event: DeletedEvent) -> None:
        with self._dirty_lock:
            self._dirty.add(event.study_instance_uid)
        # Another process may serve the next FHIR request, and a study deleted whole leaves nothing its watermark
        # scan could find: record it where every process looks. Deletes are rare, one small write is cheap.
        pending = FhirImagingPending.__table__  # type: ignore[attr-defined]
        try:
            with self.service.writing() as session:
                found = session.execute(select(pending.c.study_instance_uid).where(
                    pending.c.study_instance_uid == event.study_instance_uid)).first()
                if found is None:
                    session.execute(insert(pending).values(study_instance_uid=event.study_instance_uid))
        except Exception:  # the listener must not fail the delete; this process still has it in its dirty set
            log.exception("could not record deleted study %s for the ImagingStudy sync", event.study_instance_uid)

    # -- sync ----------------------------------------------------------------------------------------------

    def sync(self) -> int:
        """Bring the ImagingStudy resources up to date with the image store; returns how many were rebuilt."""
        with self._sync_lock:
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, set()
            try:
                return self._sync(dirty)
            except Exception:
                with self._dirty_lock:  # try again at the next interaction
                    self._dirty |= dirty
                raise

    def _sync(self, dirty: set[str]) -> int:
        """Examine the studies updated since the newest watermark any process recorded, batch by batch.

        The watermark (``fhir_sync_state``) is advanced in the same transaction as the rebuilds it covers, so a
        process that stops half-way leaves a consistent point to continue from, and a process starting on a
        store that others already synced reads only the last few seconds of changes.
        """
        study = Study.__table__  # type: ignore[attr-defined]
        link = FhirImagingLink.__table__  # type: ignore[attr-defined]
        pending_table = FhirImagingPending.__table__  # type: ignore[attr-defined]
        state = FhirSyncState.__table__  # type: ignore[attr-defined]
        with self.service.reading() as session:
            stored_mark = session.execute(select(state.c.value).where(state.c.name == WATERMARK_KEY)).scalar()
            pending = set(session.execute(select(pending_table.c.study_instance_uid)).scalars())
            orphans: set[str] = set()
            if stored_mark is None and self._watermark is None:
                # No process has ever synced this database (or it predates the watermark): links to studies
                # that are gone can only be found by looking at them all, once.
                orphans = set(session.execute(select(link.c.study_instance_uid).where(
                    ~select(study.c.pk).where(study.c.study_instance_uid == link.c.study_instance_uid)
                    .exists())).scalars())
        shared = datetime.fromisoformat(stored_mark) if stored_mark else None
        rebuilt = 0
        forced = sorted(dirty | pending | orphans)
        for start in range(0, len(forced), self.batch_size):
            chunk = forced[start:start + self.batch_size]
            with self.service.writing() as session:
                self._ensure_endpoint(session)
                for uid in chunk:
                    self._rebuild(session, uid)
                done = [uid for uid in chunk if uid in pending]
                if done:
                    session.execute(delete(pending_table).where(pending_table.c.study_instance_uid.in_(done)))
            rebuilt += len(chunk)
        begin = max((m for m in (self._watermark, shared) if m is not None), default=None)
        cursor: tuple[datetime, int] | None = (begin - WATERMARK_MARGIN, 0) if begin is not None else None
        while True:
            query = select(study.c.pk, study.c.study_instance_uid, study.c.updated_at) \
                .order_by(study.c.updated_at, study.c.pk).limit(self.batch_size)
            if cursor is not None:
                query = query.where(or_(study.c.updated_at > cursor[0],
                                        and_(study.c.updated_at == cursor[0], study.c.pk > cursor[1])))
            with self.service.reading() as session:
                rows = session.execute(query).all()
                self.examined += len(rows)
                changed = {row.study_instance_uid: str(row.updated_at) for row in rows}
                linked = self._links(session, list(changed))
            newest = _aware(rows[-1].updated_at) if rows else None
            todo = {uid for uid, updated in changed.items() if linked.get(uid) != updated}
            advance = newest is not None and (shared is None or newest > shared)
            if todo or advance or not self._endpoint_ready:
                with self.service.writing() as session:
                    self._ensure_endpoint(session)
                    # Another process may have rebuilt some of these since they were read: skip what it did.
                    current = self._links(session, sorted(todo))
                    uids = sorted(uid for uid in todo if current.get(uid) != changed[uid])
                    for uid in uids:
                        self._rebuild(session, uid)
                    if advance:
                        assert newest is not None
                        self._advance(session, newest)
                rebuilt += len(uids)
                if advance:
                    shared = newest
            if newest is not None:
                self._watermark = newest if self._watermark is None else max(self._watermark, newest)
            if len(rows) < self.batch_size:
                break
            cursor = (rows[-1].updated_at, rows[-1].pk)
        if self._watermark is None:  # an empty store: later studies are newer than now
            self._watermark = datetime.now(UTC) - WATERMARK_MARGIN
        return rebuilt

    @staticmethod
    def _links(session: Session, uids: list[str]) -> dict[str, str]:
        link = FhirImagingLink.__table__  # type: ignore[attr-defined]
        linked: dict[str, str] = {}
        for start in range(0, len(uids), 500):
            rows = session.execute(select(link.c.study_instance_uid, link.c.study_updated_at).where(
                link.c.study_instance_uid.in_(uids[start:start + 500]))).all()
            linked.update((row[0], row[1]) for row in rows)
        return linked

    @staticmethod
    def _advance(session: Session, newest: datetime) -> None:
        """Move the shared watermark forward (never back: another process may be further already)."""
        state = FhirSyncState.__table__  # type: ignore[attr-defined]
        current = session.execute(select(state.c.value).where(state.c.name == WATERMARK_KEY)).scalar()
        text = newest.astimezone(UTC).isoformat()
        if current is None:
            session.execute(insert(state).values(name=WATERMARK_KEY, value=text))
        elif datetime.fromisoformat(current) < newest:
            session.execute(update(state).where(state.c.name == WATERMARK_KEY).values(value=text))

    def _ensure_endpoint(self, session: Session) -> None:
        address = self.service.site_root + "/dicomweb"
        wanted = {"resourceType": "Endpoint", "id": ENDPOINT_ID,
                  "identifier": [{"system": "urn:ietf:rfc:3986", "value": address}],
                  "status": "active",
                  "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                                     "code": "dicom-wado-rs", "display": "DICOM WADO-RS"},
                  "name": "DICOMweb (WADO-RS, QIDO-RS, STOW-RS) of this gateway",
                  "payloadType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                                               "code": "DICOM", "display": "DICOM"}]}],
                  "payloadMimeType": ["application/dicom"],
                  "address": address}
        existing = repository.get(session, "Endpoint", ENDPOINT_ID)
        if existing is None or existing.deleted or _without_meta(existing.resource) != wanted:
            repository.write(session, wanted, existing, ENDPOINT_ID, "PUT")
        self._endpoint_ready = True

    def _rebuild(self, session: Session, uid: str) -> None:
        study_table = Study.__table__  # type: ignore[attr-defined]
        link = FhirImagingLink.__table__  # type: ignore[attr-defined]
        row = session.execute(select(study_table).where(study_table.c.study_instance_uid == uid)).first()
        existing = repository.get(session, "ImagingStudy", uid)
        if row is None:
            session.execute(delete(link).where(link.c.study_instance_uid == uid))
            if existing is None or existing.deleted:
                return
            holders = [pk for pk in repository.referencing(session, "ImagingStudy", uid) if pk != existing.pk]
            if holders:
                # Reports still cite it: keep the resource, say the images are gone.
                kept = {k: v for k, v in (existing.resource or {}).items() if k not in ("series", "meta")}
                kept.update(status="unknown", numberOfSeries=0, numberOfInstances=0)
                repository.write(session, kept, existing, uid, "PUT")
            else:
                repository.mark_deleted(session, existing)
            return
        attributes = json.loads(row.attributes_json or "{}")
        linked = session.execute(select(link).where(link.c.study_instance_uid == uid)).first()
        patient_id = self._patient(session, row, attributes, linked.patient_res_id if linked else None)
        resource = self._imaging_study(session, row, attributes, patient_id)
        if existing is None or existing.deleted or _without_meta(existing.resource) != resource:
            repository.write(session, resource, existing, uid, "PUT")
        values = {"study_updated_at": str(row.updated_at), "patient_res_id": patient_id}
        if linked is None:
            session.execute(insert(link).values(study_instance_uid=uid, **values))
        else:
            session.execute(update(link).where(link.c.study_instance_uid == uid).values(**values))

    def _patient(self, session: Session, row: Any, attributes: dict[str, Any], known: str | None) -> str:
        if known:
            current = repository.get(session, "Patient", known)
            if current is not None and not current.deleted:
                return _follow_replaced(session, current)
        system = self.service.config.identifier_system(row.issuer or "")
        if row.patient_id:
            from gateway.fhir import search

            request = search.parse_request("Patient", [("identifier", f"{system}|{row.patient_id}")])
            request.count, request.total = 10, "none"
            matches = search.execute(session, request).matches
            if matches:
                found = repository.get_many(session, matches)
                # The active one first: a merged-away (ADT^A40) record points at its survivor anyway.
                ordered = sorted(found.values(), key=lambda s: (s.resource or {}).get("active") is False)
                return _follow_replaced(session, ordered[0])
        from gateway.fhir.service import new_id

        patient_res_id = new_id()
        repository.write(session, patient_from_dicom(attributes, system, row.patient_id), None, patient_res_id, "POST")
        return patient_res_id

    def _imaging_study(self, session: Session, row: Any, attributes: dict[str, Any], patient_id: str) -> dict[str, Any]:
        series_table = Series.__table__  # type: ignore[attr-defined]
        instance_table = Instance.__table__  # type: ignore[attr-defined]
        series_rows = session.execute(select(series_table).where(series_table.c.study_pk == row.pk)
                                      .order_by(series_table.c.series_number, series_table.c.pk)).all()
        instances: dict[int, list[Any]] = {}
        for instance in session.execute(
                select(instance_table.c.series_pk, instance_table.c.sop_instance_uid, instance_table.c.sop_class_uid,
                       instance_table.c.instance_number).where(instance_table.c.study_pk == row.pk)
                .order_by(instance_table.c.instance_number, instance_table.c.pk)):
            instances.setdefault(instance.series_pk, []).append(instance)
        offset = _json_value(attributes, "00080201")
        resource: dict[str, Any] = {
            "resourceType": "ImagingStudy", "id": row.study_instance_uid,
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{row.study_instance_uid}"}]}
        if row.accession_number:
            resource["identifier"].append({
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "value": row.accession_number})
        resource["status"] = "available"
        modalities = sorted({s.modality for s in series_rows if s.modality})
        if modalities:
            resource["modality"] = [{"system": DCM, "code": modality} for modality in modalities]
        resource["subject"] = {"reference": f"Patient/{patient_id}"}
        started = _fhir_datetime(row.study_date, row.study_time, offset)
        if started:
            resource["started"] = started
        resource["endpoint"] = [{"reference": f"Endpoint/{ENDPOINT_ID}"}]
        resource["numberOfSeries"] = len(series_rows)
        resource["numberOfInstances"] = sum(len(instances.get(s.pk, [])) for s in series_rows)
        if row.study_description:
            resource["description"] = row.study_description
        series_list = []
        for series in series_rows:
            item: dict[str, Any] = {"uid": series.series_instance_uid}
            if series.series_number is not None:
                item["number"] = series.series_number
            item["modality"] = {"system": DCM, "code": series.modality or "OT"}
            if series.series_description:
                item["description"] = series.series_description
            members = instances.get(series.pk, [])
            item["numberOfInstances"] = len(members)
            body_part = (series.body_part_examined or "").strip().upper()
            if body_part in self.body_parts:
                code, display = self.body_parts[body_part]
                item["bodySite"] = {"system": SNOMED, "code": code, "display": display}
            series_attributes = json.loads(series.attributes_json or "{}")
            series_started = _fhir_datetime(series.series_date, _json_value(series_attributes, "00080031"), offset)
            if series_started:
                item["started"] = series_started
            if members:
                item["instance"] = [
                    {"uid": m.sop_instance_uid, "sopClass": {"system": "urn:ietf:rfc:3986",
                                                             "code": f"urn:oid:{m.sop_class_uid}"},
                     **({"number": m.instance_number} if m.instance_number is not None else {})}
                    for m in members]
            series_list.append(item)
        if series_list:
            resource["series"] = series_list
        return resource


def _follow_replaced(session: Session, patient: repository.Stored) -> str:
    """The surviving Patient of a chain of merges (link type replaced-by), at most a few hops."""
    current = patient
    for _ in range(10):
        links = [link for link in (current.resource or {}).get("link", []) if link.get("type") == "replaced-by"]
        if not links:
            break
        _, target_id = repository.split_reference((links[0].get("other") or {}).get("reference", ""))
        nxt = repository.get(session, "Patient", target_id) if target_id else None
        if nxt is None or nxt.deleted:
            break
        current = nxt
    return current.res_id


def _without_meta(resource: dict[str, Any] | None) -> dict[str, Any] | None:
    if resource is None:
        return None
    return {key: value for key, value in resource.items() if key != "meta"}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
