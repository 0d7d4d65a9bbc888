"""/fhir: the FHIR R4 REST API, a thin adapter over FhirService (parse the HTTP request, call, serialise)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

from flask import Blueprint, Response, current_app, request, send_file

from gateway.fhir import bulk
from gateway.fhir.capability import capability_statement
from gateway.fhir.errors import FhirError, bad_request, not_found, operation_outcome
from gateway.fhir.service import FhirService, Outcome
from gateway.services.jobs import COMPLETED, FAILED, FINISHED_STATES, JobError
from gateway.web.dicomweb.common import site_root

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"


def _service() -> FhirService:
    return current_app.extensions["gateway.node"].extensions["fhir"]


def _base() -> str:
    return site_root() + "/fhir"


def _respond(body: dict[str, Any] | None, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = "" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    response = Response(text, status=status, mimetype=FHIR_JSON)
    response.headers["Content-Type"] = FHIR_JSON + "; charset=utf-8"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _prefer(name: str) -> str | None:
    for part in request.headers.get("Prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"').lower() or "true"
    return None


def _strict() -> bool:
    handling = _prefer("handling")
    if handling not in (None, "strict", "lenient"):
        raise bad_request(f"Prefer: handling={handling} is not strict or lenient")
    return handling == "strict"


def _body() -> dict[str, Any]:
    data = request.get_data(cache=True)
    if not data:
        raise bad_request("the request has no body")
    mimetype = request.mimetype
    if mimetype not in ("application/fhir+json", "application/json", "application/json+fhir", ""):
        raise FhirError(415, operation_outcome(f"media type {mimetype} is not supported: send {FHIR_JSON}",
                                               "not-supported"))
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not JSON: {exc}", "structure") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", "structure")
    return body


def _http_date(stamp: str) -> str:
    return format_datetime(datetime.fromisoformat(stamp).replace(tzinfo=UTC), usegmt=True)


def _written(outcome: Outcome | None) -> Response:
    if outcome is None:
        return _respond(None, 204)
    stored = outcome.stored
    headers = {"ETag": f'W/"{stored.version_id}"', "Last-Modified": _http_date(stored.last_updated)}
    if stored.deleted:
        return _respond(None, 204, headers)
    if outcome.status == 201:
        headers["Location"] = f"{_base()}/{stored.res_type}/{stored.res_id}/_history/{stored.version_id}"
    preference = _prefer("return")
    if preference == "minimal":
        return _respond(None, outcome.status, headers)
    if preference == "operationoutcome":
        return _respond(operation_outcome(f"{stored.res_type}/{stored.res_id} stored as version "
                                          f"{stored.version_id}", "informational", "information"),
                        outcome.status, headers)
    return _respond(stored.resource, outcome.status, headers)


def _search_params() -> list[tuple[str, str]]:
    params = list(request.args.items(multi=True))
    if request.method == "POST":
        if request.mimetype != "application/x-www-form-urlencoded":
            raise FhirError(415, operation_outcome("POST _search takes application/x-www-form-urlencoded",
                                                   "not-supported"))
        params += parse_qsl(request.get_data(as_text=True), keep_blank_values=True)
    return params


def create_blueprint() -> Blueprint:
    blueprint = Blueprint("fhir", __name__)

    @blueprint.errorhandler(FhirError)
    def on_fhir_error(exc: FhirError) -> Response:
        return _respond(exc.outcome, exc.status)

    @blueprint.get("/metadata")
    def metadata() -> Response:
        return _respond(capability_statement(_base()))

    @blueprint.post("")
    @blueprint.post("/")
    def transaction() -> Response:
        return _respond(_service().transaction(_body(), base=_base()))

    # -- Bulk Data export ------------------------------------------------------------------------------------

    def kick_off(level: str, group: str | None = None) -> Response:
        if _prefer("respond-async") is None:
            raise bad_request("a bulk export needs the header Prefer: respond-async")
        output_format = request.args.get("_outputFormat", NDJSON)
        if output_format not in (NDJSON, "application/ndjson", "ndjson"):
            raise bad_request(f"_outputFormat {output_format} is not supported (only {NDJSON})")
        types = [t for value in request.args.getlist("_type") for t in value.split(",") if t]
        unsupported = sorted(set(request.args) - {"_outputFormat", "_type", "_since"})
        if unsupported and _strict():
            raise bad_request(f"export parameters not supported: {', '.join(unsupported)}", "not-supported")
        params = {"level": level, "types": types or None, "since": request.args.get("_since"),
                  "request": request.url}
        if group is not None:
            params["group"] = group
        from gateway.web.jobs import submit_job

        try:
            submitted = submit_job(bulk.KIND, params)
        except Exception as exc:  # a JobError arrives as a Problem from submit_job
            raise bad_request(str(getattr(exc, "detail", exc))) from None
        job_id = json.loads(submitted.get_data())["id"]
        return _respond(None, 202, {"Content-Location": f"{_base()}/$export-status/{job_id}"})

    @blueprint.get("/$export")
    def export_system() -> Response:
        return kick_off("system")

    @blueprint.get("/Patient/$export")
    def export_patients() -> Response:
        return kick_off("patient")

    @blueprint.get("/Group/<group_id>/$export")
    def export_group(group_id: str) -> Response:
        group = _service().read("Group", group_id)  # 404 / 410 before any job exists
        try:
            bulk.group_members(group, _service().base_url)
        except JobError as exc:
            raise bad_request(str(exc), "not-supported") from None
        return kick_off("group", group_id)

    def export_job(job_id: str) -> dict[str, Any]:
        node = current_app.extensions["gateway.node"]
        try:
            job = node.jobs.get(job_id)
        except JobError:
            raise not_found(f"there is no export {job_id}") from None
        if job["kind"] != bulk.KIND:
            raise not_found(f"there is no export {job_id}")
        return job

    @blueprint.get("/$export-status/<job_id>")
    def export_status(job_id: str) -> Response:
        job = export_job(job_id)
        if job["state"] == COMPLETED:
            result = job["result"]
            manifest = {"transactionTime": result["transactionTime"], "request": result["request"],
                        "requiresAccessToken": False,
                        "output": [{"type": item["type"], "url": f"{_base()}/$export-file/{job_id}/{item['file']}",
                                    "count": item["count"]} for item in result["output"]],
                        "error": []}
            return Response(json.dumps(manifest), 200, mimetype="application/json", headers={"Expires": "0"})
        if job["state"] == FAILED:
            return _respond(operation_outcome(f"the export failed: {job['error']}", "exception"), 500)
        if job["state"] in FINISHED_STATES:
            raise not_found(f"export {job_id} was cancelled")
        progress = job["progress"]
        text = f"{progress['done']}/{progress['total']} types" if progress["total"] else job["state"]
        return _respond(None, 202, {"X-Progress": text, "Retry-After": "1"})

    @blueprint.delete("/$export-status/<job_id>")
    def export_cancel(job_id: str) -> Response:
        job = export_job(job_id)
        node = current_app.extensions["gateway.node"]
        if job["state"] not in FINISHED_STATES:
            node.jobs.request_cancel(job_id)
        import shutil

        shutil.rmtree(bulk.export_dir(node, job_id), ignore_errors=True)
        return _respond(None, 202)

    @blueprint.get("/$export-file/<job_id>/<name>")
    def export_file(job_id: str, name: str) -> Response:
        job = export_job(job_id)
        files = {item["file"] for item in (job["result"] or {}).get("output", [])}
        if name not in files:
            raise not_found(f"export {job_id} has no file {name}")
        node = current_app.extensions["gateway.node"]
        return send_file(bulk.export_dir(node, job_id) / name, mimetype=NDJSON)

    # -- type level ------------------------------------------------------------------------------------------

    @blueprint.get("/<res_type>")
    def search_type(res_type: str) -> Response:
        return _respond(_service().search(res_type, _search_params(), _strict(), _base()))

    @blueprint.post("/<res_type>/_search")
    def search_post(res_type: str) -> Response:
        return _respond(_service().search(res_type, _search_params(), _strict(), _base()))

    @blueprint.post("/<res_type>")
    def create(res_type: str) -> Response:
        _service().check_type(res_type)
        body = _body()
        if body.get("resourceType") != res_type:
            raise bad_request(f"the body is a {body.get('resourceType')}, the URL names {res_type}")
        return _written(_service().create_outcome(body, request.headers.get("If-None-Exist")))

    @blueprint.put("/<res_type>")
    def conditional_update(res_type: str) -> Response:
        _service().check_type(res_type)
        body = _body()
        if body.get("resourceType") != res_type:
            raise bad_request(f"the body is a {body.get('resourceType')}, the URL names {res_type}")
        criteria = list(request.args.items(multi=True))
        if not criteria:
            raise bad_request("a conditional update needs search criteria in the URL")
        return _written(_service().update_outcome(body, None, conditional=criteria,
                                                  if_match=request.headers.get("If-Match")))

    @blueprint.delete("/<res_type>")
    def conditional_delete(res_type: str) -> Response:
        criteria = list(request.args.items(multi=True))
        if not criteria:
            raise bad_request("a conditional delete needs search criteria in the URL")
        return _written(_service().conditional_delete(res_type, criteria))

    # -- instance level --------------------------------------------------------------------------------------

    @blueprint.get("/<res_type>/<res_id>")
    def read(res_type: str, res_id: str) -> Response:
        stored = _service().read_stored(res_type, res_id)
        etag = f'W/"{stored.version_id}"'
        if request.headers.get("If-None-Match") == etag:
            return _respond(None, 304, {"ETag": etag})
        return _respond(stored.resource, 200, {"ETag": etag, "Last-Modified": _http_date(stored.last_updated)})

    @blueprint.put("/<res_type>/<res_id>")
    def update(res_type: str, res_id: str) -> Response:
        _service().check_type(res_type)
        body = _body()
        if body.get("resourceType") != res_type:
            raise bad_request(f"the body is a {body.get('resourceType')}, the URL names {res_type}")
        if "id" not in body:
            raise bad_request("an update needs the resource's id in the body")
        return _written(_service().update_outcome(body, res_id, if_match=request.headers.get("If-Match")))

    @blueprint.delete("/<res_type>/<res_id>")
    def delete(res_type: str, res_id: str) -> Response:
        return _written(_service().delete_outcome(res_type, res_id))

    @blueprint.get("/<res_type>/<res_id>/_history")
    def history(res_type: str, res_id: str) -> Response:
        return _respond(_service().history(res_type, res_id, _base()))

    @blueprint.get("/<res_type>/<res_id>/_history/<version_id>")
    def vread(res_type: str, res_id: str, version_id: str) -> Response:
        return _respond(_service().vread(res_type, res_id, version_id))

    return blueprint

