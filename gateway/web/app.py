"""The Flask application factory: one blueprint per protocol over one Node."""

from __future__ import annotations

from flask import Flask

from gateway.config import Settings
from gateway.node import Node
from gateway.services.jobs import JobRunner
from gateway.web import dicomweb, health, jobs
from gateway.web.cors import install_cors
from gateway.web.problems import install_error_handlers


def create_app(settings: Settings | None = None, node: Node | None = None, resume_jobs: bool = True) -> Flask:
    if node is None:
        node = Node.open(settings or Settings())
    app = Flask("gateway")
    app.config["MAX_CONTENT_LENGTH"] = node.settings.max_upload_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["gateway.node"] = node
    install_error_handlers(app)
    install_cors(app, node.settings.cors_origins)
    app.register_blueprint(health.create_blueprint())
    app.register_blueprint(dicomweb.create_blueprint(), url_prefix="/dicomweb")
    app.register_blueprint(jobs.create_blueprint(), url_prefix="/api/jobs")
    app.extensions["gateway.jobs"] = JobRunner(node)
    from gateway.plugins import call_hook

    call_hook("register_web", app, node)
    if resume_jobs:
        app.extensions["gateway.jobs"].resume_pending()
    return app
