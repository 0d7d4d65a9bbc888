"""GET /health: version, database, storage and instance counts, for monitoring."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, json


def create_blueprint() -> Blueprint:
    blueprint = Blueprint("health", __name__)

    @blueprint.get("/health")
    def health() -> Response:
        report = current_app.extensions["gateway.node"].health()
        status = 200 if report["status"] == "ok" else 503
        return Response(json.dumps(report), status=status, mimetype="application/json")

    return blueprint
