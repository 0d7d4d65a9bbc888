"""Storing DICOM instances: the single path behind STOW-RS, C-STORE and pulls from a PACS.

Steps for one instance: parse and validate the uploaded file, decide (under a lock on its study) whether it
is new, a repeat of a stored instance, or a conflicting one, move the file into place, and index it. The
outcome of each instance is reported separately; one bad instance never affects the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.dicom import levels
from gateway.dicom.json_model import dataset_to_json, dumps
from gateway.dicom.normalise import (
    normalise_date,
    normalise_time,
    person_name_fuzzy_key,
    person_name_match_key,
)
from gateway.dicom.tags import tag_hex
from gateway.dicom.uids import InvalidUID, validate_uid
from gateway.store.db import write_session
from gateway.store.files import FileStore, file_sha256
from gateway.store.models import Instance, Patient, Series, Study, StudyModality, utcnow

log = logging.getLogger(__name__)

# Failure and warning reasons (PS3.4 Annex B, PS3.7 Annex C, PS3.18 Table 10.5.3-2).
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
MISSING_ATTRIBUTE = 0x0120
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
STUDY_UID_MISMATCH = 0xC409

# Values larger than this are left on disk while parsing; pixel data is never needed to index an instance.
DEFER_SIZE = 64 * 1024

Outcome = Literal["stored", "duplicate", "failed"]


@dataclass
class StoreResult:
    status: Outcome
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    failure_reason: int | None = None
    message: str = ""
    conflict: bool = False

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass(frozen=True)
class StoredEvent:
    """Published after an instance is committed, for listeners such as the FHIR ImagingStudy sync."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class DeletedEvent:
    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uids: tuple[str, ...]


class InstanceRejected(Exception):
    def __init__(self, reason: int, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.conflict = conflict


@dataclass
class ParsedInstance:
    dataset: Dataset
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _text(dataset: Dataset, keyword: str, limit: int | None = None) -> str:
    try:
        value = dataset.get(keyword)
    except Exception:  # noqa: BLE001 - an undecodable optional value is treated as absent
        return ""
    if value is None:
        return ""
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue | list | tuple) else str(value)
    text = text.strip("\x00 ")
    return text[:limit] if limit else text


def _integer(dataset: Dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, MultiValue):
            value = value[0]
        return int(value)
    except Exception:  # noqa: BLE001 - an undecodable optional number is treated as absent
        return None


def _check_not_truncated(dataset: Dataset, file_size: int) -> None:
    """Deferred values are only skipped over while parsing, so a cut-off file parses 'successfully'."""
    for tag in dataset.keys():
        raw = dataset.get_item(tag)
        length = getattr(raw, "length", None)
        tell = getattr(raw, "value_tell", None)
        if length is None or tell is None or length == 0xFFFFFFFF:
            continue
        if tell + length > file_size:
            raise InstanceRejected(
                CANNOT_UNDERSTAND,
                f"the file is truncated: attribute {tag_hex(tag)} needs {length} bytes at offset {tell}, "
                f"the file has {file_size} bytes")
        value = getattr(raw, "value", None)
        if isinstance(value, bytes) and len(value) != length:
            raise InstanceRejected(
                CANNOT_UNDERSTAND, f"the file is truncated inside attribute {tag_hex(tag)}")


PREAMBLE = b"\x00" * 128 + b"DICM"


def add_missing_preamble(path: Path) -> bool:
    """Give a file that starts directly with its File Meta group the PS3.10 preamble; True if changed.

    pydicom and dicomweb-client write freshly built datasets this way. Everything after the preamble is
    kept byte for byte, and what is stored is then a conformant PS3.10 file that every client can read.
    """
    with open(path, "rb") as handle:
        head = handle.read(132)
    if head[128:132] == b"DICM" or head[:2] != b"\x02\x00":
        return False
    fixed = path.with_name(path.name + ".p10")
    with open(path, "rb") as source, open(fixed, "wb") as target:
        target.write(PREAMBLE)
        while chunk := source.read(1024 * 1024):
            target.write(chunk)
        target.flush()
        os.fsync(target.fileno())
    os.replace(fixed, path)
    return True


