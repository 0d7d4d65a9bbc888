"""Talking to an upstream PACS: finding studies and their instances, and retrieving instances into the store.

One interface (``Upstream``) with two transports: DIMSE (C-FIND, C-MOVE to this gateway's own SCP, C-GET with
this gateway as the storage SCP on the same association) and DICOMweb (QIDO-RS through dicomweb-client, WADO-RS
read as a stream so each instance is stored byte for byte as the PACS sent it). Retrieved instances go through
the node's common ingest path, exactly as C-STORE and STOW-RS do.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context, build_role
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from gateway import __version__
from gateway.audit import audit
from gateway.dicom.tags import tag_hex
from gateway.dimse.handlers import (
    IMPLEMENTATION_CLASS_UID,
    MAX_PRESENTATION_CONTEXTS,
    match_pynetdicom_logging,
    set_tcp_nodelay,
    store_received,
)
from gateway.node import Node
from gateway.pacs.config import UpstreamPacs
from gateway.services.ingest import StoreResult
from gateway.web.accept import parse_media_type
from gateway.web.multipart import MultipartError, read_multipart

log = logging.getLogger(__name__)

SUCCESS, PENDING_STATUSES = 0x0000, (0xFF00, 0xFF01)
WARNING_STATUSES = (0x0001, 0xB000, 0xB006, 0xB007)
MAX_PDU_SIZE = 256 * 1024
# Offered for each SOP class a C-GET will receive, one syntax per context so the PACS can send every instance
# as it stores it (byte for byte) instead of converting it to what one shared context happened to accept.
GET_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit,
                         JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
                         RLELossless, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)
STORE_GROUP = 32
# Groups stored at once while the download goes on: hashing and file I/O release the GIL, so two overlap.
STORING_THREADS = 2

# DICOM JSON tags used below.
STUDY_UID, SERIES_UID, SOP_UID, SOP_CLASS = "0020000D", "0020000E", "00080018", "00080016"
SERIES_INSTANCE_COUNT = "00201209"  # NumberOfSeriesRelatedInstances
SOP_CLASSES_IN_STUDY = "00080062"
STUDY_KEYS: dict[str, str] = {  # C-FIND / QIDO-RS study-level keys the CLI and API offer, by keyword
    "PatientID": "00100020", "PatientName": "00100010", "PatientBirthDate": "00100030", "StudyDate": "00080020",
    "StudyTime": "00080030", "AccessionNumber": "00080050", "StudyInstanceUID": STUDY_UID,
    "ModalitiesInStudy": "00080061", "StudyDescription": "00081030", "StudyID": "00200010",
    "ReferringPhysicianName": "00080090", "IssuerOfPatientID": "00100021",
}
_STUDY_RETURN = ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "PatientSex")


class UpstreamError(Exception):
    """The PACS could not be reached or refused; the message says which PACS and what happened."""


@dataclass(frozen=True)
class UpstreamInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str


@dataclass
class SeriesInventory:
    """A series of a study in the PACS: the instance count it announces and, once listed, its instances."""

    study_uid: str
    series_uid: str
    announced: int | None
    instances: list[UpstreamInstance] | None = None
    # The SOP classes of the study's instances (SOPClassesInStudy), when the PACS says: what a C-GET proposes.
    study_sop_classes: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return len(self.instances) if self.instances is not None else (self.announced or 0)


@dataclass
class RetrieveOutcome:
    completed: int = 0
    failed: int = 0
    warning: int = 0
    status: str = ""


Progress = Callable[[int], None]  # called with the number of instances just received


def first_value(element: dict[str, Any] | None) -> Any:
    if not element or not element.get("Value"):
        return None
    value = element["Value"][0]
    if isinstance(value, dict) and "Alphabetic" in value:
        return value["Alphabetic"]
    return value


class RateLimiter:
    """Spaces events at most ``rate`` per second (a token bucket of one): the PACS then sends no faster."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            time.sleep(delay)


