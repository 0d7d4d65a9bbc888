"""FHIR Bulk Data export (Bulk Data Access v2) as a job: NDJSON files per resource type.

The kick-off creates a ``fhir-export`` job (so /api/jobs shows its progress and it resumes after a restart:
a rerun rewrites the files from scratch); the status URL reports the job, and the manifest lists the files.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.fhir.params import date_range, definitions, instant_text
from gateway.services.jobs import JobContext, JobError, JobKind, job_kinds, register_job_kind

if TYPE_CHECKING:
    from gateway.node import Node

KIND = "fhir-export"
LEVELS = ("system", "patient", "group")


def export_dir(node: Node, job_id: str) -> Path:
    return node.settings.data_dir / "fhir-export" / job_id


def patient_types() -> list[str]:
    """Types in the Patient compartment here: Patient itself and those with a ``patient`` parameter."""
    return [name for name, params in definitions().items() if name == "Patient" or "patient" in params]


def check_params(node: Node, params: dict[str, Any]) -> dict[str, Any]:
    level = params.get("level", "system")
    if level not in LEVELS:
        raise JobError(f"level must be one of {', '.join(LEVELS)}")
    allowed = patient_types() if level != "system" else list(definitions())
    types = params.get("types") or allowed
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise JobError("types must be a list of resource types")
    unknown = [t for t in types if t not in allowed]
    if unknown:
        raise JobError(f"cannot export {', '.join(unknown)} at the {level} level (exportable: {', '.join(allowed)})")
    since = params.get("since")
    if since is not None and (not isinstance(since, str) or date_range(since) is None):
        raise JobError(f"_since {since!r} is not a FHIR instant")
    group = params.get("group")
    if (level == "group") != isinstance(group, str):
        raise JobError("a group-level export needs the Group's id (group), and only it")
    checked = {"level": level, "types": types, "since": since, "request": str(params.get("request", "")),
               "transaction_time": params.get("transaction_time") or instant_text(datetime.now(UTC))}
    if level == "group":
        checked["group"] = group
    return checked


def group_members(group: dict[str, Any], base_url: str) -> list[str]:
    """Ids of the Patients a Group holds now: member.entity references to this server's Patients, not inactive.

    Other members (Practitioners, Devices, nested Groups) have no Patient compartment to export.
    """
    from gateway.fhir.params import split_reference

    if group.get("actual") is not True:
        raise JobError(f"Group/{group.get('id')} is not actual: a definitional group has no members to export")
    members = []
    for member in group.get("member") or []:
        if member.get("inactive") is True:
            continue
        reference = (member.get("entity") or {}).get("reference")
        if not isinstance(reference, str) or (reference.startswith("http") and
                                              not reference.startswith(base_url + "/")):
            continue
        target_type, target_id = split_reference(reference)
        if target_type == "Patient" and target_id:
            members.append(target_id)
    return members


def run(node: Node, context: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    service = node.extensions["fhir"]
    target = export_dir(node, context.job_id)
    shutil.rmtree(target, ignore_errors=True)  # a resumed export starts over: its files are rewritten whole
    target.mkdir(parents=True)
    since = date_range(params["since"])[0] if params.get("since") else None
    members: list[str] | None = None
    if params["level"] == "group":
        from gateway.fhir.errors import FhirError

        try:  # the members as the Group has them when the export runs (or reruns after a restart)
            group = service.read("Group", params["group"])
        except FhirError as exc:
            raise JobError(f"Group/{params['group']}: {exc}") from None
        members = group_members(group, service.base_url)
    output = []
    context.progress(done=0, total=len(params["types"]), message="exporting", force=True)
    for res_type in params["types"]:
        count = 0
        path = target / f"{res_type}.ndjson"
        resources = service.iter_resources(res_type, since=since) if members is None \
            else service.iter_patient_compartment(res_type, members, since=since)
        with open(path, "w", encoding="utf-8") as handle:
            for resource in resources:
                if params["level"] == "patient" and res_type != "Patient" and not _about_a_patient(resource):
                    continue
                handle.write(json.dumps(resource, separators=(",", ":"), ensure_ascii=False))
                handle.write("\n")
                count += 1
                if count % 500 == 0:
                    context.check_cancelled()
        if count:
            output.append({"type": res_type, "file": path.name, "count": count})
        else:
            path.unlink()
        context.progress(advance=1, message=f"exported {res_type}", force=True)
    return {"transactionTime": params["transaction_time"], "request": params["request"], "output": output}


def _about_a_patient(resource: dict[str, Any]) -> bool:
    from gateway.fhir.params import evaluate, search_param, split_reference

    param = search_param(resource["resourceType"], "patient")
    if param is None:
        return False
    for path in param.paths:
        for value in evaluate(resource, path):
            reference = value.get("reference") if isinstance(value, dict) else None
            if isinstance(reference, str) and split_reference(reference)[0] == "Patient":
                return True
    return False


def register() -> None:
    if KIND not in job_kinds():
        register_job_kind(JobKind(KIND, run, check_params, "FHIR Bulk Data export to NDJSON files"))