def parse_instance(path: Path, bulk_threshold: int) -> ParsedInstance:
    """Read and validate one uploaded Part 10 file; raise InstanceRejected with the reason otherwise."""
    file_size = path.stat().st_size
    if file_size == 0:
        raise InstanceRejected(CANNOT_UNDERSTAND, "the part is empty")
    try:
        dataset = dcmread(path, defer_size=DEFER_SIZE)
    except InvalidDicomError as exc:
        raise InstanceRejected(CANNOT_UNDERSTAND, f"not a DICOM PS3.10 file: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt input
        raise InstanceRejected(CANNOT_UNDERSTAND, f"cannot parse the DICOM file: {exc}") from exc
    _check_not_truncated(dataset, file_size)
    meta = getattr(dataset, "file_meta", None)
    transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "").strip("\x00 ") if meta else ""
    if not transfer_syntax:
        raise InstanceRejected(CANNOT_UNDERSTAND,
                               "the File Meta Information has no TransferSyntaxUID (0002,0010)")
    uids: dict[str, str] = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        raw = _text(dataset, keyword)
        if not raw:
            raise InstanceRejected(MISSING_ATTRIBUTE, f"required attribute {keyword} is missing or empty")
        try:
            uids[keyword] = validate_uid(raw, keyword)
        except InvalidUID as exc:
            raise InstanceRejected(CANNOT_UNDERSTAND, str(exc)) from exc
    try:
        metadata = dataset_to_json(dataset, bulk_threshold)
    except Exception as exc:  # noqa: BLE001
        raise InstanceRejected(CANNOT_UNDERSTAND, f"cannot decode the data set: {exc}") from exc
    return ParsedInstance(dataset, uids["SOPClassUID"], uids["SOPInstanceUID"], uids["StudyInstanceUID"],
                          uids["SeriesInstanceUID"], validate_uid(transfer_syntax, "TransferSyntaxUID")
                          if transfer_syntax.replace(".", "").isdigit() else transfer_syntax, metadata)


def _subset(metadata: dict[str, Any], tags: frozenset[int]) -> dict[str, Any]:
    wanted = {tag_hex(t) for t in tags}
    return {k: v for k, v in metadata.items() if k in wanted}


