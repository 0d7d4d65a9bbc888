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
