"""pynetdicom event handlers: each turns one DIMSE request into calls of the node's services.

C-STORE goes through ``IngestService.store_uploads`` exactly like STOW-RS; C-FIND through ``parse_query`` and
``QueryService.search`` like QIDO-RS; C-MOVE and C-GET find what to send with the same matcher and read it
through ``RetrieveService``. Nothing here decides what is stored, matched or sent.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import struct
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_FIND_RSP, C_GET_RSP, C_MOVE_RSP
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from gateway.audit import audit
from gateway.dicom.status import OUT_OF_RESOURCES, PROCESSING_FAILURE
from gateway.dicom.tags import tag_hex
from gateway.dimse.identifiers import (
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    IdentifierError,
    QueryKeys,
    level_name,
    match_identifier,
    query_keys,
    retrieve_keys,
)
from gateway.dimse.policy import AssociationPolicy, Service
from gateway.node import Node
from gateway.services.ingest import PREAMBLE, StoreResult
from gateway.services.query import InvalidQuery, SearchLevel, parse_query
from gateway.services.retrieve import (
    BIG_ENDIAN,
    NATIVE_TRANSFER_SYNTAXES,
    NotAcceptable,
    NotFound,
    StoredInstance,
)

log = logging.getLogger(__name__)

# A UUID-derived UID (PS3.5 B.2) needs no registered root; it names this implementation in every file it writes.
IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'urn:eucaim:gateway:dimse').int}"
# Without the version: the File Meta Information of a received instance must not change between releases, or a
# repeated C-STORE after an upgrade would no longer be recognised as the identical instance.
FILE_META_VERSION_NAME = "EUCAIM_GATEWAY"

SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
NOT_AUTHORISED = 0x0124
MAX_PRESENTATION_CONTEXTS = 128  # PS3.8 9.3.2.2: context IDs are odd numbers 1..255
UNIVERSAL_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


@dataclass(frozen=True)
class Model:
    name: str
    study_root: bool


FIND_MODELS = {PatientRootQueryRetrieveInformationModelFind: Model("patient-root", False),
               StudyRootQueryRetrieveInformationModelFind: Model("study-root", True)}
MOVE_MODELS = {PatientRootQueryRetrieveInformationModelMove: Model("patient-root", False),
               StudyRootQueryRetrieveInformationModelMove: Model("study-root", True)}
GET_MODELS = {PatientRootQueryRetrieveInformationModelGet: Model("patient-root", False),
              StudyRootQueryRetrieveInformationModelGet: Model("study-root", True)}

_REJECT_REASONS = {(1, 1): "no-reason-given", (1, 2): "application-context-name-not-supported",
                   (1, 3): "calling-ae-title-not-recognised", (1, 7): "called-ae-title-not-recognised",
                   (2, 1): "no-reason-given", (2, 2): "protocol-version-not-supported",
                   (3, 1): "temporary-congestion", (3, 2): "local-limit-exceeded"}


def service_of(abstract_syntax: str) -> Service:
    if abstract_syntax == Verification:
        return "echo"
    if abstract_syntax in FIND_MODELS:
        return "query"
    if abstract_syntax in MOVE_MODELS or abstract_syntax in GET_MODELS:
        return "retrieve"
    return "store"


# Largest single read: pynetdicom reads 4 KiB at a time, 128 Python calls for a 512 KiB CT slice.
RECEIVE_CHUNK = 1024 * 1024
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def set_tcp_nodelay(event: Event) -> None:
    """Tune every DIMSE socket, both ends of the delay that Nagle's algorithm and delayed ACKs cause.

    Without TCP_NODELAY, our small last PDU of a message waits for the peer's delayed ACK. And a peer that
    keeps Nagle on (DCMTK's tools do unless TCP_NODELAY is set in their environment) holds back its last
    fragment of each instance until we acknowledge the ones before, which Linux delays by up to 40 ms:
    TCP_QUICKACK, re-armed before every read because the kernel clears it, acknowledges at once (measured:
    120 instances from a default storescu in 8.2 s without it, 1.75 s with it).
    """
    transport = event.assoc.dul.socket
    raw = getattr(transport, "socket", None) if transport is not None else None
    if raw is None:
        return
    with contextlib.suppress(OSError):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport.recv = types.MethodType(_receive, transport)


def _receive(transport: Any, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: ``nr_bytes`` or fewer at end of stream, in large reads, acknowledging fast."""
    sock = transport.socket
    received = bytearray()
    while len(received) < nr_bytes:
        if _TCP_QUICKACK is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        chunk = sock.recv(min(nr_bytes - len(received), RECEIVE_CHUNK))
        if not chunk:
            break
        received += chunk
    return received


def match_pynetdicom_logging() -> None:
    """Let pynetdicom describe messages and identifiers only when its logger shows DEBUG (by default it shows
    warnings only, unless the gateway logs DEBUG).

    Its standard event loggers and its identifier logging format every PDU, DIMSE message and C-FIND/MOVE/GET
    identifier, data sets included, whether or not the line is then written: about a third of the CPU of
    answering a C-FIND, measured, and as much again on our side of a PACS's C-FIND responses. The gateway's
    audit lines record associations and operations either way.
    """
    pynetdicom_log = logging.getLogger("pynetdicom")
    if pynetdicom_log.level == logging.NOTSET and not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Its INFO lines describe every message; the audit log already records what matters.
        pynetdicom_log.setLevel(logging.WARNING)
    debugging = pynetdicom_log.isEnabledFor(logging.DEBUG)
    pynetdicom_config.LOG_HANDLER_LEVEL = "standard" if debugging else "none"
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = debugging
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = debugging


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble and File Meta Information (PS3.10 7.1, Explicit VR Little Endian) for a data set received in
    ``transfer_syntax``.

    Written directly rather than through a pydicom Dataset: it is per received instance, and building and
    encoding a Dataset cost a millisecond there, as much as storing the rest of a small instance.
    """
    elements = (_meta_element(0x0001, b"OB", b"\x00\x01")
                + _meta_element(0x0002, b"UI", _uid_bytes(sop_class_uid))
                + _meta_element(0x0003, b"UI", _uid_bytes(sop_instance_uid))
                + _meta_element(0x0010, b"UI", _uid_bytes(transfer_syntax))
                + _meta_element(0x0012, b"UI", _uid_bytes(IMPLEMENTATION_CLASS_UID))
                + _meta_element(0x0013, b"SH", FILE_META_VERSION_NAME.encode("ascii")))
    return PREAMBLE + _meta_element(0x0000, b"UL", struct.pack("<I", len(elements))) + elements


def _uid_bytes(uid: str) -> bytes:
    value = str(uid).strip("\x00 ").encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" "
    if vr in (b"OB", b"OW", b"UN", b"UT"):  # 4-byte length after two reserved bytes
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def store_status(result: StoreResult) -> int | Dataset:
    if result.ok:  # stored, or an identical instance was already stored
        return SUCCESS
    return _status(result.failure_reason or PROCESSING_FAILURE, result.message)


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO: at most 64 characters
    return status


def store_received(node: Node, event: Event) -> int | Dataset:
    """Store the instance of a C-STORE request (to our SCP, or within our own C-GET) on the common ingest path.

    From a PACS a pull is retrieving from, the instance joins the pull's deferred groups (see
    ``DeferredStore``): the pull, not the sub-operation's response, tells whether it was stored.
    """
    request = event.request
    sender = event.assoc.requestor.ae_title if event.assoc.is_acceptor else event.assoc.acceptor.ae_title
    deferred = node.ingest.deferred_store_for(str(sender).strip())
    upload = node.files.new_upload()
    try:
        upload.write(part10_header(request.AffectedSOPClassUID, request.AffectedSOPInstanceUID,
                                   event.context.transfer_syntax))
        with request.DataSet.getbuffer() as received:  # the data set exactly as it came over the wire
            upload.write(received)
        finished = upload.finished()
    except OSError as exc:
        upload.discard()
        log.error("cannot spool a received instance: %s", exc)
        return _status(OUT_OF_RESOURCES, f"storage error: {exc}")
    except BaseException:
        upload.discard()
        raise
    if deferred is not None:
        deferred.add(finished)
        return SUCCESS
    result = node.ingest.store_upload_grouped(finished)
    if not result.ok:
        log.info("C-STORE of %s from %s refused: %s", request.AffectedSOPInstanceUID, sender, result.message)
    return store_status(result)


def _peer_address(assoc: Association) -> str:
    return f"{assoc.requestor.address}:{assoc.requestor.port}"


def _uid(match: dict[str, Any], tag: int) -> str:
    return str(match[tag_hex(tag)]["Value"][0])


def must_decode(instance: StoredInstance, receiving: Association) -> bool:
    """Whether the receiving association took no context for the instance as stored that pynetdicom can send
    it over (it converts only between the little endian native encodings), while one for Explicit VR Little
    Endian, which the retrieve service can decode it to, exists."""
    if instance.transfer_syntax_uid in NATIVE_TRANSFER_SYNTAXES and instance.transfer_syntax_uid != BIG_ENDIAN:
        return False
    syntaxes = {str(context.transfer_syntax[0]) for context in receiving.accepted_contexts
                if context.abstract_syntax == instance.sop_class_uid and context.as_scu}
    return instance.transfer_syntax_uid not in syntaxes and ExplicitVRLittleEndian in syntaxes


def sub_association_contexts(instances: list[StoredInstance]) -> list[PresentationContext]:
    """What to propose to a C-MOVE destination: each SOP class in each stored transfer syntax, so the files go
    as stored, and in the little endian syntaxes every peer takes, for what it refuses as stored."""
    syntaxes: dict[str, set[str]] = {}
    for instance in instances:
        syntaxes.setdefault(instance.sop_class_uid, set()).add(instance.transfer_syntax_uid)
    contexts = []
    for sop_class, stored in syntaxes.items():
        contexts += [build_context(sop_class, syntax) for syntax in sorted(stored - UNIVERSAL_SYNTAXES)]
        contexts.append(build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        log.warning("a C-MOVE needs %d presentation contexts; only %d can be proposed, the instances of the "
                    "others will fail", len(contexts), MAX_PRESENTATION_CONTEXTS)
    return contexts[:MAX_PRESENTATION_CONTEXTS] or [build_context(Verification)]


class DimseHandlers:
    """The handlers of one DIMSE service provider, bound to a node and its association policy."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.settings = node.settings
        self.policy = AssociationPolicy.from_settings(node.settings)
        self.peers = {peer.ae_title: peer for peer in node.settings.dimse_peers}
        # Audit fields of each query/retrieve in progress, logged with its final response.
        self._in_progress: dict[tuple[int, int], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def bindings(self) -> list[tuple[evt.EventType, Callable[..., Any]]]:
        return [(evt.EVT_CONN_OPEN, set_tcp_nodelay), (evt.EVT_REQUESTED, self.on_requested),
                (evt.EVT_ACCEPTED, self.on_accepted), (evt.EVT_REJECTED, self.on_rejected),
                (evt.EVT_ABORTED, self.on_aborted), (evt.EVT_CONN_CLOSE, self.on_closed),
                (evt.EVT_DIMSE_SENT, self.on_message_sent), (evt.EVT_C_STORE, self.on_store),
                (evt.EVT_C_FIND, self.on_find), (evt.EVT_C_MOVE, self.on_move), (evt.EVT_C_GET, self.on_get)]

    # -- association policy and audit ----------------------------------------------------------------------

    def _context_allowed(self, calling_ae: str, abstract_syntax: str, scp_role_asked: set[str]) -> bool:
        service = service_of(abstract_syntax)
        if self.policy.allows(calling_ae, service):
            return True
        # A C-GET retriever receives its instances over storage contexts it proposed with the SCP role.
        return service == "store" and abstract_syntax in scp_role_asked and self.policy.allows(calling_ae,
                                                                                              "retrieve")

    def on_requested(self, event: Event) -> None:
        """Accept only the presentation contexts of services the calling AE is allowed."""
        assoc = event.assoc
        calling_ae = str(assoc.requestor.primitive.calling_ae_title).strip()
        scp_role_asked = {str(uid) for uid, item in assoc.requestor.role_selection.items() if item.scp_role}
        assoc.acceptor.supported_contexts = [
            context for context in assoc.acceptor.supported_contexts
            if self._context_allowed(calling_ae, str(context.abstract_syntax), scp_role_asked)]

    def on_accepted(self, event: Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        proposed = {service_of(str(context.abstract_syntax))
                    for context in request.presentation_context_definition_list}
        accepted = {service_of(str(context.abstract_syntax)) for context in assoc.accepted_contexts}
        # Refused: by the policy, or not supported (a SOP class or transfer syntax this node does not know).
        audit("association", outcome="accepted", calling_ae=assoc.requestor.ae_title,
              called_ae=str(request.called_ae_title).strip(), peer=_peer_address(assoc),
              services=",".join(sorted(accepted)) or "none", refused=",".join(sorted(proposed - accepted)) or None)

    def on_rejected(self, event: Event) -> None:
        assoc = event.assoc
        request, rejection = assoc.requestor.primitive, assoc.acceptor.primitive
        reason = _REJECT_REASONS.get((rejection.result_source, rejection.diagnostic),
                                     f"source-{rejection.result_source}-diagnostic-{rejection.diagnostic}")
        audit("association", outcome="rejected", reason=reason,
              calling_ae=str(request.calling_ae_title).strip(), called_ae=str(request.called_ae_title).strip(),
              peer=_peer_address(assoc))

    def on_aborted(self, event: Event) -> None:
        assoc = event.assoc
        audit("association", outcome="aborted", calling_ae=assoc.requestor.ae_title, peer=_peer_address(assoc))

    def on_closed(self, event: Event) -> None:
        key = id(event.assoc)
        with self._lock:
            unfinished = [self._in_progress.pop(k) for k in list(self._in_progress) if k[0] == key]
        for fields in unfinished:
            audit(fields.pop("kind"), **fields, status="interrupted")

    def _track(self, event: Event, kind: str, **fields: Any) -> dict[str, Any]:
        """Audit fields of a query/retrieve; the handler fills them in, the final response logs them."""
        assoc = event.assoc
        record = {"kind": kind, "calling_ae": assoc.requestor.ae_title, "peer": _peer_address(assoc), **fields}
        with self._lock:
            self._in_progress[(id(assoc), event.message_id)] = record
        return record

    def on_message_sent(self, event: Event) -> None:
        message = event.message
        if not isinstance(message, C_FIND_RSP | C_MOVE_RSP | C_GET_RSP):
            return
        command = message.command_set
        status = int(command.Status)
        if status in (PENDING, 0xFF01):
            return
        with self._lock:
            fields = self._in_progress.pop((id(event.assoc), int(command.MessageIDBeingRespondedTo)), None)
        if fields is None:
            return
        if not isinstance(message, C_FIND_RSP):
            fields.update(completed=command.get("NumberOfCompletedSuboperations"),
                          failed=command.get("NumberOfFailedSuboperations"),
                          warning=command.get("NumberOfWarningSuboperations"))
        audit(fields.pop("kind"), **fields, status=f"0x{status:04X}",
              comment=command.get("ErrorComment") or None)

    # -- C-STORE -------------------------------------------------------------------------------------------

    def on_store(self, event: Event) -> int | Dataset:
        calling_ae = event.assoc.requestor.ae_title
        if not self.policy.allows(calling_ae, "store"):
            # Reached only over a storage context a C-GET retriever proposed with both roles.
            return _status(NOT_AUTHORISED, f"{calling_ae} may not store here")
        return store_received(self.node, event)

    # -- C-FIND --------------------------------------------------------------------------------------------

    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        model = FIND_MODELS[event.context.abstract_syntax]
        fields = self._track(event, "c-find", model=model.name, level=None, query=None, matches=0)
        try:
            identifier = event.identifier
            fields["level"] = level_name(identifier) or None
            keys = query_keys(identifier, model.study_root)
            fields["query"] = keys.describe()
            query = parse_query(keys.level, keys.pairs, max_results=self.settings.qido_max_results)
        except IdentifierError as exc:
            yield exc.status_dataset(), None
            return
        except InvalidQuery as exc:
            yield IdentifierError(str(exc)).status_dataset(), None
            return
        except Exception as exc:  # pydicom decodes elements lazily: a malformed identifier fails here
            yield IdentifierError(f"cannot decode the identifier: {exc}").status_dataset(), None
            return
        result = self.node.query.search(query, base_url="")
        if result.truncated:
            fields["truncated"] = f"at {self.settings.qido_max_results} (qido_max_results)"
        for match in result.matches:
            if event.is_cancelled:
                yield CANCEL, None
                return
            fields["matches"] += 1
            yield PENDING, match_identifier(match, identifier, keys, self.settings.ae_title)

    # -- C-MOVE and C-GET ----------------------------------------------------------------------------------

    def on_move(self, event: Event) -> Iterator[Any]:
        model = MOVE_MODELS[event.context.abstract_syntax]
        destination_title = (event.move_destination or "").strip()
        fields = self._track(event, "c-move", model=model.name, level=None, query=None, destination=destination_title)
        destination = self.peers.get(destination_title)
        if destination is None:
            yield None, None  # pynetdicom answers 0xA801, move destination unknown
            return
        plan = self._plan(event, model, fields)
        contexts = sub_association_contexts(plan if isinstance(plan, list) else [])
        # pynetdicom opens the association to the destination itself; its accepted contexts are needed later.
        destination_association: list[Association] = []

        def accepted(accepted_event: Event) -> None:
            destination_association.append(accepted_event.assoc)

        yield destination.host, destination.port, {
            "contexts": contexts,
            "evt_handlers": [(evt.EVT_CONN_OPEN, set_tcp_nodelay), (evt.EVT_ACCEPTED, accepted)]}
        yield from self._sub_operations(event, plan, lambda: destination_association[0])

    def on_get(self, event: Event) -> Iterator[Any]:
        model = GET_MODELS[event.context.abstract_syntax]
        fields = self._track(event, "c-get", model=model.name, level=None, query=None)
        yield from self._sub_operations(event, self._plan(event, model, fields), lambda: event.assoc)

    def _plan(self, event: Event, model: Model, fields: dict[str, Any]) -> list[StoredInstance] | IdentifierError:
        """The instances a retrieve identifier asks for, in series and instance order."""
        try:
            identifier = event.identifier
            fields["level"] = level_name(identifier) or None
            keys = retrieve_keys(identifier, model.study_root)
        except IdentifierError as exc:
            return exc
        except Exception as exc:
            return IdentifierError(f"cannot decode the identifier: {exc}")
        fields["query"] = keys.describe()
        try:
            instances = self._instances(keys)
        except InvalidQuery as exc:
            return IdentifierError(str(exc))
        fields["instances"] = len(instances)
        return instances

    def _instances(self, keys: QueryKeys) -> list[StoredInstance]:
        # A patient is retrieved study by study; the matcher finds the entities, the retrieve service their files.
        level: SearchLevel = "study" if keys.level == "patient" else keys.level
        query = parse_query(level, keys.pairs, max_results=1)
        query.limit = None  # a retrieve moves everything that matches
        matches = self.node.query.search(query, base_url="").matches
        wanted: dict[tuple[str, str | None], set[str] | None] = {}
        for match in matches:
            series = _uid(match, SERIES_INSTANCE_UID) if level in ("series", "instance") else None
            key = (_uid(match, STUDY_INSTANCE_UID), series)
            if level == "instance":
                sops = wanted.setdefault(key, set())
                assert sops is not None
                sops.add(_uid(match, SOP_INSTANCE_UID))
            else:
                wanted[key] = None
        found: list[StoredInstance] = []
        for (study_uid, series_uid), sop_uids in wanted.items():
            try:
                stored = self.node.retrieve.instances(study_uid, series_uid)
            except NotFound:  # deleted since the search
                continue
            found += [i for i in stored if sop_uids is None or i.sop_uid in sop_uids]
        return found

    def _sub_operations(self, event: Event, plan: list[StoredInstance] | IdentifierError,
                        receiving: Callable[[], Association]) -> Iterator[Any]:
        if isinstance(plan, IdentifierError):
            # pynetdicom sends a failure status only once sub-operations were announced.
            yield 1
            yield plan.status_dataset(), None
            return
        yield len(plan)
        for instance in plan:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, self._read(instance, receiving())

    def _read(self, instance: StoredInstance, receiving: Association) -> Dataset:
        try:
            if must_decode(instance, receiving):
                try:
                    decoded = dcmread(io.BytesIO(self.node.retrieve.transcode(instance, ExplicitVRLittleEndian)))
                    # Decoding does not make a new instance, but pydicom gives it a new UID: the peer must get
                    # the instance it asked for.
                    decoded.SOPInstanceUID = decoded.file_meta.MediaStorageSOPInstanceUID = instance.sop_uid
                    return decoded
                except NotAcceptable as exc:  # no decoder here: sent as stored, the peer refuses it
                    log.warning("cannot decode %s for a peer that does not take %s: %s", instance.sop_uid,
                                instance.transfer_syntax_uid, exc)
            return dcmread(self.node.retrieve.path(instance))
        except Exception as exc:
            log.error("cannot read stored instance %s to send it: %s", instance.sop_uid, exc)
            # Without File Meta Information pynetdicom cannot send it: a failed sub-operation listing this UID.
            unreadable = Dataset()
            unreadable.SOPClassUID = instance.sop_class_uid
            unreadable.SOPInstanceUID = instance.sop_uid
            return unreadable
