"""The gateway as a DICOM node over DIMSE: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET as a service provider.

A thin adapter: pynetdicom calls the handlers in ``handlers``, which call the node's ingest, query and retrieve
services. ``CONFORMANCE.md`` lists what is supported and the association policy.
"""

from gateway.dimse.server import DimseServer, start_dimse_process, stop_dimse_process

__all__ = ["DimseServer", "start_dimse_process", "stop_dimse_process"]
