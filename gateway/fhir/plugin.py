"""The FHIR plug-in: FhirService at ``node.extensions["fhir"]``, the /fhir blueprint, ImagingStudy sync hooks."""

from __future__ import annotations

from typing import Any

from gateway.fhir.service import FhirService


def open(node: Any) -> None:
    service = FhirService(node)
    node.extensions["fhir"] = service
    node.ingest.stored_listeners.append(service.imaging.on_stored)
    node.ingest.deleted_listeners.append(service.imaging.on_deleted)
    from gateway.fhir import bulk

    bulk.register()


def close(node: Any) -> None:
    service = node.extensions.pop("fhir", None)
    if service is None:
        return
    for listeners, listener in ((node.ingest.stored_listeners, service.imaging.on_stored),
                                (node.ingest.deleted_listeners, service.imaging.on_deleted)):
        if listener in listeners:
            listeners.remove(listener)


def register_web(app: Any, node: Any) -> None:
    from gateway.fhir.web import create_blueprint

    app.register_blueprint(create_blueprint(), url_prefix="/fhir")
