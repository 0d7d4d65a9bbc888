"""What the DICOMweb routes share: the node, base URLs, UID checks and DICOM JSON responses."""

from __future__ import annotations

from flask import Response, current_app, request

from gateway.dicom.uids import InvalidUID, validate_uid
from gateway.node import Node
from gateway.web.accept import parse_accept
from gateway.web.problems import Problem

DICOM_JSON = "application/dicom+json"


def node() -> Node:
    return current_app.extensions["gateway.node"]


def site_root() -> str:
    """Absolute URL of the gateway as the client reached it (or as configured behind a proxy)."""
    configured = node().settings.public_base_url
    if configured:
        return configured.rstrip("/")
    host = request.host
    port = request.environ.get("SERVER_PORT")
    default_port = "443" if request.scheme == "https" else "80"
    # Some clients (dicomweb-client among them) send a Host header without the port; without a proxy in
    # between, the port the request arrived on is the one the client used.
    if not host.endswith("]") and ":" not in host and port and port != default_port and \
            "X-Forwarded-Host" not in request.headers:
        host = f"{host}:{port}"
    return f"{request.scheme}://{host}"


def base_url() -> str:
    return site_root() + "/dicomweb"


def checked_uids(**uids: str | None) -> None:
    labels = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}
    for name, value in uids.items():
        if value is None:
            continue
        try:
            validate_uid(value, f"{labels.get(name, name)} in the URL")
        except InvalidUID as exc:
            raise Problem(400, str(exc)) from exc


def require_json_acceptable() -> str:
    """The JSON media type to answer with, or 406 when the client accepts no JSON representation."""
    for media_range in parse_accept(request.headers.get("Accept")):
        if media_range.matches(DICOM_JSON):
            return DICOM_JSON
        if media_range.matches("application/json"):
            return "application/json"
    raise Problem(406, "this resource is available as application/dicom+json only "
                       "(multipart/related; type=\"application/dicom+xml\" is not supported)")


def json_response(text: str, media_type: str = DICOM_JSON, status: int = 200) -> Response:
    return Response(text, status=status, mimetype=media_type)
