"""The DICOMweb face (PS3.18) at /dicomweb: STOW-RS, QIDO-RS, WADO-RS and DELETE."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response

from gateway.web.dicomweb import delete, qido, stow, wado


def conformance() -> Response:
    text = resources.files("gateway.web.dicomweb").joinpath("CONFORMANCE.md").read_text(encoding="utf-8")
    return Response(text, mimetype="text/markdown")


def create_blueprint() -> Blueprint:
    blueprint = Blueprint("dicomweb", __name__)
    for module in (stow, qido, wado, delete):
        module.register(blueprint)
    blueprint.add_url_rule("/conformance", "conformance", conformance, methods=["GET"])
    return blueprint
