"""The DIMSE service provider: a pynetdicom application entity serving a Node.

In the single-process ``gateway serve`` it runs as threads beside the HTTP server; with ``--workers N`` the
gunicorn master starts it as a dedicated process (``python -m gateway.dimse``), because forking workers from a
process that runs listener threads could copy a lock another thread holds.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from gateway import __version__
from gateway.config import Settings
from gateway.dimse.handlers import (
    FIND_MODELS,
    GET_MODELS,
    IMPLEMENTATION_CLASS_UID,
    MOVE_MODELS,
    DimseHandlers,
    match_pynetdicom_logging,
)
from gateway.listener_process import ListenerProcess
from gateway.node import Node

log = logging.getLogger(__name__)

# Instances are stored in the transfer syntax they arrive in; the order is the preference when a peer offers
# several in one presentation context (explicit VR keeps the VRs of private attributes).
STORAGE_TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
    uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.JPEG2000MCLossless,
    uid.JPEG2000MC, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K, uid.RLELossless, uid.MPEG2MPML,
    uid.MPEG2MPMLF, uid.MPEG2MPHL, uid.MPEG2MPHLF, uid.MPEG4HP41, uid.MPEG4HP41F, uid.MPEG4HP41BD,
    uid.MPEG4HP41BDF, uid.MPEG4HP422D, uid.MPEG4HP422DF, uid.MPEG4HP423D, uid.MPEG4HP423DF, uid.MPEG4HP42STEREO,
    uid.MPEG4HP42STEREOF, uid.HEVCMP51, uid.HEVCM10P51,
]
COMMAND_TRANSFER_SYNTAXES = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian,
                             uid.DeflatedExplicitVRLittleEndian, uid.ExplicitVRBigEndian]
# pynetdicom's default of 10 concurrent associations is too few for a department's modalities.
MAX_ASSOCIATIONS = 64
# Larger PDUs mean fewer, cheaper-to-parse fragments per instance.
MAX_PDU_SIZE = 256 * 1024
# How soon the listening loop notices close().
STOP_POLL_S = 0.05


def build_application_entity(settings: Settings, handlers: DimseHandlers) -> AE:
    match_pynetdicom_logging()
    ae = AE(ae_title=settings.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = f"EUCAIM_GW_{__version__}"[:16]
    ae.require_called_aet = True
    known = handlers.policy.known_calling_aes
    if known is not None and not known:
        log.warning("no calling AE title may use any DIMSE service; check the dimse_allow_* and peers settings")
    ae.require_calling_aet = known or []
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.maximum_pdu_size = MAX_PDU_SIZE
    ae.add_supported_context(Verification, COMMAND_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        # Both roles: a C-GET retriever proposes to act as the storage SCP on its own association.
        ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    for sop_class in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS):
        ae.add_supported_context(sop_class, COMMAND_TRANSFER_SYNTAXES)
    return ae


class DimseServer:
    """The listener and its association threads; ``close`` stops both."""

    def __init__(self, node: Node, host: str | None = None, port: int | None = None) -> None:
        settings = node.settings
        self.host = host or settings.host
        port = settings.dimse_port if port is None else port
        if port is None:
            raise ValueError("no DIMSE port configured (dimse_port)")
        self.handlers = DimseHandlers(node)
        self.ae = build_application_entity(settings, self.handlers)
        # Started here rather than by ae.start_server, whose listening loop looks for a stop request every 0.5 s:
        # each close (the temporary SCP of every C-MOVE pull from the CLI, every shutdown) waited that long.
        server = self.ae.make_server((self.host, port), evt_handlers=self.handlers.bindings(),
                                     server_class=ThreadedAssociationServer)
        self._server: ThreadedAssociationServer | None = server
        self.ae._servers.append(server)  # as start_server does: the server's shutdown() removes it there
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": STOP_POLL_S},
                         name=f"dimse-listener-{port}", daemon=True).start()
        log.info("DIMSE service provider %s listening on %s:%d", settings.ae_title, self.host, self.port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop listening and abort the associations still established."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        for association in self.ae.active_associations:
            # One being rejected or released is closing already; aborting it too upsets pynetdicom's state machine.
            if association.is_established:
                association.abort()

    def __enter__(self) -> DimseServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def start_dimse_process(settings: Settings) -> ListenerProcess:
    """Run the DIMSE service provider in a process of its own, for the multi-worker HTTP mode."""
    return ListenerProcess("gateway.dimse", settings)


def stop_dimse_process(process: ListenerProcess, timeout: float = 10.0) -> None:
    process.close(timeout)
