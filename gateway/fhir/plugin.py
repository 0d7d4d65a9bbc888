"""The FHIR plug-in: FhirService at ``node.extensions["fhir"]``, the /fhir blueprint, ImagingStudy sync hooks."""

from __future__ import annotations

from typing import Any

from gateway.fhir.service import FhirService


def open(node: Any) -> None:
    service = FhirService(node)
    node.extensions["fhir"] = service
    node.ingest.stored_listeners.append(service.imaging.on_stored)
    node.ingest.deleted_listeners.append(service.imaging.on_deleted)
    from gateway.fhir import bulk, reindex

    bulk.register()
    reindex.register_job_kind()


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


def register_commands(commands: Any, common: Any) -> None:
    fhir = commands.add_parser("fhir", help="the FHIR store: maintenance")
    actions = fhir.add_subparsers(dest="fhir_action", required=True, metavar="ACTION")
    reindex = actions.add_parser("reindex", parents=[common("./data")],
                                 help="rebuild the search indexes of stored resources (after search_parameters.toml "
                                      "changes); a job with progress")
    reindex.add_argument("--type", dest="types", action="append", default=None, metavar="RESOURCE",
                         help="only this resource type (repeatable; default: all)")
    reindex.set_defaults(run=_reindex_command)


def _reindex_command(node: Any, args: Any) -> int:
    from gateway.cli import run_job
    from gateway.fhir.reindex import REINDEX_JOB

    return run_job(node, REINDEX_JOB, {"types": args.types or []}, "reindexing", unit="resource")
