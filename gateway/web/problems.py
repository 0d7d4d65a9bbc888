"""Errors as RFC 9457 problem details, the one error shape of every HTTP face except STOW-RS results."""

from __future__ import annotations

from http import HTTPStatus

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException


class Problem(Exception):
    def __init__(self, status: int, detail: str, title: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer of the /api faces (``flask.jsonify`` would sort keys and pretty-print per app config)."""
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def problem_response(status: int, detail: str, title: str | None = None,
                     headers: dict[str, str] | None = None) -> Response:
    body = {"type": "about:blank", "title": title or HTTPStatus(status).phrase, "status": status,
            "detail": detail}
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def on_problem(exc: Problem) -> Response:
        return problem_response(exc.status, exc.detail, exc.title)

    @app.errorhandler(HTTPException)
    def on_http_exception(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or HTTPStatus(status).phrase
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"the request body is larger than the configured limit of {limit} bytes"
        response = problem_response(status, detail)
        if status == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def on_unexpected(exc: Exception) -> Response:
        app.logger.exception("unhandled error")
        return problem_response(500, f"internal error: {type(exc).__name__}")
