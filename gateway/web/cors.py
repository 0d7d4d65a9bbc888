"""Cross-origin access for browser viewers (OHIF and the like), for the origins an operator allows."""

from __future__ import annotations

from flask import Flask, Response, request

ALLOWED_HEADERS = "Accept, Authorization, Content-Type, Prefer"
EXPOSED_HEADERS = "Content-Type, Content-Length, Warning, Location"
ALLOWED_METHODS = "GET, POST, PUT, DELETE, OPTIONS"


def install_cors(app: Flask, origins: list[str]) -> None:
    if not origins:
        return
    allow_any = "*" in origins

    def allowed(origin: str | None) -> bool:
        return origin is not None and (allow_any or origin in origins)

    @app.before_request
    def preflight() -> Response | None:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return Response(status=204)
        return None

    @app.after_request
    def add_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin  # type: ignore[assignment]
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
                response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
                response.headers["Access-Control-Max-Age"] = "600"
        return response
