"""Storing DICOM instances: the single path behind STOW-RS, C-STORE and pulls from a PACS.

Steps for one instance: parse and validate the uploaded file, decide (under a lock on its study) whether it
is new, a repeat of a stored instance, or a conflicting one, move the file into place, and index it. The
outcome of each instance is reported separately; one bad instance never affects the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError

from gateway.dicom.index_fields import IndexFields, index_fields, json_text
from gateway.dicom.json_model import dataset_to_json, dumps
from gateway.dicom.status import (
    CANNOT_UNDERSTAND,
    DUPLICATE_SOP_INSTANCE,
    MISSING_ATTRIBUTE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    STUDY_UID_MISMATCH,
    InstanceRejected,
)
from gateway.dicom.tags import tag_hex
from gateway.dicom.uids import InvalidUID, validate_uid
from gateway.store.db import write_session
from gateway.store.files import FileStore, FinishedUpload
from gateway.store.index_writer import GroupIndexWriter, IndexRecord
from gateway.store.models import Instance, Patient, Series, Study, StudyModality, utcnow

log = logging.getLogger(__name__)

DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

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


class _RedoIsolated(Exception):
    """An instance failed in a group indexed without savepoints."""


@dataclass
class ParsedInstance:
    fields: IndexFields
    transfer_syntax_uid: str
    metadata: dict[str, Any]
    # Identity of the object: the data set's bytes, not the File Meta Information, which differs by sender
    # (STOW-RS client, C-STORE peer) for the very same instance.
    content_sha256: str

    @property
    def sop_class_uid(self) -> str:
        return self.fields.sop_class_uid

    @property
    def sop_instance_uid(self) -> str:
        return self.fields.sop_instance_uid

    @property
    def study_instance_uid(self) -> str:
        return self.fields.study_instance_uid

    @property
    def series_instance_uid(self) -> str:
        return self.fields.series_instance_uid


def _check_not_truncated(dataset: Dataset, file_size: int) -> None:
    """Deferred values are only skipped over while parsing, so a cut-off file parses 'successfully'."""
    for tag in dataset.keys():  # noqa: SIM118 - iterating a Dataset would convert every element
        raw = dataset.get_item(tag, keep_deferred=True)
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


def parse_instance(path: Path, bulk_threshold: int, data_set_sha256: str | None = None) -> ParsedInstance:
    """Read and validate one uploaded Part 10 file; raise InstanceRejected with the reason otherwise.

    ``data_set_sha256``: the digest computed while the file was spooled (read from the file otherwise).
    """
    file_size = path.stat().st_size
    if file_size == 0:
        raise InstanceRejected(CANNOT_UNDERSTAND, "the part is empty")
    try:
        dataset = dcmread(path, defer_size=DEFER_SIZE)
    except InvalidDicomError as exc:
        raise InstanceRejected(CANNOT_UNDERSTAND, f"not a DICOM PS3.10 file: {exc}") from exc
    except Exception as exc:
        raise InstanceRejected(CANNOT_UNDERSTAND, f"cannot parse the DICOM file: {exc}") from exc
    meta = getattr(dataset, "file_meta", None)
    transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "").strip("\x00 ") if meta else ""
    if transfer_syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        # A deflated data set is inflated whole while reading (a cut-off one fails there); the offsets
        # pydicom reports are in the inflated bytes, so comparing them with the file size means nothing.
        _check_not_truncated(dataset, file_size)
    if not transfer_syntax:
        raise InstanceRejected(CANNOT_UNDERSTAND,
                               "the File Meta Information has no TransferSyntaxUID (0002,0010)")
    try:
        transfer_syntax = validate_uid(transfer_syntax, "TransferSyntaxUID")
        metadata = dataset_to_json(dataset, bulk_threshold)
    except InvalidUID as exc:
        raise InstanceRejected(CANNOT_UNDERSTAND, str(exc)) from exc
    except Exception as exc:
        raise InstanceRejected(CANNOT_UNDERSTAND, f"cannot decode the data set: {exc}") from exc
    for keyword, tag in (("SOPClassUID", "00080016"), ("SOPInstanceUID", "00080018"),
                         ("StudyInstanceUID", "0020000D"), ("SeriesInstanceUID", "0020000E")):
        raw = json_text(metadata, tag)
        if not raw:
            raise InstanceRejected(MISSING_ATTRIBUTE, f"required attribute {keyword} is missing or empty")
        try:
            validate_uid(raw, keyword)
        except InvalidUID as exc:
            raise InstanceRejected(CANNOT_UNDERSTAND, str(exc)) from exc
    return ParsedInstance(index_fields(metadata), transfer_syntax, metadata,
                          data_set_sha256 or _data_set_digest(path, meta))


def _data_set_digest(path: Path, meta: Any) -> str:
    """SHA-256 of the bytes after the File Meta Information (the whole file if its length is unknown)."""
    group_length = getattr(meta, "FileMetaInformationGroupLength", None) if meta is not None else None
    start = 132 + 12 + int(group_length) if isinstance(group_length, int) else 0
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(start)
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _GroupedUpload:
    upload: Path | FinishedUpload
    result: StoreResult | None = None


class DeferredStore:
    """Instances a pull retrieves, stored in groups by a thread of their own while more arrive.

    Only for what this gateway fetched itself (C-MOVE/C-GET sub-operations of a pull): the PACS keeps the
    original and the pull checks afterwards which instances reached the index, re-fetching the rest when it
    is resumed, so the sub-operation need not wait for its instance to be durable. That wait (one file-system
    sync and one index commit per instance when they arrive one after the other) is what made a pull many
    times slower than the transfer. ``close`` stores what is left and waits.
    """

    GROUP = 64
    # How long a group waits for more instances: the sync and commit each group pays (two file-system syncs,
    # a few index queries) dominate when groups stay small, as they do when the storing thread, always free,
    # takes the two or three instances that arrived while it stored the last group.
    COLLECT_S = 0.25

    def __init__(self, ingest: IngestService) -> None:
        self._ingest = ingest
        self._queue: list[Path | FinishedUpload] = []
        self._wake = threading.Condition()
        self._closing = False
        self.results: list[StoreResult] = []
        self._thread = threading.Thread(target=self._run, name="deferred-store", daemon=True)
        self._thread.start()

    def add(self, upload: Path | FinishedUpload) -> None:
        with self._wake:
            self._queue.append(upload)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue and self._closing:
                    return
                deadline = time.monotonic() + self.COLLECT_S
                while len(self._queue) < self.GROUP and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.wait(remaining)
                group, self._queue = self._queue[:self.GROUP], self._queue[self.GROUP:]
            try:
                self.results += self._ingest.store_uploads(group)
            except Exception as exc:  # the index is unreachable: these are not stored; the pull's check says so
                log.exception("storing retrieved instances failed")
                self.results += [StoreResult("failed", failure_reason=PROCESSING_FAILURE,
                                             message=f"processing failure: {exc}") for _ in group]

    def close(self) -> list[StoreResult]:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        return self.results


class IngestService:
    def __init__(self, engine: Engine, files: FileStore, bulk_threshold: int = 1024) -> None:
        self.engine = engine
        self.files = files
        self.bulk_threshold = bulk_threshold
        self.stored_listeners: list[Callable[[StoredEvent], None]] = []
        self.deleted_listeners: list[Callable[[DeletedEvent], None]] = []
        self._group = threading.Condition()
        self._group_pending: list[_GroupedUpload] = []
        self._group_committing = False
        # Pulls in progress, by the AE title of the PACS sending: their C-STOREs are stored in deferred groups.
        self._deferred: dict[str, DeferredStore] = {}

    # -- storing -------------------------------------------------------------------------------------------

    def store_bytes(self, data: bytes, expected_study_uid: str | None = None) -> StoreResult:
        return self.store_upload(self.files.upload_from_bytes(data), expected_study_uid)

    def store_upload(self, upload: Path | FinishedUpload, expected_study_uid: str | None = None) -> StoreResult:
        """Store one finished upload (a PS3.10 file in the tmp dir). The upload is consumed either way."""
        return self.store_uploads([upload], expected_study_uid)[0]

    @contextlib.contextmanager
    def deferred(self, sender_ae_title: str) -> Iterator[DeferredStore]:
        """While a pull retrieves from ``sender_ae_title``, its instances go to a ``DeferredStore``."""
        store = DeferredStore(self)
        self._deferred[sender_ae_title] = store
        try:
            yield store
        finally:
            if self._deferred.get(sender_ae_title) is store:
                del self._deferred[sender_ae_title]
            store.close()

    def deferred_store_for(self, sender_ae_title: str) -> DeferredStore | None:
        return self._deferred.get(sender_ae_title)

    def store_upload_grouped(self, upload: Path | FinishedUpload) -> StoreResult:
        """Store one upload, committed together with those other threads hand in meanwhile.

        For senders of one instance per request (C-STORE): while one group is being made durable, the uploads
        arriving on other associations wait and then go as the next group, so parallel associations share
        the file-system sync and the index commit instead of queueing for one each. A lone caller is stored at
        once, as by ``store_upload``.
        """
        mine = _GroupedUpload(upload)
        with self._group:
            self._group_pending.append(mine)
            while self._group_committing and mine.result is None:
                self._group.wait()
            if mine.result is not None:
                return mine.result
            self._group_committing = True
            group, self._group_pending = self._group_pending, []
        results: list[StoreResult] | None = None
        try:
            results = self.store_uploads([grouped.upload for grouped in group])
        except Exception as exc:  # the index is unreachable: every instance of the group is refused
            log.exception("storing a group of uploads failed")
            results = [StoreResult("failed", failure_reason=PROCESSING_FAILURE, message=f"processing failure: {exc}")
                       for _ in group]
        finally:
            # Results and the end of this commit become visible together, so no waiter wakes to find neither.
            with self._group:
                for index, upload in enumerate(group):
                    upload.result = (results[index] if results is not None else
                                     StoreResult("failed", failure_reason=PROCESSING_FAILURE, message="interrupted"))
                self._group_committing = False
                self._group.notify_all()
        assert mine.result is not None
        return mine.result

    def store_uploads(self, uploads: Sequence[Path | FinishedUpload],
                      expected_study_uid: str | None = None) -> list[StoreResult]:
        """Store finished uploads as one group; each gets its own result and one failure spoils no other.

        Durability is bought once per group rather than once per instance (the fsyncs dominate the cost of a
        small instance): the files are linked into place, one file-system sync makes their content and their
        directory entries durable, and a single index commit follows. Nothing is reported stored before that
        commit; a crash before it leaves only files without index rows, which a later store replaces.
        """
        finished = [upload if isinstance(upload, FinishedUpload) else FinishedUpload(upload) for upload in uploads]
        results: list[StoreResult | None] = [None] * len(finished)
        candidates: list[tuple[int, ParsedInstance, Path]] = []
        try:
            for index, (path, digest) in enumerate(finished):
                parsed: ParsedInstance | None = None
                try:
                    add_missing_preamble(path)
                    parsed = parse_instance(path, self.bulk_threshold, digest)
                    if expected_study_uid is not None and parsed.study_instance_uid != expected_study_uid:
                        raise InstanceRejected(
                            STUDY_UID_MISMATCH,
                            f"StudyInstanceUID {parsed.study_instance_uid} does not match the study in the URL "
                            f"({expected_study_uid})", conflict=True)
                    candidates.append((index, parsed, path))
                except InstanceRejected as exc:
                    results[index] = self._failure(exc, parsed)
                except Exception as exc:
                    log.exception("reading an upload failed")
                    results[index] = StoreResult("failed", failure_reason=PROCESSING_FAILURE,
                                                 message=f"processing failure: {exc}")
            if candidates:
                self._index_group(candidates, results)
        finally:
            for path, _ in finished:
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
                except Exception:
                    log.exception("stored-instance listener failed")

    def _index_group(self, candidates: list[tuple[int, ParsedInstance, Path]],
                     results: list[StoreResult | None]) -> None:
        lock_keys = tuple(sorted({parsed.study_instance_uid for _, parsed, _ in candidates}))
        # First all instance rows in one statement; only if that meets a conflict that the up-front checks
        # could not see (a concurrent writer in another process), the group is redone instance by instance.
        for isolate in (False, True):
            placed: list[str] = []
            try:
                with write_session(self.engine, lock_keys=lock_keys) as session:
                    writer = GroupIndexWriter(session, (parsed.fields for _, parsed, _ in candidates),
                                              isolate=isolate)
                    for index, parsed, path in candidates:
                        results[index] = self._index_one(writer, parsed, path, placed)
                    writer.finish()
                    if placed:
                        self.files.make_durable([self.files.absolute(relative) for relative in placed],
                                                directories=True)
                return
            except (IntegrityError, _RedoIsolated):
                for relative in placed:
                    self.files.remove(relative)
                if isolate:
                    raise
                log.info("a group of %d instances had a failing instance; redoing it one by one", len(candidates))
            except Exception as exc:  # the commit failed: nothing of the group is stored
                log.exception("indexing a group of %d instances failed", len(candidates))
                for relative in placed:
                    self.files.remove(relative)
                reason = OUT_OF_RESOURCES if isinstance(exc, OSError) else PROCESSING_FAILURE
                for index, parsed, _ in candidates:
                    results[index] = self._failure(InstanceRejected(reason, f"not stored: {exc}"), parsed)
                return

    def _index_one(self, writer: GroupIndexWriter, parsed: ParsedInstance, upload: Path,
                   placed: list[str]) -> StoreResult:
        stored_sha256 = writer.stored_sha256(parsed.sop_instance_uid)
        if stored_sha256 is not None:
            if stored_sha256 == parsed.content_sha256:
                return StoreResult("duplicate", parsed.sop_class_uid, parsed.sop_instance_uid,
                                   parsed.study_instance_uid, parsed.series_instance_uid,
                                   message="an identical instance is already stored")
            return self._failure(InstanceRejected(
                DUPLICATE_SOP_INSTANCE,
                f"SOPInstanceUID {parsed.sop_instance_uid} is already stored with different content; "
                "delete the stored instance first to replace it", conflict=True), parsed)
        relative = self.files.relative_path(parsed.study_instance_uid, parsed.series_instance_uid,
                                            parsed.sop_instance_uid)
        newly_placed = self.files.place(upload, relative)
        if newly_placed:
            placed.append(relative)
        try:
            writer.add(IndexRecord(parsed.fields, parsed.metadata, dumps(parsed.metadata),
                                   parsed.transfer_syntax_uid, relative,
                                   os.stat(self.files.absolute(relative)).st_size, parsed.content_sha256))
        except (InstanceRejected, IntegrityError) as exc:
            if not writer.isolate:
                # Without a savepoint its partial rows cannot be taken back alone: redo the group isolated.
                raise _RedoIsolated from exc
            if newly_placed:
                placed.remove(relative)
                self.files.remove(relative)
            if isinstance(exc, InstanceRejected):
                return self._failure(exc, parsed)
            return self._failure(InstanceRejected(
                DUPLICATE_SOP_INSTANCE, f"conflicting store of {parsed.sop_instance_uid}: {exc.orig}",
                conflict=True), parsed)
        return StoreResult("stored", parsed.sop_class_uid, parsed.sop_instance_uid, parsed.study_instance_uid,
                           parsed.series_instance_uid)

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
            except Exception:
                log.exception("deleted-instance listener failed")
        return len(rows)

