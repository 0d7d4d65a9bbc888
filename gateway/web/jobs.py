"""/api/jobs: start long-running jobs, follow their progress, cancel and resume them (site administrator).

Jobs run on background threads of the serving process (``JobRunner``); their state lives in the database,
so any worker answers for any job.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from gateway.services.jobs import JobError, JobRunner, job_kinds
from gateway.web.auth import require_admin
from gateway.web.problems import Problem, json_response


def _runner() -> JobRunner:
    return current_app.extensions["gateway.jobs"]


def _call(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except JobError as exc:
        raise Problem(exc.status, str(exc)) from exc


def submit_job(kind: str, params: dict[str, Any]) -> Response:
    """Create a job and start it here: 202 with its view and a Location to poll (used by other blueprints)."""
    node = current_app.extensions["gateway.node"]
    job = _call(node.jobs.create, node, kind, params)
    _runner().submit(job["id"])
    return json_response(job, 202, {"Location": f"/api/jobs/{job['id']}"})


def create_blueprint() -> Blueprint:
    blueprint = Blueprint("jobs", __name__)

    @blueprint.get("")
    @require_admin
    def list_jobs() -> Response:
        node = current_app.extensions["gateway.node"]
        try:
            limit = int(request.args.get("limit", "100"))
        except ValueError:
            raise Problem(400, f"limit must be an integer, not {request.args['limit']!r}") from None
        if not 0 < limit <= 1000:
            raise Problem(400, "limit must be between 1 and 1000")
        return json_response(node.jobs.list(request.args.get("kind"), request.args.get("state"), limit))

    @blueprint.get("/kinds")
    @require_admin
    def list_kinds() -> Response:
        return json_response({name: kind.description for name, kind in sorted(job_kinds().items())})

    @blueprint.post("")
    @require_admin
    def create_job() -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
            raise Problem(400, 'the body must be a JSON object {"kind": ..., "params": {...}}')
        params = body.get("params", {})
        if not isinstance(params, dict):
            raise Problem(400, "params must be a JSON object")
        return submit_job(body["kind"], params)

    @blueprint.get("/<job_id>")
    @require_admin
    def get_job(job_id: str) -> Response:
        node = current_app.extensions["gateway.node"]
        return json_response(_call(node.jobs.get, job_id))

    @blueprint.post("/<job_id>/cancel")
    @require_admin
    def cancel_job(job_id: str) -> Response:
        node = current_app.extensions["gateway.node"]
        return json_response(_call(node.jobs.request_cancel, job_id))

    @blueprint.post("/<job_id>/resume")
    @require_admin
    def resume_job(job_id: str) -> Response:
        node = current_app.extensions["gateway.node"]
        job = _call(node.jobs.make_resumable, job_id)
        _runner().submit(job_id)
        return json_response(job, 202, {"Location": f"/api/jobs/{job_id}"})

    return blueprint