class Upstream(Protocol):
    pacs: UpstreamPacs

    def find_studies(self, filters: dict[str, str], limit: int | None = None) -> list[dict[str, Any]]: ...

    def inventory(self, study_uid: str) -> list[UpstreamInstance]: ...

    def series_inventory(self, study_uid: str) -> list[SeriesInventory]: ...

    def list_series(self, series: SeriesInventory) -> list[UpstreamInstance]: ...

    def close(self) -> None: ...


def study_query_dataset(filters: dict[str, str]) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword in (*STUDY_KEYS, *_STUDY_RETURN):
        setattr(identifier, keyword, filters.get(keyword, ""))
    return identifier


class DimseUpstream:
    """A PACS reached over DIMSE; one association per operation, TCP_NODELAY on every socket."""

    def __init__(self, node: Node, pacs: UpstreamPacs) -> None:
        assert pacs.has_dimse
        self.node = node
        self.pacs = pacs
        self.calling_ae = pacs.calling_ae_title or node.settings.ae_title

    def _ae(self) -> AE:
        match_pynetdicom_logging()
        ae = AE(ae_title=self.calling_ae)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = f"EUCAIM_GW_{__version__}"[:16]
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.pacs.timeout
        ae.maximum_pdu_size = MAX_PDU_SIZE
        return ae

    @contextlib.contextmanager
    def associate(self, contexts: list[PresentationContext], ext_neg: list[Any] | None = None,
                  handlers: list[tuple[Any, Callable[..., Any]]] | None = None) -> Iterator[Association]:
        ae = self._ae()
        assoc = ae.associate(self.pacs.host or "", self.pacs.port or 0, contexts=contexts,
                             ae_title=self.pacs.ae_title or "", max_pdu=MAX_PDU_SIZE, ext_neg=ext_neg,
                             evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay), *(handlers or [])])
        if not assoc.is_established:
            reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            audit("upstream-association", outcome=reason, pacs=self.pacs.name, called_ae=self.pacs.ae_title,
                  peer=f"{self.pacs.host}:{self.pacs.port}")
            raise UpstreamError(f"PACS {self.pacs.name} ({self.pacs.ae_title}@{self.pacs.host}:{self.pacs.port}) "
                                f"did not accept an association from {self.calling_ae}: {reason}")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def echo(self) -> None:
        with self.associate([build_context(Verification)]) as assoc:
            status = assoc.send_c_echo()
            if not status or status.Status != SUCCESS:
                raise UpstreamError(f"PACS {self.pacs.name}: C-ECHO failed")

    def _find(self, assoc: Association, identifier: Dataset) -> list[dict[str, Any]]:
        matches: list[dict[str, Any]] = []
        for status, found in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise UpstreamError(f"PACS {self.pacs.name}: C-FIND got no response (timeout or abort)")
            code = int(status.Status)
            if code in PENDING_STATUSES:
                if found is None:  # a match pynetdicom could not decode: never drop it silently
                    raise UpstreamError(f"PACS {self.pacs.name}: C-FIND sent a match that cannot be decoded")
                matches.append(found.to_json_dict())
            elif code != SUCCESS:
                raise UpstreamError(f"PACS {self.pacs.name}: C-FIND failed with status 0x{code:04X} "
                                    f"{status.get('ErrorComment', '')}".rstrip())
        return matches

    def find_studies(self, filters: dict[str, str], limit: int | None = None) -> list[dict[str, Any]]:
        with self.associate([build_context(StudyRootQueryRetrieveInformationModelFind)]) as assoc:
            matches = self._find(assoc, study_query_dataset(filters))
        audit("upstream-c-find", pacs=self.pacs.name, level="STUDY", query=_describe(filters), matches=len(matches))
        return matches[:limit] if limit else matches

    def inventory(self, study_uid: str) -> list[UpstreamInstance]:
        """Every instance of a study: its series (``series_inventory``), each listed (``list_series``)."""
        instances: list[UpstreamInstance] = []
        for series in self.series_inventory(study_uid):
            instances += self.list_series(series)
        return instances

    def series_inventory(self, study_uid: str) -> list[SeriesInventory]:
        """The series of a study with the instance counts the PACS announces (one SERIES-level C-FIND); their
        instances are listed only where needed (``list_series``): a series absent here is retrieved whole, and
        listing 500 instances costs about as much as retrieving them."""
        with self.associate([build_context(StudyRootQueryRetrieveInformationModelFind)]) as assoc:
            series_query = Dataset()
            series_query.QueryRetrieveLevel = "SERIES"
            series_query.StudyInstanceUID = study_uid
            series_query.SeriesInstanceUID = ""
            series_query.NumberOfSeriesRelatedInstances = ""
            classes_query = Dataset()
            classes_query.QueryRetrieveLevel = "STUDY"
            classes_query.StudyInstanceUID = study_uid
            classes_query.SOPClassesInStudy = ""
            sop_classes = tuple(sorted({str(uid) for match in self._find(assoc, classes_query)
                                        for uid in (match.get(SOP_CLASSES_IN_STUDY) or {}).get("Value", []) if uid}))
            found = []
            for match in self._find(assoc, series_query):
                count = first_value(match.get(SERIES_INSTANCE_COUNT))
                found.append(SeriesInventory(study_uid, str(first_value(match.get(SERIES_UID))),
                                             int(count) if count not in (None, "") else None,
                                             study_sop_classes=sop_classes))
        audit("upstream-c-find", pacs=self.pacs.name, level="SERIES", study=study_uid, matches=len(found))
        return found

    def list_series(self, series: SeriesInventory) -> list[UpstreamInstance]:
        """The instances of a series (IMAGE-level C-FIND), kept in ``series.instances``.

        A short list would make a pull report complete with instances missing, so the list is checked against
        the count the PACS announces (asked again once, then refused when they disagree).
        """
        if series.instances is not None:
            return series.instances
        with self.associate([build_context(StudyRootQueryRetrieveInformationModelFind)]) as assoc:
            listed = self._series_instances(assoc, series.study_uid, series.series_uid)
            if series.announced is not None and len(listed) != series.announced:
                listed = self._series_instances(assoc, series.study_uid, series.series_uid)
                if len(listed) != series.announced:
                    raise UpstreamError(f"PACS {self.pacs.name} announces {series.announced} instances in series "
                                        f"{series.series_uid} but lists {len(listed)}")
        audit("upstream-c-find", pacs=self.pacs.name, level="IMAGE", study=series.study_uid,
              series=series.series_uid, matches=len(listed))
        series.instances = listed
        return listed

    def _series_instances(self, assoc: Association, study_uid: str, series_uid: str) -> list[UpstreamInstance]:
        image_query = Dataset()
        image_query.QueryRetrieveLevel = "IMAGE"
        image_query.StudyInstanceUID = study_uid
        image_query.SeriesInstanceUID = series_uid
        image_query.SOPInstanceUID = ""
        image_query.SOPClassUID = ""
        return [UpstreamInstance(study_uid, series_uid, str(first_value(match.get(SOP_UID))),
                                 str(first_value(match.get(SOP_CLASS)) or ""))
                for match in self._find(assoc, image_query)]

    @staticmethod
    def _identifier(study_uid: str, series_uid: str | None, sop_uids: list[str] | None) -> Dataset:
        identifier = Dataset()
        identifier.StudyInstanceUID = study_uid
        identifier.QueryRetrieveLevel = "STUDY"
        if series_uid is not None:
            identifier.QueryRetrieveLevel = "SERIES"
            identifier.SeriesInstanceUID = series_uid
        if sop_uids is not None:
            identifier.QueryRetrieveLevel = "IMAGE"
            identifier.SOPInstanceUID = sop_uids if len(sop_uids) > 1 else sop_uids[0]
        return identifier

    @staticmethod
    def _outcome(responses: Iterable[tuple[Dataset, Dataset | None]], pacs: str, operation: str,
                 on_pending: Callable[[int], None] | None = None) -> RetrieveOutcome:
        outcome = RetrieveOutcome()
        for status, _ in responses:
            if not status:
                raise UpstreamError(f"PACS {pacs}: {operation} got no response (timeout or abort)")
            code = int(status.Status)
            completed = int(status.get("NumberOfCompletedSuboperations", 0) or 0)
            if code in PENDING_STATUSES:
                if on_pending is not None:
                    on_pending(completed)
                continue
            outcome.completed = completed
            outcome.failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
            outcome.warning = int(status.get("NumberOfWarningSuboperations", 0) or 0)
            outcome.status = f"0x{code:04X}"
            if code not in (SUCCESS, *WARNING_STATUSES):
                comment = status.get("ErrorComment", "")
                raise UpstreamError(f"PACS {pacs}: {operation} failed with status 0x{code:04X} {comment}".rstrip())
        return outcome

    def move(self, study_uid: str, series_uid: str | None, sop_uids: list[str] | None, destination: str,
             progress: Progress) -> RetrieveOutcome:
        """C-MOVE to ``destination`` (this gateway's SCP, which stores what arrives on the common ingest path)."""
        reported = 0

        def on_pending(completed: int) -> None:
            nonlocal reported
            if completed > reported:
                progress(completed - reported)
                reported = completed

        with self.associate([build_context(StudyRootQueryRetrieveInformationModelMove)]) as assoc:
            outcome = self._outcome(assoc.send_c_move(self._identifier(study_uid, series_uid, sop_uids), destination,
                                                      StudyRootQueryRetrieveInformationModelMove),
                                    self.pacs.name, "C-MOVE", on_pending)
        if outcome.completed + outcome.warning > reported:
            progress(outcome.completed + outcome.warning - reported)
        audit("upstream-c-move", pacs=self.pacs.name, study=study_uid, series=series_uid,
              instances=len(sop_uids) if sop_uids else None, destination=destination, completed=outcome.completed,
              failed=outcome.failed, warning=outcome.warning, status=outcome.status)
        return outcome

    def get(self, study_uid: str, series_uid: str | None, sop_uids: list[str] | None, sop_classes: set[str],
            progress: Progress, limiter: RateLimiter) -> RetrieveOutcome:
        """C-GET: the PACS sends the instances back on this association, to the storage SCP role we take."""
        contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
        roles = []
        for sop_class in sorted(sop_classes):
            contexts += [build_context(sop_class, syntax) for syntax in GET_TRANSFER_SYNTAXES]
            roles.append(build_role(sop_class, scp_role=True))
        if len(contexts) > MAX_PRESENTATION_CONTEXTS:
            # Too many SOP classes for one syntax per context: each class gets one context with every syntax.
            contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)] + [
                build_context(sop_class, list(GET_TRANSFER_SYNTAXES)) for sop_class in sorted(sop_classes)]
        refused: list[str] = []

        def on_store(event: Event) -> Any:
            limiter.wait()
            status = store_received(self.node, event)
            if status == SUCCESS:
                progress(1)
            else:
                refused.append(str(event.request.AffectedSOPInstanceUID))
            return status

        with self.associate(contexts[:MAX_PRESENTATION_CONTEXTS], ext_neg=roles,
                            handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            outcome = self._outcome(assoc.send_c_get(self._identifier(study_uid, series_uid, sop_uids),
                                                     StudyRootQueryRetrieveInformationModelGet),
                                    self.pacs.name, "C-GET")
        audit("upstream-c-get", pacs=self.pacs.name, study=study_uid, series=series_uid,
              instances=len(sop_uids) if sop_uids else None, completed=outcome.completed, failed=outcome.failed,
              warning=outcome.warning, refused=len(refused) or None, status=outcome.status)
        return outcome

    def close(self) -> None:
        pass


def _describe(filters: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(filters.items())) or "all"


class _StoringSink:
    """One part of a WADO-RS multipart response, spooled to an upload and stored in groups."""

    def __init__(self, owner: DicomwebUpstream, headers: dict[str, str]) -> None:
        self.owner = owner
        media_type = parse_media_type(headers.get("content-type", "application/dicom")).type
        self.upload = owner.node.files.new_upload() if media_type == "application/dicom" else None

    def write(self, data: bytes | memoryview) -> None:
        if self.upload is not None:
            self.upload.write(data)

    def complete(self) -> None:
        if self.upload is not None:
            self.owner.limiter.wait()
            self.owner.pending.append(self.upload.finished())
            if len(self.owner.pending) >= STORE_GROUP:
                self.owner.flush()

    def abort(self) -> None:
        if self.upload is not None:
            self.upload.discard()


class DicomwebUpstream:
    """A PACS reached over DICOMweb: QIDO-RS by dicomweb-client, WADO-RS streamed into the store as sent."""

    def __init__(self, node: Node, pacs: UpstreamPacs) -> None:
        from dicomweb_client.api import DICOMwebClient

        assert pacs.dicomweb_url
        self.node = node
        self.pacs = pacs
        self.session = requests.Session()
        self.session.verify = pacs.verify_tls
        if pacs.bearer_token:
            self.session.headers["Authorization"] = f"Bearer {pacs.bearer_token}"
        elif pacs.username:
            self.session.auth = (pacs.username, pacs.password or "")
        self.client = DICOMwebClient(pacs.dicomweb_url, session=self.session, timeout=pacs.timeout)
        self.pending: list[Any] = []
        self.results: list[StoreResult] = []
        # Storing a group (parse, digest, sync, index) overlaps the download of the next one.
        self._store_pool = ThreadPoolExecutor(max_workers=STORING_THREADS, thread_name_prefix="pull-store")
        self._storing: deque[Future[list[StoreResult]]] = deque()
        self.limiter = RateLimiter(None)
        self._progress: Progress = lambda count: None

    def _qido(self, call: Callable[[], list[dict[str, Any]]], what: str) -> list[dict[str, Any]]:
        try:
            return call()
        except requests.RequestException as exc:
            raise UpstreamError(f"PACS {self.pacs.name}: {what} failed: {exc}") from exc

    def find_studies(self, filters: dict[str, str], limit: int | None = None) -> list[dict[str, Any]]:
        matches = self._qido(lambda: self.client.search_for_studies(
            search_filters={key: value for key, value in filters.items() if value}, limit=limit,
            fields=list(STUDY_KEYS) + list(_STUDY_RETURN), get_remaining=limit is None), "QIDO-RS study search")
        audit("upstream-qido", pacs=self.pacs.name, level="study", query=_describe(filters), matches=len(matches))
        return matches

    def inventory(self, study_uid: str) -> list[UpstreamInstance]:
        matches = self._qido(lambda: self.client.search_for_instances(
            study_instance_uid=study_uid, fields=["SeriesInstanceUID", "SOPClassUID"], get_remaining=True),
            "QIDO-RS instance search")
        audit("upstream-qido", pacs=self.pacs.name, level="instance", study=study_uid, matches=len(matches))
        return [UpstreamInstance(study_uid, str(first_value(match.get(SERIES_UID))),
                                 str(first_value(match.get(SOP_UID))), str(first_value(match.get(SOP_CLASS)) or ""))
                for match in matches]

    def series_inventory(self, study_uid: str) -> list[SeriesInventory]:
        """One QIDO-RS request lists the whole study: every series comes listed."""
        by_series: dict[str, list[UpstreamInstance]] = {}
        for instance in self.inventory(study_uid):
            by_series.setdefault(instance.series_uid, []).append(instance)
        return [SeriesInventory(study_uid, series_uid, len(instances), instances)
                for series_uid, instances in by_series.items()]

    def list_series(self, series: SeriesInventory) -> list[UpstreamInstance]:
        assert series.instances is not None, "series_inventory lists every series"
        return series.instances

    def flush(self) -> None:
        """Hand the spooled group to a storing thread; with STORING_THREADS groups in hand, wait for the oldest."""
        if not self.pending:
            return
        group, self.pending = self.pending, []
        if len(self._storing) >= STORING_THREADS:
            self._collect(self._storing.popleft().result())
        self._storing.append(self._store_pool.submit(self.node.ingest.store_uploads, group))

    def _finish_storing(self) -> None:
        while self._storing:
            self._collect(self._storing.popleft().result())

    def _collect(self, results: list[StoreResult]) -> None:
        self.results += results
        stored = sum(result.ok for result in results)
        if stored:
            self._progress(stored)

    def retrieve(self, study_uid: str, series_uid: str | None, sop_uid: str | None, progress: Progress,
                 limiter: RateLimiter) -> RetrieveOutcome:
        """WADO-RS with ``transfer-syntax=*``: each instance as the PACS stores it, streamed part by part."""
        url = f"{self.pacs.dicomweb_url}/studies/{study_uid}"
        if series_uid:
            url += f"/series/{series_uid}"
            if sop_uid:
                url += f"/instances/{sop_uid}"
        self.limiter, self._progress, self.results = limiter, progress, []
        headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        try:
            with self.session.get(url, headers=headers, stream=True, timeout=self.pacs.timeout) as response:
                if response.status_code != 200:
                    raise UpstreamError(f"PACS {self.pacs.name}: WADO-RS {url} answered {response.status_code} "
                                        f"{response.text[:200]}")
                content_type = parse_media_type(response.headers.get("Content-Type", ""))
                if content_type.type != "multipart/related":
                    raise UpstreamError(f"PACS {self.pacs.name}: WADO-RS answered {content_type.type}, "
                                        "not multipart/related")
                response.raw.decode_content = True
                try:
                    read_multipart(response.raw, content_type.params.get("boundary", ""),
                                   lambda part_headers: _StoringSink(self, part_headers))
                except MultipartError as exc:
                    raise UpstreamError(f"PACS {self.pacs.name}: malformed WADO-RS response: {exc}") from exc
                finally:
                    self.flush()
                    self._finish_storing()
        except requests.RequestException as exc:
            raise UpstreamError(f"PACS {self.pacs.name}: WADO-RS {url} failed: {exc}") from exc
        outcome = RetrieveOutcome(completed=sum(r.ok for r in self.results),
                                  failed=sum(not r.ok for r in self.results), status="200")
        audit("upstream-wado-rs", pacs=self.pacs.name, study=study_uid, series=series_uid, instance=sop_uid,
              completed=outcome.completed, failed=outcome.failed)
        return outcome

    def close(self) -> None:
        self._store_pool.shutdown(wait=True)
        self.session.close()


def study_summary(match: dict[str, Any]) -> dict[str, Any]:
    """A study-level C-FIND/QIDO-RS answer as the CLI and API list it."""
    def value(keyword: str) -> Any:
        from pydicom.datadict import tag_for_keyword

        tag = tag_for_keyword(keyword)
        element = match.get(tag_hex(tag)) if tag is not None else None
        if element and keyword == "ModalitiesInStudy":
            return "\\".join(str(v) for v in element.get("Value", []))
        return first_value(element)

    return {keyword: value(keyword) for keyword in (
        "StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber",
        "ModalitiesInStudy", "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")}


__all__ = ["DicomwebUpstream", "DimseUpstream", "RateLimiter", "RetrieveOutcome", "UpstreamError",
           "UpstreamInstance", "study_summary"]