class IngestService:
    def __init__(self, engine: Engine, files: FileStore, bulk_threshold: int = 1024) -> None:
        self.engine = engine
        self.files = files
        self.bulk_threshold = bulk_threshold
        self.stored_listeners: list[Callable[[StoredEvent], None]] = []
        self.deleted_listeners: list[Callable[[DeletedEvent], None]] = []

    # -- storing -------------------------------------------------------------------------------------------

    def store_bytes(self, data: bytes, expected_study_uid: str | None = None) -> StoreResult:
        path, sha256 = self.files.upload_from_bytes(data)
        return self.store_upload(path, sha256, expected_study_uid)

    def store_upload(self, path: Path, sha256: str, expected_study_uid: str | None = None) -> StoreResult:
        """Store one finished upload (a PS3.10 file in the tmp dir). The upload is consumed either way."""
        return self.store_uploads([(path, sha256)], expected_study_uid)[0]

    def store_uploads(self, uploads: list[tuple[Path, str]],
                      expected_study_uid: str | None = None) -> list[StoreResult]:
        """Store finished uploads as one group; each gets its own result and one failure spoils no other.

        Durability is bought once per group rather than once per instance (the fsyncs dominate the cost of a
        small instance): one file-system sync makes every upload's content durable, one more the renames that
        place them, and a single index commit follows. Nothing is reported stored before that commit.
        """
        results: list[StoreResult | None] = [None] * len(uploads)
        candidates: list[tuple[int, ParsedInstance, Path, str]] = []
        try:
            for index, (path, sha256) in enumerate(uploads):
                parsed: ParsedInstance | None = None
                try:
                    if add_missing_preamble(path):
                        sha256 = file_sha256(path)
                    parsed = parse_instance(path, self.bulk_threshold)
                    if expected_study_uid is not None and parsed.study_instance_uid != expected_study_uid:
                        raise InstanceRejected(
                            STUDY_UID_MISMATCH,
                            f"StudyInstanceUID {parsed.study_instance_uid} does not match the study in the URL "
                            f"({expected_study_uid})", conflict=True)
                    candidates.append((index, parsed, path, sha256))
                except InstanceRejected as exc:
                    results[index] = self._failure(exc, parsed)
                except Exception as exc:  # noqa: BLE001 - reported per instance, never a 500 for the batch
                    log.exception("reading an upload failed")
                    results[index] = StoreResult("failed", failure_reason=PROCESSING_FAILURE,
                                                 message=f"processing failure: {exc}")
            if candidates:
                self._index_group(candidates, results)
        finally:
            for path, _ in uploads:
                path.unlink(missing_ok=True)
        final = [r if r is not None else StoreResult("failed", failure_reason=PROCESSING_FAILURE,
                                                     message="not processed") for r in results]
        self._publish(final)
        return final

    @staticmethod
    def _failure(exc: InstanceRejected, parsed: ParsedInstance | None) -> StoreResult:
        result = StoreResult("failed", failure_reason=exc.reason, message=exc.message, conflict=exc.conflict)
        if parsed is not None:
            result.sop_class_uid = parsed.sop_class_uid
            result.sop_instance_uid = parsed.sop_instance_uid
            result.study_instance_uid = parsed.study_instance_uid
            result.series_instance_uid = parsed.series_instance_uid
        return result

    def _publish(self, results: list[StoreResult]) -> None:
        for result in results:
            if result.status != "stored":
                continue
            event = StoredEvent(result.study_instance_uid, result.series_instance_uid, result.sop_instance_uid)
            for listener in self.stored_listeners:
                try:
                    listener(event)
                except Exception:  # noqa: BLE001 - a listener's failure must not undo a committed store
                    log.exception("stored-instance listener failed")

    def _index_group(self, candidates: list[tuple[int, ParsedInstance, Path, str]],
                     results: list[StoreResult | None]) -> None:
        try:
            self.files.make_durable([path for _, _, path, _ in candidates])
        except OSError as exc:
            for index, parsed, _, _ in candidates:
                results[index] = self._failure(InstanceRejected(OUT_OF_RESOURCES, f"storage error: {exc}"), parsed)
            return
        placed: list[str] = []
        lock_keys = tuple(sorted({parsed.study_instance_uid for _, parsed, _, _ in candidates}))
        try:
            with write_session(self.engine, lock_keys=lock_keys) as session:
                for index, parsed, path, sha256 in candidates:
                    results[index] = self._index_one(session, parsed, path, sha256, placed)
                if placed:
                    self.files.make_durable([self.files.absolute(relative) for relative in placed], directories=True)
        except Exception as exc:  # noqa: BLE001 - the commit failed: nothing of the group is stored
            log.exception("indexing a group of %d instances failed", len(candidates))
            for relative in placed:
                self.files.remove(relative)
            reason = OUT_OF_RESOURCES if isinstance(exc, OSError) else PROCESSING_FAILURE
            for index, parsed, _, _ in candidates:
                if results[index] is None or results[index].status == "stored":  # type: ignore[union-attr]
                    results[index] = self._failure(InstanceRejected(reason, f"not stored: {exc}"), parsed)

    def _index_one(self, session: Session, parsed: ParsedInstance, upload: Path, sha256: str,
                   placed: list[str]) -> StoreResult:
        """Index one instance inside the group's transaction, under a savepoint of its own."""
        result = StoreResult("stored", parsed.sop_class_uid, parsed.sop_instance_uid,
                             parsed.study_instance_uid, parsed.series_instance_uid)
        relative = self.files.relative_path(parsed.study_instance_uid, parsed.series_instance_uid,
                                            parsed.sop_instance_uid)
        newly_placed = False
        try:
            with session.begin_nested():
                existing = session.execute(
                    select(Instance.sha256).where(Instance.sop_instance_uid == parsed.sop_instance_uid)).first()
                if existing is not None:
                    if existing.sha256 == sha256:
                        result.status = "duplicate"
                        result.message = "an identical instance is already stored"
                        return result
                    raise InstanceRejected(
                        DUPLICATE_SOP_INSTANCE,
                        f"SOPInstanceUID {parsed.sop_instance_uid} is already stored with different content; "
                        "delete the stored instance first to replace it", conflict=True)
                newly_placed = self.files.place(upload, relative, sha256)
                self._insert_rows(session, parsed, relative, sha256, os.stat(self.files.absolute(relative)).st_size)
        except InstanceRejected as exc:
            if newly_placed:
                self.files.remove(relative)
            return self._failure(exc, parsed)
        except IntegrityError as exc:
            if newly_placed:
                self.files.remove(relative)
            return self._failure(InstanceRejected(
                DUPLICATE_SOP_INSTANCE, f"conflicting store of {parsed.sop_instance_uid}: {exc.orig}",
                conflict=True), parsed)
        except BaseException:
            if newly_placed:
                self.files.remove(relative)
            raise
        if newly_placed:
            placed.append(relative)
        return result

    def _insert_rows(self, session: Session, parsed: ParsedInstance, relative: str, sha256: str,
                     size: int) -> None:
        ds = parsed.dataset
        metadata = parsed.metadata
        series = session.execute(select(Series).where(
            Series.series_instance_uid == parsed.series_instance_uid)).scalar_one_or_none()
        study = session.execute(select(Study).where(
            Study.study_instance_uid == parsed.study_instance_uid)).scalar_one_or_none()
        if series is not None and (study is None or series.study_pk != study.pk):
            raise InstanceRejected(
                CANNOT_UNDERSTAND,
                f"SeriesInstanceUID {parsed.series_instance_uid} already belongs to another study", conflict=True)
        now = utcnow()
        if study is None:
            patient = self._patient(session, ds)
            patient_name = _text(ds, "PatientName")
            study = Study(
                study_instance_uid=parsed.study_instance_uid, patient_pk=patient.pk,
                patient_id=patient.patient_id, issuer=patient.issuer, patient_name=patient_name,
                patient_name_match=person_name_match_key(patient_name),
                patient_name_fuzzy=person_name_fuzzy_key(patient_name),
                patient_birth_date=normalise_date(_text(ds, "PatientBirthDate")),
                patient_sex=_text(ds, "PatientSex", 16),
                study_date=normalise_date(_text(ds, "StudyDate")),
                study_time=normalise_time(_text(ds, "StudyTime")),
                accession_number=_text(ds, "AccessionNumber", 64),
                study_id=_text(ds, "StudyID", 64),
                study_description=_text(ds, "StudyDescription"),
                referring_physician_match=person_name_match_key(_text(ds, "ReferringPhysicianName")),
                attributes_json=dumps(_subset(metadata, levels.STUDY_LEVEL | levels.COMMON)),
            )
            session.add(study)
            patient.num_studies += 1
            session.flush()
        if series is None:
            modality = _text(ds, "Modality", 16)
            series = Series(
                series_instance_uid=parsed.series_instance_uid, study_pk=study.pk, modality=modality,
                series_number=_integer(ds, "SeriesNumber"),
                series_description=_text(ds, "SeriesDescription"),
                body_part_examined=_text(ds, "BodyPartExamined", 64),
                series_date=normalise_date(_text(ds, "SeriesDate")),
                pps_start_date=normalise_date(_text(ds, "PerformedProcedureStepStartDate")),
                pps_start_time=normalise_time(_text(ds, "PerformedProcedureStepStartTime")),
                attributes_json=dumps(_subset(metadata, levels.SERIES_LEVEL | levels.COMMON)),
            )
            session.add(series)
            session.flush()
            study.num_series += 1
            if modality:
                known = set(filter(None, study.modalities.split("\\")))
                if modality not in known:
                    session.add(StudyModality(study_pk=study.pk, modality=modality))
                    study.modalities = "\\".join(sorted(known | {modality}))
        session.add(Instance(
            sop_instance_uid=parsed.sop_instance_uid, series_pk=series.pk, study_pk=study.pk,
            sop_class_uid=parsed.sop_class_uid, instance_number=_integer(ds, "InstanceNumber"),
            rows=_integer(ds, "Rows"), columns=_integer(ds, "Columns"),
            bits_allocated=_integer(ds, "BitsAllocated"), number_of_frames=_integer(ds, "NumberOfFrames"),
            transfer_syntax_uid=parsed.transfer_syntax_uid[:64], file_path=relative, file_size=size,
            sha256=sha256, metadata_json=dumps(metadata),
        ))
        series.num_instances += 1
        study.num_instances += 1
        study.updated_at = now
        session.flush()

    def _patient(self, session: Session, ds: Dataset) -> Patient:
        patient_id = _text(ds, "PatientID", 64)
        issuer = _text(ds, "IssuerOfPatientID", 64)
        patient = session.execute(select(Patient).where(
            Patient.patient_id == patient_id, Patient.issuer == issuer)).scalar_one_or_none()
        if patient is None:
            name = _text(ds, "PatientName")
            patient = Patient(patient_id=patient_id, issuer=issuer, patient_name=name,
                              patient_name_match=person_name_match_key(name),
                              patient_birth_date=normalise_date(_text(ds, "PatientBirthDate")),
                              patient_sex=_text(ds, "PatientSex", 16))
            # A savepoint, so that losing a race to create the same patient only repeats the lookup.
            try:
                with session.begin_nested():
                    session.add(patient)
                    session.flush()
            except IntegrityError:
                patient = session.execute(select(Patient).where(
                    Patient.patient_id == patient_id, Patient.issuer == issuer)).scalar_one()
        return patient

    # -- deleting ------------------------------------------------------------------------------------------

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> int:
        """Delete a study, series or instance; returns the number of instances removed (0: not found)."""
        with write_session(self.engine, lock_keys=(study_uid,)) as session:
            study = session.execute(select(Study).where(Study.study_instance_uid == study_uid)).scalar_one_or_none()
            if study is None:
                return 0
            query = select(Instance.pk, Instance.sop_instance_uid, Instance.file_path, Instance.series_pk,
                           Series.series_instance_uid).join(Series, Series.pk == Instance.series_pk).where(
                Instance.study_pk == study.pk)
            if series_uid is not None:
                query = query.where(Series.series_instance_uid == series_uid)
            if sop_uid is not None:
                query = query.where(Instance.sop_instance_uid == sop_uid)
            rows = session.execute(query).all()
            if not rows:
                return 0
            session.execute(delete(Instance).where(Instance.pk.in_([r.pk for r in rows])))
            per_series: dict[int, int] = {}
            for row in rows:
                per_series[row.series_pk] = per_series.get(row.series_pk, 0) + 1
            for series_pk, removed in per_series.items():
                session.execute(update(Series).where(Series.pk == series_pk).values(
                    num_instances=Series.num_instances - removed))
            session.execute(delete(Series).where(Series.study_pk == study.pk, Series.num_instances <= 0))
            remaining = session.execute(select(Series.modality).where(Series.study_pk == study.pk)).scalars().all()
            study.num_instances -= len(rows)
            study.num_series = len(remaining)
            modalities = sorted({m for m in remaining if m})
            study.modalities = "\\".join(modalities)
            session.execute(delete(StudyModality).where(StudyModality.study_pk == study.pk,
                                                        StudyModality.modality.not_in(modalities)))
            study.updated_at = utcnow()
            if study.num_instances <= 0:
                patient_pk = study.patient_pk
                session.delete(study)
                session.flush()
                session.execute(update(Patient).where(Patient.pk == patient_pk).values(
                    num_studies=Patient.num_studies - 1))
                session.execute(delete(Patient).where(Patient.pk == patient_pk, Patient.num_studies <= 0))
        # Files go after the commit: a crash here leaves orphan files, never rows without files.
        for row in rows:
            try:
                self.files.remove(row.file_path)
            except OSError:
                log.warning("could not remove %s", row.file_path)
        event = DeletedEvent(study_uid, series_uid, tuple(r.sop_instance_uid for r in rows))
        for listener in self.deleted_listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001
                log.exception("deleted-instance listener failed")
        return len(rows)

