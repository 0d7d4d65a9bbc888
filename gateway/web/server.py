"""Running the WSGI application with waitress, the embedded production server."""

from __future__ import annotations

from typing import Any

from flask import Flask

from gateway.config import Settings


def waitress_options(settings: Settings) -> dict[str, Any]:
    # The application enforces max_upload_bytes itself, with a problem document that names the limit;
    # waitress's own limit is only a backstop above it.
    return {"threads": settings.threads, "max_request_body_size": settings.max_upload_bytes * 2 + 2**20,
            "channel_timeout": 300, "ident": "gateway", "connection_limit": 1000}


def create_server(app: Flask, settings: Settings, host: str | None = None, port: int | None = None,
                  **extra: Any) -> Any:
    from waitress.server import create_server as create_waitress_server

    options = waitress_options(settings) | extra
    return create_waitress_server(app, host=host or settings.host, port=settings.port if port is None else port,
                                  **options)


def run_workers(settings: Settings, workers: int) -> None:
    """Serve with several worker processes (gunicorn, threaded workers) sharing one listening socket.

    Each worker opens its own database engine after the fork; the schema migration and the clean-up of
    interrupted uploads happen once, before the workers start.
    """
    from gunicorn.app.base import BaseApplication

    from gateway.node import Node
    from gateway.web.app import create_app

    Node.open(settings).close()

    class GatewayApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {
                "bind": f"{settings.host}:{settings.port}", "workers": workers, "worker_class": "gthread",
                "threads": settings.threads, "timeout": 300, "graceful_timeout": 30, "keepalive": 5,
                "accesslog": None, "errorlog": "-", "loglevel": settings.log_level.lower(),
                "limit_request_line": 16384, "proc_name": "gateway",
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return create_app(node=Node.open(settings, migrate=False))

    GatewayApplication().run()
