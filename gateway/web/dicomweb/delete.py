"""Deleting studies, series and instances (site administrator only)."""

from __future__ import annotations

from flask import Blueprint, Response, json

from gateway.web.auth import require_admin
from gateway.web.dicomweb.common import checked_uids, node
from gateway.web.problems import Problem


@require_admin
def delete(study: str, series: str | None = None, instance: str | None = None) -> Response:
    checked_uids(study=study, series=series, instance=instance)
    removed = node().ingest.delete(study, series, instance)
    if not removed:
        raise Problem(404, "nothing to delete: no such study, series or instance is stored")
    return Response(json.dumps({"deleted_instances": removed}), status=200, mimetype="application/json")


def register(blueprint: Blueprint) -> None:
    blueprint.add_url_rule("/studies/<study>", "delete_study", delete, methods=["DELETE"])
    blueprint.add_url_rule("/studies/<study>/series/<series>", "delete_series", delete, methods=["DELETE"])
    blueprint.add_url_rule("/studies/<study>/series/<series>/instances/<instance>", "delete_instance", delete,
                           methods=["DELETE"])
